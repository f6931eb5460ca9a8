"""ClassIncremental: task splits against hand splits, loaders per epoch in a real fit, bad input."""

from __future__ import annotations

import re
import sys

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from lightning_plugins.cli import main
from lightning_plugins.datamodules import ClassIncremental, Digits, SyntheticShapes
from lightning_plugins.datamodules.task_stream_data import TaskStreamData


class Tiny(pl.LightningModule):
    """A linear model on 8x8 grey digits that records what each epoch's loaders gave."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.net = torch.nn.Linear(64, num_classes)
        self.train_batches: list[tuple[int, dict]] = []  # (epoch, batch without image)
        self.val_batches: list[tuple[int, dict]] = []

    def training_step(self, batch, batch_idx):
        self.train_batches.append((self.current_epoch, _labels(batch)))
        logits = self.net(batch["image"].flatten(1))
        return torch.nn.functional.cross_entropy(logits, batch["label"])

    def validation_step(self, batch, batch_idx):
        if not self.trainer.sanity_checking:
            self.val_batches.append((self.current_epoch, _labels(batch)))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _labels(batch: dict) -> dict:
    return {key: value.clone() for key, value in batch.items() if key != "image"}


def fit(module: pl.LightningModule, stream, **trainer_args) -> pl.Trainer:
    settings = {
        "max_epochs": -1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        **trainer_args,
    }
    trainer = pl.Trainer(accelerator="cpu", devices=1, **settings)
    trainer.fit(module, stream)
    return trainer


@pytest.fixture(scope="module")
def digits() -> Digits:
    source = Digits(batch_size=64, image_size=8, channels=1)
    source.setup("fit")
    return source


# ------------------------------------------------------------------------ hand splits
@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"num_tasks": 5}, [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]),
        ({"num_tasks": 1}, [list(range(10))]),
        ({"classes_per_task": 4}, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]),
        ({"increments": [1, 6, 3]}, [[0], [1, 2, 3, 4, 5, 6], [7, 8, 9]]),
        (
            {"increments": [5, 3, 2], "class_order": [9, 3, 0, 7, 1, 8, 2, 6, 5, 4]},
            [[9, 3, 0, 7, 1], [8, 2, 6], [5, 4]],
        ),
        ({"num_tasks": 2, "class_order_seed": 3}, None),  # numpy's permutation, below
    ],
)
def test_task_classes_and_views_match_a_hand_split(digits, kwargs, expected):
    stream = ClassIncremental(digits, **kwargs)
    if expected is None:
        order = np.random.default_rng(3).permutation(10).tolist()
        expected = [order[:5], order[5:]]
        assert stream.class_order == order
    assert stream.task_classes == expected
    assert stream.num_tasks == len(expected) and stream.num_classes == 10
    assert isinstance(stream, TaskStreamData)
    stream.setup("fit")
    for split, source in (("train", digits.train_set), ("val", digits.val_set)):
        labels = source.labels.tolist()
        for task, classes in enumerate(expected):
            view = stream.views[split][task]
            hand = [i for i, label in enumerate(labels) if label in classes]
            assert view.positions.tolist() == hand
            for i in (0, len(view) - 1):
                sample = view[i]
                assert int(sample["index"]) == hand[i]
                assert int(sample["label"]) == labels[hand[i]]  # never remapped
                assert int(sample["task"]) == task
                assert torch.equal(sample["image"], source[hand[i]]["image"])
    assert stream.task_dataset(len(expected) - 1) is stream.views["train"][-1]


def test_test_loader_covers_all_tasks_in_order(digits):
    stream = ClassIncremental(digits, increments=[7, 3])
    stream.setup("test")
    batches = list(stream.test_dataloader())
    tasks = torch.cat([b["task"] for b in batches])
    labels = torch.cat([b["label"] for b in batches])
    assert len(tasks) == len(digits.test_set)
    assert torch.equal(tasks, (labels >= 7).long()) and bool((tasks.diff() >= 0).all())


def test_synthetic_shapes_classification_is_a_source():
    shapes = SyntheticShapes(
        batch_size=8, train_size=128, zero_shot_size=64, image_size=16, task="classification"
    )
    stream = ClassIncremental(shapes, classes_per_task=16)
    stream.setup("fit")
    assert stream.num_tasks == 4
    view = stream.views["train"][2]
    assert view.labels.tolist() == [i % 64 for i in view.positions.tolist()]
    assert set(view.labels.tolist()) == set(range(32, 48)) and len(view) == 32
    assert len(stream.views["val"][3]) == 16


# ------------------------------------------------------------------- loaders in a fit
def test_fit_trains_each_task_in_turn_and_validates_the_seen_tasks(digits):
    stream = ClassIncremental(digits, increments=[4, 3, 3], class_order_seed=1)
    module = Tiny()
    trainer = fit(module, stream)
    assert trainer.current_epoch == 3 and trainer.reload_dataloaders_every_n_epochs == 1
    counts = {epoch: 0 for epoch in range(3)}
    for epoch, batch in module.train_batches:
        task = stream.schedule.task_of_epoch(epoch)
        assert set(batch["label"].tolist()) <= set(stream.task_classes[task])
        assert bool((batch["task"] == task).all())
        assert torch.equal(digits.train_set.labels[batch["index"]], batch["label"])
        counts[epoch] += len(batch["label"])
    sizes = [len(stream.task_dataset(t)) for t in range(3)]
    assert [counts[e] for e in range(3)] == [-(-n // 64) * 64 for n in sizes]
    val_labels = digits.val_set.labels
    for epoch in range(3):
        seen = [c for t in range(epoch + 1) for c in stream.task_classes[t]]
        got = torch.cat([b["index"] for e, b in module.val_batches if e == epoch])
        expected = torch.nonzero(torch.isin(val_labels, torch.tensor(seen))).flatten()
        assert sorted(got.tolist()) == expected.tolist()  # exactly the seen tasks, once


def test_validate_outside_a_fit_covers_every_task(digits):
    stream = ClassIncremental(digits, num_tasks=5)
    module = Tiny()
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.validate(module, stream, verbose=False)  # a fresh trainer: epoch 0
    got = torch.cat([b["index"] for _, b in module.val_batches])
    assert sorted(got.tolist()) == list(range(len(digits.val_set)))


def test_steps_per_task_gives_exactly_that_many_batches(digits):
    stream = ClassIncremental(digits, num_tasks=5, steps_per_task=3, seed=4)
    module = Tiny()
    fit(module, stream, limit_val_batches=0)
    epochs = [epoch for epoch, _ in module.train_batches]
    assert epochs == [e for e in range(5) for _ in range(3)]
    assert all(len(batch["label"]) == 64 for _, batch in module.train_batches)


# ------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"increments": [4, 4]}, ValueError, r"`increments` \[4, 4\].*num_classes 10.*sum to 8"),
        ({"increments": [5, 0, 5]}, ValueError, r"increments\[1\]"),
        ({"increments": 5}, TypeError, "increments"),
        ({"num_tasks": 3}, ValueError, r"num_tasks.*evenly.*increments"),
        ({}, ValueError, "exactly one of .*none"),
        ({"num_tasks": 2, "classes_per_task": 5}, ValueError, "exactly one of"),
        (
            {"num_tasks": 2, "class_order": [0, 1, 2, 3, 4, 5, 6, 7, 8, 8]},
            ValueError,
            r"\[8\] are repeated \(the tasks overlap\); classes \[9\] are missing",
        ),
        ({"num_tasks": 2, "class_order": list(range(9))}, ValueError, r"\[9\] are missing"),
        (
            {"num_tasks": 2, "class_order": list(range(10)), "class_order_seed": 0},
            ValueError,
            "not both",
        ),
        ({"num_tasks": 2, "epochs_per_task": 0}, ValueError, "epochs_per_task"),
        ({"num_tasks": 2, "steps_per_task": 3, "epochs_per_task": 2}, ValueError, "stay 1"),
        ({"num_tasks": 2, "seed": 1.5}, TypeError, "seed"),
    ],
)
def test_bad_arguments(digits, kwargs, error, match):
    with pytest.raises(error, match=match):
        ClassIncremental(digits, **kwargs)


def test_a_dataset_without_the_protocol_is_refused():
    with pytest.raises(TypeError, match=r"lacks \['num_classes', 'batch_size', 'num_workers'\]"):
        ClassIncremental(pl.LightningDataModule(), num_tasks=2)


def test_an_empty_task_names_the_task_and_its_classes():
    digits = Digits(image_size=8, channels=1, val_fraction=0.001, test_fraction=0.1)
    digits.setup("fit")
    missing = sorted(set(range(10)) - set(digits.val_set.labels.tolist()))
    assert missing  # 2 validation images miss most classes
    order = [c for c in range(10) if c not in missing] + missing
    stream = ClassIncremental(
        digits, increments=[10 - len(missing), len(missing)], class_order=order
    )
    with pytest.raises(
        ValueError, match=re.escape(f"task 1 (classes {missing}) has no validation")
    ):
        stream.setup("fit")


@pytest.mark.parametrize(
    ("trainer_args", "match"),
    [
        ({"max_epochs": 2}, r"`max_epochs`=2 .* 3 tasks x 1 epochs = 3 epochs.*stop in task 2"),
        ({"reload_dataloaders_every_n_epochs": 2}, "reload_dataloaders_every_n_epochs.*got 2"),
    ],
)
def test_trainer_settings_that_break_the_stream(digits, trainer_args, match):
    with pytest.raises(ValueError, match=match):
        fit(Tiny(), ClassIncremental(digits, increments=[4, 3, 3]), **trainer_args)


def test_resume_with_another_split_is_refused(digits):
    saved = ClassIncremental(digits, num_tasks=5).state_dict()
    with pytest.raises(ValueError, match="task_classes="):
        ClassIncremental(digits, num_tasks=2).load_state_dict(saved)
    ClassIncremental(digits, num_tasks=5).load_state_dict(saved)


def test_from_yaml(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-plugins"])
    config = tmp_path / "stream.yaml"
    config.write_text(
        """
