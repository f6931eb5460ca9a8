"""Curriculum and DataDiet under 2-process DDP (gloo): the ranks agree on every decision."""

import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from lightning_plugins.callbacks import Curriculum, DataDiet
from tests.callbacks.steering import (
    NUM_SAMPLES,
    Points,
    PointsData,
    Snapshots,
    UserClassifier,
    net_at,
)
from tests.helpers import free_port, join_lightning, run_ddp


class Record(Callback):
    def __init__(self, curriculum, diet):
        self.curriculum, self.diet = curriculum, diet
        self.difficulty, self.pacing = {}, []

    def on_train_epoch_start(self, trainer, pl_module):
        self.difficulty[trainer.current_epoch] = self.curriculum.difficulty.clone()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.pacing.append(self.curriculum.pace(trainer.global_step))


def _fit(rank, world_size, port, root):
    join_lightning(rank, world_size, port)
    pl.seed_everything(0, verbose=False)
    snapshots = Snapshots()
    diet = DataDiet(score="el2n", score_epoch=1, prune=0.25, plot=False, save_dir=root)
    curriculum = Curriculum("loss", pacing="linear", start=0.3, total_steps=6)
    record = Record(curriculum, diet)
    module = UserClassifier()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=world_size,
        strategy="ddp",
        max_steps=9,  # 3 steps of 2 x 8 samples per epoch
        callbacks=[snapshots, diet, curriculum, record],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(module, PointsData())
    return {
        "seen": module.seen,
        "difficulty": record.difficulty,
        "pacing": record.pacing,
        "scores": diet.scores,
        "kept": diet.kept,
        "snapshots": snapshots.weights,
    }


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_ddp(_fit, free_port(), str(tmp_path_factory.mktemp("ddp")))


@pytest.mark.ddp
@pytest.mark.slow
def test_ranks_draw_disjoint_equal_batches(ranks):
    a, b = ranks
    assert len(a["seen"]) == len(b["seen"]) == 9
    for (first, _), (second, _) in zip(a["seen"], b["seen"], strict=True):
        assert len(first) == len(second) == 8
        assert not set(first) & set(second)


@pytest.mark.ddp
@pytest.mark.slow
def test_ranks_agree_on_pacing_scores_subset_and_losses(ranks):
    a, b = ranks
    assert a["pacing"] == b["pacing"]
    assert torch.equal(a["scores"], b["scores"]) and torch.equal(a["kept"], b["kept"])
    assert int(a["kept"].sum()) == NUM_SAMPLES - round(0.25 * NUM_SAMPLES)
    data = Points()
    for epoch, difficulty in a["difficulty"].items():
        assert torch.equal(difficulty, b["difficulty"][epoch])
        # the all-gathered losses are those of the whole training set, every sample once
        with torch.no_grad():
            losses = F.cross_entropy(
                net_at(a["snapshots"][epoch])(data.x), data.label, reduction="none"
            )
        torch.testing.assert_close(difficulty.float(), losses, rtol=1e-5, atol=1e-6)


@pytest.mark.ddp
@pytest.mark.slow
def test_self_paced_pool_is_global(ranks):
    a, b = ranks
    kept = a["kept"]
    for step in range(3, 9):  # after scoring: kept samples, easiest share by loss among them
        epoch = step // 3
        losses = a["difficulty"][epoch].tolist()
        allowed = sorted(kept.nonzero().flatten().tolist(), key=lambda i: (losses[i], i))
        pool = set(allowed[: max(1, math.ceil(a["pacing"][step] * len(allowed)))])
        assert set(a["seen"][step][0]) | set(b["seen"][step][0]) <= pool, step
