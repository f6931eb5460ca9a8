"""Bad inputs to the metrics, and their policy for non-finite scores (issue 11, points 1, 7).

Impossible inputs raise, naming the argument and the value. A non-finite score is never a
hit: every result over samples that include one is NaN, with a warning, on every rank.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_plugins.metrics import (
    ContinualAccuracy,
    ImageTextEvaluation,
    ImageTextRetrieval,
    ZeroShotAccuracy,
    ZeroShotClasses,
)
from tests.helpers import run_ddp

BAD_ZERO_SHOT_ARGUMENTS = [
    ({"num_classes": "4"}, TypeError, r"`num_classes` must be an integer, got '4' \(str\)"),
    ({"num_classes": 0}, ValueError, r"`num_classes` must be a positive integer, got 0"),
    ({"num_classes": 3, "top_k": 1}, TypeError, r"`top_k` must be a sequence of integers, got 1"),
    ({"num_classes": 3, "top_k": (1.0,)}, TypeError, r"`top_k\[0\]` must be an integer, got 1.0"),
    (
        {"num_classes": 3, "top_k": (5,)},
        ValueError,
        r"`top_k` must hold at least one K <= num_classes=3, got \(5,\)",
    ),
    (
        {"num_classes": 3, "groups": [[0, 1]]},
        TypeError,
        r"`groups` must map group names to lists of class ids",
    ),
    (
        {"num_classes": 3, "groups": {"rare": [1.5]}},
        TypeError,
        r"`groups\['rare'\]` must be an integer, got 1.5",
    ),
    (
        {"num_classes": 3, "groups": {"rare": [3]}},
        ValueError,
        r"`groups\['rare'\]` holds class ids outside \[0, 3\)",
    ),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_ZERO_SHOT_ARGUMENTS)
def test_zero_shot_accuracy_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ZeroShotAccuracy(**kwargs)


LOGITS = torch.eye(4)[[0, 1, 2, 3, 0]]
TARGET = torch.tensor([0, 1, 2, 3, 1])
BAD_ZERO_SHOT_UPDATES = [
    # more score columns than classes used to be scored, a target outside counted as a miss
    (
        {"logits": torch.zeros(5, 6)},
        ValueError,
        r"`logits` must hold one column per class \(num_classes=4\), got shape \(5, 6\)",
    ),
    (
        {"logits": torch.zeros(5, 3)},
        ValueError,
        r"`logits` must hold one column per class \(num_classes=4\), got shape \(5, 3\)",
    ),
    (
        {"logits": torch.zeros(5)},
        ValueError,
        r"`logits` must be a \[B, num_classes\] tensor, got \(5,\)",
    ),
    ({"logits": [[0.0] * 4] * 5}, ValueError, r"`logits` must be a \[B, num_classes\] tensor"),
    (
        {"target": torch.tensor([0, 1, 2, 3, 4])},
        ValueError,
        r"`target` must hold class ids in \[0, 4\) .*got 4",
    ),
    (
        {"target": torch.tensor([0, 1, -1, 3, 0])},
        ValueError,
        r"`target` must hold class ids in \[0, 4\) .*got -1",
    ),
    (
        {"target": TARGET.float()},
        TypeError,
        r"`target` must hold integer class ids, got dtype torch.float32",
    ),
    ({"target": TARGET[:4]}, ValueError, r"`target`"),
    ({"index": torch.arange(4)}, ValueError, r"`index` must have the shape of `target` \(5,\)"),
]


@pytest.mark.parametrize(("overrides", "error", "match"), BAD_ZERO_SHOT_UPDATES)
def test_zero_shot_accuracy_rejects_bad_updates(overrides, error, match):
    metric = ZeroShotAccuracy(num_classes=4, top_k=(1,))
    arguments = {"logits": LOGITS, "target": TARGET, "index": torch.arange(5), **overrides}
    with pytest.raises(error, match=match):
        metric.update(**arguments)
    assert not metric.correct  # nothing was stored


BAD_RETRIEVAL_ARGUMENTS = [
    ({"top_k": 5}, TypeError, r"`top_k` must be a sequence of integers, got 5 \(int\)"),
    ({"top_k": "1"}, TypeError, r"`top_k` must be a sequence of integers, got '1'"),
    ({"top_k": (1, -1)}, ValueError, r"`top_k\[1\]` must be a positive integer, got -1"),
    ({"chunk_size": 0}, ValueError, r"`chunk_size` must be a positive integer, got 0"),
    ({"chunk_size": 8.0}, TypeError, r"`chunk_size` must be an integer, got 8.0 \(float\)"),
    ({"chunk_size": None}, TypeError, r"`chunk_size` must be an integer, got None"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_RETRIEVAL_ARGUMENTS)
def test_image_text_retrieval_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ImageTextRetrieval(**kwargs)


BAD_RETRIEVAL_UPDATES = [
    (
        {"text_features": torch.zeros(3, 8)},
        ValueError,
        r"`image_features` and `text_features` must have equal shapes",
    ),
    (
        {"image_features": torch.zeros(4, 2, 8), "text_features": torch.zeros(4, 2, 8)},
        ValueError,
        r"must be 2-D \[batch, dim\]",
    ),
    ({"index": torch.arange(3)}, ValueError, r"`index` must be \[B\] with B = 4"),
]


@pytest.mark.parametrize(("overrides", "error", "match"), BAD_RETRIEVAL_UPDATES)
def test_image_text_retrieval_rejects_bad_updates(overrides, error, match):
    metric = ImageTextRetrieval(top_k=(1,))
    arguments = {"image_features": torch.eye(4, 8), "text_features": torch.eye(4, 8), **overrides}
    with pytest.raises(error, match=match):
        metric.update(**arguments)


BAD_EVALUATION_ARGUMENTS = [
    ({"zero_shot_top_k": 1}, TypeError, r"`zero_shot_top_k` must be a sequence of integers"),
    ({"zero_shot_top_k": (0,)}, ValueError, r"`zero_shot_top_k\[0\]` must be a positive integer"),
    ({"zero_shot_top_k": ()}, ValueError, r"`zero_shot_top_k` must hold at least one K"),
    ({"retrieval_top_k": (1, "5")}, TypeError, r"`top_k\[1\]` must be an integer, got '5'"),
    ({"chunk_size": -1}, ValueError, r"`chunk_size` must be a positive integer, got -1"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_EVALUATION_ARGUMENTS)
def test_image_text_evaluation_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ImageTextEvaluation(**kwargs)


# ---------------------------------------------------------------- non-finite scores


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_zero_shot_all_non_finite_logits_are_nan_not_chance(bad):
    # all-NaN logits used to give top-1 0.25 on 4 classes
    metric = ZeroShotAccuracy(num_classes=4, top_k=(1, 4))
    metric.update(torch.full((8, 4), bad), torch.arange(8) % 4, index=torch.arange(8))
    with pytest.warns(UserWarning, match=r"ZeroShotAccuracy: 8 of 8 samples have non-finite"):
        result = metric.compute()
    assert all(math.isnan(value) for value in result.values()), result


def test_zero_shot_one_non_finite_row_is_nan_only_where_it_counts():
    metric = ZeroShotAccuracy(num_classes=4, top_k=(1,), groups={"low": [0, 1], "high": [2, 3]})
    logits = torch.eye(4)
    logits[3, 0] = math.nan  # sample 3, class 3: in "high"
    metric.update(logits, torch.arange(4), index=torch.arange(4))
    # a padding repeat of a finite sample does not hide the NaN one
    metric.update(torch.eye(4)[:1], torch.tensor([0]), index=torch.tensor([0]))
    with pytest.warns(UserWarning, match=r"1 of 4 samples"):
        result = metric.compute()
    assert math.isnan(result["top1"]) and math.isnan(result["top1_high"])
    assert result["top1_low"] == 1.0


def test_zero_shot_finite_logits_do_not_warn(recwarn):
    metric = ZeroShotAccuracy(num_classes=4, top_k=(1,))
    metric.update(torch.eye(4), torch.arange(4))
    assert metric.compute()["top1"] == 1.0
    assert not [w for w in recwarn if "non-finite" in str(w.message)]


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_retrieval_non_finite_embeddings_are_nan_not_perfect(bad):
    # a NaN image embedding used to give i2t_R@1 = t2i_R@1 = 1.0
    images = torch.eye(6, 8)
    images[4] = bad
    metric = ImageTextRetrieval(top_k=(1, 5), chunk_size=4)
    metric.update(images, torch.eye(6, 8), index=torch.arange(6))
    with pytest.warns(UserWarning, match=r"1 of 6 image queries and 6 of 6 text queries"):
        result = metric.compute()
    assert all(math.isnan(value) for value in result.values()), result


def test_evaluation_of_a_diverged_model_logs_nan():
    """The reported case: a NaN projection scored perfect retrieval and chance zero-shot."""
    classes = ZeroShotClasses(["a", "b", "c", "d"], ["{}"])
    table = F.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=-1)

    def encode(prompts):
        return table[["abcd".index(p) for p in prompts]]

    evaluation = ImageTextEvaluation(zero_shot_top_k=(1,), retrieval_top_k=(1,))
    evaluation.start(classes, encode)
    images = torch.full((8, 8), math.nan)  # what a NaN projection gives
    evaluation.update(images, labels=torch.arange(8) % 4, text_features=table[torch.arange(8) % 4])
    with pytest.warns(UserWarning, match="non-finite"):
        result = evaluation.compute()
    assert set(result) == {"zero_shot_top1", "i2t_R@1", "t2i_R@1"}
    assert all(math.isnan(value) for value in result.values()), result


# ---------------------------------------------------------------- DDP


def _ddp_one_rank_non_finite(rank: int, world_size: int) -> dict:
    """Rank 1 alone holds a non-finite sample; every rank's result must be NaN."""
    accuracy = ZeroShotAccuracy(num_classes=4, top_k=(1,))
    retrieval = ImageTextRetrieval(top_k=(1,))
    logits = torch.eye(4)
    images = torch.eye(4, 8)
    if rank == 1:
        logits[2, 1] = math.nan
        images[2, 3] = math.inf
    index = torch.arange(4) + 4 * rank
    accuracy.update(logits, torch.arange(4), index=index)
    retrieval.update(images, torch.eye(4, 8) + 0.0, index=index)
    return {**accuracy.compute(), **retrieval.compute()}


