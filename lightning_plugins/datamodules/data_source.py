"""What a ``train`` / ``val`` value names: a manifest, tar shards or a shard index."""

from __future__ import annotations

import os

from lightning_plugins.datamodules.shard_urls import expand_shards, is_local, local_path
from lightning_plugins.models import resolve_path

__all__ = ["INDEX_SUFFIX", "MANIFEST_SUFFIXES", "resolve_source"]

MANIFEST_SUFFIXES = (".jsonl", ".ndjson", ".csv")
INDEX_SUFFIX = ".json"


def resolve_source(value: str | list[str], argument: str) -> tuple[str, list[str]]:
    """``("manifest", [path])``, ``("index", [url])`` or ``("shards", urls)`` for a value.

    A string ending in ``.jsonl`` / ``.ndjson`` / ``.csv`` is a manifest, one ending in
    ``.json`` a shard index (a wids dataset description, see
    :mod:`~lightning_plugins.datamodules.shard_index`); anything else names shards (see
    :func:`~lightning_plugins.datamodules.shard_urls.expand_shards`). ``"pkg:"`` paths are
    resolved.

    Raises:
        TypeError: for a value that is neither a string nor a list of strings.
        ValueError: naming ``argument`` and the value, for a missing local manifest or
            index, or shards that :func:`expand_shards` refuses.
    """
    if isinstance(value, str):
        resolved = resolve_path(value)
        lowered = resolved.split("?", 1)[0].lower()
        if lowered.endswith(MANIFEST_SUFFIXES):
            if not os.path.isfile(resolved):
                raise ValueError(
                    f"`{argument}`={value!r}: manifest file {resolved!r} does not exist."
                )
            return "manifest", [resolved]
        if lowered.endswith(INDEX_SUFFIX):
            if is_local(resolved) and not os.path.isfile(local_path(resolved)):
                raise ValueError(
                    f"`{argument}`={value!r}: shard index {local_path(resolved)!r} does not exist."
                )
            return "index", [resolved]
        return "shards", expand_shards(resolved, argument)
    if isinstance(value, (list, tuple)):
        items = [resolve_path(v) if isinstance(v, str) else v for v in value]
        return "shards", expand_shards(items, argument)
    raise TypeError(
        f"`{argument}`={value!r} must be a JSONL / CSV manifest, a shard index (.json), or "
        "tar shards (a path or URL, a brace pattern, a glob, a list file, or a list of them)."
    )
