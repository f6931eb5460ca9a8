"""Class-wise feature statistics, sampling and logit normalisation of SLCA (issue 15),
against numpy (``np.mean``, ``np.cov``, ``np.linalg.eigh``) and hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_plugins.functional import (
    class_moments,
    class_statistics,
    normalized_logits,
    sample_class_features,
    shrink_old_means,
    statistics_from_moments,
)

CLASSES = [4, 1, 9]
EPS = 1e-4


def data(n: int = 90, dim: int = 5, seed: int = 0):
    gen = np.random.default_rng(seed)
    labels = gen.choice(CLASSES, size=n)
    mixing = gen.normal(size=(len(CLASSES), dim, dim))
    features = np.stack(
        [gen.normal(size=dim) @ mixing[CLASSES.index(y)] + CLASSES.index(y) for y in labels]
    )
    return features, labels


def numpy_reference(features, labels):
    means = np.stack([features[labels == c].mean(axis=0) for c in CLASSES])
    covs = np.stack([np.cov(features[labels == c], rowvar=False) for c in CLASSES])
    counts = np.array([(labels == c).sum() for c in CLASSES])
    return means, covs, counts


def torch_inputs(features, labels, dtype=torch.float64):
    return torch.tensor(features, dtype=dtype), torch.tensor(labels)


def test_full_against_numpy():
    x, y = data()
    means, covs, counts = numpy_reference(x, y)
    stats = class_statistics(*torch_inputs(x, y), CLASSES, "full", eps=EPS)
    assert stats["classes"].tolist() == CLASSES
    assert stats["count"].tolist() == counts.tolist()
    np.testing.assert_allclose(stats["mean"].numpy(), means, rtol=1e-12, atol=1e-12)
    expected = covs + EPS * np.eye(x.shape[1])
    np.testing.assert_allclose(stats["covariance"].numpy(), expected, rtol=1e-10, atol=1e-10)


def test_diagonal_against_numpy():
    x, y = data()
    means, covs, _ = numpy_reference(x, y)
    stats = class_statistics(*torch_inputs(x, y), CLASSES, "diagonal", eps=EPS)
    np.testing.assert_allclose(stats["mean"].numpy(), means, rtol=1e-12, atol=1e-12)
    expected = np.diagonal(covs, axis1=1, axis2=2) + EPS
    np.testing.assert_allclose(stats["variance"].numpy(), expected, rtol=1e-10, atol=1e-10)
    assert "covariance" not in stats


@pytest.mark.parametrize("rank", [1, 3])
def test_lowrank_against_numpy_eigh(rank):
    x, y = data()
    _, covs, _ = numpy_reference(x, y)
    stats = class_statistics(*torch_inputs(x, y), CLASSES, "lowrank", rank=rank, eps=EPS)
    factor, residual = stats["factor"].numpy(), stats["residual"].numpy()
    assert factor.shape == (3, x.shape[1], rank) and residual.shape == (3, x.shape[1])
    for c in range(len(CLASSES)):
        values, vectors = np.linalg.eigh(covs[c])
        top = vectors[:, -rank:] * np.sqrt(values[-rank:])
        # eigenvectors are defined up to sign: compare U Uᵀ and |U|
        np.testing.assert_allclose(factor[c] @ factor[c].T, top @ top.T, atol=1e-9)
        np.testing.assert_allclose(np.abs(factor[c]), np.abs(top), atol=1e-9)
        expected = np.clip(np.diag(covs[c]) - (top**2).sum(1), 0, None) + EPS
        np.testing.assert_allclose(residual[c], expected, atol=1e-9)


def test_lowrank_with_full_rank_equals_full():
    x, y = data()
    features, labels = torch_inputs(x, y)
    full = class_statistics(features, labels, CLASSES, "full", eps=EPS)
    low = class_statistics(features, labels, CLASSES, "lowrank", rank=x.shape[1], eps=EPS)
    rebuilt = low["factor"] @ low["factor"].transpose(1, 2) + torch.diag_embed(low["residual"])
    torch.testing.assert_close(rebuilt, full["covariance"], rtol=0, atol=1e-9)
    torch.testing.assert_close(low["mean"], full["mean"])


def test_float32_features_give_float32_statistics():
    x, y = data()
    means, covs, _ = numpy_reference(x, y)
    stats = class_statistics(*torch_inputs(x, y, torch.float32), CLASSES, "full", eps=EPS)
    assert stats["mean"].dtype == stats["covariance"].dtype == torch.float32
    np.testing.assert_allclose(stats["mean"].numpy(), means, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        stats["covariance"].numpy(), covs + EPS * np.eye(x.shape[1]), rtol=1e-4, atol=1e-4
    )


def test_class_order_follows_classes_and_tensor_classes_work():
    x, y = data()
    features, labels = torch_inputs(x, y)
    a = class_statistics(features, labels, CLASSES, "diagonal")
    b = class_statistics(features, labels, torch.tensor(CLASSES[::-1]), "diagonal")
    torch.testing.assert_close(a["mean"], b["mean"].flip(0))
    torch.testing.assert_close(a["variance"], b["variance"].flip(0))
    assert b["classes"].tolist() == CLASSES[::-1]


@pytest.mark.parametrize(("kind", "rank"), [("full", None), ("diagonal", None), ("lowrank", 2)])
def test_moments_of_two_halves_sum_to_the_whole(kind, rank):
    """What two ranks' moments all-reduced by global_sum give."""
    x, y = data(n=120)
    features, labels = torch_inputs(x, y, torch.float32)
    whole = class_moments(features, labels, CLASSES, kind)
    first = class_moments(features[:50], labels[:50], CLASSES, kind)
    second = class_moments(features[50:], labels[50:], CLASSES, kind)
    assert set(whole) == set(first) == set(second)
    for key in whole:
        torch.testing.assert_close(first[key] + second[key], whole[key], rtol=1e-12, atol=1e-9)
    summed = {key: first[key] + second[key] for key in whole}
    from_halves = statistics_from_moments(summed, CLASSES, kind, rank)
    direct = statistics_from_moments(whole, CLASSES, kind, rank)
    for key in direct:
        torch.testing.assert_close(from_halves[key], direct[key], rtol=1e-9, atol=1e-9)


