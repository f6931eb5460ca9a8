"""Samples of img2dataset / webdataset tar shards, read with webdataset.

webdataset opens the shard (:func:`~lightning_plugins.datamodules.shard_urls.open_url`),
reads its members and groups them by sample key (``tar_file_expander``,
``group_by_keys``). What is ours: the error messages (a corrupt or truncated shard
names the shard and the last sample read; a sample without image or caption names the
sample), reading caption and JSON metadata, and a check for the end-of-archive marker,
which Python's ``tarfile`` (under webdataset) does not make: a tar cut at a member
boundary would otherwise end early without an error.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
import zlib
from collections.abc import Iterator
from http.client import HTTPException
from typing import Any, BinaryIO

from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander

from lightning_plugins.datamodules.concept_annotations import Concept, parse_concepts
from lightning_plugins.datamodules.shard_urls import open_url

__all__ = [
    "END_OF_ARCHIVE",
    "GZIP_MAGIC",
    "IMAGE_EXTENSIONS",
    "read_shard",
    "sample_fields",
    "scan_shards",
]

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
"""Image members of a shard sample, in order of preference."""

_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, ValueError, HTTPException)
"""What reading a corrupt or truncated shard raises (``zlib.error``: a broken .tar.gz;
``HTTPException``: e.g. an HTTP response cut short)."""

END_OF_ARCHIVE = bytes(2 * tarfile.BLOCKSIZE)
"""The last 1024 bytes of every complete uncompressed tar (two zero blocks)."""

GZIP_MAGIC = b"\x1f\x8b"
"""The first two bytes of a gzip-compressed shard."""


class _TailStream:
    """A read-only stream that remembers its first bytes and its last 1024 bytes."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.head = b""
        self.tail = b""

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        if len(self.head) < 2:
            self.head += data[: 2 - len(self.head)]
        if len(data) >= len(END_OF_ARCHIVE):
            self.tail = data[-len(END_OF_ARCHIVE) :]
        elif data:
            self.tail = (self.tail + data)[-len(END_OF_ARCHIVE) :]
        return data

    def drain(self) -> None:
        """Read to the end, so that ``tail`` holds the stream's last bytes."""
        data = self.read(1 << 16)
        while data:
            data = self.read(1 << 16)

    def compressed(self) -> bool:
        """A gzip stream (its own trailer, not tar's zero blocks, ends it)."""
        return self.head[:2] == GZIP_MAGIC

    def __str__(self) -> str:
        return str(self.stream)


def _command_status(stream: Any) -> int | None:
    """The exit status of a ``pipe:`` shard's command, if it failed (after a read error).

    Closes the command's output first, so that a command still writing ends (SIGPIPE, not
    a failure).
    """
    process = getattr(stream, "proc", None)
    if process is None:
        return None
    process.stdout.close()
    try:
        status = process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return None
    return status if status > 0 and status not in getattr(stream, "ignore_status", ()) else None


def _after(key: str | None) -> str:
    return "before its first sample" if key is None else f"after sample {key!r}"


def _message(err: BaseException) -> str:
    first = err.args[0] if err.args else ""
    return f"{type(err).__name__}: {str(first).split(' @ ')[0]}"


