"""SLCA's class statistics and classifier alignment: time and memory by covariance kind.

Run from the repository root::

    python benchmarks/bench_continual.py           # C = 100 and 200 classes, d = 768
    python benchmarks/bench_continual.py --quick   # smaller features, fewer classes

A stream of 10 equal tasks over ``C`` classes, ``--per-class`` random features of
``d = 768`` dimensions per class (the ViT-B/16 width of the reference), run the way
:class:`~lightning_plugins.modules.SLCA` runs it after each task, for every covariance
kind, each in a fresh process (``spawn``):

- **statistics**: per task, :func:`~lightning_plugins.functional.class_moments` of the
  task's classes and :func:`~lightning_plugins.functional.statistics_from_moments`, kept
  in ``[C, ...]`` buffers; the time summed over the tasks and the size of what is held at
  the end;
- **alignment** after the last task: :func:`~lightning_plugins.modules.classifier_alignment.align_linear_classifier`
  with the reference's defaults (256 features per class and epoch, 5 epochs, batches of
  256, SGD lr 0.01, logit normalisation τ = 0.1) over all ``C`` classes;
- the process's peak resident memory.

The anchor is the reference's sampling: one ``torch.distributions.MultivariateNormal``
per class (a Cholesky factorisation each epoch, float64 means), timed for ``full`` over
the same 5 epochs (sampling only; ours is one batched draw per epoch from factors computed
once). ``full`` is the reference's O(C·d²) statistics; ``diagonal`` and ``lowrank``
(rank 16) bound what is held. Writes ``benchmarks/results/bench_continual.json``.
"""  # noqa: E501

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path

import torch

from lightning_plugins.functional import class_moments, statistics_from_moments
from lightning_plugins.modules.classifier_alignment import align_linear_classifier

RESULTS = Path(__file__).resolve().parent / "results" / "bench_continual.json"
KINDS = (("full", None), ("diagonal", None), ("lowrank", 16))
NUM_TASKS = 10
EPOCHS, SAMPLES = 5, 256  # the reference's alignment


def task_features(task: int, classes: range, dim: int, per_class: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(task)
    labels = torch.tensor(list(classes)).repeat_interleave(per_class)
    shift = labels[:, None].float() / 100
    return torch.randn(len(labels), dim, generator=generator) + shift, labels


def reference_sampling(stats: dict[str, torch.Tensor]) -> float:
    """Seconds of the reference's per-class MultivariateNormal draws over the epochs."""
    started = time.perf_counter()
    for _ in range(EPOCHS):
        for mean, covariance in zip(stats["mean"], stats["covariance"], strict=True):
            normal = torch.distributions.MultivariateNormal(mean.double().float(), covariance)
            normal.sample((SAMPLES,))
    return time.perf_counter() - started


def measure(num_classes: int, dim: int, per_class: int, kind: str, rank: int | None, queue) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    size = num_classes // NUM_TASKS
    names = {"full": ("covariance",), "diagonal": ("variance",), "lowrank": ("factor", "residual")}
    held: dict[str, torch.Tensor] = {}
    stats_seconds = 0.0
    for task in range(NUM_TASKS):
        classes = range(task * size, (task + 1) * size)
        features, labels = task_features(task, classes, dim, per_class)
        started = time.perf_counter()
        moments = class_moments(features, labels, classes, kind)
        stats = statistics_from_moments(moments, classes, kind, rank, dtype=torch.float32)
        for name in ("mean", *names[kind]):
            if name not in held:
                held[name] = torch.zeros(num_classes, *stats[name].shape[1:])
            held[name][task * size : (task + 1) * size] = stats[name]
        stats_seconds += time.perf_counter() - started
        del features, moments, stats
    held_bytes = sum(v.numel() * v.element_size() for v in held.values())
    head = torch.nn.Linear(dim, num_classes)
    torch.nn.init.trunc_normal_(head.weight, std=0.02)
    started = time.perf_counter()
    align_linear_classifier(
        head.weight.detach(),
        head.bias.detach(),
        held,
        torch.arange(num_classes) // size,
        [size] * NUM_TASKS,
        samples_per_class=SAMPLES,
        epochs=EPOCHS,
        generator=torch.Generator().manual_seed(0),
    )
    align_seconds = time.perf_counter() - started
    reference = reference_sampling(held) if kind == "full" else None
    queue.put(
        {
            "classes": num_classes,
            "kind": kind if rank is None else f"{kind} (k={rank})",
            "statistics_s": stats_seconds,
            "held_MiB": held_bytes / 2**20,
            "alignment_s": align_seconds,
            "reference_sampling_s": reference,
            "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
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
    print(
        f"SLCA statistics ({NUM_TASKS} tasks) and alignment, d = {dim}, "
        f"{args.per_class} features per class"
    )
    header = ("classes", "covariance", "stats (s)", "held (MiB)", "align (s)", "ref. sampling (s)")
    print("{:>7} {:<14} {:>9} {:>10} {:>9} {:>17} {:>14}".format(*header, "peak RSS (MiB)"))
    for row in rows:
        reference = row["reference_sampling_s"]
        print(
            f"{row['classes']:>7} {row['kind']:<14} {row['statistics_s']:>9.2f} "
            f"{row['held_MiB']:>10.1f} {row['alignment_s']:>9.2f} "
            f"{'-' if reference is None else f'{reference:.2f}':>17} {row['peak_rss_MiB']:>14.0f}"
        )
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(
            json.dumps(
                {"dim": dim, "per_class": args.per_class, "tasks": NUM_TASKS, "rows": rows},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
