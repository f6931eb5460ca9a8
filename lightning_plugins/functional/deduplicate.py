"""Keep the first occurrence of each sample index."""

from __future__ import annotations

import torch

__all__ = ["first_occurrence"]


def first_occurrence(index: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of each distinct value in ``index``.

    Distributed samplers pad the last batch with repeated samples so every rank gets the
    same count; metrics drop those repeats by dataset index with this.

    Args:
        index: ``[N]`` integer sample indices.

    Returns:
        ``[M]`` int64 positions into ``index``, ascending.

    Example:
        >>> first_occurrence(torch.tensor([5, 3, 5, 7, 3])).tolist()
        [0, 1, 3]
    """
    if index.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=index.device)
    order = torch.sort(index, stable=True).indices
    sorted_index = index[order]
    is_first = torch.ones_like(sorted_index, dtype=torch.bool)
    is_first[1:] = sorted_index[1:] != sorted_index[:-1]
    return torch.sort(order[is_first]).values
