"""Experiment: continual CLIP on a Digits stream: full fine-tuning vs LoRA vs gated LoRA.

    .venv/bin/python examples/lora_stream.py [--seeds 0 1 2] [--epochs-per-task 10]

Issue 16, experiment 1. Setup:

- **Pretrained model**: CLIP ``ViT-Tiny-P8-32`` trained contrastively on ``SyntheticShapes``
  image-caption pairs, the cached pretraining of ``examples/lines_shapes.py``
  (``runs/lines/pretrained.pt``, trained there if missing), saved as an open_clip state
  dict (``runs/lora_stream/pretrained_open_clip.pt``) for ``LoRAContinual(pretrained=…)``.
- **Stream**: ``ClassIncremental(Digits(image_size=32, channels=3), num_tasks=5,
  class_order_seed=seed)``: 5 tasks of 2 digits, classified by the class prompts
  "a photo of the digit {}" (``LoRAContinual``: cross-entropy over the current task's
  prompts in training, task-agnostic evaluation over the classes seen so far).
- **Methods** (the same AdamW without weight decay, batches, epochs per task (10) and seed;
  only the learning rate differs, each method's own): full fine-tuning
  (``full_finetune=True``: every weight of both towers but the logit scale, lr 2e-4), LoRA
  (``gated=False``, rank 8 on the attention and MLP layers of both towers, merged into the
  base weights after each task, lr 2e-3) and gated LoRA (CoDyRA, the same with rank gates
  and the proximal L1 step from half of each task; the gates at 10x the adapters' lr, else
  Adam moves a gate by at most about ``lr`` per step and no gate can resist the threshold;
  ``kappa`` by the docstring's rule of thumb, ``kappa = kappa_factor / (lr_gates * S)``
  with ``S`` the optimizer steps of a task: the ramp's total shrink is
  ``lr_gates * kappa * S / 4``, so ``kappa_factor = 4`` zeroes a gate at 1 that the loss
  does not push up).
- **Metrics**, mean ± std over seeds: final average accuracy and forgetting
  (``continual_accuracy``, validation split), the accuracy on each task after the stream
  (the matrix's last row), test top-1 over the 10 digits, the SyntheticShapes zero-shot
  top-1 on the 64 pretraining concepts after the stream (the merged / fine-tuned towers
  loaded into a ``CLIP`` and scored by its zero-shot evaluation, as in lines_shapes), the
  trainable parameters and, for gated LoRA, the active ranks after each task. The
  pretrained model is the reference row (digits zero-shot by the same prompts, shapes).

Prints a Markdown table and writes ``runs/lora_stream/results.json``. Not part of ``make demo``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lines_shapes import MODEL, PROMPT, pretrained, quiet, trainer

from lightning_plugins.datamodules import ClassIncremental, Digits, SyntheticShapes
from lightning_plugins.modules import CLIP, LoRAContinual

OUT = Path("runs/lora_stream")
NUM_TASKS = 5
METHODS = ("full fine-tuning", "LoRA", "gated LoRA")


def open_clip_weights(steps: int) -> str:
    """The cached SyntheticShapes CLIP as an open_clip state dict (LoRAContinual's format)."""
    state = pretrained(steps)
    weights = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    path = OUT / "pretrained_open_clip.pt"
    OUT.mkdir(parents=True, exist_ok=True)
    torch.save(weights, path)
    return str(path)


def stream(seed: int, args: argparse.Namespace) -> ClassIncremental:
    digits = Digits(batch_size=args.batch_size, image_size=32, channels=3, seed=seed)
    return ClassIncremental(
        digits,
        num_tasks=NUM_TASKS,
        class_order_seed=seed,
        epochs_per_task=args.epochs_per_task,
        seed=seed,
    )


def optimizer(lr: float, gate_lr_scale: float) -> Any:
    """AdamW without weight decay; LoRAContinual's second group (no decay: the gates of gated
    LoRA, the 1-D weights of full fine-tuning) at ``lr * gate_lr_scale``."""

    def build(groups: list[dict]) -> torch.optim.Optimizer:
        groups = [dict(g) for g in groups]
        groups[1]["lr"] = lr * gate_lr_scale
        return torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)

    return build


