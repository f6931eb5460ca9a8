"""IndexedShards: map-style image-text samples of tar shards, read at random through wids."""

from __future__ import annotations

import bisect
import contextlib
import io
import operator
import os
import struct
from collections.abc import Sequence
from typing import Any

import torch
import wids
from torch.utils.data import Dataset
from wids.wids_mmtar import MMIndexedTar

from lightning_plugins.datamodules.sample_decoding import Transform, decode_sample
from lightning_plugins.datamodules.sample_layout import checked_concepts, shard_starts
from lightning_plugins.datamodules.shard_cache import ShardCache
from lightning_plugins.datamodules.shard_samples import sample_fields
from lightning_plugins.functional._checks import check_int

__all__ = ["IndexedShards", "webdataset_sample"]

COMPRESSED_SUFFIXES = (".tar.gz", ".tgz")
"""Shards that cannot be memory-mapped (refused at construction)."""

_NAME_FIELD = 100
"""Bytes of the name field of a tar header, all that wids reads of a member name."""

_WIDS_ERRORS = (AssertionError, IndexError, KeyError, struct.error, ValueError, OSError)
"""What wids raises for a shard it cannot index or read (a corrupt tar header: ``ValueError``
or ``struct.error``; a member that breaks a sample: ``AssertionError``)."""


def webdataset_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """A wids sample as webdataset's dict: member bytes by lower-case extension, no dot.

    wids gives members as ``BytesIO`` under ``".jpg"`` etc. and the shard URL as
    ``__shard__``; the result has ``"jpg"``, ``"txt"``, ... (bytes), ``__key__`` and
    ``__url__``, as :func:`~lightning_plugins.datamodules.shard_samples.read_shard` yields.

    Example:
        >>> webdataset_sample({".JPG": io.BytesIO(b"x"), "__key__": "k", "__shard__": "a.tar"})
        {'jpg': b'x', '__key__': 'k', '__url__': 'a.tar'}
    """
    converted: dict[str, Any] = {
        name[1:].lower(): member.getvalue()
        for name, member in sample.items()
        if name.startswith(".")
    }
    converted["__key__"] = sample["__key__"]
    converted["__url__"] = sample["__shard__"]
    return converted


