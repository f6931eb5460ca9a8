"""Curriculum: subset, weight and anneal modes against hand references, every source."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from lightning_plugins.callbacks import Curriculum, DataDiet
from tests.callbacks.steering import (
    NUM_SAMPLES,
    Points,
    Snapshots,
    batches_of_epoch,
    fit,
    net_at,
)


def linear(step, start=0.25, total=12):
    return min(1.0, start + (1 - start) * step / total)


def easiest(difficulty, share):
    """The ``ceil(share * N)`` easiest samples, ties broken by index (plain Python)."""
    values = [float(v) for v in difficulty]
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    return set(order[: max(1, math.ceil(share * len(values)))])


def ease(difficulty):
    values = [float(v) for v in difficulty]
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    rank = {i: r for r, i in enumerate(order)}
    return [1 - rank[i] / len(values) for i in range(len(values))]


def test_subset_trains_on_the_easiest_share_of_each_step(tmp_path):
    difficulty = Points().difficulty
    curriculum = Curriculum(difficulty, pacing="linear", start=0.25, total_steps=12)
    module = fit(tmp_path, [curriculum], max_steps=18)
    widened = False
    for step, (indices, weight) in enumerate(module.seen):
        pool = easiest(difficulty, linear(step))
        assert set(indices) <= pool, step
        assert weight is None
        widened |= not set(indices) <= easiest(difficulty, 0.25)
    assert widened  # the pool grew beyond the first share


@pytest.mark.parametrize("mode", ["weight", "anneal"])
def test_weights_follow_the_formula_per_sample(tmp_path, mode):
    difficulty = Points().difficulty
    curriculum = Curriculum(
        difficulty, pacing="linear", mode=mode, start=0.25, total_steps=12, anneal_epochs=2
    )
    module = fit(tmp_path, [curriculum], max_steps=14)
    reference = ease(difficulty)
    all_seen = set()
    for step, (indices, weight) in enumerate(module.seen):
        progress = linear(step) if mode == "weight" else min(1.0, (step // 6) / 2)
        expected = [reference[i] + (1 - reference[i]) * progress for i in indices]
        np.testing.assert_allclose(weight, expected, rtol=1e-6)
        all_seen |= set(indices)
    assert len(all_seen) == NUM_SAMPLES  # weighting never drops a sample


class Difficulties(Callback):
    """Records the curriculum's difficulty at each epoch start (after the curriculum)."""

    def __init__(self, curriculum):
        self.curriculum, self.values = curriculum, {}

    def on_train_epoch_start(self, trainer, pl_module):
        self.values[trainer.current_epoch] = self.curriculum.difficulty.clone()


def test_self_paced_keeps_the_lowest_losses_of_the_epoch_start(tmp_path):
    snapshots = Snapshots()
    curriculum = Curriculum("loss", pacing="linear", start=0.25, total_steps=12)
    recorded = Difficulties(curriculum)
    module = fit(tmp_path, [snapshots, curriculum, recorded], max_steps=18)
    data = Points()
    for epoch in range(3):
        with torch.no_grad():
            losses = F.cross_entropy(
                net_at(snapshots.weights[epoch])(data.x), data.label, reduction="none"
            )
        torch.testing.assert_close(recorded.values[epoch].float(), losses, rtol=1e-5, atol=1e-6)
        for offset, (indices, _) in enumerate(batches_of_epoch(module, epoch)):
            assert set(indices) <= easiest(losses, linear(epoch * 6 + offset)), (epoch, offset)


def test_rescore_every_n_epochs(tmp_path):
    curriculum = Curriculum("loss", pacing="linear", total_steps=12, rescore_every_n_epochs=2)
    recorded = Difficulties(curriculum)
    fit(tmp_path, [curriculum, recorded], max_steps=18)
    assert torch.equal(recorded.values[0], recorded.values[1])
    assert not torch.equal(recorded.values[1], recorded.values[2])


def test_field_reads_the_batch_key_once(tmp_path):
    curriculum = Curriculum("field:difficulty", pacing="linear", start=0.25, total_steps=12)
    module = fit(tmp_path, [curriculum], max_steps=6)
    torch.testing.assert_close(curriculum.difficulty, Points().difficulty.double())
    for step, (indices, _) in enumerate(module.seen):
        assert set(indices) <= easiest(Points().difficulty, linear(step))


def test_file_sources_equal_the_values(tmp_path):
    values = Points().difficulty.double()
    np.save(tmp_path / "d.npy", values.numpy())
    torch.save({"scores": values}, tmp_path / "d.pt")
    (tmp_path / "d.csv").write_text("difficulty\n" + "\n".join(repr(float(v)) for v in values))
    for name in ("d.npy", "d.pt", "d.csv"):
        torch.testing.assert_close(Curriculum(tmp_path / name).difficulty, values)


def test_data_diet_scores_as_difficulty(tmp_path):
    diet = DataDiet(score="el2n", score_epoch=1, plot=False, save_dir=tmp_path)
    curriculum = Curriculum(diet, pacing="linear", start=0.25, total_steps=12)
    module = fit(tmp_path, [diet, curriculum], max_steps=12)
    assert {i for indices, _ in batches_of_epoch(module, 0) for i in indices} > easiest(
        diet.scores, 0.5
    )  # before scoring: uniform
    torch.testing.assert_close(curriculum.difficulty, diet.scores)
    for offset, (indices, _) in enumerate(batches_of_epoch(module, 1)):
        assert set(indices) <= easiest(diet.scores, linear(6 + offset))


def test_logs_pacing_share_and_difficulty(tmp_path):
    import lightning.pytorch as pl

    from tests.callbacks.steering import PointsData, UserClassifier

    curriculum = Curriculum(Points().difficulty, pacing="linear", start=0.25, total_steps=12)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=5,
        log_every_n_steps=1,
        callbacks=[curriculum],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(UserClassifier(), PointsData())
    metrics = trainer.callback_metrics
    assert float(metrics["curriculum/pacing"]) == pytest.approx(linear(4))
    assert float(metrics["curriculum/data_share"]) == pytest.approx(
        math.ceil(linear(4) * NUM_SAMPLES) / NUM_SAMPLES
    )
    assert "curriculum/difficulty_mean" in metrics


def test_user_callable_pacing(tmp_path):
    difficulty = Points().difficulty
    curriculum = Curriculum(difficulty, pacing=lambda step: 0.5 if step < 6 else 1.0)
    module = fit(tmp_path, [curriculum], max_steps=6)
    for indices, _ in module.seen:
        assert set(indices) <= easiest(difficulty, 0.5)
