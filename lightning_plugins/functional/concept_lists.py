"""Concept annotations of a set of samples as CSR arrays, and their checks."""

from __future__ import annotations

import array
import itertools
from collections.abc import Sequence
from typing import TypeAlias

import torch

from lightning_plugins.functional._checks import check_int

__all__ = [
    "ConceptLists",
    "concept_csr",
    "concept_frequencies",
    "concept_lengths",
    "concept_rows",
]

ConceptLists: TypeAlias = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | Sequence[Sequence[int]]
"""Concept ids per sample, one entry per annotated object (duplicates encode multiplicity).

Three forms are accepted: a padded ``[num_samples, max_objects]`` integer tensor with
``-1`` for padding; CSR arrays ``(ids, offsets)`` where sample ``i`` holds
``ids[offsets[i]:offsets[i + 1]]``; or a sequence of per-sample lists of ids.
"""


def concept_csr(
    concepts: ConceptLists, num_concepts: int | None = None, name: str = "concepts"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concept annotations in CSR form ``(ids, offsets)``, both int64 on the CPU.

    Args:
        concepts: the annotations, in any form of :data:`ConceptLists`.
        num_concepts: size of the concept vocabulary; ids must lie in
            ``[0, num_concepts)``. ``None`` only requires non-negative ids.
        name: the argument name used in error messages.

    Returns:
        ``ids`` (``[total_objects]``) and ``offsets`` (``[num_samples + 1]``).

    Raises:
        TypeError: for an id that is not an integer (per-sample lists; the message names
            the sample and the id, which is never truncated) or offsets that are not
            integers.
        ValueError: for a malformed tensor, offsets that are not a valid partition of
            ``ids``, or an id outside the vocabulary (padding other than ``-1`` included).

    Example:
        >>> ids, offsets = concept_csr(torch.tensor([[3, 3, -1], [-1, -1, -1], [0, 5, 1]]))
        >>> ids.tolist(), offsets.tolist()
        ([3, 3, 0, 5, 1], [0, 2, 2, 5])
        >>> concept_csr([[3, 3], [], [0, 5, 1]])[1].tolist()
        [0, 2, 2, 5]
    """
    num_concepts = check_int(num_concepts, "num_concepts", low=0, optional=True)
    if isinstance(concepts, torch.Tensor):
        ids, offsets = _from_padded(concepts, name)
    elif _is_csr(concepts):
        ids, offsets = _from_csr(concepts[0], torch.as_tensor(concepts[1]), name)
    else:
        try:  # array("q") takes ints and integer scalars, refuses floats and strings
            flat = array.array("q", itertools.chain.from_iterable(concepts))
        except TypeError as err:
            raise TypeError(
                f"`{name}` must hold integer concept ids: {_first_non_integer(concepts, err)}."
            ) from None
        ids = torch.frombuffer(flat, dtype=torch.long) if flat else torch.zeros(0, dtype=torch.long)
        offsets = torch.zeros(len(concepts) + 1, dtype=torch.long)
        offsets[1:] = torch.tensor([len(row) for row in concepts], dtype=torch.long).cumsum(0)
    _check_vocabulary(ids, num_concepts, name)
    return ids, offsets


def concept_lengths(
    concepts: ConceptLists, num_concepts: int | None = None, name: str = "concepts"
) -> torch.Tensor:
    """Number of objects of each sample (``[num_samples]`` int64).

    Per-sample lists are only measured, not read (so their ids are not checked); the
    tensor forms are checked as in :func:`concept_csr`.

    Example:
        >>> concept_lengths([[3, 3], [], [0, 5, 1]]).tolist()
        [2, 0, 3]
    """
    if isinstance(concepts, torch.Tensor) or _is_csr(concepts):
        return concept_csr(concepts, num_concepts, name)[1].diff()
    return torch.tensor([len(row) for row in concepts], dtype=torch.long)


def _first_non_integer(concepts: Sequence[Sequence[int]], err: TypeError) -> str:
    """Which sample holds the first id that is not an integer, and that id (never truncated)."""
    for row, ids in enumerate(concepts):
        try:
            items = list(ids)
        except TypeError:
            return f"sample {row} holds {ids!r} ({type(ids).__name__}), not a list of ids"
        for item in items:
            try:
                array.array("q", [item])
            except TypeError:
                return f"sample {row} holds {item!r} ({type(item).__name__}), not an integer id"
    return str(err)  # pragma: no cover - the conversion failed, so some id is bad


def _is_csr(concepts: ConceptLists) -> bool:
    return (
        isinstance(concepts, tuple) and len(concepts) == 2 and isinstance(concepts[0], torch.Tensor)
    )


def concept_frequencies(
    ids: torch.Tensor, offsets: torch.Tensor, num_concepts: int, per_sample: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Number of samples that contain each concept at least once (``[num_concepts]``).

    With ``per_sample=True`` also the number of distinct concepts of each sample.

    Example:
        >>> ids, offsets = torch.tensor([3, 3, 0, 3]), torch.tensor([0, 2, 2, 4])
        >>> concept_frequencies(ids, offsets, 5)
        tensor([1, 0, 0, 2, 0])
        >>> concept_frequencies(ids, offsets, 5, per_sample=True)[1]
        tensor([1, 0, 2])
    """
    num_samples = offsets.numel() - 1
    rows = torch.repeat_interleave(torch.arange(num_samples), offsets.diff())
    distinct = torch.unique(rows * num_concepts + ids)
    frequencies = torch.bincount(distinct % num_concepts, minlength=num_concepts)
    if not per_sample:
        return frequencies
    return frequencies, torch.bincount(distinct // num_concepts, minlength=num_samples)


def _from_padded(concepts: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if concepts.ndim != 2 or concepts.dtype.is_floating_point or concepts.dtype == torch.bool:
        raise ValueError(
            f"`{name}` as a tensor must be a 2-D integer [num_samples, max_objects] tensor "
            f"padded with -1, got dtype {concepts.dtype} and shape {tuple(concepts.shape)}."
        )
    concepts = concepts.detach().to("cpu", torch.long)
    bad = concepts < -1
    if bad.any():
        raise ValueError(
            f"`{name}` holds {int(concepts[bad][0])}; concept ids must be non-negative and "
            "-1 is the only padding value."
        )
    mask = concepts >= 0
    offsets = torch.zeros(concepts.shape[0] + 1, dtype=torch.long)
    offsets[1:] = mask.sum(1).cumsum(0)
    return concepts[mask], offsets


def _from_csr(
    ids: torch.Tensor, offsets: torch.Tensor, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if ids.ndim != 1 or offsets.ndim != 1 or ids.dtype.is_floating_point:
        raise ValueError(
            f"`{name}` as CSR arrays must be 1-D integer `(ids, offsets)`, got shapes "
            f"{tuple(ids.shape)} and {tuple(offsets.shape)} with dtype {ids.dtype}."
        )
    if offsets.dtype.is_floating_point or offsets.dtype.is_complex or offsets.dtype == torch.bool:
        raise TypeError(
            f"`{name}` offsets must be integers, got dtype {offsets.dtype} "
            f"({offsets.tolist()[:8]}); they are never rounded."
        )
    offsets = offsets.to("cpu", torch.long)
    if (
        offsets.numel() < 1
        or int(offsets[0]) != 0
        or int(offsets[-1]) != ids.numel()
        or bool((offsets.diff() < 0).any())
    ):
        raise ValueError(
            f"`{name}` offsets must start at 0, never decrease and end at len(ids) = "
            f"{ids.numel()}, got {offsets.tolist()[:8]}{'...' if offsets.numel() > 8 else ''}."
        )
    return ids.to("cpu", torch.long), offsets


def _check_vocabulary(ids: torch.Tensor, num_concepts: int | None, name: str) -> None:
    if ids.numel() == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or (num_concepts is not None and high >= num_concepts):
        allowed = "non-negative" if num_concepts is None else f"in [0, {num_concepts})"
        bad = low if low < 0 else high
        raise ValueError(f"`{name}` holds concept id {bad}; ids must be {allowed}.")


def concept_rows(
    ids: torch.Tensor, offsets: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CSR arrays of the samples ``rows`` (in that order) of ``(ids, offsets)``.

    Example:
        >>> ids, offsets = concept_csr([[1, 2], [], [3], [4, 4, 4]])
        >>> sub_ids, sub_offsets = concept_rows(ids, offsets, torch.tensor([3, 0]))
        >>> sub_ids.tolist(), sub_offsets.tolist()
        ([4, 4, 4, 1, 2], [0, 3, 5])
    """
    starts, lengths = offsets[rows], offsets[rows + 1] - offsets[rows]
    sub_offsets = torch.zeros(rows.numel() + 1, dtype=torch.long)
    sub_offsets[1:] = lengths.cumsum(0)
    # position j of the output reads ids[starts[row(j)] + (j - sub_offsets[row(j)])]
    shift = torch.repeat_interleave(starts - sub_offsets[:-1], lengths)
    return ids[torch.arange(int(sub_offsets[-1])) + shift], sub_offsets
