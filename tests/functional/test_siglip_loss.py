"""``siglip_loss`` against open_clip's ``SigLipLoss`` and a naive per-sample reference."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from open_clip.loss import SigLipLoss as OpenSigLipLoss

from lightning_plugins.functional import siglip_loss
from tests.contrastive_inputs import (
    BAD_FEATURE_SHAPES,
    TOL,
    assert_parts_combine_to_full,
    loss_and_grads,
)
from tests.contrastive_inputs import paired_features as shared_paired_features

# 16-dim features here; the loss-module tests use the shared default of 8
paired_features = partial(shared_paired_features, dim=16)


def naive_siglip_per_sample(
    image: torch.Tensor, text: torch.Tensor, scale: float, bias: float
) -> torch.Tensor:
    """Per-image loss by the textbook formula: a binary log-loss for every pair."""
    batch = image.shape[0]
    losses = []
    for i in range(batch):
        total = 0.0
        for j in range(batch):
            label = 1.0 if i == j else -1.0
            logit = scale * float(image[i] @ text[j]) + bias
            total += math.log1p(math.exp(-label * logit))  # -log sigmoid(label * logit)
        losses.append(total)
    return torch.tensor(losses, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch", [2, 3, 8, 33])
@pytest.mark.parametrize(("scale", "bias"), [(1.0, 0.0), (10.0, -10.0), (25.0, 3.0), (100.0, -4.0)])
def test_matches_open_clip(batch: int, scale: float, bias: float, dtype: torch.dtype) -> None:
    image, text = paired_features(batch, seed=batch, dtype=dtype)
    logit_scale = torch.tensor(scale, dtype=dtype)
    logit_bias = torch.tensor(bias, dtype=dtype)
    ours = loss_and_grads(siglip_loss, image, text, logit_scale, logit_bias)
    reference = loss_and_grads(OpenSigLipLoss(), image, text, logit_scale, logit_bias)
    assert ours[0] > 1e-3  # not a degenerate, all-zero case
    for got, expected in zip(ours, reference, strict=True):
        torch.testing.assert_close(got, expected, **TOL[dtype])


@pytest.mark.parametrize("batch", [2, 7])
def test_no_bias_matches_open_clip(batch: int) -> None:
    image, text = paired_features(batch, seed=10 + batch)
    image.requires_grad_()
    scale = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    ours = siglip_loss(image, text, scale)
    reference = OpenSigLipLoss()(image, text, scale, None)
    torch.testing.assert_close(ours, reference, **TOL[torch.float64])
    ours_grads = torch.autograd.grad(ours, (image, scale))
    reference_grads = torch.autograd.grad(reference, (image, scale))
    for got, expected in zip(ours_grads, reference_grads, strict=True):
        torch.testing.assert_close(got, expected, **TOL[torch.float64])


@pytest.mark.parametrize("batch", [2, 5, 12])
@pytest.mark.parametrize(("scale", "bias"), [(1.0, 0.0), (10.0, -10.0), (50.0, 2.0)])
def test_per_sample_matches_naive_reference(batch: int, scale: float, bias: float) -> None:
    image, text = paired_features(batch, seed=100 + batch)
    expected = naive_siglip_per_sample(image, text, scale, bias)
    per_sample = siglip_loss(image, text, scale, bias, reduction="none")
    assert per_sample.shape == (batch,)
    torch.testing.assert_close(per_sample, expected, **TOL[torch.float64])
    torch.testing.assert_close(
        siglip_loss(image, text, scale, bias), expected.mean(), **TOL[torch.float64]
    )
    torch.testing.assert_close(
        siglip_loss(image, text, scale, bias, reduction="sum"), expected.sum(), **TOL[torch.float64]
    )


def test_no_bias_equals_zero_bias() -> None:
    image, text = paired_features(5, seed=2)
    torch.testing.assert_close(siglip_loss(image, text, 10.0), siglip_loss(image, text, 10.0, 0.0))
    assert abs(float(siglip_loss(image, text, 10.0, -3.0) - siglip_loss(image, text, 10.0))) > 0.1


@pytest.mark.parametrize("num_chunks", [2, 4])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_local_loss_form_equals_global_loss(num_chunks: int, reduction: str) -> None:
    """Local images scored against all texts, with offsets, reproduce the full loss."""
    image, text = paired_features(12, seed=5)
    image.requires_grad_()
    text.requires_grad_()
    scale = torch.tensor(20.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-5.0, dtype=torch.float64, requires_grad=True)
    full = siglip_loss(image, text, scale, bias, reduction=reduction)
    chunk = image.shape[0] // num_chunks
    parts = [
        siglip_loss(
            image[k * chunk : (k + 1) * chunk],
            text[k * chunk : (k + 1) * chunk],
            scale,
            bias,
            all_text_features=text,
            label_offset=k * chunk,
            reduction=reduction,
        )
        for k in range(num_chunks)
    ]
    assert_parts_combine_to_full(parts, full, reduction, (image, text, scale, bias))


def test_wrong_label_offset_changes_the_loss() -> None:
    image, text = paired_features(8, seed=6)
    right = siglip_loss(image[4:], text[4:], 10.0, -5.0, all_text_features=text, label_offset=4)
    wrong = siglip_loss(image[4:], text[4:], 10.0, -5.0, all_text_features=text, label_offset=0)
    assert abs(float(right - wrong)) > 0.1


@pytest.mark.parametrize(("image_shape", "text_shape", "match"), BAD_FEATURE_SHAPES)
def test_bad_feature_shapes_raise(image_shape, text_shape, match) -> None:
    with pytest.raises(ValueError, match=match):
        siglip_loss(torch.randn(image_shape), torch.randn(text_shape), 10.0, -10.0)


def test_unknown_reduction_raises() -> None:
    image, text = paired_features(4)
    with pytest.raises(ValueError, match=r"`reduction`.*'avg'"):
        siglip_loss(image, text, 10.0, -10.0, reduction="avg")


@pytest.mark.parametrize("label_offset", [-1, 5, 100])
def test_label_offset_outside_global_batch_raises(label_offset: int) -> None:
    image, text = paired_features(8)
    with pytest.raises(ValueError, match="`label_offset`"):
        siglip_loss(
            image[:4], text[:4], 10.0, -10.0, all_text_features=text, label_offset=label_offset
        )


def test_global_text_features_of_other_width_raise() -> None:
    image, text = paired_features(8)
    with pytest.raises(ValueError, match="`all_text_features`"):
        siglip_loss(image[:4], text[:4], 10.0, all_text_features=text[:, :5])
