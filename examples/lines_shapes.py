"""Experiment: LiNeS on CLIP; fine-tune on Digits, keep the SyntheticShapes zero-shot skill.

    .venv/bin/python examples/lines_shapes.py [--seeds 0 1 2] [--epochs 10] [--alpha 0.25]

LiNeS (Wang et al., ICLR 2025) scales a fine-tuning update per layer after training,
``theta = theta_0 + lambda_l * tau_l`` with ``lambda_l = alpha + beta * (l - 1) / (L - 1)``
(parameters outside the blocks get ``alpha``), so that shallow layers keep little of the
update. Setup:

- **Pretraining** (once, cached in ``runs/lines/pretrained.pt``): CLIP ``ViT-Tiny-P8-32``
  trained contrastively from scratch on ``SyntheticShapes`` image-caption pairs as in
  ``examples/configs/clip_shapes.yaml`` (seed 0, 250 steps of 128 pairs, AdamW 2e-3,
  warmup + cosine).
- **Target task**: scikit-learn's ``Digits`` (32x32, 3 channels) as zero-shot
  classification with the prompts "a photo of the digit {}". Fine-tuned per seed (the
  seed draws the train/val/test split and the batch order): the image tower and the
  logit scale, with the text tower frozen (as in the LiNeS paper's single-task setting), by
  cross-entropy of each image against the 10 class prompts (``PromptClassifier``, a
  ``CLIP`` whose ``per_sample_loss`` is that); AdamW, warmup + cosine.
- **LiNeS**: from the pretrained ``theta_0`` and the fine-tuned weights,
  ``functional.lines_scale`` gives each block's scale (blocks from the module's structure,
  ``models.block_positions``: the image tower's 3 ``resblocks``; the frozen text tower's
  update is zero) and ``functional.scale_update_`` applies it. Three sweeps: uniform
  scaling (``beta = 0``, weight interpolation), ``beta`` with ``alpha`` fixed
  (``--alpha``), and the paper's single-task choice ``beta = 1 - alpha``.
- **Metrics**: target top-1 on the Digits test split (359 images, chance 10 %) and
  zero-shot top-1 on the pretraining data (SyntheticShapes, 640 single-object images of
  the 64 concepts, chance 1.6 %), for the zero-shot model (``alpha = beta = 0``), the
  fine-tuned one (``alpha = 1, beta = 0``) and each LiNeS setting.

Prints a Markdown table (mean ± std over seeds), writes ``runs/lines/results.json`` and
the plot ``runs/lines/lines_sweep.png``. About 4.5 minutes on 2 CPU cores, of which the
pretraining is 3 (cached: later runs take about 1.5 minutes). Not part of ``make demo``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from lightning_plugins import functional
from lightning_plugins.datamodules import Digits, SyntheticShapes
from lightning_plugins.models import block_positions
from lightning_plugins.modules import CLIP
from lightning_plugins.schedulers import WarmupCosineLR

OUT = Path("runs/lines")
MODEL = "ViT-Tiny-P8-32"
PROMPT = "a photo of the digit {}"
HEAD = ("model.visual.ln_post.", "model.visual.proj")  # after the image tower's blocks


class DigitPrompts(Digits):
    """Digits with the zero-shot protocol (``class_names``, ``templates``, ``class_groups``)."""

    templates = (PROMPT,)
    class_groups = None


class PromptClassifier(CLIP):
    """CLIP fine-tuned as a classifier whose head is its text tower's class prompts.

    Each image's loss is the cross-entropy of ``logit_scale * image @ prompts.T`` against
    its ``label``, the prompts being ``templates`` filled with ``class_names`` and encoded
    by the (here frozen) text tower at every step. Evaluation is CLIP's zero-shot
    evaluation of the datamodule's classes, so the fine-tuned model is scored exactly as
    the zero-shot one.
    """

    def __init__(self, class_names: list[str], template: str = PROMPT, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.prompts = [template.format(name) for name in class_names]

    def per_sample_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        self.check_batch(batch, "train")
        classes = self.encode_prompts(self.prompts)
        logits = self.logit_scale * self.encode_image(batch["image"]) @ classes.T
        return F.cross_entropy(logits, batch["label"], reduction="none")


def quiet() -> None:
    """Silence Lightning's per-run banners, open_clip's init notice and tiny-run warnings."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def trainer(**kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def pretrained(steps: int) -> dict[str, torch.Tensor]:
    """CLIP pretrained on SyntheticShapes pairs (the demo's settings), trained once."""
    path = OUT / "pretrained.pt"
    if path.exists():
        saved = torch.load(path, weights_only=True)
        if saved["steps"] == steps:
            return saved["state_dict"]
    pl.seed_everything(0, verbose=False)
    module = CLIP(
        model_name=MODEL,
        optimizer=lambda params: torch.optim.AdamW(params, lr=2e-3, weight_decay=0.1),
        lr_scheduler=lambda opt: WarmupCosineLR(opt, warmup_steps=25, total_steps=steps),
    )
    data = SyntheticShapes(batch_size=128, train_size=32_000, seed=0)
    started = time.perf_counter()
    trainer(max_steps=steps, max_epochs=-1, limit_val_batches=0).fit(module, data)
    print(f"pretrained {MODEL} on SyntheticShapes: {steps} steps in "
          f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    torch.save({"steps": steps, "state_dict": module.state_dict()}, path)
    return module.state_dict()


def fine_tune(
    theta_0: dict[str, torch.Tensor], digits: DigitPrompts, seed: int, args: argparse.Namespace
) -> PromptClassifier:
    pl.seed_everything(seed, verbose=False)
    steps = args.epochs * (len(digits.train_set) // args.batch_size)
    module = PromptClassifier(
        class_names=digits.class_names,
        model_name=MODEL,
        lock_text=True,
        optimizer=lambda params: torch.optim.AdamW(params, lr=args.lr, weight_decay=0.1),
        lr_scheduler=lambda opt: WarmupCosineLR(opt, warmup_steps=steps // 10, total_steps=steps),
    )
    module.load_state_dict(theta_0)
    trainer(max_steps=steps, max_epochs=-1, limit_val_batches=0).fit(module, digits)
    return module


def parameter_factors(
    module: torch.nn.Module, alpha: float, beta: float, head_on_top: bool = False
) -> dict[str, float]:
    """The LiNeS scale of every parameter: its block's, ``alpha`` outside the blocks.

    ``head_on_top``: the image tower's output side (``ln_post``, ``proj``) gets the last
    block's scale ``alpha + beta`` instead of ``alpha`` (a variant, not the library's rule).
    """
    positions = block_positions(module)
    scales = functional.lines_factors(list(positions.values()), alpha, beta)
    factors = dict(zip(positions, scales, strict=True))
    if head_on_top:
        for name in factors:
            if name.startswith(HEAD):
                factors[name] = alpha + beta
    return factors


Setting = tuple[float, float, bool]  # alpha, beta, head_on_top


def settings(alpha: float) -> list[tuple[str, Setting, bool]]:
    """(sweep, setting, seen before) of every evaluated model, zero-shot and fine-tuned first."""
    grid = [0.0, 0.25, 0.5, 0.75, 1.0]
    rows: list[tuple[str, Setting]] = [("zero-shot", (0.0, 0.0, False))]
    rows += [("fine-tuned", (1.0, 0.0, False))]
    rows += [("uniform", (a, 0.0, False)) for a in grid[1:-1]]
    rows += [(f"alpha = {alpha:g}", (alpha, b, False)) for b in grid[1:]]
    rows += [("beta = 1 - alpha", (a, 1.0 - a, False)) for a in grid[:-1]]
    rows += [("beta = 1 - alpha, head on top", (a, 1.0 - a, True)) for a in grid[:-1]]
    seen: set[Setting] = set()
    unique = []
    for sweep, setting in rows:  # a setting shared by two sweeps is evaluated once
        unique.append((sweep, setting, setting in seen))
        seen.add(setting)
    return unique


def evaluate(module: CLIP, digits: DigitPrompts, shapes: SyntheticShapes) -> dict[str, float]:
    target = trainer().test(module, datamodule=digits, verbose=False)[0]["test/zero_shot_top1"]
    general = trainer().test(module, datamodule=shapes, verbose=False)[0]["test/zero_shot_top1"]
    return {"target": 100 * float(target), "shapes": 100 * float(general)}


def run_seed(theta_0: dict[str, torch.Tensor], seed: int, args: argparse.Namespace) -> dict:
    digits = DigitPrompts(batch_size=args.batch_size, image_size=32, seed=seed, split_seed=seed)
    digits.setup("fit")
    shapes = SyntheticShapes(batch_size=256, train_size=1, seed=0)  # the pretraining concepts
    started = time.perf_counter()
    module = fine_tune(theta_0, digits, seed, args)
    tuned_seconds = time.perf_counter() - started
    theta_ft = {k: v.detach().clone() for k, v in module.state_dict().items()}
    names = [name for name, _ in module.named_parameters()]
    results: dict[Setting, dict[str, float]] = {}
    for _, setting, repeated in settings(args.alpha):
        if repeated:
            continue
        module.load_state_dict(theta_ft)
        factors = parameter_factors(module, *setting)
        parameters = dict(module.named_parameters())
        functional.scale_update_(
            [parameters[n] for n in names], [theta_0[n] for n in names], [factors[n] for n in names]
        )
        results[setting] = evaluate(module, digits, shapes)
    return {"results": results, "fine_tune_seconds": tuned_seconds}


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {std:.1f}"


def table(runs: list[dict], alpha: float) -> str:
    lines = [
        "| sweep | alpha | beta | image blocks 1 / 2 / 3 | ln_post, proj "
        "| Digits top-1 (target, %) | SyntheticShapes zero-shot top-1 (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for sweep, (a, b, head), _ in settings(alpha):
        scales = " / ".join(f"{s:g}" for s in functional.lines_scale(3, a, b).tolist())
        target = mean_std([run["results"][(a, b, head)]["target"] for run in runs])
        general = mean_std([run["results"][(a, b, head)]["shapes"] for run in runs])
        lines.append(
            f"| {sweep} | {a:g} | {b:g} | {scales} | {a + b if head else a:g} | {target} "
            f"| {general} |"
        )
    return "\n".join(lines)


def plot(runs: list[dict], alpha: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sd = statistics.stdev if len(runs) > 1 else (lambda values: 0.0)

    def point(setting: Setting) -> tuple[float, float, float, float]:
        target = [run["results"][setting]["target"] for run in runs]
        shapes = [run["results"][setting]["shapes"] for run in runs]
        return statistics.mean(shapes), statistics.mean(target), sd(shapes), sd(target)

    rows = settings(alpha)
    uniform = sorted(s for w, s, _ in rows if s[1] == 0)
    start = [s for s in uniform if s[0] == alpha]  # beta = 0, if evaluated
    tuned = [(1.0, 0.0, False)]
    curves = {"uniform (beta = 0), alpha = 0 .. 1": uniform}
    for sweep, label, begin, end in (
        (f"alpha = {alpha:g}", f"LiNeS alpha = {alpha:g}, beta = 0 .. 1", start, []),
        ("beta = 1 - alpha", "LiNeS beta = 1 - alpha, alpha = 0 .. 1", [], tuned),
        (
            "beta = 1 - alpha, head on top",
            "LiNeS beta = 1 - alpha, ln_post/proj at alpha + beta",
            [],
            tuned,
        ),
    ):
        curves[label] = begin + [s for w, s, _ in rows if w == sweep] + end
    fig, ax = plt.subplots(figsize=(7, 5))
    for (label, keys), marker in zip(curves.items(), "osd^", strict=True):
        xs, ys, xe, ye = zip(*(point(key) for key in keys), strict=True)
        ax.errorbar(xs, ys, xerr=xe, yerr=ye, marker=marker, capsize=2, label=label)
        for (a, b, _), x, y in zip(keys, xs, ys, strict=True):
            ax.annotate(
                f"{a:g},{b:g}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points"
            )
    ax.set_xlabel("SyntheticShapes zero-shot top-1 (%), the pretraining data")
    ax.set_ylabel("Digits top-1 (%), the target task")
    ax.set_title(f"LiNeS on CLIP {MODEL}: mean ± std over {len(runs)} seeds (labels: alpha,beta)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pretrain-steps", type=int, default=250)
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs on Digits")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4, help="fine-tuning AdamW rate")
    parser.add_argument("--alpha", type=float, default=0.25, help="alpha of the beta sweep")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    quiet()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    theta_0 = pretrained(args.pretrain_steps)
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(theta_0, seed, args))
        tuned = runs[-1]["results"]
        print(
            f"seed {seed}: zero-shot {tuned[(0.0, 0.0, False)]}, fine-tuned "
            f"{tuned[(1.0, 0.0, False)]} "
            f"(fine-tuning {runs[-1]['fine_tune_seconds']:.0f} s)",
            flush=True,
        )
    print(
        f"\nCLIP {MODEL} pretrained on SyntheticShapes ({args.pretrain_steps} steps), fine-tuned "
        f"on Digits ({args.epochs} epochs, image tower), LiNeS applied after; "
        f"{len(args.seeds)} seeds, mean ± std; chance: Digits 10 %, shapes 1.6 %\n"
    )
    print(table(runs, args.alpha))
    seconds = time.perf_counter() - started
    OUT.mkdir(parents=True, exist_ok=True)
    out = {
        "settings": vars(args),
        "seconds": seconds,
        "runs": [
            {
                "seed": seed,
                "fine_tune_seconds": run["fine_tune_seconds"],
                "results": [
                    {"alpha": a, "beta": b, "head_on_top": head, **values}
                    for (a, b, head), values in run["results"].items()
                ],
            }
            for seed, run in zip(args.seeds, runs, strict=True)
        ],
    }
    (OUT / "results.json").write_text(json.dumps(out, indent=1))
    plot(runs, args.alpha, OUT / "lines_sweep.png")
    print(f"\n{seconds:.0f} s; results: {OUT / 'results.json'}, plot: {OUT / 'lines_sweep.png'}")


if __name__ == "__main__":
    main()
