"""CLIP's symmetric InfoNCE loss as a module: exact under data parallelism, optionally chunked."""

from __future__ import annotations

import torch

from lightning_plugins.functional import clip_loss
from lightning_plugins.functional._checks import check_bool
from lightning_plugins.functional.contrastive_rows import check_chunk_size
from lightning_plugins.losses._global_batch import GlobalBatch
from lightning_plugins.losses.contrastive_loss import ContrastiveLoss

__all__ = ["ClipLoss"]


class ClipLoss(ContrastiveLoss):
    """Symmetric image-text InfoNCE over the global batch.

    Call signature as open_clip's ``ClipLoss``: L2-normalised features and
    ``logit_scale`` already exponentiated. Under ``torch.distributed`` the features of
    all ranks are gathered and each rank scores its own rows against the whole batch
    (``local_loss=True``) or the whole batch against itself (``local_loss=False``).
    With ``gather_with_grad=True`` (default) gradients flow back to the rank that owns
    each row, and after DDP averages gradients the result is exactly the gradient of the
    loss over the concatenated batch, also when ranks hold batches of different sizes
    (the last step of an epoch). ``gather_with_grad=False`` treats other ranks' rows as
    constants, as open_clip does: cheaper, but the cross-rank terms of the gradient are
    dropped.

    ``chunk_size=k`` scores ``k`` rows at a time in forward and backward (a custom
    autograd function with an exact log-sum-exp per row that recomputes each block in
    backward): extra memory ``O(k * N)`` instead of ``O(N^2)``, same values and
    gradients to float round-off.

    ``logit_bias`` is accepted for a uniform signature and ignored: a constant shift does
    not change a softmax.

    Args:
        local_loss: score local rows against the global batch (else every rank scores
            the whole global batch).
        gather_with_grad: let gradients flow through gathered features to their rank.
        chunk_size: rows per block, or ``None`` to build the logits at once.
        normalized: the features must be L2-normalised; checked on the first call (one
            host sync), after which the check is skipped. ``False`` accepts any features.

    Raises:
        ValueError: ``chunk_size`` below 1 at construction; at call time, features of
            unequal shape, unnormalised features (first call, see ``normalized``), a
            global batch of fewer than two pairs, an unknown
            ``reduction``, or non-finite inputs.

    Example:
        >>> import torch.nn.functional as F
        >>> feats = F.normalize(torch.eye(4), dim=-1)
        >>> ClipLoss()(feats, feats, torch.tensor(100.0)) < 1e-3
        tensor(True)
        >>> chunked = ClipLoss(chunk_size=3)(feats, feats.roll(1, 0), torch.tensor(10.0))
        >>> torch.allclose(chunked, ClipLoss()(feats, feats.roll(1, 0), torch.tensor(10.0)))
        True
    """

    def __init__(
        self,
        local_loss: bool = True,
        gather_with_grad: bool = True,
        chunk_size: int | None = None,
        normalized: bool = True,
    ) -> None:
        super().__init__(normalized)
        check_chunk_size(chunk_size)
        self.local_loss = check_bool(local_loss, "local_loss")
        self.gather_with_grad = check_bool(gather_with_grad, "gather_with_grad")
        self.chunk_size = chunk_size

    def global_loss(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float | None,
        batch: GlobalBatch,
        reduction: str,
    ) -> torch.Tensor:
        """Local rows against the global batch, or the whole batch (``local_loss=False``)."""
        all_images = batch.gather(image_features, self.gather_with_grad)
        all_texts = batch.gather(text_features, self.gather_with_grad)
        if batch.world_size == 1 or not self.local_loss:
            every_row = clip_loss(
                all_images, all_texts, logit_scale, reduction="none", chunk_size=self.chunk_size
            )
            rows = every_row[batch.offset : batch.offset + image_features.shape[0]]
            return every_row.mean() if reduction == "mean" else batch.reduce(rows, reduction)
        per_sample = clip_loss(
            image_features,
            text_features,
            logit_scale,
            all_image_features=all_images,
            all_text_features=all_texts,
            label_offset=batch.offset,
            reduction="none",
            chunk_size=self.chunk_size,
        )
        return batch.reduce(per_sample, reduction)
