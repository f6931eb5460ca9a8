"""WarmupCosineLR against open_clip's `cosine_lr` formula, resumed, configured from YAML."""

import functools
import math
import sys

import lightning.pytorch as pl
import pytest
import torch

from lightning_plugins.cli import main
from lightning_plugins.datamodules import SyntheticShapes
from lightning_plugins.modules import CLIP
from lightning_plugins.schedulers import WarmupCosineLR

MICRO = "ViT-Micro-P8-32"


def open_clip_cosine_lr(base_lr: float, warmup: int, steps: int, step: int) -> float:
    """open_clip.training.scheduler.cosine_lr, written out."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    e, es = step - warmup, steps - warmup
    return 0.5 * (1 + math.cos(math.pi * e / es)) * base_lr


def optimizer(lrs=(0.1, 0.01)) -> torch.optim.Optimizer:
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups)


def run(scheduler: WarmupCosineLR, steps: int) -> list[list[float]]:
    lrs = []
    for _ in range(steps):
        lrs.append([group["lr"] for group in scheduler.optimizer.param_groups])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize(("warmup", "total"), [(0, 7), (3, 10), (25, 250), (1, 1)])
def test_matches_open_clip_cosine_lr(warmup, total):
    lrs = run(WarmupCosineLR(optimizer(), warmup_steps=warmup, total_steps=total), total)
    for step, (first, second) in enumerate(lrs):
        assert first == pytest.approx(open_clip_cosine_lr(0.1, warmup, total, step), abs=1e-12)
        assert second == pytest.approx(open_clip_cosine_lr(0.01, warmup, total, step), abs=1e-12)


def test_min_lr_ratio_and_after_the_end():
    scheduler = WarmupCosineLR(optimizer((1.0,)), warmup_steps=2, total_steps=6, min_lr_ratio=0.1)
    lrs = [lr for (lr,) in run(scheduler, 9)]
    assert lrs[:2] == pytest.approx([0.5, 1.0])
    middle = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 2 / 4))
    assert lrs[4] == pytest.approx(middle)
    assert lrs[6:] == pytest.approx([0.1, 0.1, 0.1])  # stays at the end value


def test_resumes_from_state_dict():
    scheduler = WarmupCosineLR(optimizer(), warmup_steps=3, total_steps=10)
    run(scheduler, 4)
    state = scheduler.state_dict()
    expected = run(scheduler, 6)
    opt = optimizer()
    for group, lr in zip(opt.param_groups, (0.1, 0.01), strict=True):
        group["initial_lr"] = lr
    resumed = WarmupCosineLR(opt, warmup_steps=3, total_steps=10, last_epoch=3)
    resumed.load_state_dict(state)
    assert run(resumed, 6) == expected


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"warmup_steps": -1, "total_steps": 5}, ValueError, "`warmup_steps`.*-1"),
        ({"warmup_steps": 2.5, "total_steps": 5}, TypeError, "`warmup_steps`"),
        ({"warmup_steps": 2}, ValueError, "`total_steps` is None"),
        ({"warmup_steps": 2, "total_steps": 0}, ValueError, "`total_steps`.*0"),
        ({"warmup_steps": 2, "total_steps": float("inf")}, ValueError, "`total_steps`=inf"),
        ({"warmup_steps": 2, "total_steps": "10"}, TypeError, "`total_steps`"),
        ({"warmup_steps": 2, "total_steps": 5, "min_lr_ratio": 1.5}, ValueError, "`min_lr_ratio`"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        WarmupCosineLR(optimizer(), **kwargs)


def test_warmup_longer_than_run_warns():
    with pytest.warns(UserWarning, match="never reaches its peak"):
        WarmupCosineLR(optimizer(), warmup_steps=25, total_steps=1)


# ------------------------------------------------------------- filled in by the module
def fit(module: CLIP, **kwargs) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )
    dm = SyntheticShapes(batch_size=4, train_size=12, zero_shot_size=64, retrieval_size=8)
    trainer.fit(module, dm)
    return trainer


@pytest.mark.parametrize(
    ("trainer_kwargs", "total"), [({"max_steps": 4}, 4), ({"max_epochs": 2}, 6)]
)
def test_module_fills_total_steps_from_the_trainer(trainer_kwargs, total):
    factory = functools.partial(WarmupCosineLR, warmup_steps=2)
    module = CLIP(model_name=MICRO, lr_scheduler=factory)
    trainer = fit(module, **trainer_kwargs)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.total_steps == total and scheduler.last_epoch == total
    assert scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)  # decayed to the end


def test_module_keeps_a_given_total_steps_and_other_schedulers():
    factory = functools.partial(WarmupCosineLR, warmup_steps=1, total_steps=100)
    trainer = fit(CLIP(model_name=MICRO, lr_scheduler=factory), max_steps=2)
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == 100
    factory = functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1)
    trainer = fit(CLIP(model_name=MICRO, lr_scheduler=factory), max_steps=3)
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == 3


def test_epoch_interval_gets_max_epochs():
    factory = functools.partial(WarmupCosineLR, warmup_steps=0)
    module = CLIP(model_name=MICRO, lr_scheduler=factory, lr_scheduler_interval="epoch")
    trainer = fit(module, max_epochs=2)
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == 2


# ----------------------------------------------------------------------- YAML and CLI
YAML = """
model:
  class_path: CLIP
  init_args:
    model_name: ViT-Micro-P8-32
    optimizer:
      class_path: torch.optim.AdamW
      init_args:
        lr: 0.01
    lr_scheduler:
      class_path: lightning_plugins.schedulers.WarmupCosineLR
      init_args:
        warmup_steps: 2
data:
  class_path: SyntheticShapes
  init_args:
    batch_size: 4
    train_size: 24
    zero_shot_size: 64
    retrieval_size: 8
trainer:
  max_steps: 5
  limit_val_batches: 0
  num_sanity_val_steps: 0
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
"""


@pytest.fixture
def plain_argv(monkeypatch):
    """LightningCLI warns when pytest's own arguments sit in sys.argv beside `args`."""
    monkeypatch.setattr(sys, "argv", ["lightning-plugins"])


def test_yaml_configures_warmup_cosine(tmp_path, plain_argv):
    config = tmp_path / "configs" / "warmup_cosine.yaml"
    config.parent.mkdir()
    config.write_text(YAML)
    lrs = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    cli = main(["--config", str(config), f"--trainer.default_root_dir={tmp_path}"], run=False)
    cli.trainer.callbacks.append(Record())
    cli.trainer.fit(cli.model, cli.datamodule)
    scheduler = cli.trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(scheduler, WarmupCosineLR) and scheduler.total_steps == 5
    assert lrs == pytest.approx([open_clip_cosine_lr(0.01, 2, 5, s) for s in range(5)])


def test_short_name_on_the_command_line(tmp_path, plain_argv):
    cli = main(
        [
            "--model=CLIP",
            f"--model.model_name={MICRO}",
            "--model.lr_scheduler=WarmupCosineLR",
            "--model.lr_scheduler.warmup_steps=3",
            "--model.lr_scheduler.min_lr_ratio=0.1",
            "--data=SyntheticShapes",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        run=False,
    )
    scheduler = cli.model.lr_scheduler_factory(optimizer(), total_steps=10)
    assert isinstance(scheduler, WarmupCosineLR)
    assert (scheduler.warmup_steps, scheduler.total_steps, scheduler.min_lr_ratio) == (3, 10, 0.1)
