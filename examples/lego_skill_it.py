"""Experiment: Skill-It on LEGO against random and stratified sampling (not part of ``make demo``).

    .venv/bin/python examples/lego_skill_it.py [--seeds 0 1 2] [--steps 400]

``CausalLM`` (a 2-layer GPT-2, 64 dimensions, random init) learns LEGO chains of 5
variables (``LegoSkills``; skill ``i`` = resolve variable ``i``, ``i`` steps along the
chain) from a ``MixtureDataModule`` with one source per skill. Three runs per seed, each
with the same optimizer steps, data and initialisation:

- **skill-it**: ``mode="dynamic"`` steered by ``SkillIt(eta=0.5, window=3)`` every
  ``--update-every`` steps (the datamodule's ``steps_per_epoch``, since weights change at
  epoch starts) from the per-skill held-out losses. The skills graph is the LEGO chain,
  given rather than estimated: ``A = I + edges i -> i+1`` (``A[i, i] = A[i, i+1] = 1``:
  training on skill ``i`` helps skill ``i`` and the next one), so skill ``i``'s weight is
  ``∝ exp(eta · (L_i + L_{i+1}))`` summed over the window (the last skill has no
  successor, so while all losses are alike it gets about e^(-eta·3·L) of the others).
- **random**: ``mode="static"`` with weights proportional to the source sizes (every
  example equally likely; Skill-It's "random" baseline).
- **stratified**: ``mode="stratified"`` (each skill an equal share of every batch).

Validation after every ``--update-every`` steps records the answer accuracy per skill
(``val/answer_accuracy/skill_i``, 200 held-out chains per skill, the same held-out data
Skill-It reads its losses from). Prints mean ± std over seeds of the final accuracy (mean
and per skill) and of the mean accuracy over training (the area under the accuracy
curve, divided by its length); writes ``runs/lego_skill_it/results.json``,
``accuracy.png`` (mean over seeds per method) and ``skill_it_weights.png`` (seed 0).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from digits_runs import mean_std, quiet
from lightning.pytorch.callbacks import Callback

from lightning_plugins.callbacks import SkillIt
from lightning_plugins.datamodules import LegoSkills, MixtureDataModule
from lightning_plugins.modules import CausalLM

OUT = Path("runs/lego_skill_it")
METHODS = ("skill-it", "random", "stratified")
NUM_SKILLS = 5
MODEL = {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 32}


def chain_graph(k: int) -> torch.Tensor:
    """``A = I + edges i -> i+1``: training on skill ``i`` helps skills ``i`` and ``i + 1``."""
    graph = torch.eye(k, dtype=torch.float64)
    graph[torch.arange(k - 1), torch.arange(1, k)] = 1.0
    return graph


class SkillCurve(Callback):
    """Records (optimizer step, per-skill validation answer accuracy) after every validation."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.curve: list[tuple[int, list[float]]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        values = [float(metrics[f"val/answer_accuracy/{name}"]) for name in self.names]
        self.curve.append((trainer.global_step, values))


def train(method: str, seed: int, args: argparse.Namespace) -> dict:
    """One run; returns the accuracy curve and (Skill-It) the weight history."""
    pl.seed_everything(seed, verbose=False)
    skills = LegoSkills(
        num_variables=NUM_SKILLS,
        train_size=args.train_size,
        val_size=args.val_size,
        seed=seed,
        shuffle_clauses=not args.chain_order,
    )
    mode = {"skill-it": "dynamic", "random": "static", "stratified": "stratified"}[method]
    data = MixtureDataModule(
        sources=skills,
        mode=mode,
        batch_size=args.batch_size,
        steps_per_epoch=args.update_every,
        eval_batch_size=500,
        seed=seed,
    )
    module = CausalLM(
        config={**MODEL, "n_layer": args.n_layer, "n_embd": args.n_embd},
        vocab_size=skills.vocab_size,
        optimizer=lambda params: torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01),
    )
    curve = SkillCurve(skills.skill_names)
    callbacks: list[Callback] = [curve]
    skill_it = None
    if method == "skill-it":
        skill_it = SkillIt(
            graph=chain_graph(NUM_SKILLS),
            eta=0.5,
            window=3,
            update_every=args.update_every,
            save_dir=OUT / f"seed{seed}",
            plot=False,
        )
        callbacks.insert(0, skill_it)
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
        deterministic=True,
    )
    trainer.fit(module, data)
    out = {"curve": curve.curve}
    if skill_it is not None:
        out["weight_steps"] = list(skill_it.steps)
        out["weights"] = [w.tolist() for w in skill_it.history]
    return out


