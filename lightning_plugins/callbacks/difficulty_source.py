"""Where a curriculum's per-sample difficulty comes from: values, a file, a field or the loss."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "DIFFICULTY_FILE_SUFFIXES",
    "difficulty_source",
    "read_difficulty_file",
    "read_matrix_file",
]

DIFFICULTY_FILE_SUFFIXES = (".npy", ".pt", ".csv")


def read_difficulty_file(path: str | os.PathLike[str]) -> torch.Tensor:
    r"""Per-sample difficulty from a ``.npy``, ``.pt`` or ``.csv`` file, as float64 ``[N]``.

    A ``.pt`` file holds a tensor, or a dict with ``"scores"`` (what
    :class:`~lightning_plugins.callbacks.DataDiet` saves). A CSV file holds one number per
    row, or has a header with a ``difficulty`` column (and, optionally, an ``index``
    column giving each row's dataset index).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = Path(folder) / "difficulty.csv"
        ...     _ = path.write_text("index,difficulty\n1,0.5\n0,2.0\n")
        ...     read_difficulty_file(path).tolist()
        [2.0, 0.5]

    Raises:
        ValueError: for a missing file, another suffix, or contents that are not one
            number per sample.
    """
    path = Path(path)
    if path.suffix not in DIFFICULTY_FILE_SUFFIXES:
        raise ValueError(
            f"`difficulty` file {str(path)!r} must end in one of {DIFFICULTY_FILE_SUFFIXES}."
        )
    if not path.is_file():
        raise ValueError(f"`difficulty` file {str(path)!r} does not exist.")
    if path.suffix == ".npy":
        values: Any = np.load(path, allow_pickle=False)
    elif path.suffix == ".pt":
        values = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(values, dict):
            if "scores" not in values:
                raise ValueError(
                    f"`difficulty` file {str(path)!r} holds a dict without 'scores' "
                    f"(keys: {sorted(values)})."
                )
            values = values["scores"]
    else:
        values = _read_csv(path)
    return _as_values(values, f"`difficulty` file {str(path)!r}")


def read_matrix_file(path: str | os.PathLike[str], name: str) -> torch.Tensor:
    """A matrix from a ``.npy``, ``.pt`` or ``.csv`` file, as float64.

    A ``.pt`` file holds a tensor or a dict with ``"graph"``; a CSV file one row per line,
    numbers separated by commas.

    Raises:
        ValueError: for a missing file, another suffix, or contents that are not numbers.
    """
    path = Path(path)
    if path.suffix not in DIFFICULTY_FILE_SUFFIXES:
        raise ValueError(
            f"`{name}` file {str(path)!r} must end in one of {DIFFICULTY_FILE_SUFFIXES}."
        )
    if not path.is_file():
        raise ValueError(f"`{name}` file {str(path)!r} does not exist.")
    try:
        if path.suffix == ".npy":
            return torch.as_tensor(np.load(path, allow_pickle=False), dtype=torch.float64)
        if path.suffix == ".pt":
            values = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(values, dict):
                values = values.get("graph")
            return torch.as_tensor(values, dtype=torch.float64)
        with path.open(newline="") as handle:
            rows = [[float(cell) for cell in row] for row in csv.reader(handle) if row]
        return torch.tensor(rows, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"`{name}` file {str(path)!r} holds no matrix of numbers: {error}"
        ) from None


def _read_csv(path: Path) -> list[float]:
    with path.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if not rows:
        raise ValueError(f"`difficulty` file {str(path)!r} is empty.")
    header = [cell.strip() for cell in rows[0]]
    if "difficulty" not in header:
        try:
            return [float(row[0]) for row in rows]
        except ValueError as error:
            raise ValueError(
                f"`difficulty` file {str(path)!r}: {error}; a CSV holds one number per row "
                "or has a 'difficulty' column."
            ) from None
    column = header.index("difficulty")
    values = [float(row[column]) for row in rows[1:]]
    if "index" not in header:
        return values
    position = header.index("index")
    index = [int(row[position]) for row in rows[1:]]
    if sorted(index) != list(range(len(index))):
        raise ValueError(
            f"`difficulty` file {str(path)!r}: the 'index' column must hold each of "
            f"0..{len(index) - 1} once."
        )
    ordered = [math.nan] * len(index)
    for i, value in zip(index, values, strict=True):
        ordered[i] = value
    return ordered


def _as_values(values: Any, name: str) -> torch.Tensor:
    try:
        tensor = values if torch.is_tensor(values) else torch.as_tensor(np.asarray(values))
    except (TypeError, ValueError, RuntimeError):
        tensor = None
    if (
        tensor is None
        or tensor.dtype == torch.bool
        or tensor.is_complex()
        or tensor.ndim != 1
        or tensor.numel() == 0
    ):
        shape = "?" if tensor is None else tuple(tensor.shape)
        raise ValueError(f"{name} must hold one real number per sample (1-D), got shape {shape}.")
    tensor = tensor.to(torch.float64)
    bad = ~torch.isfinite(tensor)
    if bad.any():
        raise ValueError(
            f"{name} holds {int(bad.sum())} NaN or infinite values (first at index "
            f"{int(bad.nonzero()[0])}); every difficulty must be finite."
        )
    return tensor


def difficulty_source(difficulty: Any) -> tuple[str, Any]:
    """Classify a ``Curriculum``'s ``difficulty`` argument: ``(kind, payload)``.

    ``kind`` is ``"values"`` (payload: float64 tensor), ``"loss"``, ``"field"`` (payload:
    the batch key) or ``"scores"`` (payload: an object with a ``scores`` attribute, such as
    a :class:`~lightning_plugins.callbacks.DataDiet`).

    Example:
        >>> difficulty_source("loss"), difficulty_source("field:difficulty")
        (('loss', None), ('field', 'difficulty'))
        >>> difficulty_source([0.5, 1.0])
        ('values', tensor([0.5000, 1.0000], dtype=torch.float64))
    """
    if isinstance(difficulty, str) and difficulty == "loss":
        return "loss", None
    if isinstance(difficulty, str) and difficulty.startswith("field:"):
        key = difficulty[len("field:") :]
        if not key:
            raise ValueError("`difficulty`='field:' needs a batch key after the colon.")
        return "field", key
    if isinstance(difficulty, str | os.PathLike):
        return "values", read_difficulty_file(difficulty)
    if hasattr(difficulty, "scores") and not torch.is_tensor(difficulty):
        return "scores", difficulty
    if torch.is_tensor(difficulty) or isinstance(difficulty, np.ndarray | Sequence):
        return "values", _as_values(difficulty, "`difficulty`")
    raise TypeError(
        "`difficulty` must be per-sample values (a tensor, array or list), a .npy/.pt/.csv "
        "file, 'loss' (self-paced), 'field:<batch key>', or a DataDiet, got "
        f"{type(difficulty).__name__}."
    )
