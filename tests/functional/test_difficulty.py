"""Difficulty ranking, ease weights and the Data Diet keep mask against plain-Python references."""

import random

import pytest
import torch

from lightning_plugins.functional import (
    difficulty_ranking,
    ease_from_difficulty,
    ease_weights,
    forgetting_events,
    prune_mask,
)


# ------------------------------------------------------------------ ease, ranking, pruning
def ranking_loop(values):
    return sorted(range(len(values)), key=lambda i: values[i])  # sorted() is stable


def random_scores(num, seed, ties=False):
    rng = random.Random(seed)
    if ties:
        return [float(rng.randint(0, 4)) for _ in range(num)]
    return [rng.uniform(-3, 3) for _ in range(num)]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("num", [1, 2, 10, 101])
def test_difficulty_ranking_and_ease_match_python(num, ties):
    values = random_scores(num, num, ties)
    ranking = difficulty_ranking(torch.tensor(values))
    assert ranking.dtype == torch.int64
    assert ranking.tolist() == ranking_loop(values)
    rank = {index: position for position, index in enumerate(ranking_loop(values))}
    expected = [1 - rank[i] / num for i in range(num)]
    ease = ease_from_difficulty(torch.tensor(values))
    assert ease.dtype == torch.float32
    torch.testing.assert_close(ease, torch.tensor(expected, dtype=torch.float32))
    assert ease.max().item() == 1.0
    assert ease.min().item() == pytest.approx(1 / num)


def test_ease_from_integer_difficulty():
    assert ease_from_difficulty(torch.tensor([2, 0, 1, 0])).tolist() == [0.25, 1.0, 0.5, 0.75]


@pytest.mark.parametrize("progress", [0.0, 0.25, 0.5, 1.0, 1])
def test_ease_weights_match_macavaney(progress):
    ease = [0.0, 0.1, 0.5, 0.9, 1.0]
    expected = [d * (1 - progress) + progress for d in ease]  # w = D (1 - e/m) + e/m
    weights = ease_weights(torch.tensor(ease, dtype=torch.float64), progress)
    torch.testing.assert_close(weights, torch.tensor(expected, dtype=torch.float64))
    if progress == 1:
        assert weights.tolist() == [1.0] * 5


def prune_loop(values, prune, offset):
    num = len(values)
    order = sorted(range(num), key=lambda i: -values[i])
    keep = num - round(prune * num)
    skip = min(round(offset * num), num - keep)
    kept = set(order[skip : skip + keep])
    return [i in kept for i in range(num)]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("num", [1, 3, 10, 97])
@pytest.mark.parametrize("prune", [0.0, 0.1, 0.3, 0.5, 0.75])
@pytest.mark.parametrize("offset", [0.0, 0.05, 0.2, 0.6, 0.9])
def test_prune_mask_matches_python(num, prune, offset, ties):
    values = random_scores(num, num + 1, ties)
    if num - round(prune * num) < 1:
        with pytest.raises(ValueError, match="would keep none"):
            prune_mask(torch.tensor(values), prune, offset)
        return
    mask = prune_mask(torch.tensor(values), prune, offset)
    assert mask.dtype == torch.bool
    assert mask.tolist() == prune_loop(values, prune, offset)
    assert int(mask.sum()) == num - round(prune * num)


def test_prune_mask_keeps_the_hardest_and_offset_skips_the_very_hardest():
    scores = torch.arange(10.0)  # 9 is the hardest
    assert prune_mask(scores, 0.0).all()
    assert prune_mask(scores, 0.0, offset=0.3).all()  # nothing to skip when all are kept
    assert prune_mask(scores, 0.3).nonzero().flatten().tolist() == [3, 4, 5, 6, 7, 8, 9]
    assert prune_mask(scores, 0.5, offset=0.2).nonzero().flatten().tolist() == [3, 4, 5, 6, 7]
    # the offset is capped so that the kept count holds
    assert prune_mask(scores, 0.5, offset=0.9).nonzero().flatten().tolist() == [0, 1, 2, 3, 4]


def test_prune_mask_accepts_forgetting_counts():
    counts = forgetting_events(torch.tensor([[True, False, True], [False, False, True]]))
    assert prune_mask(counts, 1 / 3).tolist() == [True, True, False]
