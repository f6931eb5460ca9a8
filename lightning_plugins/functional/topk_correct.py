"""Whether the target is among the top-K scores."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["topk_correct"]


def topk_correct(logits: torch.Tensor, target: torch.Tensor, top_k: Sequence[int]) -> torch.Tensor:
    """For each row, whether ``target`` ranks within the top K scores, for each K.

    Args:
        logits: ``[B, C]`` scores.
        target: ``[B]`` class ids.
        top_k: the K values (each at most ``C``).

    Returns:
        ``[B, len(top_k)]`` bool.

    Example:
        >>> logits = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4]])
        >>> topk_correct(logits, torch.tensor([2, 2]), top_k=(1, 2)).tolist()
        [[False, True], [False, True]]
    """
    if logits.ndim != 2 or target.shape != logits.shape[:1]:
        raise ValueError(
            f"`logits` must be [B, C] and `target` [B], got {tuple(logits.shape)} and "
            f"{tuple(target.shape)}."
        )
    k_max = max(top_k)
    if k_max > logits.shape[1]:
        raise ValueError(f"`top_k` {tuple(top_k)} exceeds the number of classes {logits.shape[1]}.")
    top = logits.topk(k_max, dim=1).indices
    hit_at = (top == target[:, None]).int().cumsum(dim=1).bool()
    return torch.stack([hit_at[:, k - 1] for k in top_k], dim=1)
