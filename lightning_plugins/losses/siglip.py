"""SigLIP's pairwise sigmoid loss as a module, exact under data parallelism."""

from __future__ import annotations

import torch
from torch import nn

from lightning_plugins.functional import siglip_loss
from lightning_plugins.losses._global_batch import check_inputs, ensure_finite, gather_rows

__all__ = ["SigLipLoss"]


class SigLipLoss(nn.Module):
    """Pairwise sigmoid loss over the global batch.

    Call signature as open_clip's ``SigLipLoss``. Under ``torch.distributed`` the text
    features of all ranks are gathered with gradient and each rank scores its local
    images against every text; the sum over pairs is divided by the local batch size, as
    in open_clip, so the mean over ranks equals the loss of the concatenated batch. All
    ranks must hold batches of equal size.

    Raises:
        ValueError: at call time, for features of unequal shape, a global batch of
            fewer than two pairs, an unknown ``reduction``, or non-finite inputs.

    Example:
        >>> loss = SigLipLoss()
        >>> feats = torch.eye(3)
        >>> round(loss(feats, feats, torch.tensor(10.0), torch.tensor(-5.0)).item(), 4)
        0.0201
    """

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """Loss of the local images against the global batch of texts.

        Args:
            image_features: ``[B, D]`` normalised image embeddings of this rank.
            text_features: ``[B, D]`` normalised text embeddings of this rank.
            logit_scale: exponentiated scale (scalar tensor).
            logit_bias: additive bias (scalar tensor) or ``None``.
            reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per local image).

        Returns:
            The loss, or ``[B]`` per-sample losses for ``reduction="none"``.
        """
        check_inputs(image_features, text_features, reduction)
        all_texts, offset = gather_rows(text_features)
        loss = siglip_loss(
            image_features,
            text_features,
            logit_scale,
            logit_bias,
            all_text_features=all_texts,
            label_offset=offset,
            reduction=reduction,
        )
        return ensure_finite(
            loss,
            image_features=image_features,
            text_features=text_features,
            logit_scale=logit_scale,
            logit_bias=logit_bias,
        )
