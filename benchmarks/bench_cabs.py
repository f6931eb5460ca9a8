"""CABS: selection time, delivered samples per second, and share of a training step.

Run from the repository root::

    python benchmarks/bench_cabs.py            # full run (a few minutes on 2 cores)
    python benchmarks/bench_cabs.py --quick    # smoke test: fewer repeats and images
    python benchmarks/bench_cabs.py --parts selection --threads 2
    python benchmarks/bench_cabs.py --parts shards   # only part 5; the other rows are kept

Five measurements, each against its anchor, in one run:

1. **Selection time** (``selection``). A super-batch of 5120 samples, ~Poisson(10)
   concepts each, ids drawn Zipf-like (p ~ 1/rank, ranks shuffled over a 20,000-concept
   vocabulary, fixed seed), is cut to a batch of 1024 by
   ``lightning_plugins.functional.cabs_select`` (CSR input built once, ``cap=10``) and by
   a straightforward numpy port of the reference (bethgelab) greedy written here: per
   pick it recomputes every remaining candidate's gain (vectorised over candidates, no
   numba), takes the argmax and updates the counts. It uses exactly ``cabs_select``'s
   rule (per-occurrence term ``(t_c - n_c) / t_c + 1 / f_c`` while ``n_c < t_c``, else
   -0.5, held exactly in units of 2**-47; sample gain = mean over its occurrences,
   compared at 2**-32; a sample that would take a concept past the cap is excluded; no
   concepts gains -1; ``t_c = min(b / K, cap)``; when the cap excludes every remaining
   sample, the cap rises by its first value) and the same tie-break permutation
   (``torch.randperm(B, generator)``), so both must pick the same set; the run checks
   that (and reports the overlap if they differ). FM is compared with the reference's
   own FM, a Python sort of ``(len(concepts), index)`` pairs, both given the same
   per-sample lists. Times are the median over ``--repeats`` calls (ours) and
   ``--repeats-ref`` calls (reference) with ``torch.set_num_threads(--threads)``.
   Targets: DM <= 10 ms, FM <= 1 ms and no slower than the reference.
2. **Delivered samples per second at f = 0.8** (``e2e``). ``--images`` random 224x224
   JPEGs (quality 90, gradients + shapes + noise) and a JSONL manifest (``image``,
   ``caption``, ``concepts`` as names, drawn as in 1. with at most 32 per sample) are
   written to a temporary folder. *Ours*: ``ImageTextDataModule(train=manifest,
   sampling="cabs", filter_ratio=0.8, batch_size=64, image_size=224)``, whose batch
   sampler chooses on metadata so only the kept 64 images are decoded. *Decode-then-
   select* (the reference's way): a DataLoader over the same dataset (same transform)
   with i.i.d. batches of 320, then ``cabs_select`` (DM) on the batch's concepts keeps
   64. Only kept samples count as delivered. Each loader runs one untimed epoch, then a
   timed one (persistent workers), for every ``--workers`` value. If the datamodule is
   missing or fails, a minimal map-style dataset (PIL decode + open_clip
   ``image_transform(224, is_train=True)``) with a ``ConceptAwareBatchSampler`` stands in
   and the JSON says so. Target: ratio >= 4x (5x is the limit).
3. **Selection overhead in the demo** (``overhead``). With the demo's CLIP config
   (``examples/configs/clip_shapes.yaml``: SyntheticShapes, batch 128, ViT-Tiny-P8-32,
   AdamW), the median of ``--steps`` training steps (forward + backward + optimizer step
   on one batch, after warm-up) against the median time of ``next()`` on the
   ``ConceptAwareBatchSampler`` that ``SyntheticShapes(sampling="cabs")`` builds (DM,
   super-batch 640). Target: selection / step <= 2%.

4. **When the cap runs dry** (``cap``). The issue's setting: super-batches of 5120 with
   1-20 concepts per sample (uniform), ids Zipf-like over 1,000 and 20,000 concepts, cut
   to 1024 with cap 10, two seeds each. DM as ``cabs_select`` now does it (the greedy goes
   on under a cap raised by 10 at a time) against the earlier rule (random fill once the
   cap excludes every sample, run with the reference port) and against ``cap=None``. It
   reports the pick at which the cap first ran dry, the normalised entropy of the
   batch's concept histogram (entropy / log of the number of distinct concepts in it)
   and the largest count of one concept. Target: entropy and largest count no worse
   than the random fill's.

5. **Delivered samples per second from tar shards** (``shards``). ``--images`` random
   224x224 JPEGs (as in 2.) are written as ``--shards`` tar shards (default 2560 in 8;
   quick: 640 in 4) in img2dataset layout: ``<key>.jpg``, ``<key>.txt``, ``<key>.json``
   with ``concepts`` (ids). Every path decodes with open_clip's
   ``image_transform(224, is_train=True)`` and collates batches of 64 in a ``DataLoader``
   (``persistent_workers`` when workers > 0); each runs one untimed epoch, then a timed
   one, for every ``--workers`` value, in ``--shard-rounds`` rounds over all paths (a
   fresh loader each; default 3, quick 1): a row gives the median rate and the median of
   the per-round ratios, since other load on a shared machine drifts. The baseline is
   *today's reader*: the hand-written tarfile reader of commit ``a456e36``
   (``ImageTextShards`` with its ``shard_samples``), loaded at run time by ``git show``
   into a temporary package (its imports of each other rewritten; everything else it
   imports is HEAD's); without git or that revision its row is skipped. Against it,
   under HEAD's ``DecodingStream``: HEAD's ``ImageTextShards`` on webdataset, i.i.d.
   (``shuffle=True, equalize=True``; target ratio >= 0.8x, no regression beyond noise),
   the same over HTTP (a ``http.server`` thread on 127.0.0.1), and with
   ``ConceptAwareStream`` (f = 0.8; delivered = kept samples, it reads 5x as many); and
   the indexed path over wids, ``IndexedShards`` with a ``ConceptAwareBatchSampler``
   (f = 0.8) or a ``ShuffleSampler`` (skipped while ``indexed_shards`` is not on the
   checkout).

Torch runs with ``--threads`` threads throughout (default 1, as in DataLoader workers: on
a shared 2-core machine two threads contend and make every figure noisy). Prints a
markdown table with ratios and the targets, and writes JSON to
``benchmarks/results/bench_cabs.json`` (``--output``). Parts not run this time keep
their rows and info from the JSON already there (``runs`` says which run measured each
part); ``--fresh`` writes only the parts run. Absolute times on a shared 2-core machine are
noise; the ratios from one run are the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_plugins.functional import cabs_select
from lightning_plugins.functional.concept_lists import concept_csr

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "bench_cabs.json"
DEMO_CONFIG = ROOT / "examples" / "configs" / "clip_shapes.yaml"
PARTS = ("selection", "cap", "e2e", "overhead", "shards")

SUPER_BATCH, BATCH, VOCABULARY, MEAN_CONCEPTS, CAP = 5120, 1024, 20_000, 10, 10
TERM_UNIT = 2.0**47  # cabs_select holds every term exactly in units of 2**-47
KEY_UNIT = 2.0**32  # ... and compares the mean at multiples of 2**-32
OVER_TARGET, NO_CONCEPTS = -0.5, -1.0
CAP_VOCABULARIES, CAP_SEEDS, CAP_MAX_CONCEPTS = (1_000, 20_000), (0, 1), 20

DM_TARGET_MS, FM_TARGET_MS = 10.0, 1.0
E2E_TARGET_RATIO, E2E_LIMIT_RATIO = 4.0, 5.0
SHARE_TARGET = 0.02
FILTER_RATIO, E2E_BATCH, IMAGE_SIZE, MAX_OBJECTS = 0.8, 64, 224, 32
SHARDS_TARGET_RATIO = 0.8
OLD_READER_REV = "a456e36"  # the last commit whose shard reader was our own tarfile code
OLD_READER_DIR = "lightning_plugins/datamodules"
OLD_READER_FILES = ("shard_samples", "image_text_shards")
OLD_READER_PACKAGE = "_bench_cabs_reader_a456e36"


@dataclass
class Row:
    """One line of the final table."""

    metric: str
    unit: str
    part: str = ""
    ours: float | None = None
    baseline: float | None = None
    baseline_name: str = ""
    ratio: float | None = None
    ratio_name: str = ""
    target: str = ""
    holds: bool | None = None
    status: str = "ok"  # "ok" | "failed" | "skipped"
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------ data


def zipf_concepts(
    num_samples: int,
    seed: int,
    max_len: int | None = None,
    vocabulary: int = VOCABULARY,
    uniform_lengths: int | None = None,
) -> list[list[int]]:
    """Concept ids per sample, p ~ 1/rank over shuffled ids of the vocabulary.

    Poisson(10) ids per sample, or uniform in ``[1, uniform_lengths]``.
    """
    rng = np.random.default_rng(seed)
    probabilities = 1.0 / np.arange(1, vocabulary + 1)
    probabilities /= probabilities.sum()
    id_of_rank = rng.permutation(vocabulary)
    if uniform_lengths is None:
        lengths = rng.poisson(MEAN_CONCEPTS, num_samples)
    else:
        lengths = rng.integers(1, uniform_lengths + 1, num_samples)
    if max_len is not None:
        lengths = np.minimum(lengths, max_len)
    flat = id_of_rank[rng.choice(vocabulary, size=int(lengths.sum()), p=probabilities)]
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [flat[bounds[i] : bounds[i + 1]].tolist() for i in range(num_samples)]


# ----------------------------------------------------------------- reference selection


def reference_dm(
    concepts: list[list[int]],
    batch_size: int,
    cap: int | None,
    order: np.ndarray,
    vocabulary: int,
    when_dry: str = "raise",
) -> tuple[list[int], int | None]:
    """The reference greedy DM, ported straightforwardly to numpy.

    Every pick recomputes the gain of every candidate from the current counts (vectorised
    over candidates), excludes picked samples and samples that would break the cap,
    takes the best (equal gains: lowest position in ``order``) and updates the counts.
    When every remaining sample is excluded, ``when_dry="raise"`` raises the cap by its
    first value (``cabs_select``'s rule); ``"fill"`` fills the rest in ``order`` (the
    earlier rule). Returns the picks and the pick at which the cap first ran dry.
    """
    num_samples = len(concepts)
    lengths = np.array([len(row) for row in concepts], dtype=np.int64)
    flat = np.array([c for row in concepts for c in row], dtype=np.int64)
    rows = np.repeat(np.arange(num_samples), lengths)
    # copies of each occurrence's concept in its own sample
    multiplicity = np.concatenate(
        [np.array([row.count(c) for c in row], dtype=np.int64) for row in concepts if row]
        or [np.zeros(0, dtype=np.int64)]
    )
    frequencies = np.zeros(vocabulary, dtype=np.int64)
    for row in concepts:
        frequencies[list(set(row))] += 1
    present = frequencies > 0
    targets = present / max(int(present.sum()), 1) * batch_size
    if cap is not None:
        targets = np.minimum(targets, float(cap))
    inv_freq = 1.0 / np.maximum(frequencies, 1)
    rank = np.empty(num_samples, dtype=np.int64)
    rank[order] = np.arange(num_samples)
    counts = np.zeros(vocabulary, dtype=np.int64)
    taken = np.zeros(num_samples, dtype=bool)
    picked: list[int] = []
    dry_at = None
    limit = np.inf if cap is None else cap
    target_of, inv_freq_of = targets[flat], inv_freq[flat]
    while len(picked) < batch_size:
        current = counts[flat]
        under = current < target_of
        fresh = (target_of - current) / np.where(under, target_of, 1.0) + inv_freq_of
        terms = np.round(np.where(under, fresh, OVER_TARGET) * TERM_UNIT).astype(np.int64)
        sums = np.zeros(num_samples, dtype=np.int64)
        np.add.at(sums, rows, terms)  # exact
        mean = sums / (np.maximum(lengths, 1) * (TERM_UNIT / KEY_UNIT))
        gains = np.where(lengths > 0, np.floor(mean + 0.5), NO_CONCEPTS * KEY_UNIT)
        gains[rows[current + multiplicity > limit]] = -np.inf
        gains[taken] = -np.inf
        best = gains.max()
        if best == -np.inf:
            dry_at = len(picked) if dry_at is None else dry_at
            if when_dry == "fill":
                break
            limit += cap
            continue
        ties = np.flatnonzero(gains == best)
        choice = int(ties[np.argmin(rank[ties])])
        picked.append(choice)
        taken[choice] = True
        np.add.at(counts, concepts[choice], 1)
    if len(picked) < batch_size:
        rest = [int(i) for i in order if not taken[i]]
        picked.extend(rest[: batch_size - len(picked)])
    return picked, dry_at


def reference_fm(concepts: list[list[int]], batch_size: int) -> list[int]:
    """The reference FM (bethgelab's ``cabs_freq_sampling``): sort (objects, index) pairs."""
    pairs = [(len(row), i) for i, row in enumerate(concepts)]
    pairs.sort(key=lambda pair: -pair[0])
    return [i for _, i in pairs[:batch_size]]


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall times in ms of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def measure_selection(args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    """Part 1: DM and FM selection, ours against the reference port."""
    concepts = zipf_concepts(SUPER_BATCH, args.seed)
    csr = concept_csr(concepts, VOCABULARY)
    seed = args.seed + 1

    def ours(variant: str) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        given = csr if variant == "dm" else concepts  # FM: the reference's per-sample lists
        return cabs_select(
            given, BATCH, variant, cap=CAP, generator=generator, num_concepts=VOCABULARY
        )

    def reference(variant: str) -> list[int]:
        if variant == "fm":
            return reference_fm(concepts, BATCH)
        order = torch.randperm(SUPER_BATCH, generator=torch.Generator().manual_seed(seed))
        return reference_dm(concepts, BATCH, CAP, order.numpy(), VOCABULARY)[0]

    present = len({c for row in concepts for c in row})
    info = {
        "super_batch": SUPER_BATCH,
        "batch": BATCH,
        "vocabulary": VOCABULARY,
        "concepts_present": present,
        "objects": int(csr[0].numel()),
        "cap": CAP,
        "dm_target_count": min(BATCH / present, CAP),
    }
    rows = []
    for variant, target_ms in (("dm", DM_TARGET_MS), ("fm", FM_TARGET_MS)):
        row = Row(
            metric=f"{variant.upper()} selection {SUPER_BATCH}->{BATCH}",
            unit="ms",
            baseline_name="reference greedy (numpy)" if variant == "dm" else "reference FM",
            ratio_name="reference / ours",
            target=f"ours <= {target_ms:g} ms" + (" and <= reference" if variant == "fm" else ""),
        )
        try:
            mine = ours(variant).tolist()
            theirs = reference(variant)
            ours_ms = time_calls(lambda v=variant: ours(v), args.repeats)
            ref_repeats = args.repeats if variant == "fm" else args.repeats_ref
            ref_ms = time_calls(lambda v=variant: reference(v), ref_repeats, warmup=0)
        except Exception as err:
            row.status, row.note = "failed", f"{type(err).__name__}: {err}"
            traceback.print_exc()
            rows.append(row)
            continue
        overlap = len(set(mine) & set(theirs))
        same_set = sorted(mine) == sorted(theirs)
        row.ours, row.baseline = statistics.median(ours_ms), statistics.median(ref_ms)
        row.ratio = row.baseline / row.ours
        row.holds = row.ours <= target_ms and (variant == "dm" or row.ratio >= 1.0)
        if same_set:
            row.note = "same set as the reference" + (" and order" if mine == theirs else "")
        else:
            row.note = f"differs from the reference: overlap {overlap}/{BATCH}"
        row.details = {
            "ours_ms": ours_ms,
            "reference_ms": ref_ms,
            "same_set": same_set,
            "same_order": mine == theirs,
            "overlap": overlap,
        }
        rows.append(row)
        print(
            f"  {row.metric}: ours {row.ours:.2f} ms, reference {row.baseline:.2f} ms "
            f"({row.ratio:.1f}x), {row.note}",
            flush=True,
        )
    return rows, info


# ------------------------------------------------------------------ when the cap runs dry


def spread(concepts: list[list[int]], picked: list[int]) -> tuple[float, int]:
    """Normalised entropy (entropy / log distinct) and largest count of a batch's concepts."""
    counts = np.bincount(np.concatenate([np.asarray(concepts[i], dtype=np.int64) for i in picked]))
    counts = counts[counts > 0]
    shares = counts / counts.sum()
    entropy = float(-(shares * np.log(shares)).sum())
    return entropy / np.log(counts.size) if counts.size > 1 else 1.0, int(counts.max())


def measure_cap(args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    """Part 4: the batch once the cap excludes every sample: greedy on vs random fill."""
    rows: list[Row] = []
    info: dict[str, Any] = {"cases": []}
    for vocabulary in CAP_VOCABULARIES:
        row = Row(
            metric=f"DM {SUPER_BATCH}->{BATCH}, {vocabulary:,} concepts, 1-20 per sample, "
            "cap 10: normalised entropy",
            unit="entropy",
            baseline_name="random fill once the cap runs dry",
            ratio_name="ours / fill",
            target="entropy and largest count no worse than the fill's",
        )
        cases = []
        try:
            for seed in CAP_SEEDS:
                concepts = zipf_concepts(
                    SUPER_BATCH, 100 + seed, vocabulary=vocabulary, uniform_lengths=CAP_MAX_CONCEPTS
                )
                generator = torch.Generator().manual_seed(seed)
                order = torch.randperm(SUPER_BATCH, generator=generator).numpy()
                ours = cabs_select(
                    concepts,
                    BATCH,
                    "dm",
                    cap=CAP,
                    generator=torch.Generator().manual_seed(seed),
                    num_concepts=vocabulary,
                ).tolist()
                fill, dry_at = reference_dm(concepts, BATCH, CAP, order, vocabulary, "fill")
                uncapped = cabs_select(
                    concepts,
                    BATCH,
                    "dm",
                    cap=None,
                    generator=torch.Generator().manual_seed(seed),
                    num_concepts=vocabulary,
                ).tolist()
                case = {"vocabulary": vocabulary, "seed": seed, "dry_at": dry_at}
                for name, picked in (("ours", ours), ("fill", fill), ("no_cap", uncapped)):
                    entropy, largest = spread(concepts, picked)
                    case[f"{name}_entropy"], case[f"{name}_max_count"] = entropy, largest
                cases.append(case)
                print(
                    f"  {vocabulary} concepts, seed {seed}: dry after {dry_at} picks; entropy "
                    f"ours {case['ours_entropy']:.3f} / fill {case['fill_entropy']:.3f} / "
                    f"no cap {case['no_cap_entropy']:.3f}; largest count ours "
                    f"{case['ours_max_count']} / fill {case['fill_max_count']} / no cap "
                    f"{case['no_cap_max_count']}",
                    flush=True,
                )
        except Exception as err:
            row.status, row.note = "failed", f"{type(err).__name__}: {err}"
            traceback.print_exc()
            rows.append(row)
            continue
        row.ours = statistics.mean(c["ours_entropy"] for c in cases)
        row.baseline = statistics.mean(c["fill_entropy"] for c in cases)
        row.ratio = row.ours / row.baseline
        row.holds = all(
            c["ours_entropy"] >= c["fill_entropy"] and c["ours_max_count"] <= c["fill_max_count"]
            for c in cases
        )
        row.note = "largest count ours {} vs fill {} (no cap {}); dry after {} picks".format(
            "/".join(str(c["ours_max_count"]) for c in cases),
            "/".join(str(c["fill_max_count"]) for c in cases),
            "/".join(str(c["no_cap_max_count"]) for c in cases),
            "/".join(str(c["dry_at"]) for c in cases),
        )
        row.details = {"cases": cases}
        info["cases"] += cases
        rows.append(row)
    return rows, info


# --------------------------------------------------------------------------- end to end


def random_image(rng: np.random.Generator, size: int) -> Any:
    """A PIL image: a colour gradient, four random shapes and mild noise."""
    from PIL import Image, ImageDraw

    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    low, high = rng.uniform(0, 255, (2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * x + np.sin(angle) * y
    pixels = low + (high - low) * ramp[..., None] + rng.normal(0, 12, (size, size, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = rng.integers(0, size * 4 // 5, 2)
        w, h = rng.integers(size // 10, size // 2, 2)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=colour)
    return image


def write_dataset(folder: Path, num_images: int, seed: int) -> tuple[Path, list[list[int]]]:
    """JPEGs and a JSONL manifest (concepts as names ``c<id>``) in ``folder``."""
    rng = np.random.default_rng(seed)
    concepts = zipf_concepts(num_images, seed + 2, max_len=MAX_OBJECTS)
    manifest = folder / "train.jsonl"
    with open(manifest, "w") as handle:
        for i, row in enumerate(concepts):
            name = f"{i:06d}.jpg"
            random_image(rng, IMAGE_SIZE).save(folder / name, "JPEG", quality=90)
            record = {"image": name, "caption": f"picture {i}", "concepts": [f"c{c}" for c in row]}
            handle.write(json.dumps(record) + "\n")
    return manifest, concepts


class JpegPairs(torch.utils.data.Dataset):
    """Fallback dataset: decode a JPEG, open_clip's training transform, padded concepts."""

    def __init__(self, folder: Path, concepts: list[list[int]]) -> None:
        import open_clip

        self.paths = [folder / f"{i:06d}.jpg" for i in range(len(concepts))]
        self.concepts = concepts
        self.transform = open_clip.image_transform(IMAGE_SIZE, is_train=True)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from PIL import Image

        with Image.open(self.paths[index]) as image:
            pixels = self.transform(image.convert("RGB"))
        padded = torch.full((MAX_OBJECTS,), -1, dtype=torch.long)
        padded[: len(self.concepts[index])] = torch.tensor(self.concepts[index])
        return {
            "image": pixels,
            "caption": f"picture {index}",
            "concepts": padded,
            "index": torch.tensor(index),
        }


def metadata_loader(
    manifest: Path, concepts: list[list[int]], workers: int, seed: int
) -> tuple[Any, torch.utils.data.Dataset, int, str]:
    """Our loader (CABS on metadata), its dataset, the vocabulary size and its source."""
    try:
        from lightning_plugins.datamodules import ImageTextDataModule

        dm = ImageTextDataModule(
            train=str(manifest),
            sampling="cabs",
            filter_ratio=FILTER_RATIO,
            batch_size=E2E_BATCH,
            image_size=IMAGE_SIZE,
            num_workers=workers,
            max_objects=MAX_OBJECTS,
            seed=seed,
        )
        dm.setup("fit")
        loader = dm.train_dataloader()
        next(iter(loader))  # fails here, not in the timed loop, if anything is broken
        return loader, dm.train_set, dm.num_concepts, "ImageTextDataModule"
    except Exception as err:
        print(f"  ImageTextDataModule unavailable ({type(err).__name__}: {err}); fallback")
        from lightning_plugins.sampling import ConceptAwareBatchSampler

        dataset = JpegPairs(manifest.parent, concepts)
        sampler = ConceptAwareBatchSampler(
            concepts,
            batch_size=E2E_BATCH,
            filter_ratio=FILTER_RATIO,
            seed=seed,
            num_concepts=VOCABULARY,
        )
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0
        )
        return loader, dataset, VOCABULARY, "fallback: map-style dataset + ConceptAwareBatchSampler"


def run_epoch(loader: Any, select: Callable[[dict[str, Any]], int] | None) -> tuple[int, float]:
    """Samples delivered by one epoch of ``loader`` and its wall time in seconds."""
    delivered = 0
    start = time.perf_counter()
    for batch in loader:
        delivered += len(batch["index"]) if select is None else select(batch)
    return delivered, time.perf_counter() - start


def next_epoch(loader: Any, epoch: int) -> None:
    """Move a loader's sampler to ``epoch`` (Lightning would call ``set_epoch``)."""
    for owner in (getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)):
        if callable(getattr(owner, "set_epoch", None)):
            owner.set_epoch(epoch)
            return


def measure_e2e(args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    """Part 2: delivered samples/s, selecting on metadata vs decode-then-select."""
    args.workers = args.workers or [0, 2]
    super_batch = round(E2E_BATCH / (1 - FILTER_RATIO))
    rows: list[Row] = []
    info: dict[str, Any] = {"images": args.images, "super_batch": super_batch}
    with tempfile.TemporaryDirectory(prefix="bench_cabs_") as tmp:
        start = time.perf_counter()
        manifest, concepts = write_dataset(Path(tmp), args.images, args.seed)
        info["write_s"] = time.perf_counter() - start
        info["jpeg_kib_mean"] = (
            sum(p.stat().st_size for p in Path(tmp).glob("*.jpg")) / args.images / 1024
        )
        print(
            f"  wrote {args.images} JPEGs ({info['jpeg_kib_mean']:.1f} KiB each) in "
            f"{info['write_s']:.1f} s",
            flush=True,
        )
        for workers in args.workers:
            row = Row(
                metric=f"delivered samples/s, f={FILTER_RATIO}, workers={workers}",
                unit="samples/s",
                baseline_name=f"decode {super_batch} then select {E2E_BATCH}",
                ratio_name="ours / baseline",
                target=f"ratio >= {E2E_TARGET_RATIO:g}x (limit {E2E_LIMIT_RATIO:g}x)",
            )
            try:
                row.details = e2e_once(manifest, concepts, workers, super_batch, args.seed)
            except Exception as err:
                row.status, row.note = "failed", f"{type(err).__name__}: {err}"
                traceback.print_exc()
                rows.append(row)
                continue
            row.ours = row.details["ours_samples_per_s"]
            row.baseline = row.details["baseline_samples_per_s"]
            row.ratio = row.ours / row.baseline
            row.holds = row.ratio >= E2E_TARGET_RATIO
            row.note = row.details["source"]
            info["source"] = row.details["source"]
            rows.append(row)
            print(
                f"  workers={workers}: ours {row.ours:.1f}/s, decode-then-select "
                f"{row.baseline:.1f}/s ({row.ratio:.2f}x)",
                flush=True,
            )
    return rows, info


def e2e_once(
    manifest: Path, concepts: list[list[int]], workers: int, super_batch: int, seed: int
) -> dict[str, Any]:
    """Both loaders at one worker count: an untimed epoch, then a timed one each."""
    loader, dataset, vocabulary, source = metadata_loader(manifest, concepts, workers, seed)
    run_epoch(loader, None)  # warm-up: workers, page cache, allocator
    next_epoch(loader, 1)
    ours_delivered, ours_s = run_epoch(loader, None)
    del loader

    generator = torch.Generator().manual_seed(seed + 3)

    def select(batch: dict[str, Any]) -> int:
        chosen = cabs_select(
            batch["concepts"],
            E2E_BATCH,
            "dm",
            cap=CAP,
            generator=generator,
            num_concepts=vocabulary,
        )
        kept = {key: batch[key][chosen] for key in ("image", "concepts", "index")}
        return len(kept["index"])

    baseline = torch.utils.data.DataLoader(
        dataset,
        batch_size=super_batch,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    run_epoch(baseline, select)
    base_delivered, base_s = run_epoch(baseline, select)
    del baseline
    return {
        "source": source,
        "workers": workers,
        "ours_delivered": ours_delivered,
        "ours_s": ours_s,
        "ours_samples_per_s": ours_delivered / ours_s,
        "baseline_delivered": base_delivered,
        "baseline_decoded": base_delivered * super_batch // E2E_BATCH,
        "baseline_s": base_s,
        "baseline_samples_per_s": base_delivered / base_s,
    }


# ------------------------------------------------------------------------------ overhead


def demo_settings() -> dict[str, Any]:
    """Batch size, train size, image size, model and optimizer of the demo's CLIP config."""
    settings = {
        "config": str(DEMO_CONFIG.relative_to(ROOT)),
        "batch_size": 128,
        "train_size": 32_000,
        "image_size": 32,
        "model_name": "ViT-Tiny-P8-32",
        "lr": 0.002,
        "weight_decay": 0.1,
    }
    try:
        import yaml

        config = yaml.safe_load(DEMO_CONFIG.read_text())
        data = config["data"]["init_args"]
        model = config["model"]["init_args"]
        optimizer = model.get("optimizer", {}).get("init_args", {})
        for key in ("batch_size", "train_size", "image_size"):
            settings[key] = data.get(key, settings[key])
        settings["model_name"] = model.get("model_name", settings["model_name"])
        for key in ("lr", "weight_decay"):
            settings[key] = optimizer.get(key, settings[key])
    except Exception as err:  # the defaults above are the shipped config's values
        settings["note"] = f"config not read ({type(err).__name__}: {err}); built-in values"
    return settings


def measure_overhead(args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    """Part 3: the sampler's time per batch against one demo training step."""
    from lightning_plugins.datamodules import SyntheticShapes
    from lightning_plugins.modules import CLIP
    from lightning_plugins.sampling import ConceptAwareBatchSampler

    settings = demo_settings()
    row = Row(
        metric=f"CABS DM share of a demo training step (batch {settings['batch_size']})",
        unit="ms",
        baseline_name=f"training step ({settings['model_name']})",
        ratio_name="selection / step",
        target=f"share <= {SHARE_TARGET:.0%}",
    )
    try:
        dm = SyntheticShapes(
            batch_size=settings["batch_size"],
            train_size=settings["train_size"],
            image_size=settings["image_size"],
            sampling="cabs",
            filter_ratio=FILTER_RATIO,
        )
        dm.setup("fit")
        loader = dm.train_dataloader()
        sampler = loader.batch_sampler
        if not isinstance(sampler, ConceptAwareBatchSampler):
            raise TypeError(f"SyntheticShapes(sampling='cabs') gave {type(sampler).__name__}")
        batches = iter(sampler)
        first_ms = time_calls(lambda: next(batches), 1, warmup=0)[0]  # draws the epoch order
        select_ms = time_calls(lambda: next(batches), args.sampler_batches, warmup=0)
        batch = next(iter(loader))

        model = CLIP(model_name=settings["model_name"])
        model.train()
        optimizer = torch.optim.AdamW(
            model.parameter_groups(), lr=settings["lr"], weight_decay=settings["weight_decay"]
        )

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            model.per_sample_loss(batch).mean().backward()
            optimizer.step()

        step_ms = time_calls(step, args.steps, warmup=args.warmup_steps)
    except Exception as err:
        row.status, row.note = "failed", f"{type(err).__name__}: {err}"
        traceback.print_exc()
        return [row], settings
    row.ours, row.baseline = statistics.median(select_ms), statistics.median(step_ms)
    row.ratio = row.ours / row.baseline
    row.holds = row.ratio <= SHARE_TARGET
    row.note = f"super-batch {sampler.super_batch_size}, {sampler.num_concepts} concepts"
    row.details = {"select_ms": select_ms, "first_batch_ms": first_ms, "step_ms": step_ms}
    print(
        f"  sampler {row.ours:.2f} ms/batch, step {row.baseline:.1f} ms, share {row.ratio:.2%}",
        flush=True,
    )
    return [row], settings


# ------------------------------------------------------------------------- tar shards


def serve_folder(folder: Path) -> contextlib.AbstractContextManager[str]:
    """The test suite's HTTP server on 127.0.0.1 for ``folder`` (``tests.helpers``)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.helpers import serve_folder as serve

    return serve(folder)


def write_shards(
    folder: Path, num_samples: int, num_shards: int, seed: int
) -> tuple[list[str], list[int], list[list[int]]]:
    """Random JPEGs as tar shards in img2dataset layout: ``<key>.jpg``, ``.txt``, ``.json``.

    The ``.json`` holds ``key``, ``caption`` and ``concepts`` (ids). Returns the shard
    paths, their sizes and every sample's concept ids.
    """
    rng = np.random.default_rng(seed)
    concepts = zipf_concepts(num_samples, seed + 2, max_len=MAX_OBJECTS)
    bounds = np.linspace(0, num_samples, num_shards + 1).round().astype(int).tolist()
    shards, sizes = [], []

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        member = tarfile.TarInfo(name)
        member.size, member.mtime, member.mode = len(data), 0, 0o644
        tar.addfile(member, io.BytesIO(data))

    for shard in range(num_shards):
        path = folder / f"shard-{shard:05d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(bounds[shard], bounds[shard + 1]):
                key = f"{shard:05d}{i - bounds[shard]:04d}"
                caption = f"picture {i}"
                encoded = io.BytesIO()
                random_image(rng, IMAGE_SIZE).save(encoded, "JPEG", quality=90)
                add(tar, f"{key}.jpg", encoded.getvalue())
                add(tar, f"{key}.txt", caption.encode())
                metadata = {"key": key, "caption": caption, "concepts": concepts[i]}
                add(tar, f"{key}.json", json.dumps(metadata).encode())
        shards.append(str(path))
        sizes.append(bounds[shard + 1] - bounds[shard])
    return shards, sizes, concepts


def load_old_reader(folder: Path) -> type:
    """``ImageTextShards`` as it was at ``OLD_READER_REV`` (its own tarfile code).

    ``git show`` writes that revision's ``shard_samples.py`` and ``image_text_shards.py``
    into a package ``OLD_READER_PACKAGE`` under ``folder``, their imports of each other
    rewritten to load each other (everything else they import is HEAD's), and imports it
    with ``folder`` on ``sys.path``. Nothing of the old code enters the repository.

    Raises:
        OSError, subprocess.CalledProcessError: without git or without the revision.
    """
    package = folder / OLD_READER_PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text(f'"""{OLD_READER_REV}\'s shard reader, from git."""\n')
    for name in OLD_READER_FILES:
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{OLD_READER_REV}:{OLD_READER_DIR}/{name}.py"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        for other in OLD_READER_FILES:
            source = source.replace(
                f"from lightning_plugins.datamodules.{other} import",
                f"from {OLD_READER_PACKAGE}.{other} import",
            )
        (package / f"{name}.py").write_text(source)
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    module = importlib.import_module(f"{OLD_READER_PACKAGE}.image_text_shards")
    if module.open_shard.__module__ != f"{OLD_READER_PACKAGE}.shard_samples":
        raise ImportError(f"{OLD_READER_REV}'s image_text_shards did not load its shard_samples")
    return module.ImageTextShards


def indexed_shards_class() -> tuple[type | None, str]:
    """``IndexedShards`` if it is on this checkout, else ``None`` and why not."""
    try:
        from lightning_plugins.datamodules.indexed_shards import IndexedShards
    except ModuleNotFoundError as err:
        if err.name != "lightning_plugins.datamodules.indexed_shards":
            raise
        return None, "lightning_plugins.datamodules.indexed_shards is not on this checkout yet"
    return IndexedShards, ""


def shard_rate(loader: Any) -> tuple[int, float]:
    """An untimed epoch, then a timed one: samples delivered and seconds."""
    run_epoch(loader, None)  # warm-up: workers, page cache, wids' index, allocator
    next_epoch(loader, 1)  # samplers; the iterable chains count their epochs themselves
    return run_epoch(loader, None)


def shard_rows(
    paths: list[tuple[str, Callable[[int], Any] | None, str, int, str]],
    workers: int,
    rounds: int,
    old_missing: str,
) -> list[Row]:
    """The rows of every shard path at one worker count, the first path the baseline.

    Each round runs every path in turn (a fresh loader: an untimed epoch, a timed one);
    a row's figure is the median over rounds, its ratio the median of the per-round
    ratios to the first path (so load that drifts between rounds cancels).
    """
    rates: dict[int, list[float]] = {number: [] for number in range(len(paths))}
    timings: dict[int, list[tuple[int, float]]] = {number: [] for number in range(len(paths))}
    errors: dict[int, str] = {}
    for round_ in range(rounds):
        for number, (name, build, _, _, _) in enumerate(paths):
            if build is None or number in errors:
                continue
            try:
                loader = build(workers)
                delivered, seconds = shard_rate(loader)
                del loader  # ends its workers
            except Exception as err:
                errors[number] = f"{type(err).__name__}: {err}"
                traceback.print_exc()
                continue
            rates[number].append(delivered / seconds)
            timings[number].append((delivered, seconds))
            print(
                f"  workers={workers} round {round_ + 1}/{rounds} {name}: "
                f"{delivered / seconds:.1f} samples/s",
                flush=True,
            )
    rows = []
    for number, (name, build, missing, reads, target) in enumerate(paths):
        row = Row(
            metric=f"shards: delivered samples/s, {name}, workers={workers}",
            unit="samples/s",
            baseline_name=f"today's reader, workers={workers}" if number else "",
            ratio_name="ours / today's reader" if number else "",
            target=target,
        )
        rows.append(row)
        if build is None:
            row.status, row.note = "skipped", missing
            continue
        if number in errors:
            row.status, row.note = "failed", errors[number]
            continue
        row.ours = statistics.median(rates[number])
        row.details = {
            "workers": workers,
            "rounds": rounds,
            "samples_per_s": rates[number],
            "delivered_seconds": timings[number],
            "samples_read_per_delivered": reads,
            "read_per_s": row.ours * reads,
        }
        notes = []
        if reads > 1:
            notes.append(f"reads {reads}x what it delivers ({row.ours * reads:.0f} samples/s read)")
        if number and len(rates[0]) == len(rates[number]) == rounds:
            ratios = [mine / base for mine, base in zip(rates[number], rates[0], strict=True)]
            row.baseline, row.ratio = statistics.median(rates[0]), statistics.median(ratios)
            row.details["ratios"] = ratios
            if target.startswith("ratio"):
                row.holds = row.ratio >= SHARDS_TARGET_RATIO
            notes.append("per round " + ", ".join(f"{r:.2f}x" for r in ratios))
        elif number:
            notes.append(f"no baseline: {old_missing or errors.get(0, 'baseline failed')}")
        row.note = "; ".join(notes)
        ratio = "" if row.ratio is None else f" ({row.ratio:.2f}x today's reader)"
        print(f"  workers={workers} {name}: median {row.ours:.1f} samples/s{ratio}", flush=True)
    return rows


def measure_shards(args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    """Part 5: delivered samples/s from tar shards: the former reader, webdataset, wids."""
    import open_clip

    from lightning_plugins.datamodules.decoding_stream import DecodingStream
    from lightning_plugins.datamodules.image_text_shards import ImageTextShards
    from lightning_plugins.sampling import ConceptAwareBatchSampler, ShuffleSampler
    from lightning_plugins.sampling.concept_aware_stream import ConceptAwareStream

    super_batch = round(E2E_BATCH / (1 - FILTER_RATIO))
    transform = open_clip.image_transform(IMAGE_SIZE, is_train=True)
    info: dict[str, Any] = {
        "samples": args.images,
        "shards": args.shards,
        "batch": E2E_BATCH,
        "super_batch": super_batch,
        "old_reader": f"git show {OLD_READER_REV}:{OLD_READER_DIR}/"
        f"{{{','.join(OLD_READER_FILES)}}}.py as package {OLD_READER_PACKAGE}",
    }
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench_cabs_shards_") as tmp:
        folder = Path(tmp) / "shards"
        folder.mkdir()
        start = time.perf_counter()
        shards, sizes, concepts = write_shards(folder, args.images, args.shards, args.seed)
        info["write_s"] = time.perf_counter() - start
        info["shard_mib_mean"] = sum(Path(s).stat().st_size for s in shards) / len(shards) / 2**20
        print(
            f"  wrote {args.images} samples as {args.shards} shards "
            f"({info['shard_mib_mean']:.1f} MiB each) in {info['write_s']:.1f} s",
            flush=True,
        )
        old_reader, old_missing = None, ""
        try:
            old_reader = load_old_reader(Path(tmp))
        except (OSError, subprocess.SubprocessError, ImportError) as err:
            stderr = getattr(err, "stderr", None)
            old_missing = f"{OLD_READER_REV}'s reader not loaded: {type(err).__name__}: " + (
                stderr.strip() if stderr else str(err)
            )
            print(f"  {old_missing}", flush=True)
        indexed, indexed_missing = indexed_shards_class()
        if indexed is None:
            print(f"  {indexed_missing}: indexed rows skipped", flush=True)

        def streaming(reader_class: type, urls: list[str], cabs: bool, workers: int) -> Any:
            reader = reader_class(
                urls, sizes, concepts, shuffle=True, seed=args.seed, equalize=True
            )
            source: Any = reader
            if cabs:
                source = ConceptAwareStream(
                    reader, E2E_BATCH, FILTER_RATIO, seed=args.seed, num_concepts=VOCABULARY
                )
            return torch.utils.data.DataLoader(
                DecodingStream(source, transform, MAX_OBJECTS),
                batch_size=E2E_BATCH,
                num_workers=workers,
                persistent_workers=workers > 0,
            )

        def indexed_loader(cabs: bool, workers: int) -> Any:
            dataset = indexed(
                shards,
                sizes,
                concepts,
                transform=transform,
                max_objects=MAX_OBJECTS,
                cache_dir=str(Path(tmp) / "wids_cache"),
            )
            common = {"num_workers": workers, "persistent_workers": workers > 0}
            if cabs:
                sampler = ConceptAwareBatchSampler(
                    concept_csr(concepts, VOCABULARY),
                    E2E_BATCH,
                    FILTER_RATIO,
                    seed=args.seed,
                    num_concepts=VOCABULARY,
                )
                return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, **common)
            sampler = ShuffleSampler(len(dataset), seed=args.seed)
            return torch.utils.data.DataLoader(
                dataset, batch_size=E2E_BATCH, sampler=sampler, **common
            )

        with serve_folder(folder) as base:
            urls = [f"{base}/{Path(s).name}" for s in shards]
            # name, build(workers) or None, why skipped, reads per delivered sample, target
            paths: list[tuple[str, Callable[[int], Any] | None, str, int, str]] = [
                (
                    f"today's reader ({OLD_READER_REV}, tarfile), iid",
                    old_reader and (lambda w: streaming(old_reader, shards, False, w)),
                    old_missing,
                    1,
                    "baseline of the rows below",
                ),
                (
                    "webdataset, iid",
                    lambda w: streaming(ImageTextShards, shards, False, w),
                    "",
                    1,
                    f"ratio >= {SHARDS_TARGET_RATIO:g}x (no regression beyond noise)",
                ),
                (
                    "webdataset over HTTP (127.0.0.1), iid",
                    lambda w: streaming(ImageTextShards, urls, False, w),
                    "",
                    1,
                    "none (informative)",
                ),
                (
                    f"webdataset + CABS f={FILTER_RATIO}",
                    lambda w: streaming(ImageTextShards, shards, True, w),
                    "",
                    super_batch // E2E_BATCH,
                    "none (informative: reads 5x what it delivers)",
                ),
                (
                    f"wids indexed + CABS f={FILTER_RATIO}",
                    indexed and (lambda w: indexed_loader(True, w)),
                    indexed_missing,
                    1,
                    "none (informative: decodes only the kept samples)",
                ),
                (
                    "wids indexed, iid",
                    indexed and (lambda w: indexed_loader(False, w)),
                    indexed_missing,
                    1,
                    "none (informative)",
                ),
            ]
            for workers in args.workers:
                rows += shard_rows(paths, workers, args.shard_rounds, old_missing)
        if old_reader is not None:
            sys.path.remove(str(Path(tmp)))
    return rows, info


# --------------------------------------------------------------------------- output


def fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def fmt_ratio(row: Row) -> str:
    if row.ratio is None:
        return "n/a"
    if row.ratio_name == "selection / step":
        return f"{row.ratio:.2%}"
    return f"{row.ratio:.2f}x"


def verdict(holds: bool | None) -> str:
    return {True: "HOLDS", False: "MISSED", None: "n/a"}[holds]


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| metric | unit | ours | reference / baseline | ratio | target | verdict |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        digits = {"samples/s": 1, "entropy": 3}.get(r.unit, 2)
        ours = fmt(r.ours, digits) if r.status == "ok" else r.status
        baseline = fmt(r.baseline, digits) + (f" ({r.baseline_name})" if r.baseline_name else "")
        ratio = fmt_ratio(r) + (f" ({r.ratio_name})" if r.ratio_name else "")
        lines.append(
            f"| {r.metric} | {r.unit} | {ours} | {baseline} "
            f"| {ratio} | {r.target} | {verdict(r.holds)} |"
        )
    return "\n".join(lines)


def report(rows: list[Row]) -> None:
    print("\n" + markdown_table(rows) + "\n\nTargets:")
    for r in rows:
        if r.status != "ok":
            print(f"  [n/a] {r.metric}: {r.status} -- {r.note}")
            continue
        ours = f"{fmt(r.ours, 2)} {r.unit}"
        print(f"  [{verdict(r.holds)}] {r.metric}: {r.target}: {ours}, {fmt_ratio(r)}")
    for r in rows:
        if r.details.get("same_set") is not None:
            mark = "HOLDS" if r.details["same_set"] else "MISSED"
            print(f"  [{mark}] {r.metric}: {r.note}")


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def part_of(row: dict[str, Any]) -> str:
    """The part that measured a JSON row (rows written before rows named their part: by metric)."""
    if row.get("part"):
        return row["part"]
    metric = row["metric"]
    if metric.startswith("shards:"):
        return "shards"
    if metric.startswith("delivered samples/s"):
        return "e2e"
    if "share of a demo training step" in metric:
        return "overhead"
    if "normalised entropy" in metric:
        return "cap"
    if " selection " in metric:
        return "selection"
    return ""


def write_json(path: Path, args: argparse.Namespace, rows: list[Row], info: dict) -> None:
    """Write the results to ``path``.

    Unless ``--fresh``, the rows and info of parts not run this time are kept from the
    JSON already at ``path``; ``runs`` says which run (settings, machine, date) measured
    each part.
    """
    settings = {
        "parts": args.parts,
        "quick": args.quick,
        "seed": args.seed,
        "threads": args.threads,
        "repeats": args.repeats,
        "repeats_ref": args.repeats_ref,
        "images": args.images,
        "shards": args.shards,
        "shard_rounds": args.shard_rounds,
        "workers": args.workers,
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "sampler_batches": args.sampler_batches,
        "filter_ratio": FILTER_RATIO,
    }
    machine = machine_info(args)
    run = {"settings": settings, "machine": machine, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    merged_rows = [asdict(r) for r in rows]
    merged_info, runs = dict(info), {part: run for part in args.parts}
    old: dict[str, Any] = {}
    if not args.fresh and path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            print(f"  {path} not read ({type(err).__name__}: {err}); written afresh")
    if old.get("benchmark") == "bench_cabs":
        kept = [r for r in old.get("rows", []) if part_of(r) not in args.parts]
        for row in kept:
            row["part"] = part_of(row)
        merged_rows += kept
        earlier = {"settings": old.get("settings"), "machine": old.get("machine")}
        for part, part_info in old.get("info", {}).items():
            if part not in args.parts:
                merged_info[part] = part_info
                runs[part] = old.get("runs", {}).get(part, earlier)
    order = {part: number for number, part in enumerate(PARTS)}
    merged_info = {p: merged_info[p] for p in sorted(merged_info, key=lambda p: order.get(p, 99))}
    merged_rows.sort(key=lambda r: order.get(r["part"], len(PARTS)))  # stable within a part
    payload = {
        "benchmark": "bench_cabs",
        "machine": machine,
        "settings": settings,
        "runs": {part: runs[part] for part in sorted(runs, key=lambda p: order.get(p, len(PARTS)))},
        "info": merged_info,
        "rows": merged_rows,
        "targets": [
            {"metric": r["metric"], "target": r["target"], "holds": r["holds"]}
            for r in merged_rows
            if r["status"] == "ok"
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


# ----------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--repeats", type=int, default=25, help="timed calls of cabs_select")
    p.add_argument("--repeats-ref", type=int, default=3, help="timed calls of the reference DM")
    p.add_argument(
        "--images", type=int, default=2560, help="JPEGs (e2e) and shard samples (shards)"
    )
    p.add_argument("--shards", type=int, help="tar shards of the shards part (default 8; quick: 4)")
    p.add_argument(
        "--shard-rounds", type=int, help="rounds over the shard paths (default 3; quick: 1)"
    )
    p.add_argument(
        "--workers", type=int, nargs="+", help="DataLoader workers (default 0 2; quick: 0)"
    )
    p.add_argument("--steps", type=int, default=10, help="timed demo training steps")
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--sampler-batches", type=int, default=20, help="timed sampler batches")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="fewer repeats, 640 images")
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument(
        "--fresh",
        action="store_true",
        help="write only the parts run (default: keep the other parts' rows of --output)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.repeats_ref, args.images = 5, 1, 640
        args.workers = args.workers or [0]
        args.steps, args.warmup_steps, args.sampler_batches = 3, 1, 5
        args.shards = args.shards or 4
        args.shard_rounds = args.shard_rounds or 1
    args.workers = args.workers or [0, 2]
    args.shards = args.shards or 8
    args.shard_rounds = args.shard_rounds or 3
    if args.shards < 1 or args.shards > args.images:
        p.error(f"--shards must be in [1, --images], got {args.shards}")
    super_batch = round(E2E_BATCH / (1 - FILTER_RATIO))
    if args.images < super_batch:
        p.error(f"--images must be at least one super-batch ({super_batch})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message="'set_vital' is deprecated")  # torchdata
    warnings.filterwarnings("ignore", module="lightning")
    import logging

    logging.getLogger("root").setLevel(logging.ERROR)  # open_clip's "randomly initialized"
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, torch.set_num_threads({args.threads}); parts {args.parts}")
    rows: list[Row] = []
    info: dict[str, Any] = {}
    measures = {
        "selection": measure_selection,
        "cap": measure_cap,
        "e2e": measure_e2e,
        "overhead": measure_overhead,
        "shards": measure_shards,
    }
    for part in args.parts:
        print(f"\n[{part}]", flush=True)
        start = time.perf_counter()
        part_rows, part_info = measures[part](args)
        for row in part_rows:
            row.part = part
        rows += part_rows
        info[part] = {**part_info, "seconds": time.perf_counter() - start}
    report(rows)
    write_json(args.output, args, rows, info)
    print(f"\nwrote {args.output}")
    return 1 if any(r.status == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
