"""CUDA runs of the module: bf16 mixed precision and DDP (skipped without a GPU)."""

import math

import lightning.pytorch as pl
import pytest
import torch

from lightning_plugins.datamodules import SyntheticShapes
from lightning_plugins.modules import CLIP, SigLIP


def fit(module, **kwargs) -> pl.Trainer:
    dm = SyntheticShapes(batch_size=32, train_size=256, zero_shot_size=64, retrieval_size=64)
    trainer = pl.Trainer(
        accelerator="gpu",
        max_steps=8,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        **kwargs,
    )
    trainer.fit(module, dm)
    return trainer


@pytest.mark.gpu
@pytest.mark.parametrize("module_cls", [CLIP, SigLIP])
def test_bf16_mixed_trains_and_validates(module_cls):
    module = module_cls(model_name="ViT-Tiny-P8-32")
    trainer = fit(module, devices=1, precision="bf16-mixed")
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"])
    assert {"val/zero_shot_top1", "val/i2t_R@1"} <= set(metrics)
    assert module.model.logit_scale.dtype == torch.float32  # master weights stay fp32
    assert module.model.logit_scale.item() <= math.log(100.0) + 1e-6


@pytest.mark.gpu
@pytest.mark.ddp
def test_ddp_strategy_on_gpus():
    module = CLIP(model_name="ViT-Tiny-P8-32")
    trainer = fit(
        module, devices=torch.cuda.device_count(), strategy="ddp_spawn", precision="bf16-mixed"
    )
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
