"""Bad inputs to the loss modules: a clear error naming the argument, never a silent loss
(issue 11, point 8). The checks are the functional forms' (``functional/_checks.py``).

Spawned DDP workers import this module: keep its imports light.
"""

from __future__ import annotations

import math

import pytest
import torch

from lightning_plugins.losses import ClipLoss, CWCLLoss, SigLipLoss
from tests.contrastive_inputs import paired_features
from tests.helpers import run_ddp

LOSSES = {
    "clip": ClipLoss,
    "clip_chunked": lambda: ClipLoss(chunk_size=2),
    "siglip": SigLipLoss,
    "siglip_chunked": lambda: SigLipLoss(chunk_size=3),
    "cwcl": CWCLLoss,
}
IMG, TXT = paired_features(4)  # float64
IMG32, TXT32 = paired_features(4, dtype=torch.float32)
SCALE, BIAS = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)


def nan_at_end(tensor: torch.Tensor) -> torch.Tensor:
    out = tensor.clone()
    out.view(-1)[-1] = math.nan
    return out


def f64(value) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


# name -> (call arguments, exception, message); the defaults are IMG, TXT, SCALE, BIAS
BAD_CALLS = {
    "scale negative number": (
        {"logit_scale": -1.0},
        ValueError,
        r"`logit_scale` must be a finite number in \(0, inf\), got -1.0",
    ),
    "scale negative tensor": (
        {"logit_scale": f64(-1.0)},
        ValueError,
        r"`logit_scale` must be positive \(the exponentiated scale\), got -1",
    ),
    "scale zero tensor": (
        {"logit_scale": f64(0.0)},
        ValueError,
        r"`logit_scale` must be positive .*got 0",
    ),
    "scale nan tensor": (
        {"logit_scale": f64(math.nan)},
        ValueError,
        r"^`logit_scale` holds non-finite values",
    ),
    "scale inf number": (
        {"logit_scale": math.inf},
        ValueError,
        r"`logit_scale` must be a finite number .*got inf",
    ),
    "scale vector": (
        {"logit_scale": torch.full((4,), 10.0, dtype=torch.float64)},
        ValueError,
        r"`logit_scale` must be a scalar \(a number, or a 0-d or 1-element tensor\), got .* \(4,\)",
    ),
    "scale column": (
        {"logit_scale": torch.full((4, 1), 10.0, dtype=torch.float64)},
        ValueError,
        r"`logit_scale` must be a scalar .*shape \(4, 1\)",
    ),
    "scale integer tensor": (
        {"logit_scale": torch.tensor(10)},
        TypeError,
        r"`logit_scale` must be a number or a floating-point tensor, got .* torch.int64",
    ),
    "scale string": (
        {"logit_scale": "10"},
        TypeError,
        r"`logit_scale` must be a number, got '10' \(str\)",
    ),
    "scale float32 with float64 features": (
        {"logit_scale": torch.tensor(10.0)},
        TypeError,
        r"`logit_scale` of dtype torch.float32 is less precise than the features \(torch.float64\)",
    ),
    "bias vector": (
        {"logit_bias": torch.full((4,), -2.0, dtype=torch.float64)},
        ValueError,
        r"`logit_bias` must be a scalar .*shape \(4,\)",
    ),
    "bias integer tensor": (
        {"logit_bias": torch.tensor(-2)},
        TypeError,
        r"`logit_bias` must be a number or a floating-point tensor",
    ),
    "bias nan number": (
        {"logit_bias": math.nan},
        ValueError,
        r"`logit_bias` must be a finite number .*got nan",
    ),
    "features of two dtypes": (
        {"text_features": TXT32},
        TypeError,
        r"`image_features` and `text_features` must share one dtype, got torch.float64 and ",
    ),
    "integer features": (
        {"image_features": IMG.long(), "text_features": TXT.long()},
        TypeError,
        r"`image_features` must be a floating-point tensor, got dtype torch.int64",
    ),
    "nan image features": (
        {"image_features": nan_at_end(IMG)},
        ValueError,
        r"^`image_features` holds non-finite values",
    ),
    "nan text features": (
        {"text_features": nan_at_end(TXT)},
        ValueError,
        r"^`text_features` holds non-finite values",
    ),
    "one pair": (
        {"image_features": IMG[:1], "text_features": TXT[:1]},
        ValueError,
        r"at least 2 image-text pairs in the global batch, got batch size 1",
    ),
    "unknown reduction": (
        {"reduction": "avg"},
        ValueError,
        r"`reduction` must be one of \('mean', 'sum', 'none'\), got 'avg'",
    ),
    "reduction of another type": (
        {"reduction": 0},
        ValueError,
        r"`reduction` must be one of .*got 0",
    ),
}


