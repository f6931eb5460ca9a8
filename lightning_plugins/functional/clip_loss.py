"""Symmetric InfoNCE (CLIP) loss."""

from __future__ import annotations

import torch

from lightning_plugins.functional._checks import (
    apply_reduction,
    check_finite_loss,
    check_paired_loss_inputs,
)
from lightning_plugins.functional.contrastive_rows import (
    check_chunk_size,
    softmax_row_loss,
    symmetric_softmax_loss,
)

__all__ = ["clip_loss"]


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    all_image_features: torch.Tensor | None = None,
    all_text_features: torch.Tensor | None = None,
    label_offset: int = 0,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Symmetric image-text cross-entropy, as open_clip's ``ClipLoss``.

    Each local image ``i`` is scored against every text in ``all_text_features`` and must
    pick text ``label_offset + i``; likewise each local text against every image. The
    per-sample loss is the mean of the two cross-entropies.

    With ``all_*`` left ``None`` the local batch is the whole batch. Under data
    parallelism pass the features gathered from all ranks (with gradient) and
    ``label_offset = rank * local_batch``: the "local loss" form, whose mean over ranks
    equals the loss over the global batch.

    Args:
        image_features: ``[B, D]`` local image embeddings, L2-normalised.
        text_features: ``[B, D]`` local text embeddings, L2-normalised; row ``i`` is the
            caption of image ``i``.
        logit_scale: the temperature's inverse, already exponentiated (scalar).
        all_image_features: ``[N, D]`` images of the global batch, or ``None``.
        all_text_features: ``[N, D]`` texts of the global batch, or ``None``.
        label_offset: position of the local rows inside the global batch.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``[B]`` per-sample losses).
        chunk_size: score ``chunk_size`` rows at a time in forward and backward (extra
            memory ``O(chunk_size * N)``), or ``None`` for the whole ``[B, N]`` logits.

    Returns:
        The reduced loss, or ``[B]`` per-sample losses for ``reduction="none"``.

    Raises:
        TypeError: features of different or non-floating dtypes, a ``logit_scale`` that
            is no number or floating tensor or is less precise than the features, or a
            ``label_offset`` / ``chunk_size`` that is no integer.
        ValueError: features of unequal shapes, a ``logit_scale`` that is not a scalar
            (a 0-d or 1-element tensor) or not finite and positive, fewer than 2 pairs in
            the batch scored against (one pair has no negatives), a ``label_offset``
            outside the global batch, an unknown ``reduction``, or non-finite features
            (found once the loss came out non-finite, naming the input at fault).

    Example:
        >>> import torch.nn.functional as F
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> img = F.normalize(torch.randn(4, 8), dim=-1)
        >>> clip_loss(img, img, logit_scale=100.0) < 1e-3  # perfectly aligned pairs
        tensor(True)
        >>> clip_loss(img, img.roll(1, 0), logit_scale=100.0) > 1.0
        tensor(True)
    """
    check_chunk_size(chunk_size)
    label_offset, logit_scale, all_images, all_texts, features = check_paired_loss_inputs(
        image_features,
        text_features,
        logit_scale,
        all_image_features,
        all_text_features,
        label_offset,
        reduction,
    )
    if all_image_features is None and all_text_features is None:
        if chunk_size is None:
            # One batch, one matrix: text->image is the softmax over its columns. Both
            # log-softmaxes run along contiguous memory (a transposed view would not).
            logits = logit_scale * image_features @ text_features.T
            per_sample = (
                -(logits.log_softmax(dim=1).diagonal() + logits.log_softmax(dim=0).diagonal()) / 2
            )
        else:
            per_sample = symmetric_softmax_loss(
                image_features, text_features, logit_scale, chunk_size
            )
    else:
        per_sample = (
            softmax_row_loss(image_features, all_texts, logit_scale, label_offset, chunk_size)
            + softmax_row_loss(text_features, all_images, logit_scale, label_offset, chunk_size)
        ) / 2
    return check_finite_loss(apply_reduction(per_sample, reduction), logit_scale, **features)
