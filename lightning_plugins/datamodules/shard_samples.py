"""Samples of img2dataset / webdataset tar shards: member groups, captions and metadata."""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterator
from typing import Any

from lightning_plugins.datamodules.concept_annotations import Concept, parse_concepts

__all__ = ["IMAGE_EXTENSIONS", "read_shard_sample", "scan_shards", "tar_groups"]

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
"""Image members of a shard sample, in order of preference."""


def tar_groups(tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, tarfile.TarInfo]]]:
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


def read_shard_sample(
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


def scan_shards(
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
            for key, parts in tar_groups(tar):
                where = f"sample {key!r} of shard {path!r}"
                _, _, metadata = read_shard_sample(tar, path, key, parts, images=False)
                if concepts_key is not None:
                    concepts.append(parse_concepts(metadata.get(concepts_key), where, concepts_key))
                    places.append(where)
                size += 1
        sizes.append(size)
    return sizes, concepts, places
