"""Experiment: Data Diet on Digits with 20 % label noise (not part of ``make demo``).

    .venv/bin/python examples/data_diet.py [--seeds 0 1 2] [--epochs 20]

Full data against random pruning, EL2N, GraNd and forgetting events, at 30 % and 50 %
pruned, with the same optimizer steps. Scores are computed online by ``DataDiet`` early
in the run (EL2N and GraNd averaged over the starts of epochs 3 and 4, forgetting counted
over epochs 1-4), then the sampler keeps the highest-scored samples for the rest of the
run. Prints mean ± std over seeds of the clean test accuracy and of the share of flipped
training labels each pruning removed; writes ``runs/data_diet/results.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from digits_runs import mean_std, quiet, train

from lightning_plugins.callbacks import DataDiet

SCORE_EPOCH = 4
METHODS = ("random", "el2n", "grand", "forgetting")


def diet(score: str, prune: float, offset: float) -> DataDiet:
    repeats = 2 if score in ("el2n", "grand") else 1
    return DataDiet(
        score=score,
        score_epoch=SCORE_EPOCH,
        repeats=repeats,
        prune=prune,
        offset=offset,
        plot=False,
        save_dir="runs/data_diet/scores",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--prunes", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument(
        "--offsets", type=float, nargs="+", default=[0.0, 0.2], help="shares of hardest skipped"
    )
    args = parser.parse_args()
    quiet()
    runs = [("full data", None, 0.0, 0.0)] + [
        (method, method, prune, offset)
        for prune in args.prunes
        for offset in args.offsets
        for method in METHODS
        if not (method == "random" and offset > 0)  # an offset of random scores is random
    ]
    results: dict[str, dict] = {}
    started = time.perf_counter()
    for name, score, prune, offset in runs:
        key = name if score is None else f"{name} {round(prune * 100)}%"
        if offset:
            key += f" offset {round(offset * 100)}%"
        accuracy, removed = [], []
        for seed in args.seeds:
            callbacks = [] if score is None else [diet(score, prune, offset)]
            out = train(seed, args.epochs, args.noise, callbacks)
            accuracy.append(100 * out["test_top1"])
            if score is not None:
                kept = callbacks[0].kept
                flipped = out["data"].flipped_indices
                removed.append(100 * float((~kept[flipped]).float().mean()))
        results[key] = {"test_top1": accuracy, "flipped_removed": removed}
        print(
            f"{key:<28} test top-1 {mean_std(accuracy):>12} %"
            + (f"   flipped labels removed {mean_std(removed):>12} %" if removed else ""),
            flush=True,
        )
    print(f"{len(runs) * len(args.seeds)} runs in {time.perf_counter() - started:.0f} s")
    out_dir = Path("runs/data_diet")
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items()}
    (out_dir / "results.json").write_text(json.dumps({"settings": settings, "results": results}))


if __name__ == "__main__":
    main()