def summarize(runs: list[dict]) -> dict:
    """Per seed: final per-skill and mean accuracy (%), and the mean accuracy over training."""
    final = [[100 * v for v in run["curve"][-1][1]] for run in runs]
    return {
        "final_mean": [statistics.mean(f) for f in final],
        "final_per_skill": [[f[i] for f in final] for i in range(NUM_SKILLS)],
        "mean_over_training": [
            100 * statistics.mean(statistics.mean(v) for _, v in run["curve"]) for run in runs
        ],
    }


def plot(results: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 3.8), layout="constrained")
    FigureCanvasAgg(figure)
    mean_axes, last_axes = figure.subplots(1, 2)
    for method, runs in results.items():
        steps = [step for step, _ in runs[0]["curve"]]
        mean = [
            100 * statistics.mean(statistics.mean(run["curve"][t][1]) for run in runs)
            for t in range(len(steps))
        ]
        last = [
            100 * statistics.mean(run["curve"][t][1][-1] for run in runs) for t in range(len(steps))
        ]
        mean_axes.plot(steps, mean, marker=".", label=method)
        last_axes.plot(steps, last, marker=".", label=method)
    mean_axes.set_title("mean answer accuracy over the 5 skills")
    last_axes.set_title(f"skill {NUM_SKILLS - 1} (longest chain)")
    for axes in (mean_axes, last_axes):
        axes.set_xlabel("optimizer step")
        axes.set_ylabel("accuracy (%), mean over seeds")
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--update-every", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-size", type=int, default=4000, help="chains per skill")
    parser.add_argument("--val-size", type=int, default=200, help="chains per skill")
    parser.add_argument("--n-layer", type=int, default=MODEL["n_layer"])
    parser.add_argument("--n-embd", type=int, default=MODEL["n_embd"])
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument(
        "--chain-order", action="store_true", help="clauses in chain order (else shuffled)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest here)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args()
    quiet()
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, list[dict]] = {}
    for method in args.methods:
        results[method] = []
        for seed in args.seeds:
            results[method].append(train(method, seed, args))
            elapsed = time.perf_counter() - started
            print(f"  {method} seed {seed} done at {elapsed:.0f} s", flush=True)
    summary = {method: summarize(runs) for method, runs in results.items()}
    print(
        f"\nLEGO, 5 skills, {args.steps} steps of {args.batch_size}, {len(args.seeds)} seeds "
        "(answer accuracy %, mean ± std over seeds)"
    )
    header = ["method", "final mean", *[f"skill {i}" for i in range(NUM_SKILLS)], "over training"]
    print(("{:<11}" + " {:>12}" * (len(header) - 1)).format(*header))
    for method, row in summary.items():
        cells = [
            mean_std(row["final_mean"]),
            *[mean_std(values) for values in row["final_per_skill"]],
            mean_std(row["mean_over_training"]),
        ]
        print(("{:<11}" + " {:>12}" * len(cells)).format(method, *cells))
    if "skill-it" in results:
        run = results["skill-it"][0]
        final = ", ".join(f"{w:.2f}" for w in run["weights"][-1])
        print(f"Skill-It's last weights (seed {args.seeds[0]}): [{final}]")
        from lightning_plugins.callbacks.mixture_weights_plot import plot_mixture_weights

        plot_mixture_weights(
            run["weight_steps"],
            torch.tensor(run["weights"]),
            [f"skill_{i}" for i in range(NUM_SKILLS)],
            OUT / "skill_it_weights.png",
            title=f"Skill-It mixture weights on LEGO (seed {args.seeds[0]})",
        )
    plot(results, OUT / "accuracy.png")
    print(f"{len(args.methods) * len(args.seeds)} runs in {time.perf_counter() - started:.0f} s")
    (OUT / "results.json").write_text(
        json.dumps({"settings": vars(args), "summary": summary, "runs": results})
    )


if __name__ == "__main__":
    main()
