"""What a ``train`` / ``val`` value names: a manifest file or a list of tar shards."""

from __future__ import annotations

import glob
import os

from lightning_plugins.datamodules.expand_braces import expand_braces
from lightning_plugins.models import resolve_path

__all__ = ["MANIFEST_SUFFIXES", "SHARD_SUFFIXES", "resolve_source"]

MANIFEST_SUFFIXES = (".jsonl", ".ndjson", ".csv")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def resolve_source(value: str | list[str], argument: str) -> tuple[str, list[str]]:
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
