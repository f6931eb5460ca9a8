"""Contrastive losses: forward+backward time and peak memory, ours vs open_clip.

Run from the repository root::

    python benchmarks/bench_losses.py            # full run, N in {1024, 4096, 16384}
    python benchmarks/bench_losses.py --quick    # smoke test, N in {256, 1024}, 1 repeat
    python benchmarks/bench_losses.py --sizes 2048 8192 --chunk-size 512 --device cuda

Compares ``lightning_plugins.losses.ClipLoss`` / ``SigLipLoss`` (unchunked, and chunked
with ``chunk_size=k`` where the constructor supports it; otherwise the row is "n/a")
against ``open_clip.loss.ClipLoss`` / ``SigLipLoss`` at world size 1. Inputs are random
L2-normalised float32 features ``[N, d]`` with gradient, ``logit_scale=10`` and
``logit_bias=-10`` (both with gradient).

Every (loss, N, variant) is measured in a fresh process of its own, because torch's CPU
allocations are invisible to ``tracemalloc``. The processes are forked, one per
measurement, from a ``multiprocessing`` forkserver that has imported torch and done no
tensor work (a plain subprocess per measurement spends ~4 s importing torch):

* time: median over ``repeats`` forward+backward calls after ``warmup`` calls (from
  N = 8192 on: ``--repeats-large`` calls after ``--warmup-large``, default none: one call
  takes tens of seconds there and allocates its GiB buffers afresh anyway);
* peak extra memory: on CPU, the peak resident set size (``ru_maxrss``) minus the RSS
  measured after the inputs are created and right before the first measured forward; on
  CUDA, ``torch.cuda.max_memory_allocated`` minus the allocated bytes at that point.
  Before the inputs are created, the worker runs the loss once on a tiny batch so that
  one-time library set-up (thread pools, kernels) is not counted as the loss's memory.

Prints a markdown table with ratios against open_clip, checks the issue targets
(unchunked time <= 1.0x open_clip; chunked peak memory at the largest N <= 0.1x open_clip
at <= 1.3x its time) and writes JSON to ``benchmarks/results/bench_losses.json``.
Absolute times on a shared 2-core machine are noise; the ratios from one run are the
figures.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import inspect
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results" / "bench_losses.json"
LOSSES = ("clip", "siglip")
LARGE_N = 8192  # sizes from here on use --repeats-large
TIME_TARGET = 1.0  # unchunked time / open_clip time
CHUNK_MEMORY_TARGET = 0.1  # chunked peak memory / open_clip, at the largest N
CHUNK_TIME_TARGET = 1.3  # chunked time / open_clip time, at the largest N
MIB = 1024 * 1024


@dataclass
class Config:
    """One measurement: a loss, a batch size and a variant."""

    loss: str  # "clip" | "siglip"
    n: int
    impl: str  # "open_clip" | "ours"
    chunk_size: int | None  # only for impl == "ours"
    dim: int
    device: str
    warmup: int
    repeats: int

    @property
    def variant(self) -> str:
        if self.impl == "open_clip":
            return "open_clip"
        return "ours" if self.chunk_size is None else f"ours chunked {self.chunk_size}"


@dataclass
class Row:
    """A measured (or skipped) configuration."""

    loss: str
    n: int
    variant: str
    status: str  # "ok" | "n/a" | "failed"
    time_ms: float | None = None
    peak_extra_mib: float | None = None
    time_ratio: float | None = None
    memory_ratio: float | None = None
    times_ms: list[float] | None = None
    note: str = ""


# --------------------------------------------------------------------------- loss setup


def supports_chunking(loss: str) -> bool:
    """Whether our loss class takes a ``chunk_size`` constructor argument."""
    return "chunk_size" in inspect.signature(our_class(loss)).parameters


def our_class(loss: str) -> type[torch.nn.Module]:
    from lightning_plugins.losses import ClipLoss, SigLipLoss

    return {"clip": ClipLoss, "siglip": SigLipLoss}[loss]


def build_loss(loss: str, impl: str, chunk_size: int | None) -> torch.nn.Module:
    """Instantiate the loss module of one configuration (world size 1)."""
    if impl == "open_clip":
        oc_loss = load_open_clip_loss()
        return {"clip": oc_loss.ClipLoss, "siglip": oc_loss.SigLipLoss}[loss]()
    cls = our_class(loss)
    return cls() if chunk_size is None else cls(chunk_size=chunk_size)


def load_open_clip_loss() -> ModuleType:
    """``open_clip/loss.py`` loaded on its own.

    The file only imports torch, but ``import open_clip.loss`` runs the package's
    ``__init__`` (models, transformers, ...: ~10 s per worker on a 2-core machine).
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("open_clip is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "loss.py"
    loss_spec = importlib.util.spec_from_file_location("_open_clip_loss", path)
    module = importlib.util.module_from_spec(loss_spec)
    loss_spec.loader.exec_module(module)
    return module


def make_inputs(n: int, dim: int, device: str, seed: int = 0) -> list[torch.Tensor]:
    """Normalised image/text features, logit scale and bias, all requiring grad."""
    gen = torch.Generator().manual_seed(seed)
    feats = [F.normalize(torch.randn(n, dim, generator=gen), dim=-1) for _ in range(2)]
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    return [t.to(device).requires_grad_() for t in (*feats, scale, bias)]


def step_fn(loss: str, module: torch.nn.Module, inputs: list[torch.Tensor]) -> Callable[[], None]:
    """A closure doing one forward+backward (grads reset first, so every call is alike)."""
    args = inputs if loss == "siglip" else inputs[:3]  # open_clip ClipLoss: no bias

    def step() -> None:
        for t in inputs:
            t.grad = None
        module(*args).backward()

    return step


# --------------------------------------------------------------------------- measuring


def current_rss_kib() -> float:
    """Resident set size now, in KiB (Linux /proc; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1024
    except OSError:
        return peak_rss_kib()


def peak_rss_kib() -> float:
    """Peak resident set size of this process, in KiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform == "darwin" else float(peak)  # bytes on macOS


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(cfg: Config) -> dict[str, Any]:
    """Run one configuration in this process; return times [ms] and peak extra [MiB]."""
    module = build_loss(cfg.loss, cfg.impl, cfg.chunk_size)
    step_fn(cfg.loss, module, make_inputs(8, cfg.dim, cfg.device))()  # library set-up
    step = step_fn(cfg.loss, module, make_inputs(cfg.n, cfg.dim, cfg.device))
    sync(cfg.device)
    if cfg.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = current_rss_kib()
    times = []
    for i in range(cfg.warmup + cfg.repeats):
        start = time.perf_counter()
        step()
        sync(cfg.device)
        if i >= cfg.warmup:
            times.append((time.perf_counter() - start) * 1000)
    if cfg.device == "cuda":
        extra = (torch.cuda.max_memory_allocated() - baseline) / MIB
    else:
        extra = (peak_rss_kib() - baseline) / 1024
    return {"times_ms": times, "peak_extra_mib": max(extra, 0.0)}


def run_isolated(cfg: Config) -> dict[str, Any]:
    """Measure ``cfg`` in a new process forked from a clean forkserver."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", "lightning_plugins.losses"])
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:  # one task, one process
        return pool.submit(measure, cfg).result()


# --------------------------------------------------------------------------- driving


def configs_for(loss: str, n: int, args: argparse.Namespace) -> list[Config]:
    """open_clip, ours, ours chunked (in that order) for one loss and size."""
    large = n >= LARGE_N
    common = dict(
        loss=loss,
        n=n,
        dim=args.dim,
        device=args.device,
        warmup=args.warmup_large if large else args.warmup,
        repeats=args.repeats_large if large else args.repeats,
    )
    return [
        Config(impl="open_clip", chunk_size=None, **common),
        Config(impl="ours", chunk_size=None, **common),
        Config(impl="ours", chunk_size=resolve_chunk(args.chunk_size, n), **common),
    ]


def resolve_chunk(spec: str, n: int) -> int:
    """``--chunk-size``: an integer, or ``auto`` for ``max(1, N // 16)``."""
    return max(1, n // 16) if spec == "auto" else int(spec)


def run_config(cfg: Config) -> Row:
    """Measure one configuration, or mark it n/a / failed."""
    row = Row(loss=cfg.loss, n=cfg.n, variant=cfg.variant, status="ok")
    if cfg.chunk_size is not None and not supports_chunking(cfg.loss):
        row.status, row.note = "n/a", "chunk_size not supported by this version"
        return row
    try:
        result = run_isolated(cfg)
    except Exception as err:  # any failure (or a killed worker) marks the row, run goes on
        row.status, row.note = "failed", f"{type(err).__name__}: {err}"
        return row
    row.times_ms = result["times_ms"]
    row.time_ms = statistics.median(row.times_ms)
    row.peak_extra_mib = result["peak_extra_mib"]
    return row


def add_ratios(rows: list[Row]) -> None:
    """Fill the time and memory ratios of each row against open_clip's row."""
    anchors = {(r.loss, r.n): r for r in rows if r.variant == "open_clip" and r.status == "ok"}
    for row in rows:
        anchor = anchors.get((row.loss, row.n))
        if row.status != "ok" or anchor is None:
            continue
        row.time_ratio = safe_ratio(row.time_ms, anchor.time_ms)
        row.memory_ratio = safe_ratio(row.peak_extra_mib, anchor.peak_extra_mib)


def safe_ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return value / reference


def check_targets(rows: list[Row]) -> list[tuple[str, bool | None, str]]:
    """The issue targets as (description, holds or None when unmeasured, detail)."""
    checks = []
    largest = max(r.n for r in rows)
    for loss in LOSSES:
        ours = [r for r in rows if r.loss == loss and r.variant == "ours"]
        for r in ours:
            holds = None if r.time_ratio is None else r.time_ratio <= TIME_TARGET
            checks.append(
                (
                    f"{loss} N={r.n}: unchunked time <= {TIME_TARGET}x open_clip",
                    holds,
                    r.status if r.time_ratio is None else f"{r.time_ratio:.2f}x",
                )
            )
        chunked = [r for r in rows if r.loss == loss and r.n == largest and "chunked" in r.variant]
        for r in chunked:
            if r.time_ratio is None or r.memory_ratio is None:
                holds, detail = None, r.status
            else:
                holds = r.memory_ratio <= CHUNK_MEMORY_TARGET and r.time_ratio <= CHUNK_TIME_TARGET
                detail = f"memory {fmt(r.memory_ratio, 3)}x, time {fmt(r.time_ratio, 2)}x"
            checks.append(
                (
                    f"{loss} N={r.n} {r.variant}: memory <= {CHUNK_MEMORY_TARGET}x at time <= "
                    f"{CHUNK_TIME_TARGET}x open_clip",
                    holds,
                    detail,
                )
            )
    return checks


# --------------------------------------------------------------------------- output


def fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: list[Row]) -> str:
    head = (
        "| loss | N | variant | time [ms] | time vs open_clip | peak extra memory [MiB] "
        "| memory vs open_clip |"
    )
    lines = [head, "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        time_cell = fmt(r.time_ms, 1) if r.status != "failed" else "failed"
        lines.append(
            f"| {r.loss} | {r.n} | {r.variant} | {time_cell} | {fmt(r.time_ratio, 2)} "
            f"| {fmt(r.peak_extra_mib, 1)} | {fmt(r.memory_ratio, 3)} |"
        )
    return "\n".join(lines)


def machine_info(device: str) -> dict[str, Any]:
    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        info["open_clip"] = importlib.metadata.version("open_clip_torch")
    except importlib.metadata.PackageNotFoundError:
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_json(path: Path, args: argparse.Namespace, rows: list[Row], checks: list) -> None:
    payload = {
        "benchmark": "bench_losses",
        "machine": machine_info(args.device),
        "settings": {
            "sizes": args.sizes,
            "dim": args.dim,
            "chunk_size": args.chunk_size,
            "warmup": args.warmup,
            "warmup_large": args.warmup_large,
            "repeats": args.repeats,
            "repeats_large": args.repeats_large,
            "large_n_from": LARGE_N,
            "quick": args.quick,
        },
        "chunk_size_supported": {loss: supports_chunking(loss) for loss in LOSSES},
        "rows": [asdict(r) for r in rows],
        "targets": [{"target": t, "holds": h, "detail": d} for t, h, d in checks],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--chunk-size", default="auto", help="integer, or 'auto' for N // 16")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--warmup", type=int, default=1, help=f"untimed calls for N < {LARGE_N}")
    p.add_argument("--warmup-large", type=int, default=0, help=f"untimed calls, N >= {LARGE_N}")
    p.add_argument("--repeats", type=int, default=5, help=f"timed calls for N < {LARGE_N}")
    p.add_argument("--repeats-large", type=int, default=2, help=f"timed calls for N >= {LARGE_N}")
    p.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    p.add_argument("--quick", action="store_true", help="N in {256, 1024}, 1 repeat")
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats, args.repeats_large = [256, 1024], 1, 1
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    if args.chunk_size != "auto" and not args.chunk_size.isdigit():
        p.error("--chunk-size: an integer or 'auto'")
    return args


def run_all(args: argparse.Namespace) -> list[Row]:
    """Measure every (loss, N, variant), printing progress; open_clip first per (loss, N)."""
    rows = []
    for loss in args.losses:
        for n in args.sizes:
            for cfg in configs_for(loss, n, args):
                row = run_config(cfg)
                rows.append(row)
                shown = fmt(row.time_ms, 1) + " ms" if row.status == "ok" else row.status
                print(f"  {loss:6s} N={n:<6d} {cfg.variant:22s} {shown}", flush=True)
    return rows


def report(rows: list[Row], checks: list[tuple[str, bool | None, str]]) -> None:
    print("\n" + markdown_table(rows) + "\n\nTargets:")
    for target, holds, detail in checks:
        verdict = {True: "HOLDS", False: "MISSED", None: "n/a"}[holds]
        print(f"  [{verdict}] {target}: {detail}")
    for row in rows:
        if row.status == "failed":
            print(f"  FAILED {row.loss} N={row.n} {row.variant}: {row.note}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    supported = {loss: supports_chunking(loss) for loss in args.losses}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; "
        f"chunk_size supported: {supported}"
    )
    rows = run_all(args)
    add_ratios(rows)
    checks = check_targets(rows)
    report(rows, checks)
    write_json(args.output, args, rows, checks)
    print(f"\nwrote {args.output}")
    return 1 if any(r.status == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