@pytest.mark.parametrize("loss_name", list(LOSSES))
@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_loss_modules_reject_bad_calls(loss_name, case):
    overrides, error, match = BAD_CALLS[case]
    arguments = {
        "image_features": IMG,
        "text_features": TXT,
        "logit_scale": SCALE,
        "logit_bias": BIAS,
        **overrides,
    }
    with pytest.raises(error, match=match):
        LOSSES[loss_name]()(**arguments)


@pytest.mark.parametrize("loss_name", list(LOSSES))
def test_scalar_forms_agree(loss_name):
    """A number, a 0-d and a 1-element tensor are the same scale and bias."""
    loss = LOSSES[loss_name]()
    expected = loss(IMG, TXT, SCALE, BIAS)
    for scale, bias in [(10.0, -2.0), (SCALE.reshape(1), BIAS.reshape(1, 1))]:
        torch.testing.assert_close(loss(IMG, TXT, scale, bias), expected)


@pytest.mark.parametrize("loss_name", list(LOSSES))
def test_float32_scale_with_half_features_is_allowed(loss_name):
    """Autocast's case: a float32 parameter scale with bfloat16 features."""
    loss = LOSSES[loss_name]()
    out = loss(IMG32.bfloat16(), TXT32.bfloat16(), torch.tensor(10.0), torch.tensor(-2.0))
    assert torch.isfinite(out)


BAD_CONSTRUCTION = [
    (ClipLoss, {"chunk_size": 0}, ValueError, r"`chunk_size` must be a positive integer, got 0"),
    (ClipLoss, {"chunk_size": 1.5}, TypeError, r"`chunk_size` must be an integer or None, got 1.5"),
    (ClipLoss, {"chunk_size": "4"}, TypeError, r"`chunk_size` must be an integer or None, got '4'"),
    (ClipLoss, {"local_loss": "yes"}, TypeError, r"`local_loss` must be a bool .*got 'yes'"),
    (ClipLoss, {"gather_with_grad": 1}, TypeError, r"`gather_with_grad` must be a bool .*got 1"),
    (ClipLoss, {"normalized": None}, TypeError, r"`normalized` must be a bool .*got None"),
    (
        SigLipLoss,
        {"chunk_size": True},
        TypeError,
        r"`chunk_size` must be an integer or None, got True",
    ),
    (
        SigLipLoss,
        {"dist_impl": "allreduce"},
        ValueError,
        r"`dist_impl` must be one of \('ring', 'gather'\), got 'allreduce'",
    ),
    (SigLipLoss, {"normalized": "false"}, TypeError, r"`normalized` must be a bool .*got 'false'"),
    (
        CWCLLoss,
        {"frozen": "audio"},
        ValueError,
        r"`frozen` must be one of \('text', 'image'\), got 'audio'",
    ),
    (CWCLLoss, {"symmetric_soft": "no"}, TypeError, r"`symmetric_soft` must be a bool .*got 'no'"),
]


@pytest.mark.parametrize(("cls", "kwargs", "error", "match"), BAD_CONSTRUCTION)
def test_loss_modules_reject_bad_arguments(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(**kwargs)


# ---------------------------------------------------------------- DDP


def _one_rank_nan_texts(rank: int, world_size: int) -> dict:
    """Rank 1's texts are NaN: every rank scores them, so every rank must raise."""
    image, text = paired_features(2 * world_size, seed=3)
    rows = slice(2 * rank, 2 * rank + 2)
    local_text = nan_at_end(text[rows]) if rank == 1 else text[rows]
    outcome = {}
    for name in ("clip", "siglip", "cwcl"):
        try:
            outcome[name] = float(LOSSES[name]()(image[rows], local_text, SCALE, BIAS))
        except ValueError as error:
            outcome[name] = str(error)
    return outcome


def _one_row_per_rank(rank: int, world_size: int) -> dict:
    """One local pair per rank is a global batch of two: a loss, no error."""
    image, text = paired_features(world_size, seed=4)
    rows = slice(rank, rank + 1)
    return {
        name: float(cls()(image[rows], text[rows], SCALE, BIAS)) for name, cls in LOSSES.items()
    }


@pytest.mark.ddp
def test_ddp_non_finite_texts_on_one_rank_raise_on_every_rank():
    for outcome in run_ddp(_one_rank_nan_texts, world_size=2):
        for name, result in outcome.items():
            assert isinstance(result, str), (name, result)
            assert "holds non-finite values" in result or "non-finite although" in result


@pytest.mark.ddp
def test_ddp_one_row_per_rank_is_a_valid_batch():
    outcomes = run_ddp(_one_row_per_rank, world_size=2)
    for outcome in outcomes:
        assert all(math.isfinite(value) for value in outcome.values()), outcome
