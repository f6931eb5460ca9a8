"""SLCA's class statistics and classifier alignment: time and memory by covariance kind.

Run from the repository root::

    python benchmarks/bench_continual.py           # C = 100 and 200 classes, d = 768
    python benchmarks/bench_continual.py --quick   # smaller features, fewer classes

For ``C`` classes of ``--per-class`` random features of ``d = 768`` dimensions each (the
ViT-B/16 width of the reference), every covariance kind of
:func:`~lightning_plugins.functional.class_statistics` is measured in a fresh process
(``spawn``): the time to compute the statistics from the features, the size of the
statistics held afterwards (what a module keeps between tasks), the time of classifier
alignment (the reference's defaults: 256 features sampled per class with
:func:`~lightning_plugins.functional.sample_class_features`, 5 epochs of a linear head of
``C`` classes on them with :func:`~lightning_plugins.functional.normalized_logits`, SGD
lr 0.01, batches of 128) and the process's peak resident memory. ``full`` is the
reference's O(C·d²) statistics; ``diagonal`` and ``lowrank`` (rank 16) bound it.
Writes ``benchmarks/results/bench_continual.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path

import torch

from lightning_plugins.functional import (
    class_statistics,
    normalized_logits,
    sample_class_features,
)

RESULTS = Path(__file__).resolve().parent / "results" / "bench_continual.json"
KINDS = (("full", None), ("diagonal", None), ("lowrank", 16))


def measure(num_classes: int, dim: int, per_class: int, kind: str, rank: int | None, queue) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    features = torch.randn(num_classes * per_class, dim) + labels[:, None].float() / num_classes
    started = time.perf_counter()
    stats = class_statistics(features, labels, range(num_classes), kind=kind, rank=rank)
    stats_seconds = time.perf_counter() - started
    held = sum(v.numel() * v.element_size() for v in stats.values() if torch.is_tensor(v))
    del features
    started = time.perf_counter()
    head = torch.nn.Linear(dim, num_classes)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):  # the reference's 5 alignment epochs, fresh samples each
        sampled, targets = sample_class_features(stats, 256, generator=generator)
        order = torch.randperm(len(targets), generator=generator)
        for batch in order.split(128):
            logits = normalized_logits(head(sampled[batch].float()), [num_classes // 2] * 2)
            loss = torch.nn.functional.cross_entropy(logits, targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    align_seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(
        {
            "classes": num_classes,
            "kind": kind if rank is None else f"{kind} (k={rank})",
            "statistics_s": stats_seconds,
            "held_MiB": held / 2**20,
            "alignment_s": align_seconds,
            "peak_rss_MiB": peak_mib,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--per-class", type=int, default=50)
    args = parser.parse_args()
    dim = 128 if args.quick else 768
    class_counts = (20,) if args.quick else (100, 200)
    context = mp.get_context("spawn")
    rows = []
    for num_classes in class_counts:
        for kind, rank in KINDS:
            queue = context.Queue()
            process = context.Process(
                target=measure, args=(num_classes, dim, args.per_class, kind, rank, queue)
            )
            process.start()
            rows.append(queue.get())
            process.join()
    print(f"SLCA statistics and alignment, d = {dim}, {args.per_class} features per class")
    header = ("classes", "covariance", "stats (s)", "held (MiB)", "align (s)", "peak RSS (MiB)")
    print("{:>7} {:<14} {:>9} {:>10} {:>9} {:>14}".format(*header))
    for row in rows:
        print(
            f"{row['classes']:>7} {row['kind']:<14} {row['statistics_s']:>9.2f} "
            f"{row['held_MiB']:>10.1f} {row['alignment_s']:>9.2f} {row['peak_rss_MiB']:>14.0f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"dim": dim, "per_class": args.per_class, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
