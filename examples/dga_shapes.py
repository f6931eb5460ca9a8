"""Experiment: DGA on image-text, CLIP on a mixture of SyntheticShapes domains.

    .venv/bin/python examples/dga_shapes.py [--seeds 0 1 2] [--steps 200]

A pool of SyntheticShapes image-caption pairs (Zipf-distributed concepts, 1-4 objects) is
split into four domains by the frequency quartile of each pair's rarest concept:
``rarest`` (holds one of the rarest quarter of concepts, ``class_groups["rare"]``),
``rare-mid``, ``common-mid`` and ``common`` (only concepts of the most frequent quarter).
CLIP (``ViT-Micro-P8-32``) is trained from scratch on a ``MixtureDataModule`` of them with
the same optimizer steps per method:

- ``DGA``: ``GradientAlignmentMixing`` towards a target of 64 image-caption pairs made
  only of rare concepts (an update every ``--update-every`` steps, two held-out batches
  of 64 pairs per domain; the first update after ``--update-every`` steps, not on the
  random model; ``eta`` = 0.005 makes ``eta * <g_i, g_target>`` of order 1, the inner
  products being tens to a few hundred once training is under way);
- ``uniform``: static, uniform weights over the domains (each batch drawn i.i.d.);
- ``stratified``: each batch split equally among the domains;
- ``natural``: static weights proportional to the domain sizes (every pair equally
  likely, what plain training sees).

Validation: zero-shot classification of single-object images balanced over the 64
concepts (a ``ShapesClassification`` loader the script's datamodule adds, with the
zero-shot protocol: ``class_names``, ``templates``, ``class_groups``), top-1 over all
concepts and over the rarest quarter (the target's concepts). Prints mean ± std over
seeds and the DGA weights over training; writes ``runs/dga_shapes/results.json``, the
mean DGA weights plot ``runs/dga_shapes/dga_weights.png`` and each DGA run's own
weights (``runs/dga_shapes/seed<S>/gradient_alignment_weights.{pt,png}``). Not part of
``make demo``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from digits_runs import mean_std, quiet
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from lightning_plugins.callbacks import GradientAlignmentMixing
from lightning_plugins.callbacks.mixture_weights_plot import plot_mixture_weights
from lightning_plugins.datamodules import MixtureDataModule
from lightning_plugins.datamodules.synthetic_shapes import (
    ShapesPairs,
    SyntheticShapes,
)
from lightning_plugins.modules import CLIP
from lightning_plugins.schedulers import WarmupCosineLR

OUT = Path("runs/dga_shapes")
DOMAINS = ("rarest", "rare-mid", "common-mid", "common")
METHODS = ("DGA", "uniform", "stratified", "natural")
STREAM_POOL, STREAM_HELD_OUT, STREAM_TARGET = 10, 11, 12  # SyntheticShapes uses 0-3


class ShapesMixture(MixtureDataModule):
    """A MixtureDataModule whose validation is SyntheticShapes' zero-shot classification.

    Adds the zero-shot protocol (``class_names``, ``templates``, ``class_groups`` of
    ``shapes``) and validates on ``shapes``' single-object images with ``label`` (which
    ``ContrastiveImageText`` scores for zero-shot classification) instead of the
    per-domain held-out pairs; DGA reads those through ``eval_dataloaders()``.
    """

    def __init__(self, shapes: SyntheticShapes, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.zero_shot_set = shapes.zero_shot_set
        self.class_names = shapes.class_names
        self.templates = shapes.templates
        self.class_groups = shapes.class_groups

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.zero_shot_set, batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class AlignmentLog(Callback):
    """Records DGA's logged inner products ``<g_i, g_target>`` after every epoch."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        row = {
            key.removeprefix("mixing/alignment/"): float(value)
            for key, value in trainer.callback_metrics.items()
            if key.startswith("mixing/alignment/")
        }
        if row:
            self.rows.append({"step": trainer.global_step, **row})


