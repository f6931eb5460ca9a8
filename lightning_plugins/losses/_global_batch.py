"""Global-batch bookkeeping shared by the contrastive loss classes (private)."""

from __future__ import annotations

import torch

from lightning_plugins.distributed import all_gather_with_grad, get_rank, get_world_size
from lightning_plugins.functional._checks import (
    check_feature_pair,
    check_reduction,
    explain_non_finite,
)


def check_inputs(image_features: torch.Tensor, text_features: torch.Tensor, reduction: str) -> None:
    """Check a loss call before any collective, so bad input fails on every rank alike."""
    check_reduction(reduction)
    check_feature_pair(image_features, text_features)
    check_global_batch(image_features, get_world_size())


def ensure_finite(loss: torch.Tensor, **inputs: torch.Tensor | None) -> torch.Tensor:
    """Return ``loss``; if it is non-finite, raise an error naming the input at fault."""
    if not bool(torch.isfinite(loss).all()):
        explain_non_finite("loss", **inputs)
    return loss


def check_global_batch(image_features: torch.Tensor, world_size: int) -> None:
    """Raise ``ValueError`` when the global batch holds fewer than two pairs."""
    if image_features.ndim == 2 and image_features.shape[0] * world_size < 2:
        raise ValueError(
            f"A contrastive loss needs at least 2 image-text pairs in the global batch, got "
            f"batch size {image_features.shape[0]} on {world_size} process(es). "
            "Increase `batch_size`."
        )


def gather_rows(features: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Return the features of the global batch (with gradient) and this rank's offset."""
    world_size = get_world_size()
    if world_size == 1:
        return features, 0
    return all_gather_with_grad(features), get_rank() * features.shape[0]