@pytest.mark.ddp
def test_ddp_non_finite_on_one_rank_is_nan_on_every_rank():
    results = run_ddp(_ddp_one_rank_non_finite, world_size=2)
    for result in results:
        assert set(result) == {"top1", "i2t_R@1", "t2i_R@1"}
        assert all(math.isnan(float(value)) for value in result.values()), result


# ---------------------------------------------------------------- ContinualAccuracy (issue 15)

BAD_CONTINUAL_ARGUMENTS = [
    ({"num_tasks": 0}, ValueError, r"`num_tasks` must be a positive integer, got 0"),
    ({"num_tasks": 2.0}, TypeError, r"`num_tasks` must be an integer, got 2.0 \(float\)"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_CONTINUAL_ARGUMENTS)
def test_continual_accuracy_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ContinualAccuracy(**kwargs)


def _continual_update(**overrides):
    args = {
        "preds": torch.tensor([0, 1, 2]),
        "target": torch.tensor([0, 1, 1]),
        "task": torch.tensor([0, 0, 1]),
    }
    args.update(overrides)
    ContinualAccuracy(num_tasks=2).update(**args)


BAD_CONTINUAL_UPDATES = [
    (
        {"task": torch.tensor([0, 2, 1])},
        ValueError,
        r"`task` must hold task ids in \[0, 2\) \(num_tasks=2\), got 2",
    ),
    ({"task": 5}, ValueError, r"`task` must be an integer in \[0, 1\], got 5"),
    ({"task": "0"}, TypeError, r"`task` must be an integer, got '0' \(str\)"),
    ({"task": torch.tensor([0.0, 0.0, 1.0])}, TypeError, r"`task` must hold integer task ids"),
    (
        {"task": torch.tensor([0, 1])},
        ValueError,
        r"`task` must be an int or have the shape of `target` \(3,\), got \(2,\)",
    ),
    (
        {"training_task": 2},
        ValueError,
        r"`training_task` must be an integer in \[-1, 1\], got 2",
    ),
    (
        {"preds": torch.tensor([0.0, 1.0, 2.0])},
        TypeError,
        r"`preds` of shape \[B\] must hold integer class ids, got dtype torch.float32",
    ),
    (
        {"preds": torch.zeros(3, 2, 2)},
        ValueError,
        r"`preds` must be \[B\] class ids or \[B, C\] logits, got \(3, 2, 2\)",
    ),
    (
        {"preds": torch.tensor([0, 1])},
        ValueError,
        r"`preds` and `target` must hold the same number of samples",
    ),
    (
        {"target": torch.tensor([0.0, 1.0, 1.0])},
        TypeError,
        r"`target` must hold integer class ids, got dtype torch.float32",
    ),
    (
        {"preds": torch.eye(3), "target": torch.tensor([0, 1, 3])},
        ValueError,
        r"`target` must hold class ids in \[0, 3\).*got 3",
    ),
]


@pytest.mark.parametrize(("overrides", "error", "match"), BAD_CONTINUAL_UPDATES)
def test_continual_accuracy_rejects_bad_updates(overrides, error, match):
    with pytest.raises(error, match=match):
        _continual_update(**overrides)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda m: m.set_training_task(-2), ValueError, r"`training_task` must be an integer in"),
        (lambda m: m.reset_row(3), ValueError, r"`training_task` must be an integer in"),
        (lambda m: m.save(3), TypeError, r"`folder` must be a path, got 3 \(int\)"),
    ],
)
def test_continual_accuracy_rejects_bad_calls(call, error, match):
    with pytest.raises(error, match=match):
        call(ContinualAccuracy(num_tasks=3))
