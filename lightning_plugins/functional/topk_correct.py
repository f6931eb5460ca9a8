"""Whether the target is among the top-K scores."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_plugins.functional._checks import check_top_k

__all__ = ["topk_correct"]


def topk_correct(logits: torch.Tensor, target: torch.Tensor, top_k: Sequence[int]) -> torch.Tensor:
    """For each row, whether ``target`` ranks within the top K scores, for each K.

    A row whose scores hold NaN or an infinity has no defined ranking: it is never
    counted as a hit (NaN compares false to everything, so a diverged model would
    otherwise look perfect) but gets NaN, so that the mean over rows, the top-K accuracy,
    is NaN whenever one of its rows is non-finite.

    Args:
        logits: ``[B, C]`` scores.
        target: ``[B]`` class ids in ``[0, C)``.
        top_k: the K values (each at most ``C``).

    Returns:
        ``[B, len(top_k)]`` float: 1.0 where the target ranks within the top K, 0.0 where
        not, NaN across a row with a non-finite score.

    Raises:
        TypeError: for ``logits`` or ``target`` that are no tensors, a ``target`` that is
            no integer tensor, or a ``top_k`` that is no sequence of integers.
        ValueError: for shapes other than ``[B, C]`` and ``[B]``, a K below 1 or above
            ``C``, or a ``target`` outside ``[0, C)``.

    Example:
        >>> logits = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4], [0.3, float("nan"), 0.1]])
        >>> topk_correct(logits, torch.tensor([2, 2, 0]), top_k=(1, 2))
        tensor([[0., 1.],
                [0., 1.],
                [nan, nan]])
    """
    for name, value in (("logits", logits), ("target", target)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"`{name}` must be a tensor, got {type(value).__name__}.")
    if logits.ndim != 2 or target.shape != logits.shape[:1]:
        raise ValueError(
            f"`logits` must be [B, C] and `target` [B], got {tuple(logits.shape)} and "
            f"{tuple(target.shape)}."
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"`target` must hold integer class ids, got dtype {target.dtype}.")
    top_k = check_top_k(top_k)
    num_classes = logits.shape[1]
    k_max = max(top_k)
    if k_max > num_classes:
        raise ValueError(f"`top_k` {top_k} exceeds the number of classes {num_classes}.")
    outside = (target < 0) | (target >= num_classes)
    if bool(outside.any()):
        raise ValueError(
            f"`target` must hold class ids in [0, {num_classes}) (one column of `logits` "
            f"per class), got {int(target[outside][0])}."
        )
    top = logits.topk(k_max, dim=1).indices
    hit_at = (top == target[:, None]).cumsum(dim=1) > 0
    hits = hit_at[:, [k - 1 for k in top_k]].to(torch.float32)
    finite = torch.isfinite(logits).all(dim=1, keepdim=True)
    return hits.masked_fill_(~finite, float("nan"))
