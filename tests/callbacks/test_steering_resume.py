"""Exact mid-epoch resume of Curriculum and DataDiet: every source, every mode, 0 and 2 workers.

A 14-step run (6 steps per epoch) saves every 4 steps; resuming from step 4 (mid-epoch 0),
step 8 (mid-epoch 1, after scoring) or step 12 (the end of epoch 1; with 0 workers) must
train on the same batches, with the same weights, to the same final weights.
"""

import numpy as np
import pytest
import torch

from lightning_plugins.callbacks import Curriculum, DataDiet
from tests.callbacks.steering import Points, fit

SOURCES = ("values", "file", "field", "data_diet", "loss")
MODES = ("subset", "weight", "anneal")


def callbacks(source, mode, root):
    difficulty = Points().difficulty
    if source == "values":
        return [Curriculum(difficulty, mode=mode, start=0.3, total_steps=10, anneal_epochs=2)]
    if source == "file":
        path = root / "difficulty.npy"
        np.save(path, difficulty.numpy())
        return [Curriculum(path, mode=mode, start=0.3, total_steps=10, anneal_epochs=2)]
    if source == "field":
        return [Curriculum("field:difficulty", mode=mode, start=0.3, total_steps=10)]
    if source == "loss":
        return [Curriculum("loss", mode=mode, start=0.3, total_steps=10, anneal_epochs=2)]
    diet = DataDiet(score="el2n", score_epoch=1, plot=False, save_dir=root)
    return [diet, Curriculum(diet, mode=mode, start=0.3, total_steps=10, anneal_epochs=2)]


def check_resume(tmp_path, make_callbacks, num_workers):
    # step 12 ends epoch 1: Lightning resumes without on_train_epoch_start, and with workers
    # the next epoch is drawn before any hook, so that case is exact with num_workers=0 only
    checkpoints = ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]
    if num_workers == 0:
        checkpoints.append("epoch=1-step=12.ckpt")
    full_root = tmp_path / "full"
    full_root.mkdir()
    full = fit(full_root, make_callbacks(full_root), 14, save_every=4, num_workers=num_workers)
    for name in checkpoints:
        root = tmp_path / name
        root.mkdir()
        resumed = fit(
            root, make_callbacks(root), 14, ckpt_path=full_root / name, num_workers=num_workers
        )
        step = int(name.split("step=")[1].split(".")[0])
        assert resumed.seen == full.seen[step:], name
        for key, value in full.state_dict().items():
            torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("source", SOURCES)
def test_curriculum_resumes_exactly(tmp_path, source, mode, num_workers):
    check_resume(tmp_path, lambda root: callbacks(source, mode, root), num_workers)


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("score", ["el2n", "grand", "forgetting", "random"])
def test_data_diet_pruning_resumes_exactly(tmp_path, score, num_workers):
    def make(root):
        epoch = 2 if score == "forgetting" else 1
        return [DataDiet(score=score, score_epoch=epoch, prune=0.5, plot=False, save_dir=root)]

    check_resume(tmp_path, make, num_workers)
