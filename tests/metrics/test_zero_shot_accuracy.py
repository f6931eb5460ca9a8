"""ZeroShotAccuracy against a Python top-K accuracy on the de-duplicated union."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_plugins.metrics import ZeroShotAccuracy
from tests.helpers import run_ddp

NUM_CLASSES = 10
TOP_K = (1, 3)
GROUPS = {"rare": [7, 8, 9], "odd": [1, 3, 5, 7, 9]}


def reference_accuracy(logits, target, top_k, groups):
    """Rank of the target by counting classes that score higher (inputs have no ties)."""
    rows, targets = logits.tolist(), target.tolist()
    ranks = [sum(v > row[t] for v in row) for row, t in zip(rows, targets, strict=True)]

    def acc(members):
        chosen = [r for r, t in zip(ranks, targets, strict=True) if t in members]
        return {k: sum(r < k for r in chosen) / len(chosen) for k in top_k}

    out = {f"top{k}": v for k, v in acc(set(range(logits.shape[1]))).items()}
    for name, ids in groups.items():
        out.update({f"top{k}_{name}": v for k, v in acc(set(ids)).items()})
    return out


def make_data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    logits = torch.randn(n, NUM_CLASSES, generator=g, dtype=torch.float64)
    logits[torch.arange(n), target] += 1.0  # better than chance, still many misses
    return logits, target


def as_floats(result):
    return {k: float(v) for k, v in result.items()}


def assert_results_equal(result, expected):
    assert set(result) == set(expected)
    for key, value in expected.items():
        assert float(result[key]) == pytest.approx(value, abs=1e-6), key


def test_union_of_updates_matches_reference():
    logits, target = make_data(50)
    metric = ZeroShotAccuracy(NUM_CLASSES, top_k=TOP_K, groups=GROUPS)
    for start, stop in [(0, 16), (16, 17), (17, 40), (40, 50)]:
        metric.update(logits[start:stop], target[start:stop], index=torch.arange(start, stop))
    expected = reference_accuracy(logits, target, TOP_K, GROUPS)
    assert_results_equal(metric.compute(), expected)
    assert 0 < expected["top1"] < expected["top3"] < 1
    assert expected["top1_rare"] != expected["top1"]


def test_padding_repeats_are_dropped():
    logits, target = make_data(20, seed=1)
    metric = ZeroShotAccuracy(NUM_CLASSES, top_k=TOP_K, groups=GROUPS)
    metric.update(logits, target, index=torch.arange(20))
    # repeats carry deliberately wrong predictions: counting them would lower accuracy
    wrong = -logits[:4]
    metric.update(wrong, target[:4], index=torch.arange(4))
    assert_results_equal(metric.compute(), reference_accuracy(logits, target, TOP_K, GROUPS))


def test_first_occurrence_wins_and_without_index_all_count():
    logits, target = make_data(12, seed=2)
    wrong = -logits
    metric = ZeroShotAccuracy(NUM_CLASSES, top_k=(1,))
    metric.update(wrong[:3], target[:3], index=torch.arange(3))
    metric.update(logits, target, index=torch.arange(12))
    both = torch.cat([wrong[:3], logits[3:]])
    assert_results_equal(metric.compute(), reference_accuracy(both, target, (1,), {}))

    metric = ZeroShotAccuracy(NUM_CLASSES, top_k=(1,))
    metric.update(logits, target)
    metric.update(wrong[:3], target[:3])
    expected = reference_accuracy(
        torch.cat([logits, wrong[:3]]), torch.cat([target, target[:3]]), (1,), {}
    )
    assert_results_equal(metric.compute(), expected)


def test_handmade_groups():
    metric = ZeroShotAccuracy(num_classes=3, top_k=(1, 2), groups={"rare": [2], "head": [0, 1]})
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.7, 0.2], [0.5, 0.1, 0.4], [0.1, 0.2, 0.7]])
    metric.update(logits, torch.tensor([0, 0, 2, 2]), index=torch.arange(4))
    result = as_floats(metric.compute())
    assert result == pytest.approx(
        {
            "top1": 0.5,
            "top2": 0.75,
            "top1_rare": 0.5,
            "top2_rare": 1.0,
            "top1_head": 0.5,
            "top2_head": 0.5,
        }
    )


def test_top_k_above_num_classes_is_dropped():
    metric = ZeroShotAccuracy(num_classes=3)  # default top_k (1, 5)
    metric.update(torch.eye(3), torch.arange(3))
    assert as_floats(metric.compute()) == {"top1": 1.0}


def test_group_without_samples_is_nan():
    metric = ZeroShotAccuracy(num_classes=4, top_k=(1,), groups={"rare": [3]})
    metric.update(torch.eye(4)[:3], torch.arange(3), index=torch.arange(3))
    result = as_floats(metric.compute())
    assert result["top1"] == 1.0 and math.isnan(result["top1_rare"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 3, "top_k": (4,)}, "top_k"),
        ({"num_classes": 3, "top_k": (0, 1)}, "top_k"),
        ({"num_classes": 3, "top_k": ()}, "top_k"),
        ({"num_classes": 3, "groups": {"rare": [1, 3]}}, "rare"),
        ({"num_classes": 3, "groups": {"rare": [-1]}}, "rare"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ZeroShotAccuracy(**kwargs)


def test_bad_update_raises():
    metric = ZeroShotAccuracy(num_classes=3, top_k=(1,))
    with pytest.raises(ValueError, match="index"):
        metric.update(torch.eye(3), torch.arange(3), index=torch.arange(2))
    with pytest.raises(ValueError, match="target"):
        metric.update(torch.eye(3), torch.arange(2))


N_DDP = 37


def _ddp_accuracy(rank, world_size):
    logits, target = make_data(N_DDP, seed=7)
    index = torch.arange(N_DDP)
    total = -(-N_DDP // world_size) * world_size
    padded = torch.cat([index, index[: total - N_DDP]])
    mine = padded[rank::world_size]
    metric = ZeroShotAccuracy(NUM_CLASSES, top_k=TOP_K, groups=GROUPS)
    for part in mine.split(6):
        metric.update(logits[part], target[part], index=part)
    return as_floats(metric.compute())


@pytest.mark.ddp
def test_ddp_matches_single_process():
    assert N_DDP % 2 == 1  # rank 1 gets a padding repeat
    results = run_ddp(_ddp_accuracy, world_size=2)
    logits, target = make_data(N_DDP, seed=7)
    expected = reference_accuracy(logits, target, TOP_K, GROUPS)
    for result in results:
        assert_results_equal(result, expected)
