"""EMA update: time per update, achieved bandwidth and memory held, against Lightning and timm.

Run from the repository root::

    python benchmarks/bench_ema.py             # full run (about a minute on 2 cores)
    python benchmarks/bench_ema.py --quick     # smoke test: fewer repeats (under half a minute)
    python benchmarks/bench_ema.py --models vit_tiny_patch16_224 --threads 2

Three ways to keep an exponential moving average of the same model's weights, each set up
the way it sets itself up in a real ``Trainer.fit``, decay 0.999 without warm-up, float32:

1. **ours**: ``lightning_plugins.callbacks.EMATeacher(decay=0.999)`` (constant schedule) on
   a minimal LightningModule that holds the timm network as ``self.net``. A real
   ``Trainer`` (CPU or one GPU) is built, its strategy connected to the module (as
   ``Trainer.fit`` does) and ``callback.on_fit_start(trainer, module)`` run: it selects the
   tensors, allocates the average and resolves the schedule. Timed: ``callback.update(step)``
   (what ``on_train_batch_end`` calls once per optimizer step), one
   ``functional.ema_update_``, i.e. a ``torch._foreach_lerp_``. A second instance with
   ``device="cpu"`` (``name="teacher_cpu"``) is timed as well: on a CPU run it is the same
   code path as the first (the ``.to("cpu")`` is a no-op) and must match it; on a GPU it is
   the offload variant (average on the host, one device-to-host copy per update).
2. **Lightning**: ``lightning.pytorch.callbacks.EMAWeightAveraging(decay=0.999)``. Its
   ``setup(trainer, module, "fit")`` deep-copies the whole LightningModule into a
   ``torch.optim.swa_utils.AveragedModel`` (``use_buffers=True``,
   ``avg_fn=get_ema_avg_fn(0.999)``); it runs before our ``on_fit_start``, as in a fit.
   Timed: ``callback._average_model.update_parameters(module)``, exactly what its
   ``on_train_batch_end`` calls. With an ``avg_fn`` that path loops over the tensors in
   Python and computes ``ema.copy_(d * ema + (1 - d) * model)``: three temporaries per
   tensor.
3. **timm**: ``timm.utils.ModelEmaV3(net, decay=0.999)`` on the network (how timm users
   build it), default ``foreach=True``, no warm-up. Timed: ``ema.update(net, step=step)``
   (``state_dict()`` of both modules, then one ``torch._foreach_lerp_``).

**Protocol.** Models: ``vit_base_patch16_224`` (86.6M parameters, 152 tensors) and
``vit_tiny_patch16_224`` (5.7M), ``pretrained=False``, seed 0. Each step ``k = 1, 2, ...``
first sets the live weights (untimed, in place, no temporaries) to ``p0 + c_k * n`` with
a fixed noise tensor ``n ~ N(0, 0.01^2)`` per averaged tensor, drawn once, and a random
walk ``c_k = c_{k-1} + U(-1, 1)``, so the average actually moves; then every method does
one update after step ``k``, each timed on its own (``time.perf_counter``; on CUDA with
``torch.cuda.synchronize()`` before and after), in an order rotated from step to step so
no method always follows the perturbation (whose writes may still sit in the cache).
Step 1 is a copy for all three (first update of ``EMATeacher`` and ``AveragedModel``;
timm's decay is 0 at step 1) and is excluded.

**The C heap.** Lightning's temporaries come from glibc's ``malloc``, and whether each
one is page-faulted in afresh on every update depends on malloc's thresholds, which move
with the program's history: in trials, an unrelated untimed line before the loop changed
Lightning's ViT-B figure between ~60 and ~420 ms while ours and timm's (no temporaries)
did not move. So the run fixes them with ``mallopt`` in two phases (see ``set_heap``):
**cold** (a fresh process's 128 KiB thresholds, free memory trimmed: every temporary
above 128 KiB is mmapped and faulted in) and then **warm** (32 MiB mmap threshold, 1 GiB
trim threshold: freed memory is reused, as in a training process that has freed its
activations). Every model and device is measured in a fresh process (``spawn``), so the
cold phase always starts from the same heap. Each phase runs ``--warmup`` untimed and
``--repeats`` timed steps (``vit_tiny``: 5x as many). The headline times, ratios and
targets are the warm phase's medians, the case that favours Lightning; the cold medians
are shown beside them. On a GPU the phases only matter for the host side of
``device="cpu"``.

**Bandwidth.** A lerp reads the average and the model and writes the average, so one
update moves ``bytes = 3 x (bytes of the averaged floating-point tensors)``; achieved
GB/s = bytes / median time (1 GB = 1e9 bytes), the same ``bytes`` for every method (what
the update needs, not what a method moves: Lightning's temporaries move about 3x more).
On CUDA the device's peak bandwidth is shown beside it where known (H100 3.35 TB/s, H200
4.8 TB/s; else "unknown").

**Memory.** The bytes of the averaged copy each method holds, summed over distinct tensor
storages: ours, the tensors of ``EMATeacher._average.tensors``; Lightning, every parameter
and buffer of its ``AveragedModel`` (the deep-copied LightningModule, with frozen parameters and
non-persistent buffers if there were any, plus the ``n_averaged`` counter); timm, every
parameter and buffer of its module copy. On CUDA the transient peak during one update
(``max_memory_allocated`` above the memory allocated before it) is recorded as well.

**Correctness.** After all updates (the same sequence of perturbed weights for every
method) the averages are compared name by name with ours and with the exact average in
float64, ``p0 + C * n`` with ``C`` the EMA of the scalars ``c_k``: the relative
difference ``||a - b|| / ||b||`` over all tensors must be at most 1e-5, and the average
must differ from the live weights (it moved, and lags).

Targets: ours at least 3x faster than ``EMAWeightAveraging`` and at least 1.0x timm, on
every model and device. Torch runs with ``--threads`` threads (default 1: on a shared
2-core machine two threads contend with everything else and make every figure noisy).
A GPU row is added when ``torch.cuda.is_available()``. Prints
markdown tables with the ratios and targets and writes JSON to
``benchmarks/results/bench_ema.json``. Absolute times on a shared 2-core machine are
noise; the ratios from one run are the figures.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import math
import multiprocessing
import os
import platform
import random
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "bench_ema.json"

DECAY = 0.999
NOISE_STD = 0.01
MODELS = ("vit_base_patch16_224", "vit_tiny_patch16_224")
SMALL_REPEAT_FACTOR = {"vit_tiny_patch16_224": 5}  # small models: more timed steps
METHODS = ("ours", "ours_cpu", "lightning", "timm")
LABELS = {
    "ours": "ours",
    "ours_cpu": "ours (device='cpu')",
    "lightning": "Lightning EMAWeightAveraging",
    "timm": "timm ModelEmaV3",
}
LIGHTNING_TARGET, TIMM_TARGET = 3.0, 1.0
AGREEMENT_TOLERANCE = 1e-5
PHASES = ("cold", "warm")  # glibc malloc settings, see set_heap
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
HEAP_THRESHOLDS = {"cold": (128 * 2**10, 128 * 2**10), "warm": (32 * 2**20, 2**30)}
PEAK_BANDWIDTH_TBS = {"H200": 4.8, "H100": 3.35}  # HBM bandwidth by device name


@dataclass
class Row:
    """One (model, device) measurement."""

    model: str
    device: str
    params: int = 0
    tensors: int = 0
    update_bytes: int = 0  # 3 x bytes of the averaged floating-point tensors
    repeats: int = 0
    ms: dict[str, float | None] = field(default_factory=dict)  # median ms, warm heap
    ms_cold_heap: dict[str, float | None] = field(default_factory=dict)  # median ms, cold
    heap_controlled: bool = True  # glibc's mallopt could set the heap phases
    gbps: dict[str, float | None] = field(default_factory=dict)
    held_bytes: dict[str, int | None] = field(default_factory=dict)
    held_on: dict[str, str] = field(default_factory=dict)  # device type of the held copy
    transient_bytes: dict[str, int | None] = field(default_factory=dict)  # CUDA only
    ratio_lightning: float | None = None  # Lightning ms / ours ms (warm heap)
    ratio_lightning_cold_heap: float | None = None
    ratio_timm: float | None = None  # timm ms / ours ms
    holds_lightning: bool | None = None
    holds_timm: bool | None = None
    rel_diff_vs_ours: dict[str, float | None] = field(default_factory=dict)
    rel_diff_vs_float64: dict[str, float | None] = field(default_factory=dict)
    lag_vs_live: float | None = None  # ||ours - live|| / ||live||: the average moved
    agree: bool | None = None
    peak_bandwidth_tbs: float | None = None
    device_name: str = ""
    status: str = "ok"  # "ok" | "failed"
    note: str = ""
    times_ms: dict[str, dict[str, list[float]]] = field(default_factory=dict)


# ----------------------------------------------------------------------------- setup


def make_module(model_name: str, seed: int) -> Any:
    """A minimal LightningModule holding a randomly initialised timm network as ``net``."""
    import lightning.pytorch as pl
    import timm

    class Holder(pl.LightningModule):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    torch.manual_seed(seed)
    return Holder(timm.create_model(model_name, pretrained=False))


def make_trainer(device: str) -> Any:
    import lightning.pytorch as pl

    return pl.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def storages(tensors: Iterable[torch.Tensor]) -> tuple[int, set[str]]:
    """Bytes of the distinct storages behind ``tensors``, and the device types they are on."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[(t.device.type, storage.data_ptr())] = storage.nbytes()
    return sum(seen.values()), {device for device, _ in seen}


