"""ImageTextRetrieval against a naive full-matrix Recall@K on the de-duplicated union."""

from __future__ import annotations

import pytest
import torch

from lightning_plugins.metrics import ImageTextRetrieval
from tests.helpers import run_ddp

TOP_K = (1, 2, 5)


def reference_recall(images, texts, top_k):
    """Full N x N similarities; rank = other candidates scoring >= the positive."""
    sim = images.double() @ texts.double().T

    def one_way(s):
        n = s.shape[0]
        ranks = [int((s[i] >= s[i, i]).sum()) - 1 for i in range(n)]
        return {k: sum(r < k for r in ranks) / n for k in top_k}

    i2t, t2i = one_way(sim), one_way(sim.T)
    return {
        **{f"i2t_R@{k}": v for k, v in i2t.items()},
        **{f"t2i_R@{k}": v for k, v in t2i.items()},
    }


def make_pairs(n, seed=0, dim=6):
    """Small-integer features: exact similarities, so results do not depend on row order."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(-2, 3, (n, dim), generator=g).float()
    texts = images + torch.randint(-1, 2, (n, dim), generator=g).float()
    return images, texts


def as_floats(result):
    return {k: float(v) for k, v in result.items()}


def assert_results_equal(result, expected):
    assert set(result) == set(expected)
    for key, value in expected.items():
        assert float(result[key]) == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
def test_union_of_updates_matches_reference(chunk_size):
    images, texts = make_pairs(30)
    metric = ImageTextRetrieval(top_k=TOP_K, chunk_size=chunk_size)
    for start, stop in [(0, 7), (7, 8), (8, 21), (21, 30)]:
        metric.update(images[start:stop], texts[start:stop], index=torch.arange(start, stop))
    expected = reference_recall(images, texts, TOP_K)
    assert_results_equal(metric.compute(), expected)
    assert 0 < expected["i2t_R@1"] < 1 and 0 < expected["t2i_R@1"] < 1


def test_padding_repeats_are_dropped():
    images, texts = make_pairs(20, seed=1)
    metric = ImageTextRetrieval(top_k=TOP_K)
    metric.update(images[:12], texts[:12], index=torch.arange(12))
    metric.update(images[12:], texts[12:], index=torch.arange(12, 20))
    # a distributed sampler pads with repeats of the first samples; identical pairs would
    # tie with the originals and lower every recall if they were kept
    metric.update(images[:3], texts[:3], index=torch.arange(3))
    expected = reference_recall(images, texts, TOP_K)
    assert_results_equal(metric.compute(), expected)
    with_repeats = reference_recall(
        torch.cat([images, images[:3]]), torch.cat([texts, texts[:3]]), TOP_K
    )
    assert with_repeats != expected  # the check above could fail


def test_without_index_nothing_is_dropped():
    images, texts = make_pairs(10, seed=2)
    metric = ImageTextRetrieval(top_k=TOP_K)
    metric.update(images, texts)
    metric.update(images[:2], texts[:2])
    expected = reference_recall(
        torch.cat([images, images[:2]]), torch.cat([texts, texts[:2]]), TOP_K
    )
    assert_results_equal(metric.compute(), expected)


def test_keys_and_reset():
    images, texts = make_pairs(8, seed=3)
    metric = ImageTextRetrieval(top_k=(1, 3))
    metric.update(torch.ones(8, 6), torch.ones(8, 6), index=torch.arange(8))
    collapsed = metric.compute()
    assert sorted(collapsed) == ["i2t_R@1", "i2t_R@3", "t2i_R@1", "t2i_R@3"]
    assert all(float(v) == 0.0 for v in collapsed.values())
    metric.reset()
    metric.update(images, texts, index=torch.arange(8))
    assert_results_equal(metric.compute(), reference_recall(images, texts, (1, 3)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"top_k": ()}, "top_k"), ({"top_k": (0, 1)}, "top_k"), ({"chunk_size": 0}, "chunk_size")],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImageTextRetrieval(**kwargs)


def test_bad_update_raises():
    metric = ImageTextRetrieval()
    with pytest.raises(ValueError, match="text_features"):
        metric.update(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="index"):
        metric.update(torch.zeros(3, 4), torch.zeros(3, 4), index=torch.arange(2))


N_DDP = 23


def _ddp_retrieval(rank, world_size):
    images, texts = make_pairs(N_DDP, seed=5)
    # DistributedSampler-like strided shards, padded to equal length with repeats
    index = torch.arange(N_DDP)
    total = -(-N_DDP // world_size) * world_size
    padded = torch.cat([index, index[: total - N_DDP]])
    mine = padded[rank::world_size]
    metric = ImageTextRetrieval(top_k=TOP_K, chunk_size=5)
    for part in mine.split(5):  # several updates per rank
        metric.update(images[part], texts[part], index=part)
    return as_floats(metric.compute())


@pytest.mark.ddp
def test_ddp_matches_single_process():
    assert N_DDP % 2 == 1  # rank 1 gets a padding repeat
    results = run_ddp(_ddp_retrieval, world_size=2)
    images, texts = make_pairs(N_DDP, seed=5)
    expected = reference_recall(images, texts, TOP_K)
    for result in results:
        assert_results_equal(result, expected)