def _message(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _member_problem(tar: MMIndexedTar) -> str | None:
    """What makes wids misread a shard's member names, or ``None``.

    wids reads only the 100-byte name field of each tar header (not the PAX or GNU
    long-name records before it), and maps names to members through a dict, so a name it
    cut or a name that occurs twice would shift every later member silently.
    """
    names = [name for name, _, _ in tar.by_index]
    long = next((name for name in names if len(name.encode()) >= _NAME_FIELD), None)
    if long is not None:
        return (
            f"has the member name {long!r} of {_NAME_FIELD} bytes or more, which wids cuts to "
            f"{_NAME_FIELD} (it reads no long-name records); use shorter keys"
        )
    if len(tar.by_name) != len(names):
        twice = next(name for name in names if names.count(name) > 1)
        return f"holds the member {twice!r} twice, which wids cannot index"
    return None


class IndexedShards(Dataset):
    """Map-style image-caption samples of tar shards, each read and decoded only when indexed.

    Random access over img2dataset / webdataset shards (members ``<key>.jpg`` or ``.jpeg``,
    ``.png``, ``.webp``; ``<key>.txt``, else the ``caption`` of ``<key>.json``) through
    wids' ``ShardListDataset``: every shard is memory-mapped from a local file (a symlink
    for a local shard, a download in ``cache_dir`` for a ``pipe:`` or ``http(s)`` one,
    see :class:`~lightning_plugins.datamodules.shard_cache.ShardCache`), at most
    ``lru_size`` shards open at a time. Index ``i`` is sample ``i - starts[s]`` of shard
    ``s`` with ``starts[s] <= i < starts[s + 1]`` (``starts`` the running sum of
    ``sizes``), the numbering of
    :class:`~lightning_plugins.datamodules.image_text_shards.ImageTextShards`.

    Each sample is a dict with ``image`` (the transformed image), ``caption`` (str),
    ``index`` (int64) and, when ``concepts`` is given, ``concepts`` (``[max_objects]``
    int64 ids padded with -1), as in
    :class:`~lightning_plugins.datamodules.image_text_pairs.ImageTextPairs`. The wids
    dataset is built on first access in each process (DataLoader workers build their own).

    Reading a sample raises a ``ValueError`` naming the shard and the sample when the shard
    cannot be fetched or opened, is truncated or corrupt, holds another number of samples
    than ``sizes`` says, or when the sample lacks an image or caption or its image does not
    decode.

    Args:
        shards: shard paths or URLs (local, ``file:``, ``pipe:<command>``, ``http(s)``);
            uncompressed tars only.
        sizes: number of samples of each shard.
        concepts: concept ids of every sample across all shards (lists, or CSR
            ``(ids, offsets)`` tensors), or ``None`` for no ``concepts`` key.
        transform: maps a PIL image to a tensor.
        max_objects: width of the padded ``concepts`` tensor.
        cache_dir: folder of the shards' local files; ``$WIDS_CACHE`` or a folder in the
            system's temporary folder if ``None``.
        lru_size: the most shards open (memory-mapped) at a time in each process.

    Raises:
        TypeError: for ``shards`` that are not paths, a size, ``max_objects`` or
            ``lru_size`` that is not an integer, a ``transform`` that is not callable, a
            ``cache_dir`` that is not a path, or a concept id that is not an integer.
        ValueError: for no shard, ``sizes`` or ``concepts`` that do not match the shards,
            a sample with more than ``max_objects`` concepts, or a ``.tar.gz`` / ``.tgz``
            shard (it cannot be memory-mapped).

    Example:
        >>> import io, json, tarfile, tempfile
        >>> from PIL import Image
        >>> folder = (scratch := tempfile.TemporaryDirectory()).name
        >>> with tarfile.open(f"{folder}/0.tar", "w") as tar:
        ...     for i in range(3):
        ...         png = io.BytesIO()
        ...         Image.new("RGB", (4, 4), (80 * i, 0, 0)).save(png, format="PNG")
        ...         for name, data in [(f"k{i}.png", png.getvalue()), (f"k{i}.txt", b"red")]:
        ...             info = tarfile.TarInfo(name)
        ...             info.size = len(data)
        ...             tar.addfile(info, io.BytesIO(data))
        >>> to_tensor = lambda image: torch.tensor(image.getpixel((0, 0)))
        >>> dataset = IndexedShards(
        ...     [f"{folder}/0.tar"], [3], concepts=[[0], [1, 2], []], transform=to_tensor,
        ...     max_objects=2, cache_dir=f"{folder}/cache",
        ... )
        >>> len(dataset), dataset.concept_ids(1)
        (3, [1, 2])
        >>> sample = dataset[2]
        >>> sample["image"], sample["caption"], sample["index"], sample["concepts"]
        (tensor([160,   0,   0]), 'red', tensor(2), tensor([-1, -1]))
    """

    def __init__(
        self,
        shards: Sequence[str],
        sizes: Sequence[int],
        concepts: Sequence[Sequence[int]] | tuple[torch.Tensor, torch.Tensor] | None = None,
        *,
        transform: Transform,
        max_objects: int = 32,
        cache_dir: str | os.PathLike[str] | None = None,
        lru_size: int = 10,
    ) -> None:
        self.sizes, self.starts = shard_starts(shards, sizes)
        if not shards:
            raise ValueError("`shards` must name at least one shard, got none.")
        for i, url in enumerate(shards):
            if not url.startswith("pipe:") and url.split("?", 1)[0].lower().endswith(
                COMPRESSED_SUFFIXES
            ):
                raise ValueError(
                    f"`shards[{i}]`={url!r}: indexed access memory-maps the shards; .tar.gz "
                    "cannot be: unpack them or use the streaming path (ImageTextShards)."
                )
        max_objects = check_int(max_objects, "max_objects", low=1)
        if not callable(transform):
            raise TypeError(f"`transform` must be callable, got {type(transform).__name__}.")
        self.shards = list(shards)
        self.concepts = checked_concepts(
            concepts,
            self.starts[-1],
            max_objects,
            lambda row: f"Sample {row} (of shard {self.shards[self.shard_of(row)]!r})",
        )
        self.transform = transform
        self.max_objects = max_objects
        self.cache_dir = ShardCache(cache_dir).cache_dir
        self.lru_size = check_int(lru_size, "lru_size", low=1)
        self._dataset: wids.ShardListDataset | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return self.starts[-1]

    def shard_of(self, index: int) -> int:
        """The number of the shard that holds sample ``index``."""
        return bisect.bisect_right(self.starts, index) - 1

    def concept_ids(self, index: int) -> list[int]:
        """Concept ids of sample ``index``, read without opening its shard."""
        ids, offsets = self.concepts
        return ids[offsets[index] : offsets[index + 1]].tolist()

    def __getstate__(self) -> dict[str, Any]:
        """The dataset without its wids reader (open memory maps): each process builds its own."""
        return {**self.__dict__, "_dataset": None, "_pid": None}

    def _reader(self) -> wids.ShardListDataset:
        """This process' wids dataset, built on first use (a forked worker builds its own)."""
        if self._dataset is None or self._pid != os.getpid():
            listing = [
                {"url": u, "nsamples": n} for u, n in zip(self.shards, self.sizes, strict=True)
            ]
            with contextlib.redirect_stderr(io.StringIO()):  # wids prints a summary line
                self._dataset = wids.ShardListDataset(
                    listing,
                    localname=ShardCache(self.cache_dir),
                    lru_size=self.lru_size,
                    transformations=[webdataset_sample],
                )
            self._pid = os.getpid()
        return self._dataset

    def _open(self, shard: int, index: int) -> None:
        """Open shard ``shard`` in wids' LRU unless open; check its member names and size."""
        reader = self._reader()
        url = self.shards[shard]
        if url in reader.cache.lru:
            return
        try:
            reader.localname(url)  # fetch and check the file with our messages
        except ValueError as err:
            raise ValueError(f"Cannot read sample {index}: {err}") from err
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # wids prints a bad header
                samples = reader.cache.get_shard(url)
        except _WIDS_ERRORS as err:
            raise ValueError(
                f"Shard {url!r} is corrupt: wids cannot index it ({_message(err)}); reading "
                f"sample {index}. Write the shard again."
            ) from err
        problem = _member_problem(samples.reader)
        if problem is None and len(samples) != self.sizes[shard]:
            problem = (
                f"holds {len(samples)} samples, not the {self.sizes[shard]} counted for it; it "
                "changed since its samples were counted (or the shard index is stale)"
            )
        if problem is not None:
            del reader.cache.lru[url]  # closed; the next access checks it again
            raise ValueError(f"Shard {url!r} {problem} (reading sample {index}).")

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = operator.index(index)
        if not 0 <= index < len(self):
            raise IndexError(f"Index {index} is out of range for {len(self)} samples.")
        shard = self.shard_of(index)
        self._open(shard, index)
        url = self.shards[shard]
        try:
            raw = self._reader()[index]
        except _WIDS_ERRORS as err:
            raise ValueError(
                f"Shard {url!r} is corrupt: wids cannot read sample {index} "
                f"({_message(err)}). Write the shard again."
            ) from err
        image, caption, _ = sample_fields(raw)
        concepts = None if self.concepts is None else self.concept_ids(index)
        where = f"sample {raw['__key__']!r} (index {index}) of shard {url!r}"
        return decode_sample(
            image, caption, index, self.transform, concepts, self.max_objects, where=where
        )