def module(
    method: str, weights: str, seed: int, kappa: float, lr: float, gate_lr_scale: float = 1.0
) -> LoRAContinual:
    options: dict[str, Any] = {
        "full fine-tuning": {"full_finetune": True},
        "LoRA": {"gated": False},
        "gated LoRA": {"gated": True, "kappa": kappa, "start_fraction": 0.5},
    }[method]
    return LoRAContinual(
        model_name=MODEL,
        pretrained=weights,
        rank=8,
        templates=[PROMPT],
        seed=seed,
        optimizer=optimizer(lr, gate_lr_scale if method == "gated LoRA" else 1.0),
        **options,
    )


def shapes_zero_shot(model: torch.nn.Module) -> float:
    """SyntheticShapes zero-shot top-1 (%) of an open_clip model without adapters."""
    clip = CLIP(model_name=MODEL)
    clip.model.load_state_dict(model.state_dict())
    shapes = SyntheticShapes(batch_size=256, train_size=1, seed=0)  # the pretraining concepts
    return 100 * float(trainer().test(clip, datamodule=shapes, verbose=False)[0][
        "test/zero_shot_top1"
    ])  # fmt: skip


def task_steps(seed: int, args: argparse.Namespace) -> int:
    """Optimizer steps per task (the largest task's: 2 digits of the train split)."""
    data = stream(seed, args)
    data.setup("fit")
    sizes = [len(data.task_dataset(t)) for t in range(NUM_TASKS)]
    return math.ceil(max(sizes) / args.batch_size) * args.epochs_per_task


def run(method: str, weights: str, seed: int, args: argparse.Namespace) -> dict:
    pl.seed_everything(seed, verbose=False)
    lr = {"full fine-tuning": args.lr_full}.get(method, args.lr_lora)
    steps = task_steps(seed, args)
    kappa = args.kappa_factor / (lr * args.gate_lr_scale * steps)  # the gates' lr
    data = stream(seed, args)
    lora = module(method, weights, seed, kappa, lr, args.gate_lr_scale)
    folder = OUT / f"{method.replace(' ', '_')}_seed{seed}"
    started = time.perf_counter()
    fit = trainer(
        max_epochs=NUM_TASKS * args.epochs_per_task,
        check_val_every_n_epoch=args.epochs_per_task,  # at each task's end: the matrix's rows
        default_root_dir=str(folder),
    )
    fit.fit(lora, data)
    seconds = time.perf_counter() - started
    result = lora.continual_accuracy.compute()
    test = fit.test(lora, data, verbose=False)[0]
    with torch.no_grad():
        merged = lora.merged_model()
    ranks = lora.task_active_ranks
    total_ranks = 8 * ranks.shape[1]
    return {
        "average_accuracy": 100 * float(result["average_accuracy"]),
        "forgetting": 100 * float(result["forgetting"]),
        "final_task_accuracy": [100 * float(a) for a in result["accuracy_matrix"][-1]],
        "just_learned_accuracy": [100 * float(a) for a in result["accuracy_matrix"].diagonal()],
        "accuracy_matrix": result["accuracy_matrix"].tolist(),
        "test_top1": 100 * float(test["test/acc_top1"]),
        "shapes_zero_shot": shapes_zero_shot(merged),
        "trainable_parameters": sum(p.numel() for p in lora.parameters() if p.requires_grad),
        "active_ranks": ranks.sum(dim=1).tolist() if ranks.shape[1] else None,
        "total_ranks": total_ranks,
        "lr": lr,
        "kappa": kappa if method == "gated LoRA" else None,
        "task_steps": steps,
        "fit_seconds": seconds,
    }


def reference(weights: str, seed: int, args: argparse.Namespace) -> dict:
    """The pretrained model: digits test top-1 by the prompts (10 classes), shapes zero-shot."""
    pl.seed_everything(seed, verbose=False)
    untrained = module("full fine-tuning", weights, seed, 0.0, 0.0)
    data = stream(seed, args)
    test = trainer().test(untrained, data, verbose=False)[0]
    return {
        "test_top1": 100 * float(test["test/acc_top1"]),
        "shapes_zero_shot": shapes_zero_shot(untrained.model),
    }


