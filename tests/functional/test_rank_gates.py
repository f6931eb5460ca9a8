"""The proximal step on CoDyRA's rank gates and its strength schedule (issue 16)."""

from __future__ import annotations

import pytest
import torch

from lightning_plugins.functional import proximal_strength, soft_threshold_


def test_soft_threshold_is_the_hand_formula_in_place():
    gates = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    expected = torch.where(
        gates.abs() > 0.3, gates - 0.3 * torch.sign(gates), torch.zeros_like(gates)
    )
    out = soft_threshold_(gates, 0.3)
    assert out is gates
    torch.testing.assert_close(gates, expected, rtol=0, atol=1e-7)
    assert (gates == 0).sum() > 0


def test_soft_threshold_is_the_prox_of_l1_on_a_grid():
    """argmin_v 0.5 (v - w)^2 + t |v|, searched on a fine grid, equals the step."""
    threshold = 0.25
    w = torch.linspace(-1.0, 1.0, 41, dtype=torch.float64)
    grid = torch.linspace(-1.5, 1.5, 30001, dtype=torch.float64)
    objective = 0.5 * (grid[None, :] - w[:, None]) ** 2 + threshold * grid.abs()[None, :]
    prox = grid[objective.argmin(dim=1)]
    torch.testing.assert_close(soft_threshold_(w.clone(), threshold), prox, rtol=0, atol=1e-4)


def test_soft_threshold_zero_leaves_gates_and_keeps_no_graph():
    gates = torch.tensor([0.5, -0.1], requires_grad=True)
    before = gates.detach().clone()
    soft_threshold_(gates, 0.0)
    torch.testing.assert_close(gates.detach(), before, rtol=0, atol=0)
    soft_threshold_(gates, 0.2)  # a leaf that requires grad: changed under no_grad
    assert gates.tolist() == pytest.approx([0.3, 0.0])


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: soft_threshold_(torch.ones(2), -0.1), ValueError, "`threshold`.*-0.1"),
        (lambda: soft_threshold_(torch.ones(2), float("nan")), ValueError, "`threshold`"),
        (lambda: soft_threshold_(torch.ones(2, dtype=torch.long), 0.1), TypeError, "`gates`"),
        (lambda: proximal_strength(-1, 10), ValueError, "`step`.*-1"),
        (lambda: proximal_strength(0, 0), ValueError, "`total_steps`.*0"),
        (lambda: proximal_strength(0, 10, start_fraction=1.0), ValueError, "`start_fraction`"),
        (lambda: proximal_strength(0, 10, start_fraction=-0.5), ValueError, "`start_fraction`"),
        (lambda: proximal_strength(0, 10, kappa=-1.0), ValueError, "`kappa`.*-1"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_proximal_strength_ramp():
    total, kappa = 10, 2.0
    values = [proximal_strength(s, total, start_fraction=0.6, kappa=kappa) for s in range(12)]
    assert values[:6] == [0.0] * 6
    assert values[6:10] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert values[10:] == [kappa, kappa]  # held beyond the planned end
    # start_fraction 0: the ramp covers the whole task; a one-step task gets kappa at once
    assert proximal_strength(0, 4, start_fraction=0.0, kappa=1.0) == 0.25
    assert proximal_strength(0, 1, start_fraction=0.9, kappa=1.0) == 1.0
