"""``clip_loss`` against open_clip's ``ClipLoss`` and a naive per-sample reference."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from open_clip.loss import ClipLoss as OpenClipLoss

from lightning_plugins.functional import clip_loss
from tests.contrastive_inputs import (
    BAD_FEATURE_SHAPES,
    TOL,
    assert_parts_combine_to_full,
    loss_and_grads,
)
from tests.contrastive_inputs import paired_features as shared_paired_features

# 16-dim features here; the loss-module tests use the shared default of 8
paired_features = partial(shared_paired_features, dim=16)


def naive_clip_per_sample(image: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    """Per-pair loss by the textbook formula, one pair at a time."""
    batch = image.shape[0]
    losses = []
    for i in range(batch):
        sims_i2t = [scale * float(image[i] @ text[j]) for j in range(batch)]
        sims_t2i = [scale * float(text[i] @ image[j]) for j in range(batch)]
        i2t = -math.log(math.exp(sims_i2t[i]) / sum(math.exp(s) for s in sims_i2t))
        t2i = -math.log(math.exp(sims_t2i[i]) / sum(math.exp(s) for s in sims_t2i))
        losses.append((i2t + t2i) / 2)
    return torch.tensor(losses, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch", [2, 3, 8, 33])
@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
def test_matches_open_clip(batch: int, scale: float, dtype: torch.dtype) -> None:
    image, text = paired_features(batch, seed=batch, dtype=dtype)
    logit_scale = torch.tensor(scale, dtype=dtype)
    ours = loss_and_grads(clip_loss, image, text, logit_scale)
    reference = loss_and_grads(OpenClipLoss(), image, text, logit_scale)
    assert ours[0] > 1e-3  # not a degenerate, all-zero case
    for got, expected in zip(ours, reference, strict=True):
        torch.testing.assert_close(got, expected, **TOL[dtype])


@pytest.mark.parametrize("batch", [2, 5, 12])
@pytest.mark.parametrize("scale", [1.0, 10.0, 50.0])
def test_per_sample_matches_naive_reference(batch: int, scale: float) -> None:
    image, text = paired_features(batch, seed=100 + batch)
    expected = naive_clip_per_sample(image, text, scale)
    per_sample = clip_loss(image, text, scale, reduction="none")
    assert per_sample.shape == (batch,)
    torch.testing.assert_close(per_sample, expected, **TOL[torch.float64])
    torch.testing.assert_close(clip_loss(image, text, scale), expected.mean(), **TOL[torch.float64])
    torch.testing.assert_close(
        clip_loss(image, text, scale, reduction="sum"), expected.sum(), **TOL[torch.float64]
    )


def test_per_sample_losses_differ_between_pairs() -> None:
    """Guards the reference: per-sample losses differ between pairs of a random batch."""
    image, text = paired_features(6, seed=3)
    per_sample = clip_loss(image, text, 10.0, reduction="none")
    assert per_sample.max() - per_sample.min() > 1e-3


def test_aligned_pairs_beat_shuffled_pairs() -> None:
    image, _ = paired_features(8, seed=4)
    aligned = clip_loss(image, image, 50.0)
    shuffled = clip_loss(image, image.roll(1, 0), 50.0)
    assert aligned < 0.1 < shuffled


@pytest.mark.parametrize("num_chunks", [2, 4])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_local_loss_form_equals_global_loss(num_chunks: int, reduction: str) -> None:
    """Chunks scored against the whole batch, with offsets, reproduce the full loss."""
    image, text = paired_features(12, seed=5)
    image.requires_grad_()
    text.requires_grad_()
    scale = torch.tensor(20.0, dtype=torch.float64, requires_grad=True)
    full = clip_loss(image, text, scale, reduction=reduction)
    chunk = image.shape[0] // num_chunks
    parts = [
        clip_loss(
            image[k * chunk : (k + 1) * chunk],
            text[k * chunk : (k + 1) * chunk],
            scale,
            all_image_features=image,
            all_text_features=text,
            label_offset=k * chunk,
            reduction=reduction,
        )
        for k in range(num_chunks)
    ]
    assert_parts_combine_to_full(parts, full, reduction, (image, text, scale))


def test_wrong_label_offset_changes_the_loss() -> None:
    """The offset matters: the local form is not trivially equal for any offset."""
    image, text = paired_features(8, seed=6)
    right = clip_loss(
        image[4:], text[4:], 10.0, all_image_features=image, all_text_features=text, label_offset=4
    )
    wrong = clip_loss(
        image[4:], text[4:], 10.0, all_image_features=image, all_text_features=text, label_offset=0
    )
    assert abs(float(right - wrong)) > 0.1


def test_tensor_and_float_scale_agree() -> None:
    image, text = paired_features(4, seed=7)
    torch.testing.assert_close(
        clip_loss(image, text, 7.5), clip_loss(image, text, torch.tensor(7.5, dtype=torch.float64))
    )


@pytest.mark.parametrize(("image_shape", "text_shape", "match"), BAD_FEATURE_SHAPES)
def test_bad_feature_shapes_raise(image_shape, text_shape, match) -> None:
    with pytest.raises(ValueError, match=match):
        clip_loss(torch.randn(image_shape), torch.randn(text_shape), 10.0)


def test_unknown_reduction_raises() -> None:
    image, text = paired_features(4)
    with pytest.raises(ValueError, match=r"`reduction`.*'average'"):
        clip_loss(image, text, 10.0, reduction="average")


@pytest.mark.parametrize("label_offset", [-1, 5, 100])
def test_label_offset_outside_global_batch_raises(label_offset: int) -> None:
    image, text = paired_features(8)
    with pytest.raises(ValueError, match="`label_offset`"):
        clip_loss(
            image[:4],
            text[:4],
            10.0,
            all_image_features=image,
            all_text_features=text,
            label_offset=label_offset,
        )


def test_mismatched_global_features_raise() -> None:
    image, text = paired_features(8)
    with pytest.raises(ValueError, match="same number of rows"):
        clip_loss(image[:4], text[:4], 10.0, all_text_features=text, label_offset=4)
    with pytest.raises(ValueError, match="`all_image_features`"):
        clip_loss(
            image[:4], text[:4], 10.0, all_image_features=image[:, :3], all_text_features=text
        )
