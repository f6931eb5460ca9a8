"""A plot of mixture weights over training, one line per source."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["plot_mixture_weights"]


def plot_mixture_weights(
    steps: Sequence[int],
    weights: torch.Tensor,
    names: Sequence[str],
    path: str | os.PathLike[str],
    title: str = "mixture weights",
) -> Path:
    """Write a PNG of ``weights`` (``[updates, sources]``) against ``steps``.

    Example:
        >>> import tempfile
        >>> weights = torch.tensor([[0.5, 0.5], [0.7, 0.3]])
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = plot_mixture_weights([0, 10], weights, ["a", "b"], Path(folder) / "w.png")
        ...     print(path.name, path.stat().st_size > 0)
        w.png True
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = torch.as_tensor(weights, dtype=torch.float64).reshape(len(steps), len(names))
    figure = Figure(figsize=(6.5, 3.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for column, name in enumerate(names):
        axes.step(list(steps), values[:, column].tolist(), where="post", label=str(name))
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("weight")
    axes.set_ylim(0.0, 1.0)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path
