"""Plot of how often each concept was delivered, for one run or several side by side."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["MAX_NAMED_CONCEPTS", "plot_concept_frequencies"]

MAX_NAMED_CONCEPTS = 64
"""Most concepts whose names fit on the plot's x axis; more are shown by rank."""

Counts = torch.Tensor | np.ndarray | Sequence[float]


def plot_concept_frequencies(
    histograms: Mapping[str, Counts],
    path: str | os.PathLike[str],
    reference: Counts | None = None,
    title: str = "Concept frequency",
    reference_label: str = "iid expectation",
    names: Sequence[str] | None = None,
) -> Path:
    """Draw the share of each concept among the occurrences of several runs on one figure.

    Each histogram is normalised to shares (``counts / counts.sum()``) and drawn as a
    line over the concepts on a log y axis; a concept a run never delivered leaves a gap.
    Concepts are sorted by ``reference`` when it is given (the training-set frequencies,
    i.e. what IID batches show, drawn as a dashed black line), otherwise by the first
    histogram, both from most to least frequent. Matplotlib runs with its Agg canvas and
    no pyplot, so this works without a display and leaves global state alone.

    Args:
        histograms: label -> ``[num_concepts]`` occurrence counts of one run, e.g.
            ``{"iid": h1, "cabs-dm": h2, "cabs-fm": h3}``.
        path: the image file to write (its format follows the suffix, e.g. ``.png``);
            missing parent folders are created.
        reference: ``[num_concepts]`` reference counts to sort by and draw, or ``None``.
        title: the figure title.
        reference_label: the legend label of ``reference``.
        names: the name of each concept id; with up to :data:`MAX_NAMED_CONCEPTS`
            concepts they label the x axis, otherwise the axis shows ranks.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if ``histograms`` is empty, the counts are not 1-D, have different
            lengths, or are negative, or ``names`` does not name every concept.

    Example:
        >>> import tempfile
        >>> runs = {"iid": torch.tensor([8, 3, 1, 0]), "cabs": torch.tensor([3, 3, 3, 3])}
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = plot_concept_frequencies(runs, Path(folder) / "concepts.png")
        ...     print(path.name, path.stat().st_size > 0)
        concepts.png True
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not histograms:
        raise ValueError("`histograms` must hold at least one labelled histogram, got none.")
    shares = {
        str(label): _shares(counts, f"histograms[{label!r}]")
        for label, counts in histograms.items()
    }
    sizes = {label: share.size for label, share in shares.items()}
    reference_share = None if reference is None else _shares(reference, "reference")
    if reference_share is not None:
        sizes[reference_label] = reference_share.size
    if len(set(sizes.values())) != 1:
        raise ValueError(f"All histograms must have one entry per concept, got lengths {sizes}.")

    first = next(iter(shares.values()))
    if names is not None and len(names) != first.size:
        raise ValueError(f"`names` must name each of the {first.size} concepts, got {len(names)}.")
    key = reference_share if reference_share is not None else first
    order = np.argsort(-np.nan_to_num(key, nan=0.0), kind="stable")
    ranks = np.arange(1, first.size + 1)

    figure = Figure(figsize=(7.0, 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if reference_share is not None:
        axes.plot(ranks, reference_share[order], "k--", linewidth=1.5, label=reference_label)
    for label, share in shares.items():
        axes.plot(ranks, share[order], linewidth=1.2, label=label)
    axes.set_yscale("log")
    if names is not None and first.size <= MAX_NAMED_CONCEPTS:
        axes.set_xticks(ranks, [str(names[i]) for i in order], rotation=90, fontsize=6)
    axes.set_xlabel(
        "concept rank by " + ("reference frequency" if reference is not None else "first run")
    )
    axes.set_ylabel("share of concept occurrences")
    axes.set_title(title)
    axes.grid(True, which="major", alpha=0.3)
    axes.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def _shares(counts: Counts, name: str) -> np.ndarray:
    """Counts as float64 shares; concepts with no occurrence become NaN (a gap on a log axis)."""
    if isinstance(counts, torch.Tensor):
        values = counts.detach().to("cpu", torch.float64).numpy()
    else:
        values = np.asarray(counts, dtype=np.float64)
    if values.ndim != 1 or values.size < 1:
        raise ValueError(
            f"`{name}` must be a non-empty 1-D [num_concepts] array of counts, got shape "
            f"{values.shape}."
        )
    if (values < 0).any():
        raise ValueError(f"`{name}` holds a negative count; counts must be >= 0.")
    total = values.sum()
    shares = values / total if total > 0 else np.zeros_like(values)
    return np.where(shares > 0, shares, np.nan)
