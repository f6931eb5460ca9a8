"""TaskStream: several labelled datamodules as tasks with offset label spaces."""

from __future__ import annotations

import sys

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import Dataset

from lightning_plugins.cli import main
from lightning_plugins.datamodules import Digits, TaskStream
from lightning_plugins.datamodules.task_stream_data import TaskStreamData
from tests.datamodules.test_class_incremental import Tiny, fit


class Blobs(Dataset):
    """A user's split without ``labels``: labels come from the samples."""

    def __init__(self, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(size, 1, 8, 8, generator=generator)
        self.classes = torch.arange(size) % 3

    def __len__(self) -> int:
        return len(self.classes)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "label": int(self.classes[index]), "extra": "x"}


class UserData(pl.LightningDataModule):
    """A user's labelled datamodule (the LabelledSplits protocol) with 3 classes."""

    num_classes, batch_size, num_workers = 3, 5, 0

    def setup(self, stage: str) -> None:
        self.train_set, self.val_set = Blobs(23, 0), Blobs(7, 1)


@pytest.fixture(scope="module")
def sources():
    digits = Digits(batch_size=32, image_size=8, channels=1, val_fraction=0.1, split_seed=3)
    return [digits, UserData()]


def test_labels_are_offset_and_the_task_label_kept(sources):
    digits = sources[0]
    stream = TaskStream(sources)
    assert isinstance(stream, TaskStreamData)
    assert stream.num_tasks == 2 and stream.num_classes == 13
    assert stream.task_classes == [list(range(10)), [10, 11, 12]]
    stream.setup("fit")
    n_digits = len(digits.train_set)
    assert [len(stream.task_dataset(t)) for t in range(2)] == [n_digits, 23]  # unequal
    for position in (0, 22):
        sample = stream.task_dataset(1)[position]
        assert int(sample["task_label"]) == position % 3
        assert int(sample["label"]) == 10 + position % 3 and int(sample["task"]) == 1
        assert int(sample["index"]) == n_digits + position
        assert "extra" not in sample
    sample = stream.task_dataset(0)[5]
    assert int(sample["label"]) == int(sample["task_label"]) == int(digits.train_set.labels[5])
    assert int(sample["index"]) == 5


def test_a_fit_trains_each_source_with_its_own_batch_size(sources):
    module = Tiny(num_classes=13)
    stream = TaskStream(sources, steps_per_task=2, seed=1)
    fit(module, stream)
    epochs = [(epoch, len(batch["label"])) for epoch, batch in module.train_batches]
    assert epochs == [(0, 32), (0, 32), (1, 5), (1, 5)]
    for epoch, batch in module.train_batches:
        assert bool((batch["task"] == epoch).all())
        assert torch.equal(batch["label"], batch["task_label"] + 10 * epoch)
    val = {
        epoch: torch.cat([b["label"] for e, b in module.val_batches if e == epoch])
        for epoch in (0, 1)
    }
    assert set(val[0].tolist()) == set(range(10))
    assert len(val[1]) == len(sources[0].val_set) + 7 and set(val[1].tolist()) == set(range(13))


def test_bad_tasks():
    with pytest.raises(TypeError, match="non-empty list"):
        TaskStream([])
    with pytest.raises(TypeError, match=r"tasks\[1\].*lacks \['num_classes'"):
        TaskStream([UserData(), pl.LightningDataModule()])

    class Wrong(UserData):
        num_classes = 2

    with pytest.raises(ValueError, match=r"tasks\[0\]\.train_set .* labels \[2\] outside"):
        TaskStream([Wrong()]).setup("fit")


def test_from_yaml(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-plugins"])
    config = tmp_path / "stream.yaml"
    config.write_text(
        """
model:
  class_path: ImageClassifier
  init_args: {backbone: small_convnet, num_classes: 20, image_size: 8, in_channels: 1}
data:
  class_path: lightning_plugins.datamodules.TaskStream
  init_args:
    tasks:
      - class_path: lightning_plugins.datamodules.Digits
        init_args: {batch_size: 16, image_size: 8, channels: 1}
      - class_path: lightning_plugins.datamodules.Digits
        init_args: {batch_size: 8, image_size: 8, channels: 1, split_seed: 1}
    epochs_per_task: 2
"""
    )
    args = ["--config", str(config), "--seed_everything=0", "--trainer.logger=false"]
    cli = main([*args, f"--trainer.default_root_dir={tmp_path}"], run=False)
    stream = cli.datamodule
    assert isinstance(stream, TaskStream) and stream.epochs_per_task == 2
    assert [(d.batch_size, d.split_seed) for d in stream.tasks] == [(16, 0), (8, 1)]
    assert stream.task_classes[1] == list(range(10, 20))


def test_class_names_concatenated_in_offset_order(sources):
    digits = sources[0]
    named = UserData()
    named.class_names = ["x", "0", "y"]  # "0" collides with a digit: kept, documented
    stream = TaskStream([digits, named])
    assert stream.class_names == [str(d) for d in range(10)] + ["x", "0", "y"]
    assert TaskStream([digits, UserData()]).class_names is None  # a source without names
