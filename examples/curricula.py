"""Experiment: curricula on Digits with 20 % label noise (not part of ``make demo``).

    .venv/bin/python examples/curricula.py [--seeds 0 1 2] [--epochs 20]

No curriculum against competence-based pacing (``root``, Platanios et al. 2019), self-paced
learning (the model's own loss, ``root`` pacing of the kept share) and annealed difficulty
weighting (MacAvaney et al. 2020, uniform from half-way), with the same optimizer steps.
The static difficulty of competence and annealing is the loss of a reference model of the
same seed trained for 3 epochs on the same noisy labels (a "transfer teacher"). Prints mean
± std over seeds of the clean test accuracy and of the optimizer steps until validation
accuracy first reached 85 %; writes ``runs/curricula/results.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from digits_runs import mean_std, quiet, steps_to, train
from torch.utils.data import DataLoader

from lightning_plugins.callbacks import Curriculum

REFERENCE_EPOCHS = 3


@torch.no_grad()
def reference_difficulty(seed: int, noise: float) -> torch.Tensor:
    """Per-sample loss of a briefly trained reference model, in dataset order."""
    out = train(seed, REFERENCE_EPOCHS, noise)
    module, dataset = out["module"].eval(), out["data"].train_dataloader().dataset
    losses = torch.empty(len(dataset))
    for batch in DataLoader(dataset, batch_size=256):
        losses[batch["index"]] = module.per_sample_loss(batch)
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--target", type=float, default=0.85, help="validation top-1 to reach")
    args = parser.parse_args()
    quiet()
    pacing_steps = None  # the whole run: competence reaches 1 at the last step

    def curricula(difficulty: torch.Tensor) -> dict[str, list]:
        return {
            "none": [],
            "competence (root)": [
                Curriculum(
                    difficulty, pacing="root", mode="subset", start=0.2, total_steps=pacing_steps
                )
            ],
            "self-paced (loss)": [
                Curriculum(
                    "loss", pacing="root", mode="subset", start=0.2, total_steps=pacing_steps
                )
            ],
            "annealed weighting": [
                Curriculum(difficulty, mode="anneal", anneal_epochs=args.epochs // 2)
            ],
        }

    results: dict[str, dict[str, list]] = {}
    started = time.perf_counter()
    for seed in args.seeds:
        difficulty = reference_difficulty(seed, args.noise)
        for name, callbacks in curricula(difficulty).items():
            out = train(seed, args.epochs, args.noise, callbacks)
            entry = results.setdefault(name, {"test_top1": [], "steps_to_target": []})
            entry["test_top1"].append(100 * out["test_top1"])
            entry["steps_to_target"].append(steps_to(out["curve"], args.target))
    for name, entry in results.items():
        print(
            f"{name:<20} test top-1 {mean_std(entry['test_top1']):>12} %   steps to "
            f"{int(args.target * 100)} % val {mean_std(entry['steps_to_target']):>14}"
        )
    runs = len(results) * len(args.seeds) + len(args.seeds)
    print(f"{runs} runs in {time.perf_counter() - started:.0f} s")
    out_dir = Path("runs/curricula")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(
        json.dumps({"settings": vars(args), "results": results}, default=str)
    )


if __name__ == "__main__":
    main()
