"""Continuously weighted contrastive loss (CWCL, Srinivasa et al., NeurIPS 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_plugins.functional._checks import (
    apply_reduction,
    check_bool,
    check_choice,
    check_finite_loss,
    check_paired_loss_inputs,
)
from lightning_plugins.functional.distillation import soft_cross_entropy

__all__ = ["cwcl_loss"]

_MODALITIES = ("text", "image")


def cwcl_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    frozen: str = "text",
    all_image_features: torch.Tensor | None = None,
    all_text_features: torch.Tensor | None = None,
    label_offset: int = 0,
    symmetric_soft: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """CWCL: contrastive alignment to a frozen modality with continuous soft targets.

    Let ``p`` be the embeddings of the ``frozen`` (pretrained) modality and ``q`` those of
    the trained one. The weights ``w_ij = (cos(p_i, p_j) + 1) / 2`` come from the frozen
    modality alone (so ``w_ii = 1`` and similar samples count as partial positives), carry
    no gradient, and each row is normalised to sum to one. Each local frozen sample ``i``
    is scored against every trained sample ``j`` of the global batch::

        loss_i(p -> q) = -sum_j w~_ij log softmax_j(logit_scale * <p_i, q_j>)

    The other direction (each local trained sample against every frozen one) is the
    standard InfoNCE with target ``label_offset + i``, or, with ``symmetric_soft=True``,
    uses the same soft targets. The per-sample loss is the mean of the two directions,
    as in :func:`~lightning_plugins.functional.clip_loss`.

    With ``all_*`` left ``None`` the local batch is the whole batch. Under data
    parallelism pass the features gathered from all ranks (with gradient) and
    ``label_offset = rank * local_batch``: the "local loss" form, whose mean over ranks
    equals the loss over the global batch.

    Args:
        image_features: ``[B, D]`` local image embeddings, L2-normalised.
        text_features: ``[B, D]`` local text embeddings, L2-normalised; row ``i`` is the
            caption of image ``i``.
        logit_scale: the temperature's inverse, already exponentiated (scalar).
        frozen: the pretrained modality whose similarities give the weights, ``"text"``
            or ``"image"``.
        all_image_features: ``[N, D]`` images of the global batch, or ``None``.
        all_text_features: ``[N, D]`` texts of the global batch, or ``None``.
        label_offset: position of the local rows inside the global batch.
        symmetric_soft: use the soft targets in the trained-to-frozen direction too.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``[B]`` per-sample losses).

    Returns:
        The reduced loss, or ``[B]`` per-sample losses for ``reduction="none"``.

    Raises:
        TypeError: features of different or non-floating dtypes, a ``logit_scale`` that
            is no number or floating tensor or is less precise than the features, a
            ``label_offset`` that is no integer or a ``symmetric_soft`` that is no bool.
        ValueError: for an unknown ``frozen`` or ``reduction``, features of unequal
            shapes, a ``logit_scale`` that is not a scalar (a 0-d or 1-element tensor) or
            not finite and positive, fewer than 2 pairs in the batch scored against (one
            pair has no negatives), a ``label_offset`` outside the global batch,
            non-finite frozen features (the weights would be undefined), or other
            non-finite features (found once the loss came out non-finite).

    Example:
        >>> import torch.nn.functional as F
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> image = F.normalize(torch.randn(4, 8), dim=-1)
        >>> text = F.normalize(torch.randn(4, 8), dim=-1)
        >>> cwcl_loss(image, text, 10.0).shape
        torch.Size([])
        >>> cwcl_loss(image, text, 10.0, frozen="image", reduction="none").shape
        torch.Size([4])
    """
    check_choice(frozen, "frozen", _MODALITIES)
    check_bool(symmetric_soft, "symmetric_soft")
    label_offset, logit_scale, all_images, all_texts, features = check_paired_loss_inputs(
        image_features,
        text_features,
        logit_scale,
        all_image_features,
        all_text_features,
        label_offset,
        reduction,
    )
    if frozen == "text":
        local_frozen, local_trained, all_frozen, all_trained = (
            text_features,
            image_features,
            all_texts,
            all_images,
        )
    else:
        local_frozen, local_trained, all_frozen, all_trained = (
            image_features,
            text_features,
            all_images,
            all_texts,
        )
    weights = _soft_targets(local_frozen, all_frozen, frozen)
    frozen_to_trained = soft_cross_entropy(logit_scale * local_frozen @ all_trained.T, weights)
    logits_trained = logit_scale * local_trained @ all_frozen.T
    if symmetric_soft:
        trained_to_frozen = soft_cross_entropy(logits_trained, weights)
    else:
        labels = torch.arange(local_trained.shape[0], device=local_trained.device) + label_offset
        trained_to_frozen = F.cross_entropy(logits_trained, labels, reduction="none")
    per_sample = (frozen_to_trained + trained_to_frozen) / 2
    return check_finite_loss(apply_reduction(per_sample, reduction), logit_scale, **features)


@torch.no_grad()
def _soft_targets(
    local_frozen: torch.Tensor, all_frozen: torch.Tensor, frozen: str
) -> torch.Tensor:
    """Row-normalised ``(cos + 1) / 2`` of local against global frozen rows, no gradient."""
    weights = (F.normalize(local_frozen, dim=-1) @ F.normalize(all_frozen, dim=-1).T + 1) / 2
    if not bool(torch.isfinite(weights).all()):
        name = f"{frozen}_features"
        if bool(torch.isfinite(local_frozen).all()):
            name = f"all_{frozen}_features"
        raise ValueError(
            f"`{name}` holds non-finite values (NaN or inf), so the CWCL weights from the "
            f"frozen modality (`frozen`={frozen!r}) are undefined. Check that tower's outputs."
        )
    return weights / weights.sum(dim=-1, keepdim=True)