def module_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Every parameter, buffer and plain tensor attribute of ``module`` and its submodules."""
    found = []
    for sub in module.modules():
        found += list(sub.parameters(recurse=False)) + list(sub.buffers(recurse=False))
        found += [v for v in vars(sub).values() if isinstance(v, torch.Tensor)]
    return found


def set_heap(phase: str) -> bool:
    """Fix glibc malloc's thresholds for ``phase``; False where that is not possible.

    PyTorch's CPU tensors come from ``malloc``. glibc serves a request at or above its mmap
    threshold with a fresh ``mmap`` whose pages fault in on first touch and go back to the
    system on ``free``, and it returns free memory at the top of the heap beyond its trim
    threshold. Both start at 128 KiB and move with the program's history, so whether a
    temporary as large as a weight costs page faults on every update depends on what ran
    before (an untimed line could change Lightning's figure 6x). Both are fixed here:
    ``"cold"``, glibc's initial 128 KiB (a fresh process; every temporary above 128 KiB
    is mmapped); ``"warm"``, 32 MiB (glibc's largest mmap threshold) and 1 GiB: freed
    memory stays in the heap and is reused, as in a training process that has freed its
    activations. Entering ``"cold"`` also gives the heap's free memory back (``malloc_trim``).
    """
    mmap_threshold, trim_threshold = HEAP_THRESHOLDS[phase]
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return False
    done = mallopt(M_MMAP_THRESHOLD, mmap_threshold) and mallopt(M_TRIM_THRESHOLD, trim_threshold)
    if phase == "cold":
        malloc_trim(0)  # give back the free memory an earlier phase kept
    return bool(done)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_bandwidth(device: str) -> tuple[float | None, str]:
    if device != "cuda":
        return None, platform.processor() or "cpu"
    name = torch.cuda.get_device_name()
    for key, tbs in PEAK_BANDWIDTH_TBS.items():
        if key in name:
            return tbs, name
    return None, name


def relative_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """``||a - b|| / ||b||`` over all tensors together, in float64."""
    a = [x.detach().double().cpu() for x in a]
    b = [y.detach().double().cpu() for y in b]
    num = sum(float((x - y).pow(2).sum()) for x, y in zip(a, b, strict=True))
    den = sum(float(y.pow(2).sum()) for y in b)
    return math.sqrt(num / den) if den else math.sqrt(num)


# ------------------------------------------------------------------------- measuring


def measure(model_name: str, device: str, args: argparse.Namespace) -> Row:
    """Set the three methods up on one model and time their updates, interleaved."""
    from lightning.pytorch.callbacks import EMAWeightAveraging
    from timm.utils import ModelEmaV3

    from lightning_plugins.callbacks import EMATeacher

    row = Row(model=model_name, device=device)
    row.peak_bandwidth_tbs, row.device_name = peak_bandwidth(device)
    module = make_module(model_name, args.seed).to(device)
    net = module.net
    trainer = make_trainer(device)
    trainer.strategy.connect(module)  # as Trainer.fit does before any hook

    # set up in the order of a real fit: setup() hooks, then on_fit_start()
    lightning = EMAWeightAveraging(decay=DECAY)
    lightning.setup(trainer, module, "fit")  # deep-copies the LightningModule
    timm_ema = ModelEmaV3(net, decay=DECAY)  # a copy of the network, foreach=True
    ours = EMATeacher(decay=DECAY)
    ours.on_fit_start(trainer, module)
    ours_cpu = EMATeacher(decay=DECAY, device="cpu", name="teacher_cpu")
    ours_cpu.on_fit_start(trainer, module)
    average_model = lightning._average_model

    updates: dict[str, Callable[[int], None]] = {
        "ours": ours.update,
        "ours_cpu": ours_cpu.update,
        "lightning": lambda step: average_model.update_parameters(module),
        "timm": lambda step: timm_ema.update(net, step=step),
    }

    keys = ours.keys  # names in the LightningModule's state dict
    live = ours._average.live()  # the module's tensors, in the order of `keys`
    floats = [t for t in live if t.is_floating_point()]
    float_keys = [k for k, t in zip(keys, live, strict=True) if t.is_floating_point()]
    row.params = sum(p.numel() for p in module.parameters())
    row.tensors = len(keys)
    row.update_bytes = 3 * sum(t.numel() * t.element_size() for t in floats)

    row.held_bytes["ours"], on = storages(ours._average.tensors)
    row.held_on["ours"] = ",".join(sorted(on))
    row.held_bytes["ours_cpu"], on = storages(ours_cpu._average.tensors)
    row.held_on["ours_cpu"] = ",".join(sorted(on))
    row.held_bytes["lightning"], on = storages(module_tensors(average_model))
    row.held_on["lightning"] = ",".join(sorted(on))
    row.held_bytes["timm"], on = storages(module_tensors(timm_ema.module))
    row.held_on["timm"] = ",".join(sorted(on))

    # perturbation, untimed: live_k = p0 + c_k * noise, c_k a random walk; set in place
    # from p0 each step (no rounding accumulates, no temporaries touch the heap)
    generator = torch.Generator(device=device).manual_seed(args.seed + 1)
    with torch.no_grad():
        initial = [t.detach().clone() for t in floats]
        noise = [
            torch.randn(t.shape, generator=generator, device=device, dtype=t.dtype).mul_(NOISE_STD)
            for t in floats
        ]
    scalars = random.Random(args.seed + 2)
    walk = 0.0  # c_k
    expected = 0.0  # the EMA of c_k in float64: the average is p0 + expected * noise

    repeats = args.repeats * SMALL_REPEAT_FACTOR.get(model_name, 1)
    row.repeats = repeats
    times: dict[str, dict[str, list[float]]] = {
        phase: {name: [] for name in METHODS} for phase in PHASES
    }
    transient: dict[str, int] = dict.fromkeys(METHODS, 0)
    step = 0
    for phase in PHASES:
        row.heap_controlled = set_heap(phase) and row.heap_controlled
        first = 1 if phase == PHASES[0] else 0  # the first update of all is a copy
        for index in range(first + args.warmup + repeats):
            step += 1
            walk += scalars.uniform(-1.0, 1.0)
            expected = walk if step == 1 else DECAY * expected + (1 - DECAY) * walk
            with torch.no_grad():
                for t, start, direction in zip(floats, initial, noise, strict=True):
                    t.copy_(start).add_(direction, alpha=walk)
            shift = step % len(METHODS)
            for name in METHODS[shift:] + METHODS[:shift]:
                sync(device)
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                    before = torch.cuda.memory_allocated()
                start = time.perf_counter()
                updates[name](step)
                sync(device)
                elapsed = (time.perf_counter() - start) * 1000
                if device == "cuda" and step > 1:
                    peak = torch.cuda.max_memory_allocated() - before
                    transient[name] = max(transient[name], peak)
                if index >= first + args.warmup:
                    times[phase][name].append(elapsed)

    for name in METHODS:
        row.ms[name] = statistics.median(times["warm"][name])
        row.ms_cold_heap[name] = statistics.median(times["cold"][name])
        row.gbps[name] = row.update_bytes / (row.ms[name] / 1000) / 1e9
        row.transient_bytes[name] = transient[name] if device == "cuda" else None
    row.times_ms = times
    row.ratio_lightning = row.ms["lightning"] / row.ms["ours"]
    row.ratio_lightning_cold_heap = row.ms_cold_heap["lightning"] / row.ms_cold_heap["ours"]
    row.ratio_timm = row.ms["timm"] / row.ms["ours"]
    row.holds_lightning = row.ratio_lightning >= LIGHTNING_TARGET
    row.holds_timm = row.ratio_timm >= TIMM_TARGET

    # correctness: the same averages by name, and the exact average in float64
    reference = [
        start.double().add_(direction.double(), alpha=expected)
        for start, direction in zip(initial, noise, strict=True)
    ]
    del initial, noise
    lightning_state = average_model.module.state_dict()
    timm_state = {f"net.{k}": v for k, v in timm_ema.module.state_dict().items()}
    averages = {
        "ours": [t for t in ours._average.tensors if t.is_floating_point()],
        "ours_cpu": [t for t in ours_cpu._average.tensors if t.is_floating_point()],
        "lightning": [lightning_state[k] for k in float_keys],
        "timm": [timm_state[k] for k in float_keys],
    }
    for name in METHODS:
        if name != "ours":
            row.rel_diff_vs_ours[name] = relative_diff(averages[name], averages["ours"])
        row.rel_diff_vs_float64[name] = relative_diff(averages[name], reference)
    del reference
    row.lag_vs_live = relative_diff(averages["ours"], floats)
    row.agree = (
        all(v <= AGREEMENT_TOLERANCE for v in row.rel_diff_vs_ours.values())
        and all(v <= AGREEMENT_TOLERANCE for v in row.rel_diff_vs_float64.values())
        and row.lag_vs_live > 10 * AGREEMENT_TOLERANCE
    )
    if not row.agree:
        row.note = "averages disagree (or did not move): see rel_diff_* and lag_vs_live"
    return row


def measure_safely(model_name: str, device: str, args: argparse.Namespace) -> Row:
    print(f"\n[{model_name} on {device}]", flush=True)
    start = time.perf_counter()
    try:
        row = measure(model_name, device, args)
    except Exception as err:
        traceback.print_exc()
        return Row(model=model_name, device=device, status="failed", note=f"{err!r}")
    finally:
        if device == "cuda":
            torch.cuda.empty_cache()
    print(
        f"  {row.params / 1e6:.1f}M params, {row.tensors} tensors, {row.repeats} timed updates "
        f"in {time.perf_counter() - start:.1f} s: "
        + ", ".join(f"{name} {row.ms[name]:.2f} ms" for name in METHODS)
        + f"; agree: {row.agree}",
        flush=True,
    )
    return row


def configure(args: argparse.Namespace) -> None:
    """Threads and quiet logs, in the main process and in each measuring process."""
    warnings.filterwarnings("ignore", module="lightning")
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)


def measure_isolated(model_name: str, device: str, args: argparse.Namespace) -> dict[str, Any]:
    """``measure_safely`` in this (fresh) process, the row as a plain dict."""
    configure(args)
    return asdict(measure_safely(model_name, device, args))


def run(model_name: str, device: str, args: argparse.Namespace) -> Row:
    """One measurement, in a fresh process unless ``--in-process``.

    A fresh process (``spawn``) per model and device starts every measurement with the
    same C heap and allocator caches, whatever ran before it.
    """
    if args.in_process:
        return measure_safely(model_name, device, args)
    context = multiprocessing.get_context("spawn")
    with context.Pool(1, maxtasksperchild=1) as pool:
        return Row(**pool.apply(measure_isolated, (model_name, device, args)))


# --------------------------------------------------------------------------- output


def fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def verdict(holds: bool | None) -> str:
    return {True: "HOLDS", False: "MISSED", None: "n/a"}[holds]


def short(model: str) -> str:
    return model.replace("_patch16_224", "")


def mib(row: Row, name: str) -> str:
    held = row.held_bytes.get(name)
    if held is None:
        return "n/a"
    where = row.held_on.get(name, "")
    return f"{held / 2**20:.1f}" + (f" ({where})" if where != row.device else "")


def markdown_tables(rows: list[Row]) -> str:
    time_lines = [
        "| model | device | params | ours ms | ours (device='cpu') ms | Lightning ms "
        "| timm ms | Lightning / ours | timm / ours | verdict (>= 3x / >= 1.0x) "
        "| cold heap: Lightning ms (/ ours) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    memory_lines = [
        "| model | device | bytes / update | GB/s ours | GB/s Lightning | GB/s timm "
        "| peak GB/s | MiB held: ours | ours (device='cpu') | Lightning | timm "
        "| rel. diff vs ours (Lightning / timm) | vs float64 (ours) | agree |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        name = f"{short(r.model)}"
        if r.status != "ok":
            time_lines.append(f"| {name} | {r.device} | failed: {r.note} ||||||||||")
            continue
        digits = 2 if r.ms["ours"] >= 0.1 else 4
        time_lines.append(
            f"| {name} | {r.device} | {r.params / 1e6:.1f}M | {fmt(r.ms['ours'], digits)} "
            f"| {fmt(r.ms['ours_cpu'], digits)} | {fmt(r.ms['lightning'], digits)} "
            f"| {fmt(r.ms['timm'], digits)} | {fmt(r.ratio_lightning, 2)}x "
            f"| {fmt(r.ratio_timm, 2)}x "
            f"| {verdict(r.holds_lightning)} / {verdict(r.holds_timm)} "
            f"| {fmt(r.ms_cold_heap['lightning'], digits)} "
            f"({fmt(r.ratio_lightning_cold_heap, 1)}x) |"
        )
        peak = "unknown" if r.peak_bandwidth_tbs is None else f"{r.peak_bandwidth_tbs * 1000:g}"
        if r.device == "cpu":
            peak = "n/a (CPU)"
        memory_lines.append(
            f"| {name} | {r.device} | {r.update_bytes / 1e6:.0f} MB | {fmt(r.gbps['ours'], 1)} "
            f"| {fmt(r.gbps['lightning'], 1)} | {fmt(r.gbps['timm'], 1)} | {peak} "
            f"| {mib(r, 'ours')} | {mib(r, 'ours_cpu')} | {mib(r, 'lightning')} "
            f"| {mib(r, 'timm')} | {r.rel_diff_vs_ours['lightning']:.1e} / "
            f"{r.rel_diff_vs_ours['timm']:.1e} | {r.rel_diff_vs_float64['ours']:.1e} "
            f"| {'yes' if r.agree else 'NO'} |"
        )
    return "\n".join(time_lines) + "\n\n" + "\n".join(memory_lines)


def report(rows: list[Row]) -> None:
    print("\n" + markdown_tables(rows))
    print(
        "\nbytes / update = 3 x bytes of the averaged float tensors (read average + read "
        "model + write average); GB/s = that / median time. MiB held = distinct tensor "
        "storages of the copy each method keeps (on the row's device unless noted). "
        "Times: median per update with glibc malloc's heap warm (freed memory reused, as "
        "in a training process); 'cold heap': with a fresh process's 128 KiB mmap "
        "threshold, so every temporary above 128 KiB is page-faulted in on each update."
    )
    print("\nTargets:")
    for r in rows:
        if r.status != "ok":
            print(f"  [n/a] {r.model} on {r.device}: {r.status} -- {r.note}")
            continue
        where = f"{short(r.model)} on {r.device}"
        print(
            f"  [{verdict(r.holds_lightning)}] {where}: ours >= {LIGHTNING_TARGET:g}x faster "
            f"than EMAWeightAveraging: {r.ratio_lightning:.2f}x"
        )
        print(
            f"  [{verdict(r.holds_timm)}] {where}: ours >= {TIMM_TARGET:g}x timm ModelEmaV3: "
            f"{r.ratio_timm:.2f}x"
        )
        if not r.heap_controlled:
            print(f"  [note] {where}: glibc's mallopt unavailable: heap phases not controlled")
        worst = max([*r.rel_diff_vs_ours.values(), *r.rel_diff_vs_float64.values()])
        print(
            f"  [{'HOLDS' if r.agree else 'MISSED'}] {where}: all averages agree within "
            f"{AGREEMENT_TOLERANCE:g} relative (worst {worst:.1e}; average vs live "
            f"{r.lag_vs_live:.1e})"
        )
        same_cpu = r.held_bytes["ours_cpu"] == r.held_bytes["ours"] and r.device == "cpu"
        if same_cpu:
            print(
                f"  [note] {where}: ours with device='cpu' is the same path here: "
                f"{r.ms['ours_cpu']:.2f} ms vs {r.ms['ours']:.2f} ms, same "
                f"{r.held_bytes['ours'] / 2**20:.1f} MiB"
            )


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    import lightning
    import timm

    info = {
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "timm": timm.__version__,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def write_json(path: Path, args: argparse.Namespace, rows: list[Row], seconds: float) -> None:
    payload = {
        "benchmark": "bench_ema",
        "machine": machine_info(args),
        "settings": {
            "quick": args.quick,
            "seed": args.seed,
            "threads": args.threads,
            "models": args.models,
            "devices": args.devices,
            "repeats": args.repeats,
            "small_repeat_factor": SMALL_REPEAT_FACTOR,
            "warmup": args.warmup,
            "in_process": args.in_process,
            "decay": DECAY,
            "noise_std": NOISE_STD,
            "dtype": "float32",
            "heap_phases": {
                phase: {"mmap_threshold": mmap, "trim_threshold": trim}
                for phase, (mmap, trim) in HEAP_THRESHOLDS.items()
            },
        },
        "methods": LABELS,
        "formulas": {
            "update_bytes": "3 * bytes of the averaged floating-point tensors",
            "gbps": "update_bytes / median seconds per update / 1e9",
            "held_bytes": "bytes of the distinct tensor storages of the averaged copy",
            "rel_diff": "||a - b||_2 / ||b||_2 over all averaged float tensors, float64",
        },
        "seconds": seconds,
        "rows": [asdict(r) for r in rows],
        "targets": [
            target
            for r in rows
            if r.status == "ok"
            for target in (
                {
                    "model": r.model,
                    "device": r.device,
                    "target": f"Lightning / ours >= {LIGHTNING_TARGET:g}",
                    "value": r.ratio_lightning,
                    "holds": r.holds_lightning,
                },
                {
                    "model": r.model,
                    "device": r.device,
                    "target": f"timm / ours >= {TIMM_TARGET:g}",
                    "value": r.ratio_timm,
                    "holds": r.holds_timm,
                },
                {
                    "model": r.model,
                    "device": r.device,
                    "target": f"averages agree within {AGREEMENT_TOLERANCE:g} relative",
                    "value": max([*r.rel_diff_vs_ours.values(), *r.rel_diff_vs_float64.values()]),
                    "holds": r.agree,
                },
            )
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


# ----------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), help="timm model names")
    p.add_argument(
        "--devices", nargs="+", choices=("cpu", "cuda"), help="default: cpu, and cuda if available"
    )
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--repeats", type=int, default=40, help="timed updates (vit_tiny: 5x as many)")
    p.add_argument("--warmup", type=int, default=3, help="untimed updates after the first copy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="8 timed updates, 1 warm-up")
    p.add_argument(
        "--in-process", action="store_true", help="measure in this process (default: fresh ones)"
    )
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = 8, 1
    if args.devices is None:
        args.devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in args.devices and not torch.cuda.is_available():
        p.error("--devices cuda: CUDA is not available")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure(args)
    print(
        f"torch {torch.__version__}, torch.set_num_threads({args.threads}); "
        f"models {args.models}, devices {args.devices}"
    )
    start = time.perf_counter()
    rows = [run(model, device, args) for device in args.devices for model in args.models]
    seconds = time.perf_counter() - start
    report(rows)
    write_json(args.output, args, rows, seconds)
    print(f"\nwrote {args.output} ({seconds:.0f} s)")
    return 1 if any(r.status == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