model:
  class_path: ImageClassifier
  init_args: {backbone: small_convnet, num_classes: 10, image_size: 8, in_channels: 1}
data:
  class_path: lightning_plugins.datamodules.ClassIncremental
  init_args:
    dataset:
      class_path: lightning_plugins.datamodules.Digits
      init_args: {batch_size: 16, image_size: 8, channels: 1}
    increments: [4, 6]
    steps_per_task: 2
"""
    )
    args = ["--config", str(config), "--seed_everything=0", "--trainer.logger=false"]
    cli = main([*args, f"--trainer.default_root_dir={tmp_path}"], run=False)
    stream = cli.datamodule
    assert isinstance(stream, ClassIncremental) and isinstance(stream.dataset, Digits)
    assert stream.task_classes == [[0, 1, 2, 3], [4, 5, 6, 7, 8, 9]]
    assert stream.dataset.batch_size == 16 and stream.steps_per_task == 2


def test_class_names_are_the_sources(digits):
    stream = ClassIncremental(digits, num_tasks=2, class_order_seed=0)
    assert stream.class_names == [str(d) for d in range(10)]  # by class id, not task order
    shapes = SyntheticShapes(batch_size=8, train_size=8, zero_shot_size=64, image_size=16)
    assert ClassIncremental(shapes, num_tasks=4).class_names == shapes.class_names

    class Unnamed(pl.LightningDataModule):
        num_classes, batch_size, num_workers = 4, 2, 0

    source = Unnamed()
    assert ClassIncremental(source, num_tasks=2).class_names is None
    source.class_names = ["a", "b"]
    with pytest.raises(ValueError, match=r"`dataset.class_names` holds 2 names for its 4"):
        ClassIncremental(source, num_tasks=2)
    source.class_names = "abcd"
    with pytest.raises(TypeError, match=r"`dataset.class_names` must be a list of strings"):
        ClassIncremental(source, num_tasks=2)
