"""Samples of img2dataset / webdataset tar shards: member groups, captions and metadata."""

from __future__ import annotations

import json
import os
import tarfile
import zlib
from collections.abc import Iterator
from typing import Any

from lightning_plugins.datamodules.concept_annotations import Concept, parse_concepts

__all__ = ["IMAGE_EXTENSIONS", "open_shard", "read_shard_sample", "scan_shards", "tar_groups"]

_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)
"""What tarfile raises for a corrupt or truncated shard (``zlib.error``: a broken .tar.gz)."""

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
"""Image members of a shard sample, in order of preference."""


def open_shard(path: str) -> tarfile.TarFile:
    """Open the tar shard ``path``; an unreadable one is a ``ValueError`` naming it."""
    try:
        return tarfile.open(path, "r:*")
    except _READ_ERRORS as err:
        raise ValueError(f"Shard {path!r} is not a readable tar file: {err}.") from err


def _members(tar: tarfile.TarFile, path: str | None) -> Iterator[tarfile.TarInfo]:
    """The members of ``tar``; a corrupt or truncated shard is a ``ValueError`` naming it."""
    members = iter(tar)
    last = None
    while True:
        try:
            member = next(members)
        except StopIteration:
            break
        except _READ_ERRORS as err:
            raise ValueError(
                f"Shard {path or tar.name!r} is corrupt or truncated {_after(last)}: "
                f"{type(err).__name__}: {err}."
            ) from err
        last = member.name
        yield member
    # tarfile ends quietly at a header cut short; a complete tar ends with a zero block
    try:
        tar.fileobj.seek(tar.offset)
        end = tar.fileobj.read(tarfile.BLOCKSIZE)
    except _READ_ERRORS as err:
        end = f"{type(err).__name__}: {err}"
    if end != bytes(tarfile.BLOCKSIZE):
        raise ValueError(
            f"Shard {path or tar.name!r} is truncated {_after(last)}: it lacks the "
            "end-of-archive marker, so samples after it are lost. Write the shard again."
        )


def _after(member: str | None) -> str:
    return "before its first member" if member is None else f"after member {member!r}"


def tar_groups(
    tar: tarfile.TarFile, path: str | None = None
) -> Iterator[tuple[str, dict[str, tarfile.TarInfo]]]:
    """Members of a shard grouped by sample key (webdataset: the name up to the first dot).

    A corrupt or truncated shard raises a ``ValueError`` naming ``path`` (default: the tar
    file's name) and the last member read.
    """
    key: str | None = None
    parts: dict[str, tarfile.TarInfo] = {}
    for member in _members(tar, path):
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


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, where: str) -> bytes:
    try:
        handle = tar.extractfile(member)
        if handle is None:  # pragma: no cover - files always have a handle
            raise tarfile.ReadError("no file handle")
        data = handle.read()
    except _READ_ERRORS as err:
        raise ValueError(
            f"{where}: cannot read member {member.name!r} (corrupt or truncated shard): "
            f"{type(err).__name__}: {err}."
        ) from err
    if len(data) != member.size:
        raise ValueError(
            f"{where}: member {member.name!r} holds {len(data)} of its {member.size} bytes "
            "(truncated shard)."
        )
    return data


def read_shard_sample(
    tar: tarfile.TarFile, path: str, key: str, parts: dict[str, tarfile.TarInfo], images: bool
) -> tuple[bytes | None, str, dict[str, Any]]:
    """``(image bytes or None, caption, json metadata)`` of one shard sample."""
    where = f"Sample {key!r} of shard {path!r}"
    image = next((parts[ext] for ext in IMAGE_EXTENSIONS if ext in parts), None)
    if image is None:
        raise ValueError(
            f"Sample {key!r} of shard {path!r} has no image member "
            f"({', '.join(IMAGE_EXTENSIONS)}); it has {sorted(parts)}."
        )
    metadata: dict[str, Any] = {}
    if "json" in parts:
        try:
            metadata = json.loads(_read_member(tar, parts["json"], where))
        except json.JSONDecodeError as err:
            raise ValueError(f"Sample {key!r} of shard {path!r}: bad .json ({err}).") from err
        if not isinstance(metadata, dict):
            raise ValueError(f"Sample {key!r} of shard {path!r}: .json is not an object.")
    if "txt" in parts:
        try:
            caption = _read_member(tar, parts["txt"], where).decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{where}: the .txt caption is not UTF-8 ({err}).") from err
    elif isinstance(metadata.get("caption"), str):
        caption = metadata["caption"]
    else:
        raise ValueError(
            f"Sample {key!r} of shard {path!r} has no caption: no .txt member and no 'caption' "
            "string in its .json."
        )
    return (_read_member(tar, image, where) if images else None), caption, metadata


def scan_shards(
    shards: list[str], concepts_key: str | None
) -> tuple[list[int], list[list[Concept]], list[str]]:
    """Samples per shard, concept lists and sample descriptions, reading no image bytes."""
    sizes, concepts, places = [], [], []
    for path in shards:
        size = 0
        with open_shard(path) as tar:
            for key, parts in tar_groups(tar, path):
                where = f"sample {key!r} of shard {path!r}"
                _, _, metadata = read_shard_sample(tar, path, key, parts, images=False)
                if concepts_key is not None:
                    concepts.append(parse_concepts(metadata.get(concepts_key), where, concepts_key))
                    places.append(where)
                size += 1
        sizes.append(size)
    return sizes, concepts, places