def read_shard(url: str, images: bool = True) -> Iterator[dict[str, Any]]:
    """The samples of shard ``url``: webdataset dicts of raw member bytes by extension.

    Each dict has ``__key__``, ``__url__`` and one entry per member (``"jpg"``, ``"txt"``,
    ``"json"``, ...). With ``images=False`` only the ``.txt`` and ``.json`` members are
    kept (image bytes are skipped, not copied) and ``__image__`` says whether the sample
    has an image member.

    Raises:
        ValueError: when the shard cannot be opened, or is corrupt or truncated (it names
            ``url`` and the last sample read); a ``pipe:`` command that fails is an error
            too.
    """
    stream = _TailStream(open_url(url))
    with_image: set[str] = set()

    def select(name: str) -> bool:
        key, extension = base_plus_ext(name)
        if extension is not None and extension.lower() in IMAGE_EXTENSIONS:
            with_image.add(key)
            return False
        return True

    key, complete = None, False
    try:
        try:
            files = tar_file_expander(
                [{"url": url, "stream": stream}], select_files=None if images else select
            )
            for sample in group_by_keys(files):
                key = sample["__key__"]
                if not images:
                    sample["__image__"] = key in with_image
                    with_image.discard(key)
                yield sample
            stream.drain()
        except _READ_ERRORS as err:
            status = _command_status(stream.stream)
            if status:
                raise ValueError(
                    f"Shard {url!r}: its command exited with status {status} {_after(key)}; "
                    "the samples after it are lost."
                ) from err
            raise ValueError(
                f"Shard {url!r} is corrupt or truncated {_after(key)}: {_message(err)}."
            ) from err
        if not stream.compressed() and stream.tail != END_OF_ARCHIVE:
            raise ValueError(
                f"Shard {url!r} is truncated {_after(key)}: it lacks the end-of-archive "
                "marker, so samples after it are lost. Write the shard again."
            )
        complete = True
    finally:
        try:
            stream.stream.close()  # a pipe: command's exit status is checked here
        except OSError as err:
            if complete:  # a reader that stops early may end a pipe: command: no error
                raise ValueError(
                    f"Shard {url!r}: its command exited with status "
                    f"{_command_status(stream.stream)} after its last sample."
                ) from err


def sample_fields(
    sample: dict[str, Any], images: bool = True
) -> tuple[bytes | None, str, dict[str, Any]]:
    """``(image bytes or None, caption, json metadata)`` of one webdataset sample.

    The caption is the ``.txt`` member, else the ``caption`` of the ``.json``.

    Raises:
        ValueError: naming the sample's key and shard, for a sample without an image
            member (read with ``images=False``: whose ``__image__`` is not true), without
            a caption, or with a bad ``.json`` / ``.txt``.
    """
    where = f"Sample {sample.get('__key__')!r} of shard {sample.get('__url__')!r}"
    image = next((sample[ext] for ext in IMAGE_EXTENSIONS if ext in sample), None)
    if image is None and sample.get("__image__") is not True:
        parts = sorted(k for k in sample if not k.startswith("__"))
        raise ValueError(
            f"{where} has no image member ({', '.join(IMAGE_EXTENSIONS)}); it has {parts}."
        )
    metadata: dict[str, Any] = {}
    if "json" in sample:
        try:
            metadata = json.loads(sample["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{where}: bad .json ({err}).") from err
        if not isinstance(metadata, dict):
            raise ValueError(f"{where}: .json is not an object.")
    if "txt" in sample:
        try:
            caption = bytes(sample["txt"]).decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{where}: the .txt caption is not UTF-8 ({err}).") from err
    elif isinstance(metadata.get("caption"), str):
        caption = metadata["caption"]
    else:
        raise ValueError(
            f"{where} has no caption: no .txt member and no 'caption' string in its .json."
        )
    return (bytes(image) if images else None), caption, metadata


def scan_shards(
    shards: list[str], concepts_key: str | None
) -> tuple[list[int], list[list[Concept]], list[str]]:
    """Samples per shard, concept lists and sample descriptions, reading no image bytes.

    Every shard is read once through (over the network for remote ones); image members
    are skipped.
    """
    sizes, concepts, places = [], [], []
    for url in shards:
        size = 0
        for sample in read_shard(url, images=False):
            _, _, metadata = sample_fields(sample, images=False)
            if concepts_key is not None:
                where = f"sample {sample['__key__']!r} of shard {url!r}"
                concepts.append(parse_concepts(metadata.get(concepts_key), where, concepts_key))
                places.append(where)
            size += 1
        sizes.append(size)
    return sizes, concepts, places
