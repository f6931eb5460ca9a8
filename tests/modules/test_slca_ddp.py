"""SLCA under 2-process DDP (gloo) equals one process on the same data: the class statistics
(each rank's share, moments all-reduced), the heads, the aligned heads and the accuracy
matrix."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from tests.helpers import free_port, join_lightning, run_ddp
from tests.modules.test_slca import TASKS, Blobs, slca, trainer

KEYS = ("class_mean", "class_covariance", "has_statistics", "aligned_weight", "aligned_bias")


def _fit(rank: int, world_size: int, port: int, root: str) -> dict:
    if world_size > 1:
        join_lightning(rank, world_size, port)
    pl.seed_everything(0, verbose=False)
    # a linear probe with alignment; heads built here, after the seed, the same everywhere
    module = slca(backbone_lr_scale=0, covariance="full", task_classes=TASKS[:2])
    fit = trainer(
        root, max_epochs=2, devices=world_size, strategy="ddp" if world_size > 1 else "auto"
    )
    # the global batch is 8 either way (4 per rank under DDP)
    fit.fit(module, datamodule=Blobs(task_classes=TASKS[:2], batch_size=8 // world_size))
    result = module.continual_accuracy.compute()  # every rank
    out = {key: getattr(module, key).clone() for key in KEYS}
    out["heads"] = {k: v.clone() for k, v in module.heads.state_dict().items()}
    out["matrix"] = result["accuracy_matrix"]
    out["counted"] = module.continual_accuracy.total.clone()  # this rank's own counts
    return out


@pytest.mark.ddp
def test_ddp_statistics_heads_and_matrix_equal_one_process(tmp_path):
    ranks = run_ddp(_fit, free_port(), str(tmp_path / "ddp"))
    single = _fit(0, 1, 0, str(tmp_path / "single"))
    assert bool(single["has_statistics"].all())
    for result in ranks:
        for key in KEYS:
            torch.testing.assert_close(result[key], single[key], rtol=1e-4, atol=1e-5, msg=key)
        for key, value in single["heads"].items():
            torch.testing.assert_close(result["heads"][key], value, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(result["matrix"], single["matrix"], equal_nan=True)
    for key in KEYS:  # the ranks agree bitwise
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    # each rank counted its half of the validation samples
    torch.testing.assert_close(ranks[0]["counted"] + ranks[1]["counted"], single["counted"])
