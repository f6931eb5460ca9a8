"""ContinualAccuracy against a hand count, one process against two, a state_dict round trip."""

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
from lightning_plugins.metrics import ContinualAccuracy
from tests.helpers import run_ddp

NUM_TASKS = 3
CLASSES_PER_TASK = 2


def make_evaluations(seed=0, n=40):
    """(training_task, logits, target, task) for a baseline row and every step."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for row in range(-1, NUM_TASKS):
        task = torch.randint(0, NUM_TASKS, (n,), generator=g)
        target = task * CLASSES_PER_TASK + torch.randint(0, CLASSES_PER_TASK, (n,), generator=g)
        logits = torch.randn(n, NUM_TASKS * CLASSES_PER_TASK, generator=g, dtype=torch.float64)
        logits[torch.arange(n), target] += 1.0
        out.append((row, logits, target, task))
    return out


def hand_count(evaluations):
    """The matrix and baseline by counting hits in Python."""
    hits = {}
    for row, logits, target, task in evaluations:
        for scores, t, j in zip(logits.tolist(), target.tolist(), task.tolist(), strict=True):
            hit = max(range(len(scores)), key=scores.__getitem__) == t
            count = hits.setdefault((row, j), [0, 0])
            count[0] += hit
            count[1] += 1
    matrix = torch.full((NUM_TASKS, NUM_TASKS), math.nan, dtype=torch.float64)
    baseline = torch.full((NUM_TASKS,), math.nan, dtype=torch.float64)
    for (row, j), (c, n) in hits.items():
        if row < 0:
            baseline[j] = c / n
        else:
            matrix[row, j] = c / n
    return matrix, baseline


def feed(metric, evaluations, rank=0, world_size=1):
    for row, logits, target, task in evaluations:
        metric.set_training_task(row)
        for part in range(rank, 4, world_size):  # batches of 10, split over the ranks
            s = slice(10 * part, 10 * part + 10)
            metric.update(logits[s], target[s], task=task[s])


def test_matrix_and_summaries_against_a_hand_count():
    evaluations = make_evaluations()
    metric = ContinualAccuracy(num_tasks=NUM_TASKS)
    feed(metric, evaluations)
    result = metric.compute()
    matrix, baseline = hand_count(evaluations)
    torch.testing.assert_close(result["accuracy_matrix"], matrix, rtol=0, atol=0)
    torch.testing.assert_close(result["baseline_accuracy"], baseline, rtol=0, atol=0)
    assert result["average_accuracy"] == average_accuracy(matrix)
    assert result["average_incremental_accuracy"] == average_incremental_accuracy(matrix)
    assert result["forgetting"] == forgetting(matrix)
    assert result["backward_transfer"] == backward_transfer(matrix)
    assert result["forward_transfer"] == forward_transfer(matrix, baseline)


def test_class_ids_and_an_int_task():
    metric = ContinualAccuracy(num_tasks=2)
    metric.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), task=0)
    metric.update(torch.tensor([2, 3]), torch.tensor([3, 3]), task=1, training_task=1)
    result = metric.compute()
    expected = torch.tensor([[2 / 3, math.nan], [math.nan, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(result["accuracy_matrix"], expected, equal_nan=True)
    # row 1 lacks task 0: summaries reading it are NaN, not averaged over what is there
    assert math.isnan(result["average_accuracy"])
    assert math.isnan(result["forgetting"])
    assert math.isnan(result["forward_transfer"])


def test_summaries_after_the_first_task():
    metric = ContinualAccuracy(num_tasks=3)
    metric.update(torch.tensor([0, 1]), torch.tensor([0, 0]), task=0)
    result = metric.compute()
    assert result["average_accuracy"].item() == 0.5
    assert result["average_incremental_accuracy"].item() == 0.5
    for name in ("forgetting", "backward_transfer", "forward_transfer"):
        assert math.isnan(result[name]), name  # need two tasks


def test_reset_row_evaluates_a_row_afresh():
    metric = ContinualAccuracy(num_tasks=2)
    metric.update(torch.tensor([1, 1]), torch.tensor([0, 0]), task=0)
    assert metric.compute()["accuracy_matrix"][0, 0] == 0.0
    metric.reset_row(0)
    metric.update(torch.tensor([0, 1]), torch.tensor([0, 0]), task=0)
    assert metric.compute()["accuracy_matrix"][0, 0] == 0.5


def test_non_finite_logits_make_their_cell_nan_and_warn():
    metric = ContinualAccuracy(num_tasks=2)
    logits = torch.eye(3)
    logits[1, 0] = math.nan
    metric.update(logits, torch.arange(3), task=torch.tensor([0, 0, 1]))
    with pytest.warns(UserWarning, match="non-finite"):
        matrix = metric.compute()["accuracy_matrix"]
    assert math.isnan(matrix[0, 0]) and matrix[0, 1] == 1.0


def test_state_dict_round_trip_resumes():
    evaluations = make_evaluations(seed=1)
    whole = ContinualAccuracy(num_tasks=NUM_TASKS)
    feed(whole, evaluations)
    first = ContinualAccuracy(num_tasks=NUM_TASKS)
    feed(first, evaluations[:2])
    state = first.state_dict()
    assert set(state) == {
        "correct",
        "total",
        "baseline_correct",
        "baseline_total",
        "training_task",
    }
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    resumed = ContinualAccuracy(num_tasks=NUM_TASKS)
    resumed.load_state_dict(state)
    assert int(resumed.training_task) == 0  # the row evaluations[1] counted into
    feed(resumed, evaluations[2:])
    for key, value in whole.compute().items():
        torch.testing.assert_close(resumed.compute()[key], value, rtol=0, atol=0, equal_nan=True)


def test_save_writes_csv_and_png(tmp_path):
    metric = ContinualAccuracy(num_tasks=2)
    metric.update(torch.tensor([0, 0]), torch.tensor([0, 0]), task=0, training_task=-1)
    metric.update(torch.tensor([0, 1]), torch.tensor([0, 0]), task=0, training_task=0)
    metric.update(
        torch.tensor([1, 1]), torch.tensor([0, 1]), task=torch.tensor([0, 1]), training_task=1
    )
    csv_path, png_path = metric.save(tmp_path / "run")
    lines = open(csv_path).read().splitlines()
    assert lines == [
        "after_task,task_0,task_1",
        "init,1,",
        "0,0.5,",
        "1,0,1",
    ]
    with open(png_path, "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"


def _ddp_matrix(rank, world_size):
    metric = ContinualAccuracy(num_tasks=NUM_TASKS)
    feed(metric, make_evaluations(seed=2), rank, world_size)
    return metric.compute()


@pytest.mark.ddp
def test_ddp_matches_one_process_on_all_samples():
    single = ContinualAccuracy(num_tasks=NUM_TASKS)
    feed(single, make_evaluations(seed=2))
    expected = single.compute()
    local = ContinualAccuracy(num_tasks=NUM_TASKS)
    feed(local, make_evaluations(seed=2), rank=0, world_size=2)
    assert not torch.equal(
        local.compute()["accuracy_matrix"], expected["accuracy_matrix"]
    )  # the ranks do hold different samples
    for result in run_ddp(_ddp_matrix, world_size=2):
        assert set(result) == set(expected)
        for key, value in expected.items():
            torch.testing.assert_close(result[key], value, rtol=0, atol=0, equal_nan=True)
