"""ImageTextDataModule: concept-annotated image-text pairs from a manifest or tar shards."""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import re
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import lightning.pytorch as pl
import open_clip
import torch
from lightning.pytorch.utilities import rank_zero_warn
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_plugins.distributed import get_rank, get_world_size
from lightning_plugins.functional.cabs_select import CABS_VARIANTS, check_cabs_targets
from lightning_plugins.functional.concept_lists import concept_csr
from lightning_plugins.models import list_model_names, resolve_path
from lightning_plugins.sampling import ConceptAwareBatchSampler, ShuffleSampler
from lightning_plugins.sampling.concept_aware_batch_sampler import super_batch_size
from lightning_plugins.sampling.concept_aware_stream import ConceptAwareStream

__all__ = [
    "DecodeSamples",
    "ImageTextDataModule",
    "ImageTextPairs",
    "ImageTextShards",
    "decode_image",
    "expand_braces",
]

SAMPLINGS = ("iid", "cabs")
MANIFEST_SUFFIXES = (".jsonl", ".ndjson", ".csv")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
"""Image members of a shard sample, in order of preference."""

Concept = str | int
Transform = Callable[[Image.Image], torch.Tensor]


# ------------------------------------------------------------------------------ decoding
def decode_image(source: str | bytes) -> Image.Image:
    """Open an image file (a path) or encoded image bytes as an RGB PIL image.

    Every image the datasets of this module load passes through here, once per sample.
    """
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        return image.convert("RGB")


def _pad_concepts(ids: Sequence[int], max_objects: int) -> torch.Tensor:
    if len(ids) > max_objects:
        raise ValueError(
            f"A sample has {len(ids)} concepts, more than `max_objects`={max_objects}; raise "
            "`max_objects` (nothing is dropped silently)."
        )
    padded = torch.full((max_objects,), -1, dtype=torch.long)
    padded[: len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
    return padded


def _decoded(
    image: str | bytes,
    caption: str,
    index: int,
    transform: Transform,
    concepts: Sequence[int] | None,
    max_objects: int,
) -> dict[str, Any]:
    sample = {
        "image": transform(decode_image(image)),
        "caption": caption,
        "index": torch.tensor(index, dtype=torch.long),
    }
    if concepts is not None:
        sample["concepts"] = _pad_concepts(concepts, max_objects)
    return sample


# ----------------------------------------------------------------------------- datasets
class ImageTextPairs(Dataset):
    """Map-style image-caption pairs; each image is decoded only when its sample is read.

    Each sample is a dict with ``image`` (the transformed image), ``caption`` (str),
    ``index`` (int64) and, when ``concepts`` is given, ``concepts`` (``[max_objects]``
    int64 ids padded with -1).

    Args:
        images: image file paths.
        captions: one caption per image.
        concepts: concept ids per sample (lists, or CSR ``(ids, offsets)`` tensors), or
            ``None`` for no ``concepts`` key.
        transform: maps a PIL image to a tensor.
        max_objects: width of the padded ``concepts`` tensor.

    Raises:
        ValueError: for lengths that differ or a sample with more than ``max_objects``
            concepts.
    """

    def __init__(
        self,
        images: Sequence[str],
        captions: Sequence[str],
        concepts: Sequence[Sequence[int]] | tuple[torch.Tensor, torch.Tensor] | None,
        transform: Transform,
        max_objects: int = 32,
    ) -> None:
        if len(images) != len(captions):
            raise ValueError(f"Got {len(images)} images but {len(captions)} captions.")
        self.images = list(images)
        self.captions = list(captions)
        self.concepts = None if concepts is None else concept_csr(concepts)
        if self.concepts is not None:
            lengths = self.concepts[1].diff()
            if lengths.numel() != len(self.images):
                raise ValueError(
                    f"Got {len(self.images)} images but concepts for {lengths.numel()} samples."
                )
            if lengths.numel() and int(lengths.max()) > max_objects:
                row = int(lengths.argmax())
                raise ValueError(
                    f"Sample {row} ({self.images[row]!r}) has {int(lengths[row])} concepts, more "
                    f"than `max_objects`={max_objects}; raise `max_objects`."
                )
        self.transform = transform
        self.max_objects = max_objects

    def __len__(self) -> int:
        return len(self.images)

    def concept_ids(self, index: int) -> list[int]:
        """Concept ids of sample ``index``, read without decoding its image."""
        ids, offsets = self.concepts
        return ids[offsets[index] : offsets[index + 1]].tolist()

    def __getitem__(self, index: int) -> dict[str, Any]:
        concepts = None if self.concepts is None else self.concept_ids(index)
        return _decoded(
            self.images[index],
            self.captions[index],
            index,
            self.transform,
            concepts,
            self.max_objects,
        )


def _tar_groups(tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, tarfile.TarInfo]]]:
    """Members of a shard grouped by sample key (webdataset: the name up to the first dot)."""
    key: str | None = None
    parts: dict[str, tarfile.TarInfo] = {}
    for member in tar:
        folder, base = os.path.split(member.name)
        if not member.isfile() or base.startswith(".") or "." not in base:
            continue
        stem, _, extension = base.partition(".")
        sample_key = f"{folder}/{stem}" if folder else stem
        if sample_key != key:
            if key is not None:
                yield key, parts
            key, parts = sample_key, {}
        parts[extension.lower()] = member
    if key is not None:
        yield key, parts


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    if handle is None:  # pragma: no cover - files always have a handle
        raise ValueError(f"Cannot read member {member.name!r}.")
    return handle.read()


