"""LoRAContinual with EMATeacher: the average follows the adapters, and with
``restart_at_task_end`` it restarts from the live weights after each task's fold, so that
the teacher never counts a folded update twice."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lightning_plugins.callbacks import EMATeacher
from tests.modules.test_lora_continual import Patterns, lora, trainer


class AtTaskEnd(Callback):
    """Copies of the average and of the live weights right after each task end's hooks."""

    def __init__(self, ema: EMATeacher) -> None:
        self.ema = ema
        self.seen: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []

    def on_task_end(self, trainer, pl_module, task):
        live = dict(pl_module.state_dict())
        average = {k: v.clone() for k, v in self.ema.named_averages()}
        self.seen.append((average, {k: live[k].clone() for k in average}))


@pytest.mark.parametrize("restart", [True, False])
def test_the_average_restarts_at_each_task_end(tmp_path, restart):
    ema = EMATeacher(decay=0.9, restart_at_task_end=restart, validate_with="ema")
    record = AtTaskEnd(ema)
    module = lora(gated=True)
    trainer(tmp_path, callbacks=[ema, record]).fit(module, datamodule=Patterns())
    assert len(record.seen) == 2 and ema.num_updates > 0
    for average, live in record.seen:
        assert any("lora_B" in key for key in average)  # the adapters are averaged
        same = all(torch.equal(average[key], live[key]) for key in average)
        assert same == restart  # live: the adapters just folded and reset (B = 0)
