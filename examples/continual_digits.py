"""Experiment: class-incremental Digits on a pretrained backbone (not part of ``make demo``).

    .venv/bin/python examples/continual_digits.py [--seeds 0 1 2] [--epochs-per-task 10]

The "pretrained model" is ``SmallConvNet`` with a feature norm (``BatchNorm1d`` on its 64
pooled features, as a ViT ends in a LayerNorm) trained as an ``ImageClassifier`` on
``SyntheticShapes(task="classification")`` (64 shape-colour concepts, no digits: disjoint
data), once, cached in ``runs/continual/backbone.pt``. Each seed then streams scikit-learn's
digits as 5 tasks of 2 classes (``ClassIncremental``, class order drawn from the seed) and
trains five members of the ``SLCA`` family with the same optimizer and steps:

- sequential fine-tuning (``backbone_lr_scale=1``, no alignment),
- slow learner (``backbone_lr_scale=0.01``, no alignment),
- SLCA (slow learner + classifier alignment),
- linear probe (``backbone_lr_scale=0``: frozen backbone, no alignment),
- linear probe + classifier alignment (frozen backbone, aligned heads).

Prints mean ± std over seeds of the final average accuracy (mean of the last row of the
accuracy matrix, validation set), the average incremental accuracy, forgetting and the test
top-1 over all 10 classes; writes ``runs/continual/results.json`` and the accuracy-matrix
heatmaps (``runs/continual/<method>_seed<k>/accuracy_matrix.png``).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_plugins.datamodules import ClassIncremental, Digits, SyntheticShapes
from lightning_plugins.models import SmallConvNet
from lightning_plugins.modules import SLCA, ImageClassifier

ROOT = Path("runs/continual")
IMAGE_SIZE = 32
METHODS = {
    "fine-tuning": {"backbone_lr_scale": 1.0, "classifier_alignment": False},
    "slow learner": {"backbone_lr_scale": 0.01, "classifier_alignment": False},
    "SLCA": {"backbone_lr_scale": 0.01, "classifier_alignment": True},
    "linear probe": {"backbone_lr_scale": 0.0, "classifier_alignment": False},
    "linear probe + CA": {"backbone_lr_scale": 0.0, "classifier_alignment": True},
}


def quiet() -> None:
    """Silence Lightning's per-run banners and the warnings tiny runs trigger."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def trainer(max_epochs: int, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        **kwargs,
    )


def backbone() -> nn.Module:
    """SmallConvNet's 64 pooled features, normalised (raw, they share a large offset)."""
    return nn.Sequential(SmallConvNet(), nn.BatchNorm1d(SmallConvNet().num_features))


def pretrained_backbone(epochs: int, train_size: int) -> Path:
    """Train SmallConvNet on the 64 shape concepts once; return its backbone weights' path."""
    path = ROOT / "backbone.pt"
    if path.exists():
        return path
    pl.seed_everything(0, verbose=False)
    data = SyntheticShapes(batch_size=64, train_size=train_size, task="classification")
    module = ImageClassifier(
        backbone(),
        num_classes=data.num_classes,
        image_size=IMAGE_SIZE,
        optimizer=lambda params: torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4),
    )
    fit = trainer(epochs)
    fit.fit(module, data)
    top1 = float(fit.validate(module, data, verbose=False)[0]["val/acc_top1"])
    print(f"pretrained on shapes: {top1:.1%} top-1 over 64 concepts")
    ROOT.mkdir(parents=True, exist_ok=True)
    torch.save(module.backbone.state_dict(), path)
    return path


def run(method: str, seed: int, weights: Path, epochs_per_task: int, lr: float) -> dict:
    """One stream; returns the final metrics."""
    pl.seed_everything(seed, verbose=False)
    digits = Digits(batch_size=32, image_size=IMAGE_SIZE, seed=seed)
    stream = ClassIncremental(
        digits, num_tasks=5, class_order_seed=seed, epochs_per_task=epochs_per_task, seed=seed
    )
    pretrained = backbone()
    pretrained.load_state_dict(torch.load(weights, weights_only=True))
    module = SLCA(
        pretrained,
        image_size=IMAGE_SIZE,
        seed=seed,
        optimizer=lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4),
        **METHODS[method],
    )
    folder = ROOT / f"{method.replace(' ', '_')}_seed{seed}"
    fit = trainer(stream.num_tasks * epochs_per_task, default_root_dir=str(folder))
    fit.fit(module, stream)
    result = module.continual_accuracy.compute()
    module.continual_accuracy.save(folder, result)
    test = fit.test(module, stream, verbose=False)[0]
    return {
        "average_accuracy": float(result["average_accuracy"]),
        "average_incremental_accuracy": float(result["average_incremental_accuracy"]),
        "forgetting": float(result["forgetting"]),
        "test_top1": float(test["test/acc_top1"]),
        "accuracy_matrix": result["accuracy_matrix"].tolist(),
    }


def mean_std(values: list[float], scale: float = 100.0) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.mean(values):.1f} ± {scale * std:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs-per-task", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.01, help="heads' SGD learning rate")
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--pretrain-size", type=int, default=4096)
    args = parser.parse_args()
    quiet()
    start = time.perf_counter()
    weights = pretrained_backbone(args.pretrain_epochs, args.pretrain_size)
    results: dict[str, list[dict]] = {method: [] for method in METHODS}
    for seed in args.seeds:
        for method in METHODS:
            results[method].append(run(method, seed, weights, args.epochs_per_task, args.lr))
            print(f"seed {seed} {method}: {results[method][-1]['average_accuracy']:.3f}")
    print("\n| method | final average accuracy (%) | average incremental accuracy (%) | ")
    print("| forgetting (points) | test top-1, 10 classes (%) |")
    print("|---|---|---|---|---|")
    for method, runs in results.items():
        keys = ("average_accuracy", "average_incremental_accuracy", "forgetting", "test_top1")
        cells = [mean_std([r[key] for r in runs]) for key in keys]
        print(f"| {method} | " + " | ".join(cells) + " |")
    ROOT.mkdir(parents=True, exist_ok=True)
    out = {"args": vars(args), "results": results, "seconds": time.perf_counter() - start}
    (ROOT / "results.json").write_text(json.dumps(out, indent=1))
    print(f"\n{time.perf_counter() - start:.0f} s; runs/continual/results.json")


if __name__ == "__main__":
    main()