def mean_std(values: list[float], digits: int = 1) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"


def table(results: dict[str, list[dict]], references: list[dict]) -> str:
    total = max(runs[0]["total_ranks"] for runs in results.values())
    lines = [
        "| method | trainable params | final avg acc (%) | forgetting (points) "
        "| acc. on each task just after it, mean of 5 (%) "
        "| acc. per task after the stream, tasks 1-5 (%) | test top-1, 10 digits (%) "
        f"| SyntheticShapes zero-shot (%) | active ranks after tasks 1-5 (of {total}) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ref_test = mean_std([r["test_top1"] for r in references])
    ref_shapes = mean_std([r["shapes_zero_shot"] for r in references])
    lines.append(f"| pretrained (zero-shot) | 0 | - | - | - | - | {ref_test} | {ref_shapes} | - |")
    for method, runs in results.items():
        per_task = " / ".join(
            mean_std([r["final_task_accuracy"][t] for r in runs], 0) for t in range(NUM_TASKS)
        )
        if runs[0]["active_ranks"] is not None and method == "gated LoRA":
            ranks = " / ".join(
                mean_std([r["active_ranks"][t] for r in runs], 0) for t in range(NUM_TASKS)
            )
        else:
            ranks = "all" if runs[0]["active_ranks"] is not None else "-"
        lines.append(
            f"| {method} | {runs[0]['trainable_parameters']:,} "
            f"| {mean_std([r['average_accuracy'] for r in runs])} "
            f"| {mean_std([r['forgetting'] for r in runs])} "
            f"| {mean_std([statistics.mean(r['just_learned_accuracy']) for r in runs])} "
            f"| {per_task} "
            f"| {mean_std([r['test_top1'] for r in runs])} "
            f"| {mean_std([r['shapes_zero_shot'] for r in runs])} | {ranks} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--pretrain-steps", type=int, default=250)
    parser.add_argument("--epochs-per-task", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr-full", type=float, default=2e-4, help="full fine-tuning AdamW")
    parser.add_argument("--lr-lora", type=float, default=2e-3, help="(gated) LoRA AdamW")
    parser.add_argument(
        "--kappa-factor", type=float, default=4.0, help="kappa = factor / (lr * task steps)"
    )
    parser.add_argument(
        "--gate-lr-scale", type=float, default=10.0, help="the gates' lr over the adapters'"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    quiet()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    weights = open_clip_weights(args.pretrain_steps)
    references = [reference(weights, seed, args) for seed in args.seeds]
    print(f"pretrained: {references}", flush=True)
    results: dict[str, list[dict]] = {method: [] for method in args.methods}
    for seed in args.seeds:
        for method in args.methods:
            results[method].append(run(method, weights, seed, args))
            r = results[method][-1]
            print(
                f"seed {seed} {method}: avg acc {r['average_accuracy']:.1f}, forgetting "
                f"{r['forgetting']:.1f}, shapes {r['shapes_zero_shot']:.1f}, active ranks "
                f"{r['active_ranks']} ({r['fit_seconds']:.0f} s)",
                flush=True,
            )
        write(results, references, args, started)


def write(
    results: dict[str, list[dict]], references: list[dict], args: argparse.Namespace, started: float
) -> None:
    """Print the table and write the JSON (after every seed: a cut-off run keeps its seeds)."""
    seconds = time.perf_counter() - started
    seeds = len(next(iter(results.values())))
    print(
        f"\nCLIP {MODEL} pretrained on SyntheticShapes ({args.pretrain_steps} steps), "
        f"ClassIncremental Digits (5 tasks x 2 digits, {args.epochs_per_task} epochs per task); "
        f"{seeds} seeds, mean ± std; chance: 10 digits 10 %, shapes 1.6 %\n"
    )
    print(table(results, references[:seeds]))
    OUT.mkdir(parents=True, exist_ok=True)
    out = {"settings": vars(args), "seconds": seconds, "pretrained": references[:seeds]}
    out["results"] = results
    (OUT / "results.json").write_text(json.dumps(out, indent=1))
    print(f"\n{seconds:.0f} s; results: {OUT / 'results.json'}")


if __name__ == "__main__":
    main()
