"""Distillation losses against open_clip's DistillClipLoss and torch's Bernoulli KL."""

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import DistillClipLoss
from torch.distributions import Bernoulli, kl_divergence

from lightning_plugins.functional import (
    distillation_rows,
    image_text_distillation,
    sigmoid_kl_rows,
    soft_cross_entropy,
)


def features(n: int, dim: int, seed: int, duplicate: bool = False) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    if duplicate:
        x[1] = x[0]
    return F.normalize(x, dim=-1)


def student_and_teacher(n: int, seed: int, scale: float, duplicate: bool = False) -> dict:
    return {
        "image": features(n, 8, seed, duplicate).requires_grad_(),
        "text": features(n, 8, seed + 1, duplicate).requires_grad_(),
        "teacher_image": features(n, 5, seed + 2, duplicate),
        "teacher_text": features(n, 5, seed + 3, duplicate),
        "scale": torch.tensor(scale, dtype=torch.float64, requires_grad=True),
        "teacher_scale": torch.tensor(scale / 2, dtype=torch.float64),
    }


@pytest.mark.parametrize(
    ("n", "scale", "duplicate"), [(7, 10.0, False), (5, 100.0, True), (2, 1.0, False)]
)
def test_softmax_equals_open_clip_distill_clip_loss(n, scale, duplicate):
    ours = student_and_teacher(n, seed=n, scale=scale, duplicate=duplicate)
    ref = {k: v.detach().clone().requires_grad_(v.requires_grad) for k, v in ours.items()}
    loss = image_text_distillation(
        ours["image"],
        ours["text"],
        ours["teacher_image"],
        ours["teacher_text"],
        ours["scale"],
        ours["teacher_scale"],
    ).mean()
    _, expected = DistillClipLoss()(
        ref["image"],
        ref["text"],
        ref["scale"],
        ref["teacher_image"],
        ref["teacher_text"],
        ref["teacher_scale"],
    )
    loss.backward()
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    for key in ("image", "text", "scale"):
        torch.testing.assert_close(ours[key].grad, ref[key].grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("bias", [None, -10.0])
def test_sigmoid_is_the_row_sum_of_bernoulli_kl(bias):
    # torch's Bernoulli KL overflows beyond |logit| ~ 35; huge logits are tested below
    inputs = student_and_teacher(6, seed=3, scale=20.0)
    rows = image_text_distillation(
        inputs["image"],
        inputs["text"],
        inputs["teacher_image"],
        inputs["teacher_text"],
        inputs["scale"],
        inputs["teacher_scale"],
        bias,
        None if bias is None else bias / 2,
        kind="sigmoid",
    )
    student = inputs["scale"] * inputs["image"] @ inputs["text"].T + (bias or 0.0)
    teacher = inputs["teacher_scale"] * inputs["teacher_image"] @ inputs["teacher_text"].T
    teacher = teacher + (0.0 if bias is None else bias / 2)
    expected = kl_divergence(Bernoulli(logits=teacher), Bernoulli(logits=student)).sum(1)
    torch.testing.assert_close(rows, expected, rtol=1e-7, atol=1e-9)
    (grad,) = torch.autograd.grad(rows.sum(), inputs["scale"])
    (expected_grad,) = torch.autograd.grad(expected.sum(), inputs["scale"])
    torch.testing.assert_close(grad, expected_grad, rtol=1e-7, atol=1e-9)


def test_sigmoid_kl_stays_finite_for_huge_logits():
    student = torch.tensor([[200.0, -200.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[-200.0, 200.0, 0.0]])
    rows = sigmoid_kl_rows(student, teacher)
    rows.sum().backward()
    assert torch.isfinite(rows).all() and torch.isfinite(student.grad).all()
    torch.testing.assert_close(rows, torch.tensor([400.0]), rtol=1e-6, atol=1e-3)


def test_gathered_features_equal_the_concatenated_batch():
    """A rank's rows scored against ``all_*`` equal those rows of the one-process loss."""
    full = student_and_teacher(6, seed=11, scale=20.0)
    whole = image_text_distillation(
        full["image"],
        full["text"],
        full["teacher_image"],
        full["teacher_text"],
        full["scale"],
        full["teacher_scale"],
    )
    part = image_text_distillation(
        full["image"][2:5],
        full["text"][2:5],
        full["teacher_image"][2:5],
        full["teacher_text"][2:5],
        full["scale"],
        full["teacher_scale"],
        all_image_features=full["image"],
        all_text_features=full["text"],
        all_teacher_image_features=full["teacher_image"],
        all_teacher_text_features=full["teacher_text"],
    )
    torch.testing.assert_close(part, whole[2:5])


def test_teacher_gets_no_gradient_and_student_equal_to_teacher_is_stationary():
    logits = torch.randn(4, 4, dtype=torch.float64)
    for kind in ("softmax", "sigmoid"):
        student = logits.clone().requires_grad_()
        teacher = logits.clone().requires_grad_()
        distillation_rows(student, teacher, kind).sum().backward()
        assert teacher.grad is None
        torch.testing.assert_close(student.grad, torch.zeros_like(logits), atol=1e-12, rtol=0)


def test_half_precision_logits_are_scored_in_float32():
    student = torch.randn(3, 5).bfloat16()
    assert distillation_rows(student, student.clone()).dtype == torch.float32


def test_soft_cross_entropy_with_one_hot_targets_is_cross_entropy():
    logits = torch.randn(4, 6)
    labels = torch.tensor([0, 5, 2, 2])
    expected = F.cross_entropy(logits, labels, reduction="none")
    torch.testing.assert_close(soft_cross_entropy(logits, F.one_hot(labels, 6).float()), expected)


def test_bad_input():
    with pytest.raises(ValueError, match="`kind` must be one of"):
        distillation_rows(torch.zeros(2, 2), torch.zeros(2, 2), "kl")
    with pytest.raises(ValueError, match="same shape"):
        distillation_rows(torch.zeros(2, 2), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="`kind` must be one of"):
        image_text_distillation(*[torch.eye(2)] * 4, 1.0, 1.0, kind="softmax2")