def _shard_sample(
    tar: tarfile.TarFile, path: str, key: str, parts: dict[str, tarfile.TarInfo], images: bool
) -> tuple[bytes | None, str, dict[str, Any]]:
    """``(image bytes or None, caption, json metadata)`` of one shard sample."""
    image = next((parts[ext] for ext in IMAGE_EXTENSIONS if ext in parts), None)
    if image is None:
        raise ValueError(
            f"Sample {key!r} of shard {path!r} has no image member "
            f"({', '.join(IMAGE_EXTENSIONS)}); it has {sorted(parts)}."
        )
    metadata: dict[str, Any] = {}
    if "json" in parts:
        try:
            metadata = json.loads(_read_member(tar, parts["json"]))
        except json.JSONDecodeError as err:
            raise ValueError(f"Sample {key!r} of shard {path!r}: bad .json ({err}).") from err
        if not isinstance(metadata, dict):
            raise ValueError(f"Sample {key!r} of shard {path!r}: .json is not an object.")
    if "txt" in parts:
        caption = _read_member(tar, parts["txt"]).decode("utf-8")
    elif isinstance(metadata.get("caption"), str):
        caption = metadata["caption"]
    else:
        raise ValueError(
            f"Sample {key!r} of shard {path!r} has no caption: no .txt member and no 'caption' "
            "string in its .json."
        )
    return (_read_member(tar, image) if images else None), caption, metadata


