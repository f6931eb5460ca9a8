"""Mixing cost: ``SkillIt`` and DGA against plain ``CausalLM`` training on LEGO, in one run.

Run from the repository root::

    python benchmarks/bench_mixing.py           # about 3 minutes on 2 cores (1 thread)
    python benchmarks/bench_mixing.py --quick   # smoke test

``CausalLM`` (2-layer GPT-2, 64 dimensions) trains on LEGO chains (``LegoSkills``, 5
skills, batches of 64) for ``--steps`` steps in one process (one torch thread), once per
setting, under Lightning's ``SimpleProfiler``:

1. **plain**: the mixture's samples through ``DataLoader(shuffle=True)`` (``RandomSampler``);
2. **skill-it / 25**: ``MixtureDataModule(mode="dynamic", steps_per_epoch=25)`` steered by
   ``SkillIt(update_every=25)`` reading all 200 held-out chains per skill (the settings of
   ``examples/lego_skill_it.py``);
3. **skill-it / 300**: ``SkillIt(update_every=300, eval_batches=1)`` with held-out batches
   of 64 per skill (an update every 300 steps from 320 held-out chains);
4. **dga / 100**: ``GradientAlignmentMixing(update_every=100, eval_batches=1)`` with
   ``MixtureDataModule(target="skill_4")``: per update, the gradient of one held-out batch
   of each of the 5 domains and of the target.

Skill-It's overhead per step, amortised, is the ``MixtureSampler``'s draw of a batch of
indices minus a ``RandomSampler`` + ``BatchSampler``'s, both timed alone over 2,000
batches (the loaders' median ``train_dataloader_next``, with dataset reads, the
``source``/``index`` tags and collation, is printed too as ``next Δ`` against the plain
run: it varied from -0.13 to +0.41 ms, about 1 % of a step, between runs), plus the
total time of the callback's hooks during training (``[Callback]SkillIt.on_train_epoch_start``:
held-out losses and the update; the others) divided by the steps; it is shown as a share of the
plain run's median training step (``run_training_batch``). Target: at most 1 %. An update
costs about a forward pass over its ``E`` held-out samples, so the share scales with
``E / update_every``. DGA's cost is reported per update (median ``on_train_epoch_start``:
``k + 1`` held-out gradients), in plain training steps. Writes
``benchmarks/results/bench_mixing.json``.
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
from lightning.pytorch.profilers import SimpleProfiler
from profiled import median_ms
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from lightning_plugins.callbacks import GradientAlignmentMixing, SkillIt
from lightning_plugins.datamodules import LegoSkills, MixtureDataModule
from lightning_plugins.modules import CausalLM
from lightning_plugins.sampling import MixtureSampler

RESULTS = Path(__file__).resolve().parent / "results" / "bench_mixing.json"
MODEL = {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 32}
ONE_TIME = ("setup", "teardown", "on_fit_start", "on_fit_end", "on_train_start", "on_train_end")


class PlainMixture(MixtureDataModule):
    """The mixture's samples through a plain shuffled ``DataLoader`` (``RandomSampler``)."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)


def mixture(steps_per_epoch: int | None, **kwargs) -> MixtureDataModule:
    skills = LegoSkills(num_variables=5, train_size=4000, val_size=200, seed=0)
    cls = PlainMixture if steps_per_epoch is None else MixtureDataModule
    return cls(
        sources=skills,
        batch_size=64,
        steps_per_epoch=steps_per_epoch,
        seed=0,
        **kwargs,
    )


def profiled_fit(data: MixtureDataModule, callbacks: list, steps: int) -> dict[str, list[float]]:
    pl.seed_everything(0, verbose=False)
    module = CausalLM(config=MODEL, vocab_size=36)
    profiler = SimpleProfiler()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        max_epochs=-1,
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


def callback_ms(durations: dict[str, list[float]], name: str) -> dict[str, list[float]]:
    """Per hook of callback ``name`` during training (one-time hooks left out), times in ms."""
    prefix = f"[Callback]{name}."
    return {
        key.removeprefix(prefix): [1000 * v for v in values]
        for key, values in durations.items()
        if key.startswith(prefix) and key.removeprefix(prefix) not in ONE_TIME
    }


