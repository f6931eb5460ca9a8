"""Global-batch bookkeeping shared by the contrastive loss classes (private)."""

from __future__ import annotations

import torch

from lightning_plugins.distributed import all_gather_with_grad, get_rank, get_world_size


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
