"""``ClipLoss`` against open_clip, in a single process and under 2-process gloo DDP.

Spawned DDP workers import ``tests.contrastive_inputs``: keep this module's imports light
(open_clip is imported lazily by the ``open_clip_loss`` fixture, in the main process only).
"""

from __future__ import annotations

import pytest
import torch

from lightning_plugins.functional import clip_loss
from lightning_plugins.losses import ClipLoss
from tests.contrastive_inputs import (
    BAD_FEATURES,
    DDP_BATCHES,
    TOL32,
    TOL64,
    assert_ddp_matches_single_process,
    assert_ddp_per_sample,
    assert_results_close,
    assert_tower_grads_match,
    ddp_global_batch,
    ddp_worker,
    make_tower_and_inputs,
    named_loss_and_grads,
    paired_features,
)
from tests.helpers import run_ddp

SCALE = 20.0


@pytest.fixture(scope="module")
def open_clip_loss():
    from open_clip.loss import ClipLoss as OpenClipLoss

    return OpenClipLoss()


# ---------------------------------------------------------------- single process


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch", [2, 5, 16])
@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
def test_matches_open_clip(open_clip_loss, batch: int, scale: float, dtype: torch.dtype) -> None:
    image, text = paired_features(batch, seed=batch, dtype=dtype)
    logit_scale = torch.tensor(scale, dtype=dtype)
    expected = named_loss_and_grads(open_clip_loss, image, text, logit_scale)
    got = named_loss_and_grads(ClipLoss(), image, text, logit_scale)
    assert_results_close(got, expected, TOL64 if dtype == torch.float64 else TOL32)


def test_logit_bias_is_ignored_like_a_softmax_shift(open_clip_loss) -> None:
    """open_clip adds the bias to every logit; a softmax does not see it."""
    image, text = paired_features(6, seed=1)
    scale, bias = torch.tensor(SCALE, dtype=torch.float64), torch.tensor(-7.0, dtype=torch.float64)
    expected = open_clip_loss(image, text, scale, bias)
    torch.testing.assert_close(ClipLoss()(image, text, scale, bias), expected, **TOL64)
    torch.testing.assert_close(ClipLoss()(image, text, scale), expected, **TOL64)


def test_reductions_agree_with_functional() -> None:
    image, text = paired_features(7, seed=2)
    scale = torch.tensor(SCALE, dtype=torch.float64)
    per_sample = ClipLoss()(image, text, scale, reduction="none")
    assert per_sample.shape == (7,)
    torch.testing.assert_close(per_sample, clip_loss(image, text, scale, reduction="none"))
    torch.testing.assert_close(ClipLoss()(image, text, scale), per_sample.mean(), **TOL64)
    torch.testing.assert_close(ClipLoss()(image, text, scale, reduction="sum"), per_sample.sum())


@pytest.mark.parametrize(("image", "text", "match"), BAD_FEATURES)
def test_bad_features_raise(image, text, match) -> None:
    with pytest.raises(ValueError, match=match):
        ClipLoss()(image, text, torch.tensor(SCALE))


def test_unknown_reduction_raises() -> None:
    image, text = paired_features(4)
    with pytest.raises(ValueError, match=r"`reduction`.*'mena'"):
        ClipLoss()(image, text, torch.tensor(SCALE), reduction="mena")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", ["image_features", "text_features", "logit_scale"])
def test_non_finite_input_is_named(name: str, bad: float) -> None:
    image, text = paired_features(4)
    scale = torch.tensor(SCALE, dtype=image.dtype)
    inputs = {"image_features": image, "text_features": text, "logit_scale": scale}
    inputs[name] = inputs[name].clone()
    inputs[name].view(-1)[-1] = bad
    with pytest.raises(ValueError, match=f"^`{name}` holds non-finite values"):
        ClipLoss()(**inputs)


# ---------------------------------------------------------------- DDP


@pytest.fixture(scope="module")
def ddp_results() -> list[dict]:
    return run_ddp(ddp_worker, ClipLoss, (SCALE,), world_size=2)


@pytest.mark.ddp
@pytest.mark.parametrize("batch", DDP_BATCHES)
def test_ddp_loss_and_gradients_equal_single_process(ddp_results, open_clip_loss, batch) -> None:
    image, text = ddp_global_batch(len(ddp_results), batch)
    scale = torch.tensor(SCALE, dtype=torch.float64)
    expected = named_loss_and_grads(open_clip_loss, image, text, scale)
    assert expected.keys() == {"loss", "image_grad", "text_grad", "scale_grad"}
    assert_ddp_matches_single_process(ddp_results, batch, expected)


@pytest.mark.ddp
@pytest.mark.parametrize("batch", DDP_BATCHES)
def test_ddp_per_sample_losses_are_the_global_ones(ddp_results, batch) -> None:
    image, text = ddp_global_batch(len(ddp_results), batch)
    expected = clip_loss(image, text, SCALE, reduction="none")
    assert_ddp_per_sample(ddp_results, batch, expected)


@pytest.mark.ddp
def test_ddp_tower_parameter_grads_equal_single_process(ddp_results, open_clip_loss) -> None:
    tower, images, texts = make_tower_and_inputs(len(ddp_results))
    open_clip_loss(*tower(images, texts)).backward()
    assert_tower_grads_match(ddp_results, tower)
