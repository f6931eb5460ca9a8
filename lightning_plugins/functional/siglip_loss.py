"""Pairwise sigmoid (SigLIP) loss."""

from __future__ import annotations

import torch

from lightning_plugins.functional._checks import (
    apply_reduction,
    check_feature_pair,
    check_global_features,
    check_reduction,
)
from lightning_plugins.functional.contrastive_rows import sigmoid_row_loss

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

    Example:
        >>> img = torch.eye(3)
        >>> round(siglip_loss(img, img, logit_scale=10.0, logit_bias=-5.0).item(), 4)
        0.0201
    """
    check_reduction(reduction)
    check_feature_pair(image_features, text_features)
    all_texts = text_features if all_text_features is None else all_text_features
    check_global_features(
        image_features,
        label_offset or 0,
        all_text_features=all_texts,
        positives=label_offset is not None,
    )
    per_sample = sigmoid_row_loss(
        image_features, all_texts, logit_scale, logit_bias, label_offset, chunk_size
    )
    return apply_reduction(per_sample, reduction)
