"""Steering cost: a steered sampler and its callbacks against a plain ``RandomSampler`` loader.

Run from the repository root::

    python benchmarks/bench_sampling.py           # about a minute on 2 cores
    python benchmarks/bench_sampling.py --quick   # smoke test

**Per step.** ``ImageClassifier`` (``small_convnet``, 32x32x3) trains on the built-in
``Digits`` (1,079 training images, batches of 64) in one process, once per setting, each
for ``--epochs`` epochs under Lightning's ``SimpleProfiler``:

1. **plain**: the same dataset through ``DataLoader(shuffle=True)`` (``RandomSampler``);
2. **subset**: ``CurriculumSampler`` steered by ``DataDiet(score="random", prune=0.3)``
   (a subset) and ``Curriculum(mode="subset", pacing="root")`` (a new pool every step);
3. **weight**: ``Curriculum(mode="weight")``: per-sample loss weights put into each batch;
4. **self-paced**: ``Curriculum("loss")``: as 2, plus a loss pass over the training set
   at each epoch start (its cost is reported per epoch, apart).

The steering cost per step is the profiler's median ``train_dataloader_next`` (sampler draw,
dataset reads, collation) minus the plain run's, plus the median time of the callbacks'
``on_train_batch_start`` hooks; it is shown as a share of the plain run's median training
step (``run_training_batch``). Target: at most 1 %. Epoch-start hooks (steering the
sampler, scoring passes) are listed per epoch.

**Scoring.** ``DataDiet`` scoring time per 1,000 samples for EL2N and GraNd: the profiled
``on_train_epoch_start`` of a ``DataDiet(score_epoch=0)``, divided by the training-set
size. Writes ``benchmarks/results/bench_sampling.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.profilers import SimpleProfiler
from profiled import median_ms
from torch.utils.data import DataLoader

from lightning_plugins.callbacks import Curriculum, DataDiet
from lightning_plugins.datamodules import Digits
from lightning_plugins.modules import ImageClassifier

RESULTS = Path(__file__).resolve().parent / "results" / "bench_sampling.json"


class PlainDigits(Digits):
    """``Digits`` whose training loader is a plain shuffled ``DataLoader``."""

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)


def profiled_fit(data: Digits, callbacks: list, epochs: int) -> dict[str, list[float]]:
    pl.seed_everything(0, verbose=False)
    module = ImageClassifier("small_convnet", num_classes=10, image_size=32)
    profiler = SimpleProfiler()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        callbacks=callbacks,
        profiler=profiler,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data)
    return dict(profiler.recorded_durations)


def hook_ms(durations: dict[str, list[float]], hook: str) -> float:
    """Median per-call time of our callbacks' ``hook``, summed over the callbacks."""
    total = 0.0
    for key, values in durations.items():
        if (
            key.startswith("[Callback]")
            and key.endswith(hook)
            and ("Curriculum" in key or "DataDiet" in key)
        ):
            total += 1000 * statistics.median(values)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    epochs = 2 if args.quick else args.epochs
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)

    def data() -> Digits:
        return Digits(batch_size=64, image_size=32, seed=0)

    difficulty = torch.rand(1079, generator=torch.Generator().manual_seed(0))
    settings = {
        "plain": (PlainDigits(batch_size=64, image_size=32, seed=0), []),
        "subset": (
            data(),
            [
                DataDiet(
                    score="random", score_epoch=0, prune=0.3, plot=False, save_dir="runs/bench"
                ),
                Curriculum(difficulty, pacing="root", mode="subset"),
            ],
        ),
        "weight": (data(), [Curriculum(difficulty, pacing="root", mode="weight")]),
        "self-paced": (data(), [Curriculum("loss", pacing="root", mode="subset")]),
    }
    rows = {}
    for name, (datamodule, callbacks) in settings.items():
        durations = profiled_fit(datamodule, callbacks, epochs)
        rows[name] = {
            "next_ms": median_ms(durations, "train_dataloader_next"),
            "step_ms": median_ms(durations, "run_training_batch"),
            "batch_hook_ms": hook_ms(durations, "on_train_batch_start"),
            "epoch_hook_ms": hook_ms(durations, "on_train_epoch_start"),
        }
    plain = rows["plain"]
    print(
        f"Per step ({epochs} epochs of 17 steps, medians; plain training step "
        f"{plain['step_ms']:.2f} ms)"
    )
    header = ("setting", "next (ms)", "hooks (ms)", "overhead", "share", "epoch start (ms)")
    print("{:<12} {:>10} {:>11} {:>10} {:>8} {:>17}".format(*header))
    for name, row in rows.items():
        overhead = row["next_ms"] - plain["next_ms"] + row["batch_hook_ms"]
        row["overhead_ms"] = overhead
        row["share_of_step"] = overhead / plain["step_ms"]
        print(
            f"{name:<12} {row['next_ms']:>10.3f} {row['batch_hook_ms']:>11.3f} {overhead:>10.3f} "
            f"{100 * row['share_of_step']:>7.2f}% {row['epoch_hook_ms']:>17.1f}"
        )
    scoring = {}
    for score in ("el2n", "grand"):
        diet = DataDiet(score=score, score_epoch=0, plot=False, save_dir="runs/bench")
        durations = profiled_fit(data(), [diet], 1)
        per_thousand = hook_ms(durations, "on_train_epoch_start") / 1079 * 1000
        scoring[score] = per_thousand
    print("\nDataDiet scoring time per 1,000 samples (small_convnet, 32x32x3, batches of 64)")
    for score, value in scoring.items():
        print(f"{score:<6} {value:>9.1f} ms")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"epochs": epochs, "per_step": rows, "scoring_ms_per_1000": scoring}, indent=2)
    )


if __name__ == "__main__":
    main()
