"""EL2N, GraNd, forgetting events and the ranking / pruning helpers against per-example loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_plugins.functional import (
    check_scores,
    el2n_scores,
    forgetting_events,
    grand_scores,
    per_sample_grad_norms,
)


# ------------------------------------------------------------------ EL2N
def el2n_loop(logits, targets):
    scores = []
    for row, target in zip(logits.double(), targets.tolist(), strict=True):
        probs = torch.softmax(row, dim=0)
        onehot = torch.zeros_like(probs)
        onehot[target] = 1.0
        pairs = zip(probs.tolist(), onehot.tolist(), strict=True)
        scores.append(math.sqrt(sum((p - o) ** 2 for p, o in pairs)))
    return torch.tensor(scores, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("batch", "classes"), [(1, 1), (5, 2), (17, 10), (8, 100)])
def test_el2n_matches_per_example_loop(dtype, batch, classes):
    gen = torch.Generator().manual_seed(batch * classes)
    logits = (torch.randn(batch, classes, generator=gen) * 4).to(dtype)
    targets = torch.randint(classes, (batch,), generator=gen)
    scores = el2n_scores(logits, targets)
    expected = el2n_loop(logits, targets)  # from the same (rounded) half-precision logits
    assert scores.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert scores.shape == (batch,)
    torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-7)
    assert bool(((scores >= 0) & (scores <= math.sqrt(2) + 1e-6)).all())


def test_el2n_is_accurate_for_confident_predictions():
    logits = torch.tensor([[30.0, 0.0, 0.0], [12.0, -3.0, 0.0]])
    expected = el2n_loop(logits, torch.tensor([0, 0]))
    torch.testing.assert_close(el2n_scores(logits, torch.tensor([0, 0])).double(), expected)


def test_el2n_has_no_gradient_and_leaves_logits_alone():
    logits = torch.randn(4, 3, requires_grad=True)
    before = logits.detach().clone()
    scores = el2n_scores(logits, torch.tensor([0, 1, 2, 0]))
    assert not scores.requires_grad
    assert torch.equal(logits.detach(), before)


def test_el2n_of_empty_batch():
    assert el2n_scores(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)).shape == (0,)


# ------------------------------------------------------------------ GraNd
def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def batch(size=6):
    gen = torch.Generator().manual_seed(size)
    inputs = torch.randn(size, 5, generator=gen, dtype=torch.float64)
    targets = torch.randint(3, (size,), generator=gen)
    return inputs, targets


def grad_norm_loop(model, per_sample_loss):
    norms = []
    losses = per_sample_loss()
    for i in range(losses.shape[0]):
        model.zero_grad()
        losses[i].backward(retain_graph=True)
        squares = sum(p.grad.pow(2).sum() for p in model.parameters() if p.grad is not None)
        norms.append(float(squares) ** 0.5)
    model.zero_grad()
    return torch.tensor(norms, dtype=torch.float64)


def cross_entropy_loss_fn(model, inputs, targets):
    def loss_fn(params):
        logits = torch.func.functional_call(model, params, (inputs,))
        return F.cross_entropy(logits, targets, reduction="none")

    return loss_fn


@pytest.mark.parametrize("chunk_size", [None, 1, 2, 4, 100])
def test_grand_matches_per_example_backward_loop(chunk_size):
    model = small_model()
    inputs, targets = batch()
    expected = grad_norm_loop(
        model, lambda: F.cross_entropy(model(inputs), targets, reduction="none")
    )
    params = dict(model.named_parameters())
    scores = grand_scores(cross_entropy_loss_fn(model, inputs, targets), params, chunk_size)
    torch.testing.assert_close(scores, expected, rtol=1e-10, atol=1e-12)
    assert not scores.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_grand_works_under_no_grad():
    # a scoring pass runs under no_grad (validation, predict): torch.func ignores it
    model = small_model()
    inputs, targets = batch()
    loss_fn = cross_entropy_loss_fn(model, inputs, targets)
    params = dict(model.named_parameters())
    expected = grand_scores(loss_fn, params)
    with torch.no_grad():
        torch.testing.assert_close(grand_scores(loss_fn, params), expected)
    assert bool((expected > 0).all())


def test_grand_with_interacting_samples_is_the_gradient_of_each_loss():
    # row i of an in-batch softmax depends on every sample: the norm is that of d loss_i / d w
    model = small_model()
    inputs, _ = batch(5)

    def in_batch_loss(embeddings):
        logits = embeddings @ embeddings.T
        return F.cross_entropy(logits, torch.arange(len(logits)), reduction="none")

    expected = grad_norm_loop(model, lambda: in_batch_loss(model(inputs)))
    params = dict(model.named_parameters())

    def loss_fn(p):
        return in_batch_loss(torch.func.functional_call(model, p, (inputs,)))

    for chunk_size in (None, 2):
        scores = grand_scores(loss_fn, params, chunk_size=chunk_size)
        torch.testing.assert_close(scores, expected, rtol=1e-10, atol=1e-12)
    # the interaction matters: each sample's loss alone (a 1-row softmax) has no gradient
    assert bool((expected > 1e-3).all())


def test_grand_over_a_subset_of_parameters_with_buffers():
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)).eval()
    inputs = torch.randn(7, 4, generator=torch.Generator().manual_seed(1))
    targets = torch.arange(7) % 2
    head = {"3.weight": model[3].weight, "3.bias": model[3].bias}
    others = {k: v for k, v in model.state_dict().items() if not k.startswith("3.")}

    def loss_fn(params):
        logits = torch.func.functional_call(model, {**others, **params}, (inputs,))
        return F.cross_entropy(logits, targets, reduction="none")

    norms = []
    for i in range(7):
        model.zero_grad()
        F.cross_entropy(model(inputs[i : i + 1]), targets[i : i + 1]).backward()
        norms.append(float(sum(p.grad.pow(2).sum() for p in model[3].parameters()).sqrt()))
    torch.testing.assert_close(grand_scores(loss_fn, head), torch.tensor(norms))


# ------------------------------------------------------------------ forgetting events
def forgetting_loop(rows):
    epochs, num = len(rows), len(rows[0])
    counts = []
    for i in range(num):
        column = [rows[e][i] for e in range(epochs)]
        if not any(column):
            counts.append(epochs)
            continue
        counts.append(sum(1 for e in range(1, epochs) if column[e - 1] and not column[e]))
    return counts


@pytest.mark.parametrize(
    ("epochs", "num", "p"), [(1, 9, 0.5), (2, 30, 0.5), (7, 200, 0.7), (12, 50, 0.2)]
)
def test_forgetting_events_match_python_loop(epochs, num, p):
    gen = torch.Generator().manual_seed(epochs * num)
    correct = torch.rand(epochs, num, generator=gen) < p
    counts = forgetting_events(correct)
    assert counts.dtype == torch.int64
    assert counts.tolist() == forgetting_loop(correct.tolist())


def test_never_correct_counts_more_than_any_learned_sample():
    correct = torch.tensor(
        [[True, False, False], [False, False, True], [True, False, False], [False, False, True]]
    )
    assert forgetting_events(correct).tolist() == [2, 4, 1]
    # the most a learned sample can forget in E rows is E // 2 < E
    epochs = 6
    alternating = torch.tensor([[e % 2 == 0] for e in range(epochs)])
    assert forgetting_events(alternating).item() == epochs // 2 < epochs


def test_check_scores_converts_and_passes_good_scores():
    assert check_scores([1, 2], "scores", 2).dtype == torch.float64
    half = torch.ones(3, dtype=torch.float16)
    assert check_scores(half, "scores", 3) is half
    assert check_scores(torch.tensor([0.0, 1.0]), "ease", low=0, high=1).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_per_sample_grad_norms_match_the_per_example_loop(chunk_size):
    model = small_model()
    inputs, targets = batch()
    expected = grad_norm_loop(
        model, lambda: F.cross_entropy(model(inputs), targets, reduction="none")
    )

    def loss_fn(params, samples):
        logits = torch.func.functional_call(model, params, (samples["x"],))
        return F.cross_entropy(logits, samples["y"], reduction="none")

    params = dict(model.named_parameters())
    scores = per_sample_grad_norms(
        loss_fn, params, {"x": inputs, "y": targets, "note": "kept whole"}, chunk_size
    )
    torch.testing.assert_close(scores, expected, rtol=1e-10, atol=1e-12)
    assert not scores.requires_grad


def test_per_sample_grad_norms_need_tensors():
    with pytest.raises(ValueError, match="`batch` must hold tensors"):
        per_sample_grad_norms(lambda p, b: p["w"], {"w": torch.ones(1)}, {"a": "b"})
