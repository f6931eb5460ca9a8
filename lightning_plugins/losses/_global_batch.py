"""Global-batch bookkeeping shared by the contrastive loss classes (private)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_plugins.distributed import (
    all_gather,
    all_gather_with_grad,
    gather_sizes,
    get_rank,
    global_mean,
)
from lightning_plugins.functional._checks import (
    apply_reduction,
    check_feature_dtypes,
    check_feature_pair,
    check_finite_loss,
    check_logit_scalar,
    check_reduction,
)


@dataclass(frozen=True)
class GlobalBatch:
    """Every rank's local batch size and this rank's position among them."""

    sizes: list[int]
    rank: int

    @property
    def offset(self) -> int:
        """Index of this rank's first row in the global batch."""
        return sum(self.sizes[: self.rank])

    @property
    def total(self) -> int:
        """Rows in the global batch."""
        return sum(self.sizes)

    @property
    def world_size(self) -> int:
        """Number of ranks."""
        return len(self.sizes)

    def gather(self, features: torch.Tensor, with_grad: bool = True) -> torch.Tensor:
        """The global batch of ``features``; other ranks' rows keep their graph if ``with_grad``."""
        if self.world_size == 1:
            return features
        gather = all_gather_with_grad if with_grad else all_gather
        return gather(features, self.sizes)

    def reduce(self, per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
        """``mean`` is this rank's share of the global mean (see ``global_mean``)."""
        if reduction == "mean":
            return global_mean(per_sample, self.total)
        return apply_reduction(per_sample, reduction)


def check_inputs(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float | None,
    reduction: str,
) -> tuple[GlobalBatch, torch.Tensor | float, torch.Tensor | float | None]:
    """Check a loss call; return the global batch and the scale and bias as scalars.

    The local checks (shapes, dtypes, the reduction, the scale's and bias's type and shape)
    run before any collective; the batch-size check after the one collective that
    exchanges sizes, so that every rank raises alike. The values of tensor scales and
    biases are checked with the loss, by :func:`ensure_finite`.
    """
    check_reduction(reduction)
    check_feature_pair(image_features, text_features)
    check_feature_dtypes(image_features=image_features, text_features=text_features)
    logit_scale = check_logit_scalar(logit_scale, "logit_scale", image_features, positive=True)
    if logit_bias is not None:
        logit_bias = check_logit_scalar(logit_bias, "logit_bias", image_features, positive=False)
    batch = GlobalBatch(gather_sizes(image_features.shape[0], image_features.device), get_rank())
    if batch.total < 2:
        raise ValueError(
            f"A contrastive loss needs at least 2 image-text pairs in the global batch, got "
            f"batch size {image_features.shape[0]} on {batch.world_size} process(es). "
            "Increase `batch_size`."
        )
    return batch, logit_scale, logit_bias


def ensure_finite(
    loss: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float | None,
    **inputs: torch.Tensor | None,
) -> torch.Tensor:
    """Return ``loss``; raise an error naming the input at fault if it is non-finite.

    One host sync checks the loss and the values of a tensor ``logit_scale`` (finite,
    positive) and ``logit_bias`` (finite) together.
    """
    return check_finite_loss(loss, logit_scale, logit_bias, **inputs)