def test_a_rank_without_rows_of_a_class_contributes_zeros():
    x, y = data()
    features, labels = torch_inputs(x, y)
    keep = labels != CLASSES[0]
    moments = class_moments(features[keep], labels[keep], CLASSES, "full")
    assert int(moments["count"][0]) == 0
    assert bool((moments["sum"][0] == 0).all()) and bool((moments["outer"][0] == 0).all())
    empty = class_moments(features[:0], labels[:0], CLASSES, "diagonal")
    assert empty["count"].tolist() == [0, 0, 0] and empty["sum"].shape == (3, x.shape[1])


def stats_for_sampling(kind: str, rank: int | None = None):
    gen = torch.Generator().manual_seed(3)
    dim = 4
    mixing = torch.randn(2, dim, dim, generator=gen, dtype=torch.float64)
    covariance = mixing @ mixing.transpose(1, 2) + 0.1 * torch.eye(dim, dtype=torch.float64)
    mean = torch.tensor([[1.0, -2.0, 0.5, 3.0], [-1.0, 0.0, 2.0, 1.0]], dtype=torch.float64)
    # moments that give exactly this mean and covariance with n = 1001 samples
    n = 1001
    count = torch.tensor([n, n])
    outer = covariance * (n - 1) + n * mean[:, :, None] * mean[:, None, :]
    moments = {"count": count, "sum": mean * n}
    if kind == "diagonal":
        moments["sum_squares"] = outer.diagonal(dim1=1, dim2=2)
    else:
        moments["outer"] = outer
    stats = statistics_from_moments(moments, [6, 2], kind, rank, eps=0.0)
    return stats, mean, covariance


@pytest.mark.parametrize(("kind", "rank"), [("full", None), ("diagonal", None), ("lowrank", 2)])
def test_samples_match_the_statistics(kind, rank):
    stats, mean, covariance = stats_for_sampling(kind, rank)
    if kind == "diagonal":
        covariance = torch.diag_embed(covariance.diagonal(dim1=1, dim2=2))
    elif kind == "lowrank":
        factor = stats["factor"]
        covariance = factor @ factor.transpose(1, 2) + torch.diag_embed(stats["residual"])
    torch.testing.assert_close(stats["mean"], mean)
    n = 40_000
    gen = torch.Generator().manual_seed(0)
    features, labels = sample_class_features(stats, n, generator=gen)
    assert features.shape == (2 * n, 4) and labels.tolist() == [6] * n + [2] * n
    for c in range(2):
        rows = features[c * n : (c + 1) * n].numpy()
        scale = covariance[c].diagonal().sqrt().max().item()
        np.testing.assert_allclose(rows.mean(0), mean[c].numpy(), atol=0.05 * scale)
        np.testing.assert_allclose(
            np.cov(rows, rowvar=False), covariance[c].numpy(), atol=0.05 * scale**2
        )


def test_sampling_is_reproducible_with_a_generator():
    stats, _, _ = stats_for_sampling("full")
    a, _ = sample_class_features(stats, 5, torch.Generator().manual_seed(1))
    b, _ = sample_class_features(stats, 5, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_normalized_logits_by_hand():
    logits = torch.tensor([[3.0, 4.0, 1.0, 2.0, 2.0], [0.0, 1.0, 0.0, 0.0, 2.0]])
    sizes = [2, 3]
    # row 0: block norms 5 and 3 -> mean 4; row 1: 1 and 2 -> mean 1.5 (each + 1e-7)
    mean_norms = torch.tensor([[4.0 + 1e-7], [1.5 + 1e-7]])
    expected = logits / (mean_norms * 0.1)
    torch.testing.assert_close(normalized_logits(logits, sizes), expected)
    torch.testing.assert_close(
        normalized_logits(logits, sizes, temperature=2.0), logits / (mean_norms * 2.0)
    )


def test_normalized_logits_is_differentiable():
    logits = torch.randn(3, 4, requires_grad=True)
    normalized_logits(logits, [1, 3]).sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_shrink_old_means_by_each_class_task_with_unequal_tasks():
    means = torch.ones(6, 2)
    # tasks of 1, 3 and 2 classes; after task 2 (T = 2): scale 0.9 + 0.1 (t + 1) / 3
    tasks = [0, 1, 1, 1, 2, 2]
    out = shrink_old_means(means, tasks, current_task=2)
    expected = torch.tensor([0.9 + 0.1 / 3, 0.9 + 0.2 / 3, 0.9 + 0.2 / 3, 0.9 + 0.2 / 3, 1, 1])
    torch.testing.assert_close(out, expected[:, None].expand(6, 2))