def draw_ms(sampler, steps: int) -> float:
    """Mean time (ms) to draw one batch of indices, no data read: the sampler alone."""
    started = time.perf_counter()
    drawn = 0
    while drawn < steps:
        for _ in sampler:
            drawn += 1
            if drawn == steps:
                break
    return 1000 * (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    steps = 60 if args.quick else args.steps
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)  # on a shared 2-core machine, 2 threads are many times slower
    every_long = 20 if args.quick else 300
    every_dga = 20 if args.quick else 100
    settings = {
        "plain": (mixture(None), None, 0),
        "skill-it / 25": (
            mixture(25, eval_batch_size=500),
            SkillIt(graph=None, update_every=25, save_dir="runs/bench", plot=False),
            25,
        ),
        f"skill-it / {every_long}": (
            mixture(every_long, eval_batch_size=64),
            SkillIt(update_every=every_long, eval_batches=1, save_dir="runs/bench", plot=False),
            every_long,
        ),
        f"dga / {every_dga}": (
            mixture(every_dga, eval_batch_size=64, target="skill_4"),
            GradientAlignmentMixing(
                update_every=every_dga, eval_batches=1, save_dir="runs/bench", plot=False
            ),
            every_dga,
        ),
    }
    rows = {}
    for name, (datamodule, callback, every) in settings.items():
        durations = profiled_fit(datamodule, [] if callback is None else [callback], steps)
        hooks = {} if callback is None else callback_ms(durations, type(callback).__name__)
        epoch_start = hooks.get("on_train_epoch_start", [])
        rows[name] = {
            "update_every": every,
            "updates": len(callback.steps) if callback is not None else 0,
            "next_ms": median_ms(durations, "train_dataloader_next"),
            "step_ms": median_ms(durations, "run_training_batch"),
            "hooks_total_ms": sum(sum(v) for v in hooks.values()),
            "update_ms": max(epoch_start) if epoch_start else 0.0,
            "update_median_ms": statistics.median(epoch_start) if epoch_start else 0.0,
            "hooks": {k: statistics.median(v) for k, v in hooks.items()},
        }
    plain = rows["plain"]
    sizes = [4000] * 5
    draws = {
        "random_sampler_ms": draw_ms(BatchSampler(RandomSampler(range(20000)), 64, False), 2000),
        "mixture_sampler_ms": draw_ms(
            MixtureSampler(sizes, 64, mode="dynamic", seed=0, num_steps=25), 2000
        ),
    }
    sampler_extra = draws["mixture_sampler_ms"] - draws["random_sampler_ms"]
    print(
        f"Per step ({steps} steps of 64 LEGO chains, CausalLM 2x64, 1 thread; plain training "
        f"step {plain['step_ms']:.2f} ms, median)"
    )
    header = ("setting", "next (ms)", "next Δ", "hooks/step", "overhead", "share", "update (ms)")
    print("{:<16} {:>10} {:>8} {:>11} {:>9} {:>7} {:>12}".format(*header))
    for name, row in rows.items():
        draw = row["next_ms"] - plain["next_ms"]
        hooks_per_step = row["hooks_total_ms"] / steps
        row["next_delta_ms"] = draw
        row["hooks_per_step_ms"] = hooks_per_step
        row["overhead_ms"] = (sampler_extra if name != "plain" else 0.0) + hooks_per_step
        row["share_of_step"] = row["overhead_ms"] / plain["step_ms"]
        row["update_in_steps"] = row["update_median_ms"] / plain["step_ms"]
        print(
            f"{name:<16} {row['next_ms']:>10.3f} {draw:>8.3f} {hooks_per_step:>11.3f} "
            f"{row['overhead_ms']:>9.3f} {100 * row['share_of_step']:>6.2f}% "
            f"{row['update_median_ms']:>12.1f}"
        )
    print(
        f"overhead = MixtureSampler draw minus RandomSampler draw, timed alone "
        f"({draws['mixture_sampler_ms']:.3f} - {draws['random_sampler_ms']:.3f} = "
        f"{sampler_extra:.3f} ms per batch), + hooks per step. next Δ: the whole loader's "
        "median next() minus plain's (draw, tagging source/index, reads, collation; noisy)"
    )
    print("\nCost per update (median on_train_epoch_start), in plain training steps")
    for name, row in rows.items():
        if row["updates"]:
            print(
                f"{name:<16} {row['update_median_ms']:>8.1f} ms = {row['update_in_steps']:>5.2f} "
                f"steps, every {row['update_every']} steps ({row['updates']} updates)"
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"steps": steps, "sampler_draw": draws, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
