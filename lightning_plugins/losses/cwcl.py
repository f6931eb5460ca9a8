"""CWCL, contrastive alignment to a frozen modality, as a module exact under DDP."""

from __future__ import annotations

import torch
from torch import nn

from lightning_plugins.functional.cwcl_loss import cwcl_loss
from lightning_plugins.losses._global_batch import check_inputs, ensure_finite

__all__ = ["CWCLLoss"]

_MODALITIES = ("text", "image")


class CWCLLoss(nn.Module):
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

    Raises:
        ValueError: at construction, for an unknown ``frozen``; at call time, for
            features of unequal shape, a global batch of fewer than two pairs, an unknown
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

    def __init__(self, frozen: str = "text", symmetric_soft: bool = False) -> None:
        super().__init__()
        if frozen not in _MODALITIES:
            raise ValueError(f"`frozen` must be one of {_MODALITIES}, got {frozen!r}.")
        if not isinstance(symmetric_soft, bool):
            raise TypeError(
                f"`symmetric_soft` must be a bool, got {type(symmetric_soft).__name__}."
            )
        self.frozen = frozen
        self.symmetric_soft = symmetric_soft

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
            reduction: ``"mean"`` (this rank's share of the global mean: DDP's gradient
                averaging completes it), ``"sum"`` or ``"none"`` (``[B]`` local rows).

        Returns:
            The loss, or ``[B]`` per-sample losses for ``reduction="none"``.
        """
        batch = check_inputs(image_features, text_features, reduction)
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
        loss = batch.reduce(per_sample, reduction)
        return ensure_finite(
            loss,
            image_features=image_features,
            text_features=text_features,
            logit_scale=logit_scale,
        )

    def extra_repr(self) -> str:
        """The constructor arguments, for ``repr``."""
        return f"frozen={self.frozen!r}, symmetric_soft={self.symmetric_soft}"
