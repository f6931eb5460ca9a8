"""CWCL, contrastive alignment to a frozen modality, as a module exact under DDP."""

from __future__ import annotations

import torch

from lightning_plugins.functional._checks import check_bool, check_choice
from lightning_plugins.functional.cwcl_loss import cwcl_loss
from lightning_plugins.losses._global_batch import GlobalBatch
from lightning_plugins.losses.contrastive_loss import ContrastiveLoss

__all__ = ["CWCLLoss"]

_MODALITIES = ("text", "image")


class CWCLLoss(ContrastiveLoss):
    """Continuously weighted contrastive loss (Srinivasa et al., NeurIPS 2023).

    For training one tower against a frozen, pretrained one (LiT-style): similarities
    within the frozen modality, ``(cos + 1) / 2``, become soft targets, so pairs that the
    frozen tower finds alike count as partial positives instead of negatives. See
    :func:`~lightning_plugins.functional.cwcl_loss.cwcl_loss` for the formula.

    Call signature as open_clip's ``ClipLoss``: L2-normalised features and
    ``logit_scale`` already exponentiated. Under ``torch.distributed`` the features of
    all ranks are gathered with gradient and each rank computes the loss of its own rows
    against the whole batch (weights included); after DDP averages gradients this equals
    the loss over the concatenated batch, also when ranks hold batches of different sizes
    (the last step of an epoch).

    The weights are only meaningful if the ``frozen`` tower really is frozen: lock it
    (``lock_text=True`` or ``lock_image=True`` in
    :class:`~lightning_plugins.modules.ContrastiveImageText`), projection included.

    ``logit_bias`` is accepted for a uniform signature and ignored: a constant shift does
    not change a softmax.

    Args:
        frozen: the pretrained, frozen modality, ``"text"`` or ``"image"``.
        symmetric_soft: use the soft targets in the trained-to-frozen direction too
            (default: standard InfoNCE there, as in the reimplementations we found).
        normalized: the features must be L2-normalised; checked on the first call.

    Raises:
        ValueError: at construction, for an unknown ``frozen``; at call time, for
            features of unequal shape, unnormalised features (first call), a global
            batch of fewer than two pairs, an unknown
            ``reduction``, or non-finite inputs.

    Example:
        >>> import torch.nn.functional as F
        >>> loss = CWCLLoss(frozen="text")
        >>> loss
        CWCLLoss(frozen='text', symmetric_soft=False)
        >>> image = F.normalize(torch.tensor([[1.0, 0.1], [0.1, 1.0]]), dim=-1)
        >>> text = F.normalize(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), dim=-1)
        >>> loss(image, text, torch.tensor(10.0), reduction="none").shape
        torch.Size([2])
        >>> CWCLLoss(frozen="audio")
        Traceback (most recent call last):
        ...
        ValueError: `frozen` must be one of ('text', 'image'), got 'audio'.
    """

    def __init__(
        self, frozen: str = "text", symmetric_soft: bool = False, normalized: bool = True
    ) -> None:
        super().__init__(normalized)
        self.frozen = check_choice(frozen, "frozen", _MODALITIES)
        self.symmetric_soft = check_bool(symmetric_soft, "symmetric_soft")

    def global_loss(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float | None,
        batch: GlobalBatch,
        reduction: str,
    ) -> torch.Tensor:
        """Local rows against the global batch, weights from the frozen modality."""
        per_sample = cwcl_loss(
            image_features,
            text_features,
            logit_scale,
            frozen=self.frozen,
            all_image_features=batch.gather(image_features),
            all_text_features=batch.gather(text_features),
            label_offset=batch.offset,
            symmetric_soft=self.symmetric_soft,
            reduction="none",
        )
        return batch.reduce(per_sample, reduction)

    def extra_repr(self) -> str:
        """The constructor arguments, for ``repr``."""
        return f"frozen={self.frozen!r}, symmetric_soft={self.symmetric_soft}"
