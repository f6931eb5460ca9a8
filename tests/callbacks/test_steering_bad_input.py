"""Bad input to Curriculum and DataDiet: errors name the argument, the value, what is allowed."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_plugins.callbacks import Curriculum, DataDiet
from tests.callbacks.steering import NUM_SAMPLES, Points, PointsData, UserClassifier, fit

GOOD = [0.5] * NUM_SAMPLES


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "hard"}, ValueError, r"`mode` must be one of \('subset', 'weight', 'anneal'\)"),
        ({"pacing": "cubic"}, ValueError, "`pacing` must be one of .*got 'cubic'"),
        ({"pacing": 3}, TypeError, "`pacing` must be one of .* or a callable"),
        ({"start": 0.0}, ValueError, r"`start` must be .*\(0, 1\]"),
        ({"start": 1.5}, ValueError, "`start`.*1.5"),
        ({"total_steps": 0}, ValueError, "`total_steps`"),
        ({"anneal_epochs": 0}, ValueError, "`anneal_epochs`"),
        ({"rescore_every_n_epochs": 1.5}, TypeError, "`rescore_every_n_epochs`"),
        ({"difficulty": [0.1, float("nan"), 0.3]}, ValueError, "NaN or infinite.*index 1"),
        ({"difficulty": [0.1, float("inf")]}, ValueError, "1 NaN or infinite"),
        ({"difficulty": [[0.1, 0.2]]}, ValueError, r"one real number per sample \(1-D\)"),
        ({"difficulty": []}, ValueError, "one real number per sample"),
        ({"difficulty": {"a": 1}}, TypeError, "`difficulty` must be per-sample values"),
        ({"difficulty": "field:"}, ValueError, "needs a batch key"),
        ({"difficulty": "missing.npy"}, ValueError, "'missing.npy' does not exist"),
        ({"difficulty": "scores.txt"}, ValueError, r"must end in one of \('.npy', '.pt', '.csv'\)"),
    ],
)
def test_curriculum_arguments(kwargs, error, match):
    kwargs = {"difficulty": GOOD, **kwargs}
    with pytest.raises(error, match=match):
        Curriculum(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"score": "loss"}, ValueError, "`score` must be one of .*'el2n'"),
        ({"prune": 1.0}, ValueError, r"`prune` must be .*\[0, 1\).*1.0"),
        ({"prune": -0.1}, ValueError, "`prune`"),
        ({"prune": float("nan")}, ValueError, "`prune`"),
        ({"offset": 1.0}, ValueError, "`offset`"),
        ({"score_epoch": -1}, ValueError, "`score_epoch`"),
        ({"score_epoch": 1, "repeats": 3}, ValueError, "`repeats`"),
        ({"score": "forgetting", "score_epoch": 0}, ValueError, "`score_epoch`"),
        ({"score": "forgetting", "score_epoch": 3, "repeats": 2}, ValueError, "`repeats`=2"),
        ({"plot": "yes"}, TypeError, "`plot`"),
        ({"chunk_size": 0}, ValueError, "`chunk_size`"),
    ],
)
def test_data_diet_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        DataDiet(**kwargs)


def test_difficulty_of_the_wrong_length_is_named_at_fit(tmp_path):
    with pytest.raises(ValueError, match=f"holds 3 values, but the training set has {NUM_SAMPLES}"):
        fit(tmp_path, [Curriculum([0.1, 0.2, 0.3])], max_steps=1)


def test_a_pacing_value_outside_0_1_is_named(tmp_path):
    with pytest.raises(
        ValueError, match=r"`pacing\(0\)` must be a finite number in \(0, 1\], got 1.5"
    ):
        fit(tmp_path, [Curriculum(GOOD, pacing=lambda step: 1.5)], max_steps=1)


def test_a_missing_field_lists_the_batch_keys(tmp_path):
    with pytest.raises(ValueError, match=r"reads batch\['hardness'\].*\['difficulty', 'index'"):
        fit(tmp_path, [Curriculum("field:hardness")], max_steps=1)


class NoProtocols(UserClassifier):
    per_sample_loss = None  # a module that implements neither protocol
    classification_logits = None

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.cross_entropy(self.net(batch["x"]), batch["label"])


@pytest.mark.parametrize(
    ("callback", "match"),
    [
        (lambda: Curriculum("loss"), r"Curriculum\(difficulty='loss'\) needs .*per_sample_loss"),
        (lambda: DataDiet(score="el2n"), r"DataDiet\(score='el2n'\) needs .*classification_logits"),
        (lambda: DataDiet(score="grand"), r"DataDiet\(score='grand'\) needs .*per_sample_loss"),
    ],
)
def test_a_module_without_the_protocol_is_named(tmp_path, callback, match):
    with pytest.raises(TypeError, match=match):
        fit(tmp_path, [callback()], max_steps=1, module=NoProtocols())


@pytest.mark.parametrize(
    "callback", [lambda: Curriculum(GOOD), lambda: DataDiet(score="el2n", score_epoch=0)]
)
def test_no_steerable_sampler_names_what_was_found(tmp_path, callback):
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        callbacks=[callback()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    loader = DataLoader(Points(), batch_size=8, shuffle=True)
    with pytest.raises(ValueError, match="RandomSampler"):
        trainer.fit(UserClassifier(), loader)


def test_weight_mode_without_index_is_named(tmp_path):
    class NoIndex(PointsData):
        def train_dataloader(self):
            loader = super().train_dataloader()
            loader.collate_fn = _drop_index
            return loader

    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        callbacks=[Curriculum(GOOD, mode="weight")],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(ValueError, match="the train batch has no 'index'"):
        trainer.fit(UserClassifier(), NoIndex())


def _drop_index(samples):
    from torch.utils.data import default_collate

    batch = default_collate(samples)
    del batch["index"]
    return batch


def test_a_first_epoch_drawn_by_workers_is_named(tmp_path):
    with pytest.warns(UserWarning, match="steers the sampler from epoch 1 on: with num_workers=2"):
        fit(tmp_path, [Curriculum(GOOD)], max_steps=1, num_workers=2)
