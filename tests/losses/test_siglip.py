"""``SigLipLoss`` against open_clip, in a single process and under 2-process gloo DDP.

Spawned DDP workers import ``tests.contrastive_inputs``: keep this module's imports light
(open_clip is imported lazily by the ``open_clip_loss`` fixture, in the main process only).
"""

from __future__ import annotations

import pytest
import torch

from lightning_plugins.functional import siglip_loss
from lightning_plugins.losses import SigLipLoss
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
    scalars,
)
from tests.helpers import run_ddp

SCALE, BIAS = 10.0, -5.0


@pytest.fixture(scope="module")
def open_clip_loss():
    from open_clip.loss import SigLipLoss as OpenSigLipLoss

    return OpenSigLipLoss()


# ---------------------------------------------------------------- single process


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch", [2, 5, 16])
@pytest.mark.parametrize(("scale", "bias"), [(1.0, 0.0), (10.0, -10.0), (100.0, 2.0)])
def test_matches_open_clip(open_clip_loss, batch, scale, bias, dtype) -> None:
    image, text = paired_features(batch, seed=batch, dtype=dtype)
    logit_scale, logit_bias = scalars(scale, bias, dtype=dtype)
    expected = named_loss_and_grads(open_clip_loss, image, text, logit_scale, logit_bias)
    got = named_loss_and_grads(SigLipLoss(), image, text, logit_scale, logit_bias)
    assert "bias_grad" in expected
    assert_results_close(got, expected, TOL64 if dtype == torch.float64 else TOL32)


def test_without_bias_matches_open_clip(open_clip_loss) -> None:
    image, text = paired_features(6, seed=1)
    scale = torch.tensor(SCALE, dtype=torch.float64)
    expected = open_clip_loss(image, text, scale, None)
    torch.testing.assert_close(SigLipLoss()(image, text, scale), expected, **TOL64)


def test_reductions_agree_with_functional() -> None:
    image, text = paired_features(7, seed=2)
    scale, bias = scalars(SCALE, BIAS)
    per_sample = SigLipLoss()(image, text, scale, bias, reduction="none")
    assert per_sample.shape == (7,)
    torch.testing.assert_close(per_sample, siglip_loss(image, text, scale, bias, reduction="none"))
    torch.testing.assert_close(SigLipLoss()(image, text, scale, bias), per_sample.mean(), **TOL64)
    torch.testing.assert_close(
        SigLipLoss()(image, text, scale, bias, reduction="sum"), per_sample.sum()
    )


@pytest.mark.parametrize(("image", "text", "match"), BAD_FEATURES)
def test_bad_features_raise(image, text, match) -> None:
    with pytest.raises(ValueError, match=match):
        SigLipLoss()(image, text, *scalars(SCALE, BIAS, dtype=torch.float32))


def test_unknown_reduction_raises() -> None:
    image, text = paired_features(4)
    with pytest.raises(ValueError, match=r"`reduction`.*'mena'"):
        SigLipLoss()(image, text, *scalars(SCALE, BIAS), reduction="mena")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", ["image_features", "text_features", "logit_scale", "logit_bias"])
def test_non_finite_input_is_named(name: str, bad: float) -> None:
    image, text = paired_features(4)
    scale, bias = scalars(SCALE, BIAS)
    inputs = {"image_features": image, "text_features": text, "logit_scale": scale}
    inputs["logit_bias"] = bias
    inputs[name] = inputs[name].clone()
    inputs[name].view(-1)[-1] = bad
    with pytest.raises(ValueError, match=f"^`{name}` holds non-finite values"):
        SigLipLoss()(**inputs)


# ---------------------------------------------------------------- DDP


@pytest.fixture(scope="module")
def ddp_results() -> list[dict]:
    return run_ddp(ddp_worker, SigLipLoss, (SCALE, BIAS), world_size=2)


@pytest.mark.ddp
@pytest.mark.parametrize("batch", DDP_BATCHES)
def test_ddp_loss_and_gradients_equal_single_process(ddp_results, open_clip_loss, batch) -> None:
    image, text = ddp_global_batch(len(ddp_results), batch)
    expected = named_loss_and_grads(open_clip_loss, image, text, *scalars(SCALE, BIAS))
    assert expected.keys() == {"loss", "image_grad", "text_grad", "scale_grad", "bias_grad"}
    assert_ddp_matches_single_process(ddp_results, batch, expected)


@pytest.mark.ddp
@pytest.mark.parametrize("batch", DDP_BATCHES)
def test_ddp_per_sample_losses_are_the_global_ones(ddp_results, batch) -> None:
    image, text = ddp_global_batch(len(ddp_results), batch)
    expected = siglip_loss(image, text, SCALE, BIAS, reduction="none")
    assert_ddp_per_sample(ddp_results, batch, expected)


@pytest.mark.ddp
def test_ddp_tower_parameter_grads_equal_single_process(ddp_results, open_clip_loss) -> None:
    tower, images, texts = make_tower_and_inputs(len(ddp_results), with_bias=True)
    open_clip_loss(*tower(images, texts)).backward()
    assert_tower_grads_match(ddp_results, tower)
