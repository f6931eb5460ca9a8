"""A histogram of per-sample scores, with the kept samples marked."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["plot_score_histogram"]


def plot_score_histogram(
    scores: torch.Tensor,
    path: str | os.PathLike[str],
    kept: torch.Tensor | None = None,
    title: str = "per-sample scores",
    bins: int = 50,
) -> Path:
    """Write a PNG histogram of ``scores``; with ``kept`` (a mask), kept and pruned apart.

    Example:
        >>> import tempfile
        >>> scores = torch.linspace(0, 1, 100)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = plot_score_histogram(scores, Path(folder) / "s.png", kept=scores > 0.3)
        ...     print(path.name, path.stat().st_size > 0)
        s.png True
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = scores.detach().double().cpu().numpy()
    edges = np.histogram_bin_edges(values, bins=bins)
    figure = Figure(figsize=(6.0, 3.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if kept is None:
        axes.hist(values, bins=edges, color="tab:blue")
    else:
        mask = kept.detach().bool().cpu().numpy()
        axes.hist(values[mask], bins=edges, color="tab:blue", label=f"kept ({int(mask.sum())})")
        axes.hist(
            values[~mask],
            bins=edges,
            color="tab:red",
            alpha=0.6,
            label=f"pruned ({int((~mask).sum())})",
        )
        axes.legend()
    axes.set_xlabel("score")
    axes.set_ylabel("samples")
    axes.set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path
