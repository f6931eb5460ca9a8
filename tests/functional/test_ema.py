"""ema_update_ against the per-tensor EMA formula; the schedules against their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_plugins.functional import (
    constant_schedule,
    cosine_schedule,
    ema_update_,
    resolve_schedule,
    warmup_decay_schedule,
)


def tensors(seed):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(5, 3, generator=g),
        torch.randn(7, generator=g, dtype=torch.float64),
        torch.randn(2, 2, generator=g).to(torch.bfloat16),
        torch.randint(0, 100, (4,), generator=g),  # an integer buffer
        torch.rand(3, generator=g) > 0.5,  # a bool buffer
        torch.randn((), generator=g),
    ]


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9, 0.999, 1.0])
def test_matches_per_tensor_formula(decay):
    ema, model = tensors(0), tensors(1)
    expected = []
    for e, m in zip(ema, model, strict=True):
        if e.is_floating_point():
            value = decay * e.double() + (1 - decay) * m.double()
            expected.append(value.to(e.dtype))
        else:
            expected.append(m.clone())  # integer and bool tensors are copied
    ema_update_(ema, model, decay)
    for e, x in zip(ema, expected, strict=True):
        assert e.dtype == x.dtype
        if e.is_floating_point():
            tolerance = 1e-2 if e.dtype == torch.bfloat16 else 1e-6
            torch.testing.assert_close(e.double(), x.double(), rtol=tolerance, atol=tolerance)
        else:
            assert torch.equal(e, x)


def test_equals_per_tensor_lerp_bitwise():
    ema, model = tensors(2), tensors(3)
    expected = [
        torch.lerp(e, m, 1 - 0.99) if e.is_floating_point() else m
        for e, m in zip(ema, model, strict=True)
    ]
    ema_update_(ema, model, 0.99)
    for e, x in zip(ema, expected, strict=True):
        assert torch.equal(e, x)


def test_extreme_decays_are_exact():
    model = tensors(5)
    ema = tensors(4)
    before = [e.clone() for e in ema]
    ema_update_(ema, model, 1.0)
    for e, b, m in zip(ema, before, model, strict=True):
        assert torch.equal(e, b if e.is_floating_point() else m)
    ema_update_(ema, model, 0.0)
    for e, m in zip(ema, model, strict=True):
        assert torch.equal(e, m)


def test_model_dtype_converted_to_ema_dtype():
    ema = [torch.zeros(3, dtype=torch.float64)]
    ema_update_(ema, [torch.tensor([1.0, 2.0, 4.0])], 0.75)
    assert ema[0].dtype == torch.float64
    assert ema[0].tolist() == [0.25, 0.5, 1.0]


def test_no_autograd_and_empty_lists():
    weight = torch.nn.Parameter(torch.ones(3))
    ema = [torch.zeros(3)]
    ema_update_(ema, [weight], 0.5)
    assert not ema[0].requires_grad and ema[0].grad_fn is None
    ema_update_([], [], 0.9)  # nothing to do


@pytest.mark.parametrize(
    ("ema", "model", "decay", "match"),
    [
        ([torch.zeros(2)], [torch.zeros(2)], 1.5, "decay"),
        ([torch.zeros(2)], [torch.zeros(2)], -0.1, "decay"),
        ([torch.zeros(2)], [], 0.5, "equal lengths"),
        ([torch.zeros(2)], [torch.zeros(3)], 0.5, "shape"),
    ],
)
def test_bad_input(ema, model, decay, match):
    with pytest.raises(ValueError, match=match):
        ema_update_(ema, model, decay)


# ------------------------------------------------------------------ schedules
def test_constant_schedule():
    assert [constant_schedule(s, 0.99) for s in (0, 1, 10**6)] == [0.99] * 3


@pytest.mark.parametrize(
    ("decay", "gamma", "power", "min_decay"),
    [(0.9999, 1.0, 2 / 3, 0.0), (0.999, 1.0, 3 / 4, 0.0), (0.99, 10.0, 1.0, 0.5)],
)
def test_warmup_schedule_matches_timm_formula(decay, gamma, power, min_decay):
    for step in (0, 1, 2, 9, 10, 99, 1000, 10**5, 10**7):
        expected = min(decay, max(min_decay, 1 - (1 + step / gamma) ** -power))
        got = warmup_decay_schedule(
            step, decay=decay, gamma=gamma, power=power, min_decay=min_decay
        )
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert warmup_decay_schedule(0, decay=decay, gamma=gamma, power=power) == 0.0


@pytest.mark.parametrize(
    ("max_steps", "start", "end"), [(10, 0.996, 1.0), (2, 0.5, 0.1), (7, 0, 3)]
)
def test_cosine_schedule_matches_formula(max_steps, start, end):
    for step in range(max_steps + 3):
        s = min(step, max_steps - 1)
        expected = end - (end - start) * (math.cos(math.pi * s / (max_steps - 1)) + 1) / 2
        assert cosine_schedule(step, max_steps, start, end) == pytest.approx(expected, abs=1e-12)
    assert cosine_schedule(0, max_steps, start, end) == pytest.approx(start)
    assert cosine_schedule(max_steps - 1, max_steps, start, end) == end


def test_cosine_schedule_of_one_step_is_the_end_value():
    assert cosine_schedule(0, 1, 0.9, 1.0) == 1.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: constant_schedule(-1, 0.5), "step"),
        (lambda: cosine_schedule(0, 0, 0.9, 1.0), "max_steps"),
        (lambda: warmup_decay_schedule(0, gamma=0.0), "gamma"),
        (lambda: warmup_decay_schedule(0, decay=0.5, min_decay=0.6), "min_decay"),
        (lambda: resolve_schedule("linear", value=0.5), "one of"),
    ],
)
def test_schedule_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_resolve_schedule_binds_arguments():
    cosine = resolve_schedule("cosine", max_steps=10, start_value=0.996, end_value=1.0)
    assert [cosine(s) for s in range(12)] == [cosine_schedule(s, 10, 0.996, 1.0) for s in range(12)]
    warmup = resolve_schedule("warmup", decay=0.999, power=0.75)
    assert warmup(123) == warmup_decay_schedule(123, decay=0.999, power=0.75)
    assert resolve_schedule("constant", value=0.9)(5) == 0.9
    with pytest.raises(TypeError, match="takes"):
        resolve_schedule("cosine", start_value=0.9)  # max_steps and end_value missing
    with pytest.raises(TypeError, match="takes"):
        resolve_schedule("constant", value=0.9, power=2)
