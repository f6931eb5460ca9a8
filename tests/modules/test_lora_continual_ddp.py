"""LoRAContinual under 2-process DDP (gloo) equals one process on the global batch: the
adapters, gates and folded base weights after a 2-task stream, identical on both ranks."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from tests.helpers import free_port, join_lightning, run_ddp
from tests.modules.test_lora_continual import Patterns, lora, trainer


def _fit(rank: int, world_size: int, port: int, root: str) -> dict:
    if world_size > 1:
        join_lightning(rank, world_size, port)
    pl.seed_everything(0, verbose=False)
    module = lora(kappa=20.0, start_fraction=0.5)  # the proximal step runs in each task
    fit = trainer(root, devices=world_size, strategy="ddp" if world_size > 1 else "auto")
    # the global batch is 8 either way (4 per rank under DDP)
    fit.fit(module, datamodule=Patterns(batch_size=8 // world_size))
    out = {k: v.clone() for k, v in module.state_dict().items() if k.startswith("model.")}
    out["task_active_ranks"] = module.task_active_ranks.clone()
    out["matrix"] = module.continual_accuracy.compute()["accuracy_matrix"]
    return out


@pytest.mark.ddp
def test_ddp_equals_one_process_on_the_global_batch(tmp_path):
    ranks = run_ddp(_fit, free_port(), str(tmp_path / "ddp"))
    single = _fit(0, 1, 0, str(tmp_path / "single"))
    for key, value in single.items():
        for result in ranks:
            torch.testing.assert_close(
                result[key], value, rtol=1e-4, atol=1e-5, equal_nan=True, msg=key
            )
        assert torch.equal(ranks[0][key].nan_to_num(), ranks[1][key].nan_to_num()), key
