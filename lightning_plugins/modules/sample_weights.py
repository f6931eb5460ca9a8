"""Per-sample weights in a batch: the (weighted) mean of per-sample losses over the global batch.

Contract 2 of the design: a callback may put per-sample weights ``weight`` (float ``[B]``)
into a training batch, and every module of ours then reduces its ``per_sample_loss`` to the
weighted mean ``sum(w * l) / sum(w)`` over the global batch instead of the plain mean. The
reduction is written once here; a user's own module calls :func:`sample_reducer` in its
``training_step`` to honour the weights the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from lightning_plugins.distributed import (
    get_world_size,
    global_mean,
    global_sum,
    global_weighted_mean,
)

__all__ = ["reduce_sample_losses", "sample_reducer"]


def sample_reducer(batch: Any, losses: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The reduction of per-sample values ``[B]`` to this rank's share of the global mean.

    Without ``batch["weight"]`` the plain mean over the global batch
    (:func:`~lightning_plugins.distributed.global_mean`), else the weighted mean
    ``sum(w * l) / sum(w)`` (:func:`~lightning_plugins.distributed.global_weighted_mean`).
    Both are exact under DDP, also for local batches of unequal size: after DDP averages
    the gradients over ranks they equal one process on the concatenated batch. The weights
    are checked once here (a float tensor of the losses' shape; finite, non-negative, not
    all zero over the global batch: one all-reduce and one host sync per step). The
    returned function reduces any per-sample values of the batch the same way (the loss
    and its logged terms).

    Args:
        batch: the training batch (a dict; anything else has no weights).
        losses: the per-sample losses ``[B]`` of this rank.

    Returns:
        A function from per-sample values ``[B]`` to a scalar.

    Raises:
        TypeError: for a ``weight`` that is no floating-point tensor.
        ValueError: for a ``weight`` of another shape than ``losses``, or with a negative,
            NaN or infinite entry, or all zero over the global batch.

    Example:
        >>> losses = torch.tensor([1.0, 2.0, 6.0])
        >>> sample_reducer({}, losses)(losses)
        tensor(3.)
        >>> sample_reducer({"weight": torch.tensor([1.0, 3.0, 0.0])}, losses)(losses)
        tensor(1.7500)
    """
    weight = batch.get("weight") if isinstance(batch, Mapping) else None
    if weight is None:
        count = losses.shape[0]  # no host sync on one process
        if get_world_size() > 1:
            count = int(global_sum(torch.tensor(count, device=losses.device)))

        def reduce(values: torch.Tensor) -> torch.Tensor:
            return global_mean(values, count)

        return reduce
    total = global_sum(_checked_weight(weight, losses).sum())
    _check_weight_values(weight, total)

    def reduce_weighted(values: torch.Tensor) -> torch.Tensor:
        return global_weighted_mean(values, weight, total)

    return reduce_weighted


def reduce_sample_losses(batch: Any, losses: torch.Tensor) -> torch.Tensor:
    """``sample_reducer(batch, losses)(losses)``: the training loss from per-sample losses.

    Example:
        >>> reduce_sample_losses({"weight": torch.tensor([1.0, 1.0, 0.0])},
        ...                      torch.tensor([1.0, 2.0, 6.0]))
        tensor(1.5000)
    """
    return sample_reducer(batch, losses)(losses)


def _checked_weight(weight: Any, losses: torch.Tensor) -> torch.Tensor:
    """``batch['weight']`` if it is a float tensor ``[B]`` matching the losses."""
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise TypeError(
            "`train batch['weight']` must be a floating-point tensor [B] of per-sample "
            f"weights, got {getattr(weight, 'dtype', type(weight).__name__)}."
        )
    if weight.shape != losses.shape:
        raise ValueError(
            f"`train batch['weight']` must have shape {tuple(losses.shape)} (one weight per "
            f"sample), got {tuple(weight.shape)}."
        )
    return weight


def _check_weight_values(weight: torch.Tensor, total: torch.Tensor) -> None:
    """Weights non-negative, their global sum positive and finite: one host sync."""
    if not bool(torch.isfinite(total) & (total > 0) & (weight >= 0).all()):
        raise ValueError(
            f"`train batch['weight']` must be finite and non-negative and not all zero; got "
            f"a minimum of {float(weight.min())} and a sum of {float(total)} over the global "
            "batch."
        )
