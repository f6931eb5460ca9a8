"""Distillation of image-text logits: soft-target cross-entropy and sigmoid KL, per row."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_plugins.functional._checks import check_choice
from lightning_plugins.functional.contrastive_rows import _block_logits, upcast_half_precision

__all__ = [
    "DISTILLATION_KINDS",
    "distillation_rows",
    "image_text_distillation",
    "sigmoid_kl_rows",
    "soft_cross_entropy",
]

DISTILLATION_KINDS = ("softmax", "sigmoid")


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy to soft targets, ``-sum_j t_ij log softmax_j(logits_i)``.

    Args:
        logits: ``[B, N]`` scores.
        targets: ``[B, N]`` target distributions (rows sum to 1).

    Returns:
        ``[B]`` losses.

    Example:
        >>> logits = torch.tensor([[0.0, 0.0]])
        >>> soft_cross_entropy(logits, torch.tensor([[1.0, 0.0]]))
        tensor([0.6931])
    """
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1)


def sigmoid_kl_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Per-row sum of the Bernoulli KL divergences ``KL(sigmoid(t_ij) || sigmoid(s_ij))``.

    Every entry is an independent binary problem (the SigLIP view of a logit matrix);
    with ``q = sigmoid(t)`` and ``p = sigmoid(s)`` the entry's divergence is
    ``q (log q - log p) + (1 - q) (log (1 - q) - log (1 - p))``, computed with
    ``logsigmoid`` so that large logits stay finite. Zero where the logits agree.

    Args:
        student_logits: ``[B, N]`` logits of the trained model.
        teacher_logits: ``[B, N]`` logits of the teacher (no gradient flows into them).

    Returns:
        ``[B]`` divergences, each summed over its row's ``N`` entries.

    Example:
        >>> s = torch.tensor([[2.0, -3.0]])
        >>> sigmoid_kl_rows(s, s)
        tensor([0.])
    """
    teacher_logits = teacher_logits.detach()
    q = torch.sigmoid(teacher_logits)
    log_q, log_not_q = F.logsigmoid(teacher_logits), F.logsigmoid(-teacher_logits)
    log_p, log_not_p = F.logsigmoid(student_logits), F.logsigmoid(-student_logits)
    return (q * (log_q - log_p) + (1 - q) * (log_not_q - log_not_p)).sum(dim=-1)


def distillation_rows(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "softmax"
) -> torch.Tensor:
    """Per-row distillation loss of student logits towards a teacher's.

    ``"softmax"``: cross-entropy from the teacher's softmax over the row to the student's
    (open_clip's ``DistillClipLoss``); it differs from the KL divergence by the teacher's
    entropy, a constant of the student. ``"sigmoid"``: :func:`sigmoid_kl_rows`, for models
    trained with a pairwise sigmoid loss (SigLIP).

    Args:
        student_logits: ``[B, N]`` logits of the trained model.
        teacher_logits: ``[B, N]`` logits of the teacher (treated as constants).
        kind: ``"softmax"`` or ``"sigmoid"``.

    Returns:
        ``[B]`` losses.

    Raises:
        ValueError: for another ``kind`` or logits of unequal shapes.

    Example:
        >>> teacher = torch.tensor([[4.0, 0.0, 0.0]])
        >>> student = torch.zeros(1, 3, requires_grad=True)
        >>> loss = distillation_rows(student, teacher)
        >>> loss.backward()
        >>> student.grad  # softmax(student) - softmax(teacher)
        tensor([[-0.6313,  0.3157,  0.3157]])
    """
    check_choice(kind, "kind", DISTILLATION_KINDS)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"`student_logits` {tuple(student_logits.shape)} and `teacher_logits` "
            f"{tuple(teacher_logits.shape)} must have the same shape."
        )
    student_logits, teacher_logits = (
        upcast_half_precision(student_logits),
        upcast_half_precision(teacher_logits),
    )
    if kind == "sigmoid":
        return sigmoid_kl_rows(student_logits, teacher_logits)
    targets = torch.softmax(teacher_logits.detach(), dim=-1)
    return soft_cross_entropy(student_logits, targets)


def image_text_distillation(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    teacher_image_features: torch.Tensor,
    teacher_text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    teacher_logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float | None = None,
    teacher_logit_bias: torch.Tensor | float | None = None,
    *,
    kind: str = "softmax",
    all_image_features: torch.Tensor | None = None,
    all_text_features: torch.Tensor | None = None,
    all_teacher_image_features: torch.Tensor | None = None,
    all_teacher_text_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample distillation of a student's image-text logits towards a teacher's.

    Each model scores its local rows against the global batch with its own scale (and
    bias): ``logits = scale * local @ global.T (+ bias)``. ``"softmax"``: the mean of the
    image-to-text and the text-to-image soft-target cross-entropies (open_clip's
    ``DistillClipLoss``, whose mean over the global batch this per-sample loss averages
    to). ``"sigmoid"``: the image row's summed Bernoulli KL divergence, normalised like
    the SigLIP loss (its mean over images is the total over pairs divided by the batch).

    Under data parallelism pass the features of the global batch as ``all_*``: the
    student's gathered with gradient, the teacher's without. ``None`` uses the local ones.

    Args:
        image_features: ``[B, D]`` local image embeddings of the student.
        text_features: ``[B, D]`` local text embeddings of the student.
        teacher_image_features: ``[B, D']`` local image embeddings of the teacher.
        teacher_text_features: ``[B, D']`` local text embeddings of the teacher.
        logit_scale: the student's exponentiated logit scale.
        teacher_logit_scale: the teacher's exponentiated logit scale.
        logit_bias: the student's logit bias (``"sigmoid"`` only), or ``None``.
        teacher_logit_bias: the teacher's logit bias (``"sigmoid"`` only), or ``None``.
        kind: ``"softmax"`` or ``"sigmoid"``.
        all_image_features: ``[N, D]`` student images of the global batch.
        all_text_features: ``[N, D]`` student texts of the global batch.
        all_teacher_image_features: ``[N, D']`` teacher images of the global batch.
        all_teacher_text_features: ``[N, D']`` teacher texts of the global batch.

    Returns:
        ``[B]`` per-sample losses.

    Example:
        >>> feats = torch.eye(3)
        >>> # student = teacher: the loss is at its minimum, the teacher's entropy
        >>> image_text_distillation(feats, feats, feats, feats, 10.0, 10.0)
        tensor([0.0010, 0.0010, 0.0010])
    """
    check_choice(kind, "kind", DISTILLATION_KINDS)

    def _or(value: torch.Tensor | None, default: torch.Tensor) -> torch.Tensor:
        return default if value is None else value

    sigmoid = kind == "sigmoid"  # a softmax ignores a constant shift: no bias
    bias, teacher_bias = (logit_bias, teacher_logit_bias) if sigmoid else (None, None)
    all_texts = _or(all_text_features, text_features)
    all_teacher_texts = _or(all_teacher_text_features, teacher_text_features).detach()
    student = _block_logits(image_features, all_texts, logit_scale, bias)
    teacher = _block_logits(
        teacher_image_features.detach(), all_teacher_texts, teacher_logit_scale, teacher_bias
    )
    if sigmoid:
        return distillation_rows(student, teacher, "sigmoid")
    all_images = _or(all_image_features, image_features)
    all_teacher_images = _or(all_teacher_image_features, teacher_image_features).detach()
    student_t2i = _block_logits(text_features, all_images, logit_scale)
    teacher_t2i = _block_logits(
        teacher_text_features.detach(), all_teacher_images, teacher_logit_scale
    )
    image_rows = distillation_rows(student, teacher, "softmax")
    return (image_rows + distillation_rows(student_t2i, teacher_t2i, "softmax")) / 2
