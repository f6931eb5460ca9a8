"""Shared parts of the Digits experiments (``data_diet.py``, ``curricula.py``): one run, stats.

Each run trains ``ImageClassifier`` with the built-in ``SmallConvNet`` on ``Digits`` (scikit-
learn's 1,797 real handwritten digits, 8x8 upsampled to 16x16) whose training labels are
partly flipped (``label_noise``); validation and test labels are clean. Every run of one
seed sees the same number of optimizer steps: a pruned or curriculum-steered epoch has as
many steps as a full one (the steerable sampler cycles over the samples in use).
"""

from __future__ import annotations

import logging
import math
import statistics
import warnings
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_plugins.datamodules import Digits
from lightning_plugins.modules import ImageClassifier

DATA = {"batch_size": 64, "image_size": 16, "channels": 1}


class ValidationCurve(Callback):
    """Records (optimizer step, validation top-1) after every validation."""

    def __init__(self) -> None:
        self.curve: list[tuple[int, float]] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get("val/acc_top1")
        if value is not None:
            self.curve.append((trainer.global_step, float(value)))


def quiet() -> None:
    """Silence Lightning's per-run banners and the warnings tiny runs trigger."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def train(
    seed: int,
    epochs: int,
    label_noise: float,
    callbacks: Sequence[Callback] = (),
    lr: float = 2e-3,
) -> dict[str, Any]:
    """One run; returns test top-1, the validation curve and the datamodule."""
    pl.seed_everything(seed, verbose=False)
    data = Digits(label_noise=label_noise, seed=seed, **DATA)
    module = ImageClassifier(
        backbone="small_convnet",
        num_classes=10,
        image_size=DATA["image_size"],
        in_channels=DATA["channels"],
        optimizer=lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=1e-4),
    )
    curve = ValidationCurve()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        callbacks=[*callbacks, curve],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    trainer.fit(module, data)
    test = trainer.test(module, data, verbose=False)[0]
    return {
        "test_top1": float(test["test/acc_top1"]),
        "curve": curve.curve,
        "data": data,
        "module": module,
    }


def steps_to(curve: list[tuple[int, float]], target: float) -> float:
    """The first optimizer step after which validation top-1 reached ``target`` (inf: never)."""
    for step, value in curve:
        if value >= target:
            return step
    return math.inf


def mean_std(values: Sequence[float]) -> str:
    """``mean ± std`` (sample std over seeds), in percent for accuracies."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < len(values):
        return f"never in {len(values) - len(finite)} of {len(values)}"
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return f"{statistics.mean(finite):.1f} ± {std:.1f}"
