"""The pacing functions against their formulas written out with ``math``; resolve_pacing."""

from __future__ import annotations

import functools
import math
import pickle

import pytest

from lightning_plugins.functional import (
    PACINGS,
    check_pacing_value,
    geometric_pacing,
    linear_pacing,
    resolve_pacing,
    root_pacing,
    step_pacing,
)


def linear_reference(t, total, c0):
    return min(1.0, c0 + (1 - c0) * t / total)


def root_reference(t, total, c0, p):
    return min(1.0, (t * (1 - c0**p) / total + c0**p) ** (1 / p))


def geometric_reference(t, total, c0):
    # from t = total on the formula is >= 1 (and overflows a float for huge t): 1 after min
    return min(1.0, c0 * (1 / c0) ** min(t / total, 1.0))


def step_reference(t, total, c0, stages):
    return min(1.0, c0 + (1 - c0) * math.floor(t * stages / total) / stages)


def platanios(t, total, c0):
    return min(1.0, math.sqrt(t * (1 - c0**2) / total + c0**2))


TOTALS = [1, 2, 7, 100, 1000]
STARTS = [0.01, 0.1, 0.5, 0.999, 1.0]

CASES = {
    "linear": (linear_pacing, linear_reference, {}),
    "root": (root_pacing, root_reference, {"power": 2.0}),
    "root3": (root_pacing, root_reference, {"power": 3.0}),
    "root0.5": (root_pacing, root_reference, {"power": 0.5}),
    "geometric": (geometric_pacing, geometric_reference, {}),
    "step": (step_pacing, step_reference, {"num_stages": 5}),
    "step1": (step_pacing, step_reference, {"num_stages": 1}),
    "step7": (step_pacing, step_reference, {"num_stages": 7}),
}


def steps_for(total):
    return sorted(
        {
            *range(min(total, 50) + 1),
            *range(0, 3 * total + 1, max(1, total // 13)),
            total,
            total - 1 if total > 1 else 0,
            total + 1,
            10 * total,
            10**9,
        }
    )


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("total", TOTALS)
@pytest.mark.parametrize("start", STARTS)
def test_pacing_matches_formula(case, total, start):
    pacing, reference, extra = CASES[case]
    values = []
    for step in steps_for(total):
        value = pacing(step, total, start, *extra.values())
        expected = reference(step, total, start, *extra.values())
        assert value == pytest.approx(expected, rel=1e-12, abs=1e-15), step
        assert isinstance(value, float)
        assert 0.0 < value <= 1.0
        values.append(value)
    assert values == sorted(values), "pacing must be monotone non-decreasing"
    assert pacing(0, total, start, *extra.values()) == pytest.approx(start, rel=1e-12)
    assert pacing(total, total, start, *extra.values()) == 1.0
    assert pacing(total + 5, total, start, *extra.values()) == 1.0


@pytest.mark.parametrize("total", TOTALS)
@pytest.mark.parametrize("start", [0.01, 0.1, 0.33, 0.9])
def test_root_pacing_of_power_two_is_platanios_competence(total, start):
    for step in steps_for(total):
        expected = platanios(step, total, start)
        assert root_pacing(step, total, start) == pytest.approx(expected, rel=1e-12)
        assert root_pacing(step, total, start, power=2) == pytest.approx(expected, rel=1e-12)


def test_root_pacing_of_power_one_is_linear():
    for step in range(12):
        assert root_pacing(step, 10, 0.2, power=1.0) == pytest.approx(linear_pacing(step, 10, 0.2))


def test_step_pacing_jumps_at_stage_boundaries():
    values = [step_pacing(s, 10, start=0.5, num_stages=2) for s in range(12)]
    assert values == [0.5] * 5 + [0.75] * 5 + [1.0] * 2


def test_geometric_pacing_of_tiny_start_does_not_overflow():
    # start * (1 / start) ** x overflows for start below 1 / max float; the value does not
    assert geometric_pacing(0, 10, 5e-324) == 5e-324
    assert 0 < geometric_pacing(5, 10, 5e-324) < 1
    assert geometric_pacing(5, 10, 1e-300) == pytest.approx(1e-150, rel=1e-9)


def test_start_of_one_is_constant():
    for name, pacing in PACINGS.items():
        assert [pacing(s, 3, 1.0) for s in range(5)] == [1.0] * 5, name


def test_integer_like_arguments_are_accepted():
    import numpy as np

    assert linear_pacing(np.int64(2), np.int64(4), np.float64(0.5)) == 0.75
    assert linear_pacing(2, 4, 1) == 1.0


# ------------------------------------------------------------------ resolve_pacing
@pytest.mark.parametrize("name", sorted(PACINGS))
def test_resolve_pacing_by_name(name):
    pacing = resolve_pacing(name, total_steps=20, start=0.05)
    for step in range(25):
        assert pacing(step) == PACINGS[name](step, 20, 0.05)
    default = resolve_pacing(name, total_steps=20)
    assert default(0) == pytest.approx(0.1)


def test_pacings_table():
    assert PACINGS == {
        "geometric": geometric_pacing,
        "linear": linear_pacing,
        "root": root_pacing,
        "step": step_pacing,
    }


def test_resolve_pacing_with_a_user_callable():
    pacing = resolve_pacing(lambda step: min(1.0, 0.25 * (step + 1)), total_steps=4)
    assert [pacing(s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    bound = resolve_pacing(functools.partial(root_pacing, total_steps=8, power=3.0), 8)
    assert bound(4) == root_pacing(4, 8, power=3.0)


def test_resolved_pacing_pickles():
    for pacing in (
        resolve_pacing("root", 10),
        resolve_pacing(functools.partial(linear_pacing, total_steps=3), 3),
    ):
        again = pickle.loads(pickle.dumps(pacing))
        assert [again(s) for s in range(5)] == [pacing(s) for s in range(5)]


@pytest.mark.parametrize("bad", [0.0, 1.5, math.nan, math.inf, -0.1])
def test_user_pacing_values_outside_unit_interval_fail_at_call_time(bad):
    pacing = resolve_pacing(lambda step: 0.5 if step < 3 else bad, total_steps=10)
    assert pacing(2) == 0.5
    with pytest.raises(ValueError, match=r"`pacing\(3\)` must be a finite number in \(0, 1\]"):
        pacing(3)


def test_user_pacing_returning_no_number():
    pacing = resolve_pacing(lambda step: "half", total_steps=10)
    with pytest.raises(TypeError, match=r"`pacing\(0\)` must be a number, got 'half'"):
        pacing(0)


def test_check_pacing_value():
    assert check_pacing_value(1) == 1.0
    assert check_pacing_value(1e-9) == 1e-9
    for bad in (0, 1.0000001, -1, math.nan):
        with pytest.raises(ValueError, match="`pacing`"):
            check_pacing_value(bad)
