"""SLCA on ``ClassIncremental(Digits)`` resumed in the middle of an epoch of the second of
three tasks equals the uninterrupted run: the weights, the class statistics, the aligned heads,
the accuracy matrix and the task hooks; and a checkpoint rebuilds the heads from its
hyperparameters."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_plugins.callbacks import TaskBoundaries
from lightning_plugins.datamodules import ClassIncremental, Digits
from lightning_plugins.modules import SLCA
from tests.modules.test_slca import slca, trainer

STEPS = 3  # per task: steps 0-2 train task 0, 3-5 task 1, 6-8 task 2


class Pixels(nn.Module):
    """A tiny backbone for 8x8 grey digits, with batch norm (running statistics resume too)."""

    num_features = 6

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.BatchNorm1d(6))

    def forward(self, image):
        return self.net(image)


def _fit(root, ckpt_path=None) -> tuple[SLCA, object]:
    module = slca(backbone=Pixels(), image_size=8)  # task_classes from the datamodule
    stream = ClassIncremental(
        Digits(batch_size=16, image_size=8, channels=1),
        increments=[4, 3, 3],
        class_order_seed=1,
        steps_per_task=STEPS,
    )
    checkpoints = ModelCheckpoint(
        dirpath=str(root / "ckpt"), filename="{step}", save_top_k=-1, every_n_train_steps=1
    )
    fit = trainer(
        root,
        max_epochs=-1,
        enable_checkpointing=True,
        callbacks=[checkpoints],
        reload_dataloaders_every_n_epochs=0,  # the stream sets it
        use_distributed_sampler=True,
    )
    fit.fit(module, datamodule=stream, ckpt_path=ckpt_path)
    return module, fit


def test_resume_mid_epoch_in_task_1_equals_the_uninterrupted_run(tmp_path):
    full, fit = _fit(tmp_path / "full")
    assert fit.current_epoch == 3 and fit.global_step == 3 * STEPS
    # after step 5 of 9: the second of task 1's three batches, mid-epoch
    resumed, refit = _fit(tmp_path / "resumed", str(tmp_path / "full" / "ckpt" / "step=5.ckpt"))
    boundaries = [c for c in refit.callbacks if isinstance(c, TaskBoundaries)]
    assert [(b.started, b.ended) for b in boundaries] == [(2, 2)]
    expected, state = full.state_dict(), resumed.state_dict()
    assert {"class_mean", "class_covariance", "aligned_weight", "continual_accuracy.correct"} <= (
        set(state)
    )
    assert set(state) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    assert int(resumed.aligned_tasks) == 3 and bool(resumed.has_statistics.all())
    matrix = resumed.continual_accuracy.compute()["accuracy_matrix"]
    torch.testing.assert_close(
        matrix, full.continual_accuracy.compute()["accuracy_matrix"], rtol=0, atol=0, equal_nan=True
    )
    assert not matrix.tril().isnan().any()

    last = str(tmp_path / "full" / "ckpt" / f"step={3 * STEPS}.ckpt")
    hparams = torch.load(last, weights_only=True, map_location="cpu")["hyper_parameters"]
    assert hparams["task_classes"] == [list(c) for c in full.task_classes]
    assert hparams["backbone"] is None and "optimizer" not in hparams
    loaded = SLCA.load_from_checkpoint(last, backbone=Pixels())
    assert loaded.task_classes == full.task_classes
    for key, value in expected.items():  # the metric counts the validation after the save
        if not key.startswith("continual_accuracy."):
            torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0, msg=key)
