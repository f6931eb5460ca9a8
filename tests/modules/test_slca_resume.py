"""SLCA resumed in the middle of the second of three tasks equals the uninterrupted run: the
weights, the class statistics, the aligned heads and the accuracy matrix; and a checkpoint
rebuilds the heads from its hyperparameters."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_plugins.modules import SLCA
from tests.modules.test_slca import Blobs, Features, slca, trainer


def _fit(root, ckpt_path=None) -> SLCA:
    module = slca(covariance="full")  # task_classes from the datamodule
    checkpoints = ModelCheckpoint(
        dirpath=str(root / "ckpt"), filename="{epoch}", save_top_k=-1, every_n_epochs=1
    )
    fit = trainer(root, max_epochs=6, enable_checkpointing=True, callbacks=[checkpoints])
    fit.fit(module, datamodule=Blobs(epochs_per_task=2), ckpt_path=ckpt_path)
    return module


def test_resume_in_the_middle_of_task_1_equals_the_uninterrupted_run(tmp_path):
    full = _fit(tmp_path / "full")
    # epoch 2 is the first of task 1's two epochs: the checkpoint after it is mid-task
    resumed = _fit(tmp_path / "resumed", str(tmp_path / "full" / "ckpt" / "epoch=2.ckpt"))
    expected, state = full.state_dict(), resumed.state_dict()
    assert {"class_mean", "class_covariance", "aligned_weight", "continual_accuracy.correct"} <= (
        set(state)
    )
    assert set(state) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    assert int(resumed.aligned_tasks) == 3 and bool(resumed.has_statistics.all())
    matrix = resumed.continual_accuracy.compute()["accuracy_matrix"]
    expected_matrix = full.continual_accuracy.compute()["accuracy_matrix"]
    torch.testing.assert_close(matrix, expected_matrix, equal_nan=True)
    assert not matrix.tril().isnan().any()

    last = str(tmp_path / "full" / "ckpt" / "epoch=5.ckpt")
    hparams = torch.load(last, weights_only=True, map_location="cpu")["hyper_parameters"]
    assert hparams["task_classes"] == [list(c) for c in full.task_classes]
    assert hparams["backbone"] is None and "optimizer" not in hparams
    loaded = SLCA.load_from_checkpoint(last, backbone=Features())
    assert loaded.task_classes == full.task_classes
    for key, value in expected.items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0, msg=key)
