"""Continual-learning summaries against hand-computed values and the REFERENCES formulas."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_plugins.functional import (
    average_accuracy,
    average_incremental_accuracy,
    backward_transfer,
    forgetting,
    forward_transfer,
)

NAN = math.nan

# a 3-task stream in class-incremental style: NaN above the diagonal
R3 = torch.tensor(
    [
        [0.90, NAN, NAN],
        [0.60, 0.80, NAN],
        [0.70, 0.40, 0.95],
    ],
    dtype=torch.float64,
)

# a 4-task stream where every task is evaluated after every step (forward cells too)
R4 = torch.tensor(
    [
        [0.80, 0.30, 0.20, 0.25],
        [0.50, 0.90, 0.35, 0.20],
        [0.60, 0.70, 0.85, 0.40],
        [0.40, 0.75, 0.60, 1.00],
    ],
    dtype=torch.float64,
)
BASE4 = torch.tensor([0.10, 0.25, 0.25, 0.20], dtype=torch.float64)


def reference(matrix, baseline=None):
    """The REFERENCES formulas as plain Python loops (T = last row)."""
    rows = matrix.tolist()
    t = len(rows) - 1

    def avg(step):
        return sum(rows[step][j] for j in range(step + 1)) / (step + 1)

    out = {
        "average_accuracy": avg(t),
        "average_incremental_accuracy": sum(avg(s) for s in range(t + 1)) / (t + 1),
        "forgetting": sum(max(rows[i][j] for i in range(j, t)) - rows[t][j] for j in range(t)) / t,
        "backward_transfer": sum(rows[t][j] - rows[j][j] for j in range(t)) / t,
    }
    if baseline is not None:
        base = baseline.tolist()
        out["forward_transfer"] = sum(rows[j - 1][j] - base[j] for j in range(1, t + 1)) / t
    return out


def test_hand_computed_three_tasks():
    assert average_accuracy(R3).item() == pytest.approx((0.70 + 0.40 + 0.95) / 3)
    assert average_accuracy(R3, step=1).item() == pytest.approx(0.70)
    assert average_accuracy(R3, step=0).item() == pytest.approx(0.90)
    assert average_incremental_accuracy(R3).item() == pytest.approx(
        (0.90 + 0.70 + (0.70 + 0.40 + 0.95) / 3) / 3
    )
    # task 0: best earlier 0.90 (step 0), final 0.70; task 1: best earlier 0.80, final 0.40
    assert forgetting(R3).item() == pytest.approx(((0.90 - 0.70) + (0.80 - 0.40)) / 2)
    assert backward_transfer(R3).item() == pytest.approx(((0.70 - 0.90) + (0.40 - 0.80)) / 2)


def test_forgetting_takes_the_maximum_over_all_earlier_steps():
    # task 0 peaks at step 2 (0.60 after a dip to 0.50), not at the step it was trained
    assert forgetting(R4).item() == pytest.approx(
        ((0.80 - 0.40) + (0.90 - 0.75) + (0.85 - 0.60)) / 3
    )
    # forward cells (task evaluated before it was trained) are not part of the maximum
    high_before = R4.clone()
    high_before[0, 1] = 0.99
    assert forgetting(high_before).item() == pytest.approx(forgetting(R4).item())


def test_forward_transfer_hand_computed():
    expected = ((0.30 - 0.25) + (0.35 - 0.25) + (0.40 - 0.20)) / 3
    assert forward_transfer(R4, BASE4).item() == pytest.approx(expected)
    nan_first = BASE4.clone()
    nan_first[0] = NAN  # baseline[0] is not read
    assert forward_transfer(R4, nan_first).item() == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(5))
def test_random_matrices_match_the_reference_formulas(seed):
    g = torch.Generator().manual_seed(seed)
    size = 2 + seed % 4
    matrix = torch.rand(size, size, generator=g, dtype=torch.float64)
    baseline = torch.rand(size, generator=g, dtype=torch.float64)
    expected = reference(matrix, baseline)
    got = {
        "average_accuracy": average_accuracy(matrix),
        "average_incremental_accuracy": average_incremental_accuracy(matrix),
        "forgetting": forgetting(matrix),
        "backward_transfer": backward_transfer(matrix),
        "forward_transfer": forward_transfer(matrix, baseline),
    }
    for name, value in got.items():
        assert value.item() == pytest.approx(expected[name], abs=1e-12), name
    # the cells above the diagonal are read by forward transfer only
    lower = matrix.clone()
    lower[torch.ones(size, size, dtype=torch.bool).triu(1)] = NAN
    assert forgetting(lower).item() == pytest.approx(expected["forgetting"], abs=1e-12)
    assert average_incremental_accuracy(lower).item() == pytest.approx(
        expected["average_incremental_accuracy"], abs=1e-12
    )


def test_one_task():
    one = torch.tensor([[0.75]])
    assert average_accuracy(one).item() == pytest.approx(0.75)
    assert average_incremental_accuracy(one).item() == pytest.approx(0.75)


def test_no_forgetting_and_perfect_retention():
    perfect = torch.ones(3, 3)
    assert forgetting(perfect).item() == 0.0
    assert backward_transfer(perfect).item() == 0.0


def test_dtype_follows_the_input():
    assert average_accuracy(R3).dtype == torch.float64
    assert forgetting(R3.float()).dtype == torch.float32