class ImageTextShards(IterableDataset):
    """Undecoded samples from tar shards in img2dataset / webdataset layout.

    Every sample is a group of members ``<key>.jpg`` (or ``.jpeg``, ``.png``, ``.webp``),
    ``<key>.txt`` (the caption; else the ``caption`` of the ``.json``) and optionally
    ``<key>.json``. The dataset yields dicts with ``image_bytes`` (the encoded image),
    ``caption``, ``index`` (int: the sample's position in all shards, from ``sizes``) and,
    when ``concepts`` is given, ``concepts`` (a list of concept ids, looked up by index).
    Images are not decoded here, so a selection step (such as
    :class:`~lightning_plugins.sampling.concept_aware_stream.ConceptAwareStream`) can run
    before :class:`DecodeSamples` decodes the chosen ones.

    The shards are split across DDP ranks and DataLoader workers: consumer ``r * W + w``
    (rank ``r``, worker ``w`` of ``W``) reads every ``R * W``-th shard of the epoch's shard
    order, so the number of shards should be a multiple of ``R * W``. With
    ``shuffle=True`` the shard order is a permutation drawn from ``seed + epoch``; samples
    inside a shard keep their order. With ``equalize=True`` every consumer stops after as
    many samples as the smallest consumer's share holds, so every rank yields the same
    number of samples (DDP needs equal numbers of batches); the dropped tail changes with
    the epoch's shard order.

    ``state_dict`` holds the epoch and the samples handed out in it; after
    ``load_state_dict`` the next iteration skips them (whole shards without opening them).
    Without ``equalize`` a consumer may get no shard and yield nothing (fine for
    validation).

    Args:
        shards: tar file paths.
        sizes: number of samples of each shard.
        concepts: concept ids of every sample across all shards (lists, or CSR
            ``(ids, offsets)`` tensors), or ``None`` for no ``concepts`` key.
        shuffle: draw a new shard order every epoch.
        seed: seed of the shard order.
        equalize: cut every consumer to the smallest consumer's number of samples.
        num_replicas: number of DDP ranks; ``torch.distributed``'s (at construction) if
            ``None``.
        rank: this rank; ``torch.distributed``'s (at construction) if ``None``.

    Raises:
        ValueError: for ``sizes`` or ``concepts`` that do not match the shards, or (when
            iterating with ``equalize``) fewer shards than ranks x workers.
    """

    def __init__(
        self,
        shards: Sequence[str],
        sizes: Sequence[int],
        concepts: Sequence[Sequence[int]] | tuple[torch.Tensor, torch.Tensor] | None = None,
        shuffle: bool = False,
        seed: int = 0,
        equalize: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if len(shards) != len(sizes):
            raise ValueError(f"Got {len(shards)} shards but {len(sizes)} sizes.")
        self.shards = list(shards)
        self.sizes = [int(size) for size in sizes]
        self.starts = [0]
        for size in self.sizes:
            self.starts.append(self.starts[-1] + size)
        self.concepts = None if concepts is None else concept_csr(concepts)
        if self.concepts is not None and self.concepts[1].numel() - 1 != self.starts[-1]:
            raise ValueError(
                f"`concepts` covers {self.concepts[1].numel() - 1} samples but the shards hold "
                f"{self.starts[-1]}."
            )
        self.shuffle = shuffle
        self.seed = seed
        self.equalize = equalize
        self.num_replicas = get_world_size() if num_replicas is None else num_replicas
        self.rank = get_rank() if rank is None else rank
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(
                f"`rank` must be in [0, num_replicas), got rank {self.rank} and num_replicas "
                f"{self.num_replicas}."
            )
        self.epoch = 0
        self._yielded = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the shard order of ``epoch``; a loaded position in another epoch is dropped."""
        if epoch != self.epoch:
            self._skip = 0
        self.epoch = int(epoch)

    def shard_order(self, epoch: int) -> list[int]:
        """Shard numbers in the order of ``epoch``."""
        if not self.shuffle:
            return list(range(len(self.shards)))
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(len(self.shards), generator=generator).tolist()

    def assignment(self, epoch: int, num_workers: int = 1) -> list[list[int]]:
        """Shard numbers of every consumer (``rank * num_workers + worker``) in ``epoch``."""
        consumers = self.num_replicas * num_workers
        if self.equalize and len(self.shards) < consumers:
            raise ValueError(
                f"{len(self.shards)} shards cannot feed {self.num_replicas} ranks x {num_workers} "
                "workers: every DataLoader worker of every rank needs at least one shard. Use "
                "more shards (a multiple of ranks x workers) or fewer workers."
            )
        order = self.shard_order(epoch)
        return [order[consumer::consumers] for consumer in range(consumers)]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        num_workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        assignment = self.assignment(self.epoch, num_workers)
        mine = assignment[self.rank * num_workers + worker]
        limit = None
        if self.equalize:
            limit = min(sum(self.sizes[s] for s in shards) for shards in assignment)
        skip, self._skip = self._skip, 0
        self._yielded = skip
        return self._samples(mine, skip, limit)

    def _samples(self, mine: list[int], skip: int, limit: int | None) -> Iterator[dict[str, Any]]:
        for shard in mine:
            if limit is not None and self._yielded >= limit:
                return
            if skip >= self.sizes[shard]:
                skip -= self.sizes[shard]
                continue
            path = self.shards[shard]
            with tarfile.open(path, "r:*") as tar:
                for position, (key, parts) in enumerate(_tar_groups(tar)):
                    if position < skip:
                        continue
                    if limit is not None and self._yielded >= limit:
                        return
                    image, caption, _ = _shard_sample(tar, path, key, parts, images=True)
                    index = self.starts[shard] + position
                    sample: dict[str, Any] = {
                        "image_bytes": image,
                        "caption": caption,
                        "index": index,
                    }
                    if self.concepts is not None:
                        ids, offsets = self.concepts
                        sample["concepts"] = ids[offsets[index] : offsets[index + 1]].tolist()
                    self._yielded += 1
                    yield sample
            skip = 0

    def state_dict(self) -> dict[str, Any]:
        """The epoch and how many samples of it were handed out."""
        return {"epoch": self.epoch, "yielded": self._yielded}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue after the samples already handed out in the saved epoch."""
        self.epoch = int(state_dict["epoch"])
        self._skip = int(state_dict["yielded"])


class DecodeSamples(IterableDataset):
    """Decode and transform the images of a stream of undecoded samples.

    Turns each dict of ``source`` (with ``image_bytes``, ``caption``, ``index`` and
    optionally ``concepts``) into a training sample: ``image`` (the transformed image),
    ``caption``, ``index`` (int64) and, with ``max_objects``, ``concepts``
    (``[max_objects]`` int64 ids padded with -1). Placed after a selection step, it
    decodes only the samples that step keeps.

    It also keeps the epoch of the whole chain: each iteration after the first moves to
    the next epoch and passes it to every stage below (following ``.source``) that has
    ``set_epoch``. Lightning does not call ``set_epoch`` on iterable datasets, so the
    DataLoader should keep its workers (``persistent_workers=True``) for the count to
    carry across epochs. ``state_dict`` holds the epoch and the state of ``source``.

    Args:
        source: iterable of undecoded sample dicts.
        transform: maps a PIL image to a tensor.
        max_objects: width of the padded ``concepts`` tensor, or ``None`` to drop
            ``concepts``.
    """

    def __init__(
        self, source: Iterable[dict[str, Any]], transform: Transform, max_objects: int | None
    ) -> None:
        self.source = source
        self.transform = transform
        self.max_objects = max_objects
        self.epoch = 0
        self._started = False

    def set_epoch(self, epoch: int) -> None:
        """Set ``epoch`` here and on every stage below that has ``set_epoch``."""
        self.epoch = int(epoch)
        stage = self.source
        while stage is not None:
            if callable(getattr(stage, "set_epoch", None)):
                stage.set_epoch(self.epoch)
            stage = getattr(stage, "source", None)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.set_epoch(self.epoch + 1 if self._started else self.epoch)
        self._started = True
        for sample in self.source:
            yield _decoded(
                sample["image_bytes"],
                sample["caption"],
                int(sample["index"]),
                self.transform,
                None if self.max_objects is None else sample["concepts"],
                self.max_objects or 0,
            )

    def state_dict(self) -> dict[str, Any]:
        """The epoch and the state of ``source`` (if it has one)."""
        source = self.source.state_dict() if hasattr(self.source, "state_dict") else None
        return {"epoch": self.epoch, "source": source}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the saved epoch where ``source``'s saved state stands."""
        self.epoch = int(state_dict["epoch"])
        self._started = False
        if state_dict.get("source") is not None and hasattr(self.source, "load_state_dict"):
            self.source.load_state_dict(state_dict["source"])


# ------------------------------------------------------------------------- input parsing
_BRACE_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """Expand shell-style braces: ``{00..02}`` ranges (zero-padded) and ``{a,b}`` lists.

    Example:
        >>> expand_braces("shards/{00000..00002}.tar")
        ['shards/00000.tar', 'shards/00001.tar', 'shards/00002.tar']
        >>> expand_braces("{a,b}-{1..2}.tar")
        ['a-1.tar', 'a-2.tar', 'b-1.tar', 'b-2.tar']
    """
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    depth, end = 0, -1
    for position in range(start, len(pattern)):
        depth += {"{": 1, "}": -1}.get(pattern[position], 0)
        if depth == 0:
            end = position
            break
    if end < 0:
        raise ValueError(f"Unbalanced braces in {pattern!r}.")
    head, body, tail = pattern[:start], pattern[start + 1 : end], pattern[end + 1 :]
    match = _BRACE_RANGE.match(body)
    if match:
        first, last = match.groups()
        padded = any(
            len(v.lstrip("-")) > 1 and v.lstrip("-").startswith("0") for v in (first, last)
        )
        width = max(len(first), len(last)) if padded else 0
        step = 1 if int(last) >= int(first) else -1
        options = [f"{i:0{width}d}" for i in range(int(first), int(last) + step, step)]
    else:
        options, depth, current = [], 0, ""
        for char in body:
            depth += {"{": 1, "}": -1}.get(char, 0)
            if char == "," and depth == 0:
                options.append(current)
                current = ""
            else:
                current += char
        options.append(current)
        if len(options) == 1:  # "{x}" is no expansion, as in bash
            return [f"{head}{{{body}}}{rest}" for rest in expand_braces(tail)]
    return [
        head + expanded + rest
        for option in options
        for expanded in expand_braces(option)
        for rest in expand_braces(tail)
    ]


def _resolve_source(value: str | list[str], argument: str) -> tuple[str, list[str]]:
    """``("manifest", [path])`` or ``("shards", paths)`` for a ``train`` / ``val`` value."""
    allowed = (
        f"a JSONL ({', '.join(MANIFEST_SUFFIXES[:2])}) or CSV (.csv) manifest, or tar shards "
        "(.tar) as a path, a glob or brace pattern ('shards/{00000..00009}.tar') or a list"
    )
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise ValueError(f"`{argument}`={value!r} must be {allowed}.")
    if isinstance(value, str) and resolve_path(value).lower().endswith(MANIFEST_SUFFIXES):
        path = resolve_path(value)
        if not os.path.isfile(path):
            raise ValueError(f"`{argument}`={value!r}: manifest file {path!r} does not exist.")
        return "manifest", [path]
    shards: list[str] = []
    for item in items:
        for pattern in expand_braces(resolve_path(item)):
            if not pattern.lower().endswith(SHARD_SUFFIXES):
                raise ValueError(
                    f"`{argument}`={value!r}: {pattern!r} has an unknown extension; `{argument}` "
                    f"must be {allowed}."
                )
            if glob.has_magic(pattern):
                matches = sorted(glob.glob(pattern))
                if not matches:
                    raise ValueError(f"`{argument}`={value!r}: {pattern!r} matches no file.")
                shards.extend(matches)
            elif os.path.isfile(pattern):
                shards.append(pattern)
            else:
                raise ValueError(f"`{argument}`={value!r}: shard {pattern!r} does not exist.")
    return "shards", shards


def _parse_concepts(value: Any, where: str, key: str) -> list[Concept]:
    """Concept names (str) and ids (int) of one sample's ``key`` field."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: `{key}` {value!r} is not a JSON list ({err}).") from err
        else:
            tokens = [token.strip() for token in text.split(";")]
            return [int(t) if t.isdigit() else t for t in tokens if t]
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list):
        raise ValueError(
            f"{where}: `{key}` must be a list of concept names or ids (or a ';'-separated "
            f"string), got {type(value).__name__} {value!r}."
        )
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (str, int)) or item == "":
            raise ValueError(
                f"{where}: `{key}` entries must be non-empty names or integer ids, got {item!r}."
            )
        if isinstance(item, int) and item < 0:
            raise ValueError(f"{where}: `{key}` holds a negative concept id {item}.")
    return list(value)


def _read_manifest(
    path: str, concepts_key: str | None, argument: str
) -> tuple[list[str], list[str], list[list[Concept]], list[str]]:
    """Image paths, captions, concept lists and row descriptions of a JSONL / CSV manifest.

    With ``concepts_key=None`` concepts are not read (every list is empty).
    """
    folder = os.path.dirname(os.path.abspath(path))
    rows: list[tuple[str, dict[str, Any]]] = []
    with open(path, encoding="utf-8", newline="") as handle:
        if path.lower().endswith(".csv"):
            reader = csv.DictReader(handle)
            missing = {"image", "caption"} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(
                    f"`{argument}`={path!r}: the CSV header {reader.fieldnames} lacks the "
                    f"column(s) {sorted(missing)}; needed are 'image' and 'caption' (concepts "
                    f"in {concepts_key or 'concepts'!r})."
                )
            rows = [(f"line {reader.line_num} of {path!r}", row) for row in reader]
        else:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"line {number} of {path!r}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{where} (`{argument}`) is not valid JSON: {err}.") from err
                if not isinstance(row, dict):
                    raise ValueError(f"{where} (`{argument}`) is not a JSON object: {line!r}.")
                rows.append((where, row))
    if not rows:
        raise ValueError(f"`{argument}`={path!r}: the manifest holds no samples.")
    images, captions, concepts, places = [], [], [], []
    for where, row in rows:
        for column in ("image", "caption"):
            if not isinstance(row.get(column), str) or (column == "image" and not row[column]):
                raise ValueError(
                    f"{where} (`{argument}`) needs a string {column!r}; the row is {row!r}."
                )
        images.append(os.path.join(folder, row["image"]))
        captions.append(row["caption"])
        if concepts_key is not None:
            concepts.append(_parse_concepts(row.get(concepts_key), where, concepts_key))
        else:
            concepts.append([])
        places.append(where)
    return images, captions, concepts, places


def _scan_shards(
    shards: list[str], concepts_key: str | None
) -> tuple[list[int], list[list[Concept]], list[str]]:
    """Samples per shard, concept lists and sample descriptions, reading no image bytes."""
    sizes, concepts, places = [], [], []
    for path in shards:
        size = 0
        try:
            tar = tarfile.open(path, "r:*")
        except tarfile.TarError as err:
            raise ValueError(f"Shard {path!r} is not a readable tar file: {err}.") from err
        with tar:
            for key, parts in _tar_groups(tar):
                where = f"sample {key!r} of shard {path!r}"
                _, _, metadata = _shard_sample(tar, path, key, parts, images=False)
                if concepts_key is not None:
                    concepts.append(
                        _parse_concepts(metadata.get(concepts_key), where, concepts_key)
                    )
                    places.append(where)
                size += 1
        sizes.append(size)
    return sizes, concepts, places


def _read_vocabulary(value: str | list[str]) -> list[str]:
    if isinstance(value, str):
        path = resolve_path(value)
        if not os.path.isfile(path):
            raise ValueError(f"`concept_vocabulary`={value!r} is not an existing file.")
        with open(path, encoding="utf-8") as handle:
            names = [line.strip() for line in handle if line.strip()]
    elif isinstance(value, (list, tuple)) and all(isinstance(n, str) and n for n in value):
        names = list(value)
    else:
        raise ValueError(
            f"`concept_vocabulary`={value!r} must be a path to a text file with one name per "
            "line, a list of non-empty names, or None."
        )
    if not names:
        raise ValueError(f"`concept_vocabulary`={value!r} holds no names.")
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise ValueError(f"`concept_vocabulary` lists {duplicates[:5]} more than once.")
    return names


def _concept_ids(
    concepts: list[list[Concept]], places: list[str], vocabulary: list[str] | None
) -> tuple[list[str], list[list[int]]]:
    """The vocabulary and every sample's concept ids."""
    first_name = next(
        ((i, c) for i, row in enumerate(concepts) for c in row if isinstance(c, str)), None
    )
    first_id = next(
        ((i, c) for i, row in enumerate(concepts) for c in row if isinstance(c, int)), None
    )
    if first_name is not None and first_id is not None:
        raise ValueError(
            f"The training concepts mix names and integer ids ({places[first_name[0]]} has the "
            f"name {first_name[1]!r}, {places[first_id[0]]} the id {first_id[1]}); use one kind."
        )
    if vocabulary is None:
        if first_id is not None:
            size = 1 + max(c for row in concepts for c in row)
            return [str(i) for i in range(size)], [list(row) for row in concepts]
        counts = Counter(c for row in concepts for c in row)
        vocabulary = sorted(counts, key=lambda name: (-counts[name], name))
    lookup = {name: i for i, name in enumerate(vocabulary)}
    ids = []
    for row, where in zip(concepts, places, strict=True):
        row_ids = []
        for concept in row:
            if isinstance(concept, int):
                if concept >= len(vocabulary):
                    raise ValueError(
                        f"{where}: concept id {concept} is outside the `concept_vocabulary` of "
                        f"{len(vocabulary)} names."
                    )
                row_ids.append(concept)
            elif concept in lookup:
                row_ids.append(lookup[concept])
            else:
                raise ValueError(
                    f"{where}: unknown concept {concept!r}, not in the `concept_vocabulary` of "
                    f"{len(vocabulary)} names."
                )
        ids.append(row_ids)
    return list(vocabulary), ids


# --------------------------------------------------------------------------- datamodule
class ImageTextDataModule(pl.LightningDataModule):
    r"""Image-text pairs with concept annotations, sampled i.i.d. or with CABS.

    **Data.** ``train`` (and ``val``) is either a manifest or tar shards:

    - a JSONL (``.jsonl`` / ``.ndjson``, one object per line) or CSV (``.csv``) manifest
      with fields ``image`` (a path, relative to the manifest's folder or absolute),
      ``caption`` and ``concepts_key`` (a list of concept names or ids; in CSV a
      ``;``-separated string such as ``dog;ball`` or a JSON list). Tokens of a
      ``;``-list made of digits only are ids; write a JSON list of strings for names
      that look like numbers. A missing or empty field means no concepts;
    - webdataset tar shards as written by img2dataset: members ``<key>.jpg`` (or
      ``.jpeg``, ``.png``, ``.webp``), ``<key>.txt`` (the caption) and ``<key>.json``
      (metadata with the concepts under ``concepts_key``). Give a path, a glob, a brace
      pattern like ``"shards/{00000..00009}.tar"`` (quote it in YAML, where bare braces
      are a mapping) or a list of them. Shards are split
      across DDP ranks and DataLoader workers, so **their number should be a multiple of
      ranks x workers**; each rank reads as many samples per epoch as the smallest
      share holds (equal numbers of batches on every rank), and the shard order is
      reshuffled every epoch.

    **Concept vocabulary.** Concepts may be names or integer ids (not both). Names map to
    ids through ``concept_vocabulary`` (a text file with one name per line, or a list):
    an unknown name is an error. Without one, the vocabulary is every name in the training
    data, sorted by descending number of occurrences, then by name. The order only fixes
    the ids; it does not favour any concept in CABS, which breaks ties between concepts at
    random (another order changes single random draws, not what CABS prefers). Integer
    ids are used as they are (names ``"0"``, ``"1"``, ...). After :meth:`setup` the module
    has ``num_concepts``, ``concept_names`` and ``concept_frequencies``
    (``[num_concepts]`` int64 occurrences in the training set). For shards, ``setup``
    reads every ``.txt`` and ``.json`` member once (no image data) to count samples and
    concepts.

    **Sampling.** ``"iid"`` shuffles (map-style: a :class:`ShuffleSampler` per epoch;
    shards: the shard order). ``"cabs"`` is Concept-Aware Batch Sampling: each batch is
    chosen from a super-batch of ``batch_size / (1 - filter_ratio)`` candidates by their
    concepts. For a manifest this is a
    :class:`~lightning_plugins.sampling.ConceptAwareBatchSampler` over the annotations
    (created in :meth:`train_dataloader`, so Lightning gives it a ``DistributedSampler``
    under DDP); for shards a
    :class:`~lightning_plugins.sampling.concept_aware_stream.ConceptAwareStream` over
    undecoded samples. Either way only the chosen samples' images are decoded.

    **Batches.** Training batches hold ``image`` (``[B, 3, S, S]`` float, open_clip's
    transform), ``caption`` (list of ``B`` strings; the module tokenizes them),
    ``concepts`` (``[B, max_objects]`` int64 ids padded with -1) and ``index`` (``[B]``
    int64 position in the training set). Validation batches (retrieval pairs) hold
    ``image``, ``caption`` and ``index``. Training loaders are torchdata
    ``StatefulDataLoader``s, so a run resumed from a mid-epoch checkpoint continues the
    same stream. For shards the epoch is counted by the dataset itself (Lightning calls
    ``set_epoch`` on samplers only), one per pass; workers are kept alive across epochs
    so that their count carries on.

    Args:
        train: training manifest path, or shard path(s) / pattern. ``"pkg:<package>/<path>"``
            names a file in an installed package.
        val: validation (retrieval) pairs in the same forms, or ``None``.
        image_size: side of the square images; ``None`` takes ``model_name``'s image size,
            else 224.
        model_name: an open_clip config name whose image size is used (no download).
        mean: per-channel normalisation mean; OpenAI CLIP's if ``None``.
        std: per-channel normalisation std; OpenAI CLIP's if ``None``.
        batch_size: samples per batch and process.
        num_workers: DataLoader worker processes (kept alive across epochs).
        sampling: ``"iid"`` or ``"cabs"``.
        filter_ratio: CABS: share of every super-batch dropped, in ``[0, 1)``.
        cabs_variant: CABS: ``"dm"`` (diversity) or ``"fm"`` (frequency maximisation).
        cabs_cap: CABS-DM: most occurrences of one concept per batch, or ``None``.
        cabs_targets: CABS-DM: target distribution over the vocabulary, or ``None`` for
            uniform over the concepts of each super-batch.
        seed: seed of the sample order and of CABS's tie-breaking.
        concepts_key: name of the concepts field (manifest column / ``.json`` key).
        max_objects: width of the padded ``concepts`` tensor; a sample with more concepts
            is an error at :meth:`setup`.
        concept_vocabulary: path to a text file with one concept name per line, a list of
            names, or ``None`` to build it from the training data.

    Raises:
        ValueError: at construction for a bad argument (missing file, unknown extension,
            unknown ``sampling`` / ``cabs_variant`` / ``model_name``, ``filter_ratio``
            outside ``[0, 1)``, non-positive sizes); at :meth:`setup` for bad data (a row
            without ``image`` / ``caption``, an unknown concept name, more concepts than
            ``max_objects``, ``"cabs"`` without any annotation, ``cabs_targets`` that do
            not fit the vocabulary).

    Example:
        >>> import json, os, tempfile
        >>> from PIL import Image
        >>> folder = tempfile.TemporaryDirectory()
        >>> rows = [{"image": "a.png", "caption": "a red dog", "concepts": ["dog", "red"]},
        ...         {"image": "b.png", "caption": "a dog and a cat", "concepts": ["dog", "cat"]}]
        >>> for row, colour in zip(rows, ["red", "blue"]):
        ...     Image.new("RGB", (40, 30), colour).save(os.path.join(folder.name, row["image"]))
        >>> manifest = os.path.join(folder.name, "train.jsonl")
        >>> with open(manifest, "w") as f:
        ...     _ = f.write("\n".join(json.dumps(row) for row in rows))
        >>> dm = ImageTextDataModule(manifest, image_size=32, batch_size=2, max_objects=3)
        >>> dm.setup("fit")
        >>> dm.concept_names, dm.concept_frequencies.tolist()
        (['dog', 'cat', 'red'], [2, 1, 1])
        >>> batch = next(iter(dm.train_dataloader()))
        >>> sorted(batch), batch["image"].shape
        (['caption', 'concepts', 'image', 'index'], torch.Size([2, 3, 32, 32]))
        >>> batch["concepts"][batch["index"] == 0].tolist()
        [[0, 2, -1]]
        >>> folder.cleanup()
    """

    def __init__(
        self,
        train: str | list[str],
        val: str | list[str] | None = None,
        image_size: int | None = None,
        model_name: str | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
        sampling: str = "iid",
        filter_ratio: float = 0.8,
        cabs_variant: str = "dm",
        cabs_cap: int | None = 10,
        cabs_targets: list[float] | None = None,
        seed: int = 0,
        concepts_key: str = "concepts",
        max_objects: int = 32,
        concept_vocabulary: str | list[str] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("max_objects", max_objects)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"`num_workers` must be a non-negative integer, got {num_workers!r}.")
        if sampling not in SAMPLINGS:
            raise ValueError(f"`sampling` must be one of {SAMPLINGS}, got {sampling!r}.")
        if isinstance(filter_ratio, bool) or not isinstance(filter_ratio, (int, float)):
            raise ValueError(f"`filter_ratio` must be a number in [0, 1), got {filter_ratio!r}.")
        if not 0.0 <= filter_ratio < 1.0:
            raise ValueError(f"`filter_ratio` must be in [0, 1), got {filter_ratio!r}.")
        if cabs_variant not in CABS_VARIANTS:
            raise ValueError(
                f"`cabs_variant` must be one of {CABS_VARIANTS}, got {cabs_variant!r}."
            )
        if cabs_cap is not None and (
            isinstance(cabs_cap, bool) or not isinstance(cabs_cap, int) or cabs_cap < 1
        ):
            raise ValueError(f"`cabs_cap` must be a positive integer or None, got {cabs_cap!r}.")
        if cabs_targets is not None:
            check_cabs_targets(torch.as_tensor(cabs_targets, dtype=torch.float64), "cabs_targets")
        if not isinstance(concepts_key, str) or not concepts_key:
            raise ValueError(f"`concepts_key` must be a non-empty string, got {concepts_key!r}.")
        for name, value in (("mean", mean), ("std", std)):
            if value is not None and (len(value) != 3 or (name == "std" and min(value) <= 0)):
                raise ValueError(
                    f"`{name}` must be 3 per-channel values{' above 0' if name == 'std' else ''} "
                    f"or None, got {value!r}."
                )
        if model_name is not None:
            names = list_model_names()
            if model_name not in names:
                raise ValueError(
                    f"`model_name`={model_name!r} is not an open_clip config; see "
                    "lightning_plugins.models.list_model_names()."
                )
            if image_size is None:
                image_size = open_clip.get_model_config(model_name)["vision_cfg"]["image_size"]
                if not isinstance(image_size, int):  # (height, width): use the larger side
                    image_size = max(image_size)
        image_size = 224 if image_size is None else image_size
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"`image_size` must be a positive integer, got {image_size!r}.")
        self.train_kind, self.train_paths = _resolve_source(train, "train")
        self.val_kind, self.val_paths = (None, []) if val is None else _resolve_source(val, "val")
        self.vocabulary = (
            None if concept_vocabulary is None else _read_vocabulary(concept_vocabulary)
        )
        self.train = train
        self.val = val
        self.image_size = image_size
        self.mean = tuple(OPENAI_DATASET_MEAN if mean is None else mean)
        self.std = tuple(OPENAI_DATASET_STD if std is None else std)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.sampling = sampling
        self.filter_ratio = float(filter_ratio)
        self.cabs_variant = cabs_variant
        self.cabs_cap = cabs_cap
        self.cabs_targets = cabs_targets
        self.seed = seed
        self.concepts_key = concepts_key
        self.max_objects = max_objects
        self.train_transform = open_clip.image_transform(
            image_size, is_train=True, mean=self.mean, std=self.std
        )
        self.eval_transform = open_clip.image_transform(
            image_size, is_train=False, mean=self.mean, std=self.std
        )
        self.num_concepts: int | None = None
        self.concept_names: list[str] | None = None
        self.concept_frequencies: torch.Tensor | None = None
        self.train_set: ImageTextPairs | None = None
        self.val_set: ImageTextPairs | None = None
        self._train_concepts: tuple[torch.Tensor, torch.Tensor] | None = None
        self._train_sizes: list[int] = []
        self._val_sizes: list[int] = []
        self._val_ready = False

    # ------------------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        """Read the annotations: build the vocabulary and the datasets (once)."""
        if stage in (None, "fit") and self._train_concepts is None:
            self._setup_train()
        if stage in (None, "fit", "validate", "test") and not self._val_ready:
            self._setup_val()

    def _setup_train(self) -> None:
        images: list[str] = []
        captions: list[str] = []
        if self.train_kind == "manifest":
            images, captions, raw, places = _read_manifest(
                self.train_paths[0], self.concepts_key, "train"
            )
        else:
            self._train_sizes, raw, places = _scan_shards(self.train_paths, self.concepts_key)
            if sum(self._train_sizes) == 0:
                raise ValueError(f"`train`={self.train!r}: the shards hold no samples.")
        names, ids = _concept_ids(raw, places, self.vocabulary)
        for row, where in zip(ids, places, strict=True):
            if len(row) > self.max_objects:
                raise ValueError(
                    f"{where} has {len(row)} concepts, more than `max_objects`="
                    f"{self.max_objects}; raise `max_objects` (concepts are never dropped "
                    "silently)."
                )
        csr = concept_csr(ids, len(names))
        if self.sampling == "cabs" and csr[0].numel() == 0:
            raise ValueError(
                f"`sampling`='cabs' needs concept annotations, but none of the {len(ids)} "
                f"training samples of `train`={self.train!r} has any under "
                f"`concepts_key`={self.concepts_key!r}."
            )
        if self.cabs_targets is not None and len(self.cabs_targets) != len(names):
            raise ValueError(
                f"`cabs_targets` has {len(self.cabs_targets)} entries but the concept vocabulary "
                f"has {len(names)}; give one per concept (see `concept_names`)."
            )
        if self.train_kind == "manifest" and not os.path.isfile(images[0]):
            raise ValueError(
                f"{places[0]} names the image {images[0]!r}, which does not exist (relative "
                f"paths are read from the manifest's folder)."
            )
        self.concept_names = names
        self.num_concepts = len(names)
        self.concept_frequencies = torch.bincount(csr[0], minlength=len(names))
        self._train_concepts = csr
        if self.train_kind == "manifest":
            self.train_set = ImageTextPairs(
                images, captions, csr, self.train_transform, self.max_objects
            )

    def _setup_val(self) -> None:
        if self.val_kind == "manifest":
            images, captions, _, _ = _read_manifest(self.val_paths[0], None, "val")
            self.val_set = ImageTextPairs(images, captions, None, self.eval_transform)
        elif self.val_kind == "shards":
            self._val_sizes, _, _ = _scan_shards(self.val_paths, None)
        self._val_ready = True

    # ------------------------------------------------------------------- dataloaders
    def _world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.world_size, self.trainer.global_rank
        return get_world_size(), get_rank()

    def train_dataloader(self) -> StatefulDataLoader:
        """Training batches (see the class docstring), i.i.d. or chosen by CABS.

        The CABS batch sampler is created here, in Lightning's hook, so that under DDP
        Lightning can hand it a ``DistributedSampler``.

        Raises:
            ValueError: for shards so few or small that a worker's share of an epoch holds
                not one CABS super-batch (or no sample at all).
        """
        if self._train_concepts is None:
            self.setup("fit")
        workers = {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}
        cabs = {
            "batch_size": self.batch_size,
            "filter_ratio": self.filter_ratio,
            "targets": self.cabs_targets,
            "cap": self.cabs_cap,
            "seed": self.seed,
            "num_concepts": self.num_concepts,
        }
        if self.train_kind == "manifest":
            if self.sampling == "iid":
                sampler = ShuffleSampler(len(self.train_set), seed=self.seed)
                return StatefulDataLoader(
                    self.train_set, batch_size=self.batch_size, sampler=sampler, **workers
                )
            batch_sampler = ConceptAwareBatchSampler(
                self._train_concepts, variant=self.cabs_variant, **cabs
            )
            return StatefulDataLoader(self.train_set, batch_sampler=batch_sampler, **workers)
        num_replicas, rank = self._world()
        per_rank = max(1, self.num_workers)
        if len(self.train_paths) % (num_replicas * per_rank):
            rank_zero_warn(
                f"{len(self.train_paths)} training shards are not a multiple of {num_replicas} "
                f"ranks x {per_rank} workers: every epoch each worker reads only as many "
                "samples as the smallest share holds, so part of the data is skipped."
            )
        reader = ImageTextShards(
            self.train_paths,
            self._train_sizes,
            self._train_concepts,
            shuffle=True,
            seed=self.seed,
            equalize=True,
            num_replicas=num_replicas,
            rank=rank,
        )
        share = min(
            sum(self._train_sizes[s] for s in shards) for shards in reader.assignment(0, per_rank)
        )
        cabs_sampling = self.sampling == "cabs"
        needed = super_batch_size(self.batch_size, self.filter_ratio) if cabs_sampling else 1
        if share < needed:
            raise ValueError(
                f"Each of the {num_replicas} ranks x {per_rank} workers reads only {share} "
                f"training samples per epoch, fewer than one "
                f"{'CABS super-batch' if cabs_sampling else 'sample'} ({needed}); use more or "
                "larger shards, fewer workers, or a smaller `batch_size` / `filter_ratio`."
            )
        source: Iterable[dict[str, Any]] = reader
        if self.sampling == "cabs":
            source = ConceptAwareStream(reader, variant=self.cabs_variant, **cabs)
        dataset = DecodeSamples(source, self.train_transform, self.max_objects)
        return StatefulDataLoader(dataset, batch_size=self.batch_size, **workers)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Retrieval pairs (``image``, ``caption``, ``index``) in order; ``[]`` if no ``val``."""
        if not self._val_ready:
            self.setup("validate")
        if self.val_kind is None:
            return []
        if self.val_kind == "manifest":
            dataset: Dataset = self.val_set
        else:
            num_replicas, rank = self._world()
            reader = ImageTextShards(
                self.val_paths, self._val_sizes, num_replicas=num_replicas, rank=rank
            )
            dataset = DecodeSamples(reader, self.eval_transform, None)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """The validation pairs."""
        return self.val_dataloader()