class DGAAfterInit(GradientAlignmentMixing):
    """GradientAlignmentMixing whose first update waits ``update_every`` steps.

    At step 0 the model is random and the inner products are its largest and least
    informative (thousands, against a few hundred later), so one update there would set the
    weights for the whole run; training starts from the datamodule's initial weights.
    """

    def should_update(self, trainer: pl.Trainer) -> bool:
        if not self.steps:
            return trainer.global_step >= self.update_every
        return super().should_update(trainer)


def domain_of(concepts: list[int], quartile: np.ndarray) -> int:
    """The domain of a pair: the frequency quartile (0 = rarest) of its rarest concept."""
    return int(min(quartile[c] for c in concepts))


def split(pairs: ShapesPairs, quartile: np.ndarray, per_domain: int | None = None) -> dict:
    """The pairs of each domain, drawn once (a list of sample dicts per domain name)."""
    chosen: dict[int, list[int]] = {d: [] for d in range(len(DOMAINS))}
    for index in range(len(pairs)):
        chosen[domain_of(pairs.concepts(index), quartile)].append(index)
    return {name: [pairs[i] for i in chosen[d][:per_domain]] for d, name in enumerate(DOMAINS)}


def make_data(seed: int, pool_size: int) -> dict[str, Any]:
    """Domains, held-out pairs per domain, the rare target and the zero-shot set of a seed."""
    shapes = SyntheticShapes(seed=seed, zero_shot_size=640, train_size=1)
    probabilities = shapes.probabilities
    order = np.argsort(probabilities, kind="stable")  # rarest first
    quartile = np.empty(len(order), dtype=np.int64)
    quartile[order] = np.arange(len(order)) * len(DOMAINS) // len(order)
    pool = ShapesPairs(pool_size, probabilities, seed=seed, stream=STREAM_POOL)
    held_out = ShapesPairs(4000, probabilities, seed=seed, stream=STREAM_HELD_OUT)
    rare = np.zeros_like(probabilities)
    rare[shapes.class_groups["rare"]] = probabilities[shapes.class_groups["rare"]]
    target = ShapesPairs(64, rare / rare.sum(), seed=seed, stream=STREAM_TARGET, max_objects=2)
    return {
        "shapes": shapes,
        "sources": split(pool, quartile),
        "val_sources": split(held_out, quartile, per_domain=128),
        "target": [target[i] for i in range(len(target))],
    }


