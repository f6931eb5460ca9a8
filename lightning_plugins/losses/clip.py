"""CLIP's symmetric InfoNCE loss as a module, exact under data parallelism."""

from __future__ import annotations

import torch
from torch import nn

from lightning_plugins.functional import clip_loss
from lightning_plugins.losses._global_batch import check_inputs, ensure_finite, gather_rows

__all__ = ["ClipLoss"]


class ClipLoss(nn.Module):
    """Symmetric image-text InfoNCE over the global batch.

    Call signature as open_clip's ``ClipLoss``: L2-normalised features and
    ``logit_scale`` already exponentiated. Under ``torch.distributed`` the features of
    all ranks are gathered with gradient and each rank computes the loss of its own rows
    against the whole batch (open_clip's ``local_loss=True, gather_with_grad=True``);
    after DDP averages gradients this equals the loss over the concatenated batch. All
    ranks must hold batches of equal size.

    ``logit_bias`` is accepted for a uniform signature and ignored: a constant shift does
    not change a softmax.

    Raises:
        ValueError: at call time, for features of unequal shape, a global batch of
            fewer than two pairs, an unknown ``reduction``, or non-finite inputs.

    Example:
        >>> import torch.nn.functional as F
        >>> loss = ClipLoss()
        >>> feats = F.normalize(torch.eye(4), dim=-1)
        >>> loss(feats, feats, torch.tensor(100.0)) < 1e-3
        tensor(True)
        >>> loss(feats, feats, torch.tensor(100.0), reduction="none").shape
        torch.Size([4])
    """

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """Loss of the local rows against the global batch.

        Args:
            image_features: ``[B, D]`` normalised image embeddings of this rank.
            text_features: ``[B, D]`` normalised text embeddings of this rank.
            logit_scale: exponentiated scale (scalar tensor).
            logit_bias: ignored (softmax is shift-invariant).
            reduction: ``"mean"``, ``"sum"`` or ``"none"``.

        Returns:
            The loss, or ``[B]`` per-sample losses for ``reduction="none"``.
        """
        check_inputs(image_features, text_features, reduction)
        all_images, offset = gather_rows(image_features)
        all_texts, _ = gather_rows(text_features)
        loss = clip_loss(
            image_features,
            text_features,
            logit_scale,
            all_image_features=all_images,
            all_text_features=all_texts,
            label_offset=offset,
            reduction=reduction,
        )
        return ensure_finite(
            loss,
            image_features=image_features,
            text_features=text_features,
            logit_scale=logit_scale,
        )
