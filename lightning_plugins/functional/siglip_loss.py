"""Pairwise sigmoid (SigLIP) loss."""

from __future__ import annotations

import torch

from lightning_plugins.functional._checks import (
    apply_reduction,
    check_feature_dtypes,
    check_feature_pair,
    check_finite_loss,
    check_global_features,
    check_int,
    check_logit_scalar,
    check_reduction,
    check_scored_rows,
)
from lightning_plugins.functional.contrastive_rows import check_chunk_size, sigmoid_row_loss

__all__ = ["siglip_loss"]


def siglip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float | None = None,
    *,
    all_text_features: torch.Tensor | None = None,
    label_offset: int | None = 0,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Pairwise sigmoid loss, as open_clip's ``SigLipLoss``.

    Every (image, text) pair is an independent binary problem: logit
    ``s * <i, t> + b``, label +1 for the matching pair and -1 otherwise. The per-sample
    loss of image ``i`` is ``-sum_j log sigmoid(label_ij * logit_ij)`` over all texts;
    ``"mean"`` divides the total by the number of local images, as open_clip does.

    Under data parallelism pass the texts gathered from all ranks (with gradient) and
    ``label_offset = rank * local_batch``: each rank scores its local images against the
    global batch of texts, and the mean over ranks equals the loss of the global batch.

    Args:
        image_features: ``[B, D]`` local image embeddings, L2-normalised.
        text_features: ``[B, D]`` local text embeddings, L2-normalised.
        logit_scale: scale, already exponentiated (scalar).
        logit_bias: additive bias (scalar), or ``None`` for no bias.
        all_text_features: ``[N, D]`` texts of the global batch, or ``None``.
        label_offset: position of the local rows inside the global batch, or ``None``
            when ``all_text_features`` holds no positives (another rank's block).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``[B]`` per-image losses).
        chunk_size: score ``chunk_size`` rows at a time in forward and backward (extra
            memory ``O(chunk_size * N)``), or ``None`` for the whole ``[B, N]`` logits.

    Returns:
        The reduced loss, or ``[B]`` per-sample losses for ``reduction="none"``.

    Raises:
        TypeError: features of different or non-floating dtypes, a ``logit_scale`` or
            ``logit_bias`` that is no number or floating tensor or is less precise than the
            features, or a ``label_offset`` / ``chunk_size`` that is no integer.
        ValueError: features of unequal shapes, a ``logit_scale`` or ``logit_bias`` that
            is not a scalar (a 0-d or 1-element tensor) or not finite (the scale also
            positive), fewer than 2 texts scored against when they hold the positives (one
            pair has no negatives), a ``label_offset`` outside the global batch, an unknown
            ``reduction``, or non-finite features (found once the loss came out
            non-finite, naming the input at fault).

    Example:
        >>> img = torch.eye(3)
        >>> round(siglip_loss(img, img, logit_scale=10.0, logit_bias=-5.0).item(), 4)
        0.0201
    """
    check_reduction(reduction)
    check_chunk_size(chunk_size)
    check_feature_pair(image_features, text_features)
    label_offset = check_int(label_offset, "label_offset", optional=True)
    all_texts = text_features if all_text_features is None else all_text_features
    check_global_features(
        image_features,
        label_offset or 0,
        all_text_features=all_texts,
        positives=label_offset is not None,
    )
    features = {
        "image_features": image_features,
        "text_features": text_features,
        "all_text_features": all_text_features,
    }
    check_feature_dtypes(**features)
    logit_scale = check_logit_scalar(logit_scale, "logit_scale", image_features, positive=True)
    if logit_bias is not None:
        logit_bias = check_logit_scalar(logit_bias, "logit_bias", image_features, positive=False)
    # a block of another rank's texts (no positives) may hold a single row
    scored = all_texts.shape[0] if label_offset is not None else max(all_texts.shape[0], 2)
    check_scored_rows(image_features.shape[0], scored, reduction)
    per_sample = sigmoid_row_loss(
        image_features, all_texts, logit_scale, logit_bias, label_offset, chunk_size
    )
    return check_finite_loss(
        apply_reduction(per_sample, reduction), logit_scale, logit_bias, **features
    )