def train(method: str, seed: int, data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    pl.seed_everything(seed, verbose=False)
    mode = {"DGA": "dynamic", "stratified": "stratified"}.get(method, "static")
    sizes = {name: len(samples) for name, samples in data["sources"].items()}
    # natural: every pair equally likely; the others (DGA's start too): uniform over domains
    weights = sizes if method == "natural" else {name: 1.0 for name in sizes}
    datamodule = ShapesMixture(
        shapes=data["shapes"],
        sources=data["sources"],
        weights=weights,
        mode=mode,
        batch_size=args.batch_size,
        steps_per_epoch=args.update_every,
        val_sources=data["val_sources"],
        target=data["target"],
        eval_batch_size=64,
        seed=seed,
    )
    module = CLIP(
        model_name="ViT-Micro-P8-32",
        optimizer=lambda params: torch.optim.AdamW(params, lr=args.lr, weight_decay=0.1),
        lr_scheduler=lambda opt: WarmupCosineLR(opt, warmup_steps=20, total_steps=args.steps),
    )
    callbacks: list[Callback] = []
    if method == "DGA":
        dga = DGAAfterInit(
            eta=args.eta,
            ema=args.ema,
            update_every=args.update_every,
            eval_batches=2,
            save_dir=OUT / f"seed{seed}",
        )
        callbacks += [dga, AlignmentLog()]
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=args.steps,
        max_epochs=-1,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=10**9,  # validated once, after training
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule)
    seconds = time.perf_counter() - started
    metrics = trainer.validate(module, datamodule, verbose=False)[0]
    result = {
        "zero_shot_top1": 100 * float(metrics["val/zero_shot_top1"]),
        "zero_shot_top1_rare": 100 * float(metrics["val/zero_shot_top1_rare"]),
        "train_seconds": seconds,
        "steps": trainer.global_step,
    }
    if method == "DGA":
        result["weight_steps"] = list(dga.steps)
        result["weights"] = torch.stack(dga.history).tolist()
        result["alignment"] = callbacks[1].rows
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per run")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--pool", type=int, default=6000, help="training pairs, all domains")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eta", type=float, default=0.005, help="DGA step size")
    parser.add_argument("--ema", type=float, default=0.5, help="DGA moving-average share")
    parser.add_argument(
        "--update-every", type=int, default=20, help="DGA update period = steps_per_epoch"
    )
    args = parser.parse_args()
    quiet()
    torch.set_num_threads(2)
    started = time.perf_counter()
    results: dict[str, dict[str, list]] = {m: {} for m in args.methods}
    sizes: dict[int, dict[str, int]] = {}
    for seed in args.seeds:
        data = make_data(seed, args.pool)
        sizes[seed] = {name: len(samples) for name, samples in data["sources"].items()}
        print(f"seed {seed}: domain sizes {sizes[seed]}", flush=True)
        for method in args.methods:
            out = train(method, seed, data, args)
            for key, value in out.items():
                results[method].setdefault(key, []).append(value)
            print(
                f"  {method:<10} zero-shot top-1 {out['zero_shot_top1']:5.1f} %, rarest 1/4 "
                f"{out['zero_shot_top1_rare']:5.1f} % ({out['steps']} steps, "
                f"{out['train_seconds']:.0f} s)",
                flush=True,
            )
    print(
        f"\nCLIP ViT-Micro-P8-32, {args.steps} steps of {args.batch_size} pairs, "
        f"{len(args.seeds)} seeds (mean ± std; chance 1.6 %)\n"
    )
    header = "| mixture    | zero-shot top-1 (%) | top-1 rarest 1/4 = target (%) |"
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    for method in args.methods:
        overall = mean_std(results[method]["zero_shot_top1"])
        rare = mean_std(results[method]["zero_shot_top1_rare"])
        print(f"| {method:<10} | {overall:>19} | {rare:>29} |")
    if "DGA" in results:
        steps = results["DGA"]["weight_steps"][0]
        mean = torch.tensor(results["DGA"]["weights"], dtype=torch.float64).mean(0)
        std = torch.tensor(results["DGA"]["weights"], dtype=torch.float64)
        std = std.std(0) if len(args.seeds) > 1 else torch.zeros_like(mean)
        print("\nDGA weights over training (mean over seeds; start: uniform)\n")
        print("| step | " + " | ".join(f"{d:>10}" for d in DOMAINS) + " |")
        print("|------|" + "|".join("-" * 12 for _ in DOMAINS) + "|")
        for row, step in enumerate(steps):
            cells = [f"{mean[row, d]:.2f}±{std[row, d]:.2f}" for d in range(len(DOMAINS))]
            print(f"| {step:>4} | " + " | ".join(f"{c:>10}" for c in cells) + " |")
        natural = torch.tensor([[sizes[s][d] for d in DOMAINS] for s in args.seeds]).double()
        natural = (natural / natural.sum(1, keepdim=True)).mean(0)
        print("natural  | " + " | ".join(f"{w:>10.2f}" for w in natural.tolist()) + " |")
        alignment = results["DGA"]["alignment"]
        typical = {
            d: statistics.median(abs(row[d]) for rows in alignment for row in rows) for d in DOMAINS
        }
        print(
            "median |<g_i, g_target>| over updates and seeds: "
            + ", ".join(f"{d} {v:.3g}" for d, v in typical.items())
            + f"; eta = {args.eta}"
        )
        png = plot_mixture_weights(
            steps, mean, list(DOMAINS), OUT / "dga_weights.png", "DGA weights (mean over seeds)"
        )
        print(f"plot: {png}")
    print(f"{len(args.seeds) * len(args.methods)} runs in {time.perf_counter() - started:.0f} s")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(
        json.dumps({"settings": vars(args), "domain_sizes": sizes, "results": results}, indent=1)
    )
    print(f"results: {OUT / 'results.json'}")


if __name__ == "__main__":
    main()
