"""Skill-It and DGA mixture updates against direct implementations of their formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_plugins.functional import check_mixture_weights, dga_weights, skill_it_weights


# ------------------------------------------------------------------------------ Skill-It
def reference_skill_it(prior, graph, window, eta, target=None):
    """p ∝ prior ⊙ exp(eta · A · Σ_rows L), numpy, with A[:, target] @ ΣL[target]."""
    prior, graph, window = (np.asarray(x, dtype=np.float64) for x in (prior, graph, window))
    summed = window.sum(axis=0)
    if target is not None:
        graph, summed = graph[:, target], summed[target]
    p = prior * np.exp(eta * graph @ summed)
    return p / p.sum()


def skills(k=5, w=3, seed=0):
    rng = np.random.default_rng(seed)
    prior = rng.uniform(0.1, 1.0, k)
    graph = rng.uniform(0.0, 1.0, (k, k))
    graph[rng.uniform(size=(k, k)) < 0.3] = 0.0
    window = rng.uniform(0.5, 3.0, (w, k))
    return prior, graph, window


@pytest.mark.parametrize("target", [None, [0], [1, 3], [4, 2, 0]])
@pytest.mark.parametrize("eta", [0.5, 2.0, -0.3, 0.0])
@pytest.mark.parametrize("w", [1, 3])
def test_skill_it_matches_the_formula(target, eta, w):
    prior, graph, window = skills(w=w, seed=w)
    got = skill_it_weights(
        torch.tensor(prior), torch.tensor(graph), torch.tensor(window), eta, target
    )
    expected = reference_skill_it(prior, graph, window, eta, target)
    assert got.dtype == torch.float64 and got.shape == (5,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-15)
    assert math.isclose(float(got.sum()), 1.0, rel_tol=1e-12)


def test_skill_it_takes_lists_and_a_zero_prior_stays_zero():
    prior, graph, window = skills()
    prior[2] = 0.0
    got = skill_it_weights(prior.tolist(), graph.tolist(), window.tolist(), 0.5)
    assert got[2] == 0.0
    np.testing.assert_allclose(got.numpy(), reference_skill_it(prior, graph, window, 0.5))


def test_skill_it_is_stable_with_large_losses():
    prior, graph, window = skills()
    big = window * 1e4  # exp(eta * A @ sum L) overflows float64 directly
    with np.errstate(over="ignore", invalid="ignore"):
        assert not np.isfinite(reference_skill_it(prior, graph, big, 0.5)).all()
    got = skill_it_weights(prior, graph, big, 0.5)
    assert torch.isfinite(got).all() and math.isclose(float(got.sum()), 1.0)
    # the same as the formula with the largest exponent subtracted (a constant factor)
    logits = np.log(prior) + 0.5 * graph @ big.sum(axis=0)
    expected = np.exp(logits - logits.max())
    np.testing.assert_allclose(got.numpy(), expected / expected.sum(), rtol=1e-9, atol=1e-300)


def test_skill_it_eta_zero_is_the_prior():
    prior, graph, window = skills()
    np.testing.assert_allclose(
        skill_it_weights(prior, graph, window, 0.0).numpy(), prior / prior.sum()
    )


# ----------------------------------------------------------------------------------- DGA
def reference_dga(alpha, grads, target, eta, beta):
    alpha = np.asarray(alpha, dtype=np.float64)
    alpha = alpha / alpha.sum()
    dots = np.array([float(np.dot(g, target)) for g in grads])
    hat = alpha * np.exp(eta * dots)
    hat = hat / hat.sum()
    return (1 - beta) * alpha + beta * hat


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Linear(4, 3)
        self.head = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)))


def flat_grad(model, inputs, labels):
    """The gradient of the mean loss on one batch, flattened over all parameters."""
    loss = torch.nn.functional.cross_entropy(model(inputs), labels)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("as_list", [False, True])
def test_dga_matches_an_explicit_per_domain_gradient_computation(beta, as_list):
    model = Tiny()
    generator = torch.Generator().manual_seed(1)
    domains = [
        (
            torch.randn(6, 4, generator=generator) + shift,
            torch.randint(0, 2, (6,), generator=generator),
        )
        for shift in (-1.0, 0.0, 2.0)
    ]
    target_x = torch.randn(4, 4, generator=generator) + 2.0
    target_y = torch.randint(0, 2, (4,), generator=generator)
    domain_grads = [flat_grad(model, x, y) for x, y in domains]
    target_grad = flat_grad(model, target_x, target_y)
    alpha = [0.5, 0.3, 0.2]
    eta = 5.0
    grads = domain_grads if as_list else torch.stack(domain_grads)
    got = dga_weights(alpha, grads, target_grad, eta, beta)
    expected = reference_dga(
        alpha, [g.double().numpy() for g in domain_grads], target_grad.double().numpy(), eta, beta
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    assert got.dtype == torch.float64 and math.isclose(float(got.sum()), 1.0, rel_tol=1e-12)
    if beta == 0.0:
        np.testing.assert_allclose(got.numpy(), alpha)


def test_dga_takes_per_parameter_shaped_grads_and_is_stable():
    grads = [torch.ones(2, 3), -torch.ones(2, 3)]
    target = torch.ones(6) * 1e3  # <g_i, g_t> = ±6e3: exp overflows float64 directly
    got = dga_weights(torch.tensor([1.0, 3.0]), grads, target, eta=1.0, beta=1.0)
    assert torch.isfinite(got).all()
    assert got.tolist() == [1.0, 0.0]  # exp(-12000) underflows to 0 relative to the winner


def test_dga_normalises_alpha():
    grads = torch.zeros(3, 4)
    got = dga_weights([2.0, 1.0, 1.0], grads, torch.zeros(4), eta=1.0, beta=0.5)
    assert got.tolist() == [0.5, 0.25, 0.25]


# -------------------------------------------------------------------------------- checks
@pytest.mark.parametrize(
    "weights",
    [[2, 1, 1], (0.2, 0.0, 0.8), np.array([1.0, 1.0, 2.0]), torch.tensor([3, 0, 1])],
)
def test_check_mixture_weights_normalises(weights):
    got = check_mixture_weights(weights, "weights", 3)
    values = np.asarray(torch.as_tensor(weights), dtype=np.float64)
    assert got.dtype == torch.float64 and got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), values / values.sum())


def test_check_mixture_weights_returns_a_new_tensor_and_handles_huge_values():
    weights = torch.tensor([1.0, 1.0], dtype=torch.float64)
    got = check_mixture_weights(weights)
    got.fill_(0.0)
    assert weights.tolist() == [1.0, 1.0]
    assert check_mixture_weights([1e308, 1e308]).tolist() == [0.5, 0.5]
