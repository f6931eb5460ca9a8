"""Shard index files: the shards of a set, their sample counts and (optionally) concepts.

An index is a wids dataset description (``{"wids_version": 1, "shardlist": [{"url": ...,
"nsamples": ...}, ...]}``, as wids' ``widsindex create`` writes it), so the same file
serves :class:`~lightning_plugins.datamodules.ImageTextDataModule` and wids itself.
:func:`write_shard_index` may add each shard's concept annotations (``"concepts"``, one
list per sample, read from the samples' ``.json`` under ``concepts_key``): with them a
datamodule reads neither images nor metadata of any shard at setup. Relative URLs are
read from the index's folder, as wids does.

Write one once for a set (reads every shard once, no image bytes)::

    python -m lightning_plugins.datamodules.shard_index "shards/{00000..00099}.tar" -o index.json
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
from collections.abc import Sequence
from typing import Any

from lightning_plugins.datamodules.concept_annotations import Concept, parse_concepts
from lightning_plugins.datamodules.shard_samples import scan_shards
from lightning_plugins.datamodules.shard_urls import expand_shards, is_local, local_path, open_url

__all__ = ["ShardIndex", "read_shard_index", "write_shard_index"]


class ShardIndex:
    """What an index file says: shard URLs, samples per shard and, if given, concepts.

    Attributes:
        urls: the shards' URLs (relative ones resolved against the index's folder).
        sizes: samples per shard.
        concepts_key: the metadata key the concepts were read from, or ``None``.
        concepts: each sample's concept names / ids (all shards in order), or ``None``.
        places: a description of each sample (``"sample 3 of shard 'a.tar' (index 'i.json')"``).
    """

    def __init__(
        self,
        urls: list[str],
        sizes: list[int],
        concepts_key: str | None,
        concepts: list[list[Concept]] | None,
        places: list[str],
    ) -> None:
        self.urls = urls
        self.sizes = sizes
        self.concepts_key = concepts_key
        self.concepts = concepts
        self.places = places


def _resolve(url: str, base: str) -> str:
    if url.startswith("pipe:") or "://" in url or url.startswith("file:"):
        return url
    if os.path.isabs(url):
        return url
    if "://" in base:
        return posixpath.join(base, url)
    return os.path.join(base, url)


def _folder(index: str) -> str:
    if is_local(index):
        return os.path.dirname(os.path.abspath(local_path(index)))
    return index.rsplit("/", 1)[0]


def read_shard_index(index: str, argument: str = "train") -> ShardIndex:
    """Read an index file (a local path or any URL that shards may have).

    Raises:
        ValueError: naming ``argument`` and the file, for a file that is not JSON, is no
            wids description (``wids_version`` 1 and a ``shardlist``), or has an entry
            without ``url`` and a non-negative integer ``nsamples``, or concepts whose
            count differs from ``nsamples``.
    """
    where = f"`{argument}`={index!r}"
    try:
        if is_local(index):
            with open(local_path(index), encoding="utf-8") as handle:
                description = json.load(handle)
        else:
            with open_url(index) as stream:
                description = json.loads(stream.read())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{where}: cannot read the shard index: {err}.") from err
    if (
        not isinstance(description, dict)
        or description.get("wids_version") != 1
        or not isinstance(description.get("shardlist"), list)
        or not description["shardlist"]
    ):
        raise ValueError(
            f'{where} is not a shard index: it must be a JSON object with "wids_version": 1 '
            'and a non-empty "shardlist" of {"url": ..., "nsamples": ...} entries (wids\' '
            "format; write one with `python -m lightning_plugins.datamodules.shard_index`)."
        )
    base = _folder(index)
    key = description.get("concepts_key")
    urls, sizes, places = [], [], []
    concepts: list[list[Concept]] | None = [] if key is not None else None
    for number, entry in enumerate(description["shardlist"]):
        url, size = (entry.get("url"), entry.get("nsamples")) if isinstance(entry, dict) else (0, 0)
        if not isinstance(url, str) or isinstance(size, bool) or not isinstance(size, int):
            raise ValueError(
                f'{where}: shardlist[{number}] must hold a string "url" and an integer '
                f'"nsamples", got {entry!r}.'
            )
        if size < 0:
            raise ValueError(f"{where}: shardlist[{number}] has a negative nsamples {size}.")
        url = _resolve(url, base)
        urls.append(url)
        sizes.append(size)
        shard_places = [f"sample {i} of shard {url!r} (index {index!r})" for i in range(size)]
        places.extend(shard_places)
        if concepts is not None:
            rows = entry.get("concepts")
            if not isinstance(rows, list) or len(rows) != size:
                raise ValueError(
                    f'{where}: shardlist[{number}] ({url!r}) must hold "concepts", a list '
                    f"of {size} concept lists (one per sample), since the index has a "
                    f"concepts_key; got {type(rows).__name__}"
                    f"{f' of {len(rows)}' if isinstance(rows, list) else ''}."
                )
            concepts.extend(
                parse_concepts(row, place, key)
                for row, place in zip(rows, shard_places, strict=True)
            )
    return ShardIndex(urls, sizes, key, concepts, places)


def write_shard_index(
    shards: str | Sequence[str],
    output: str,
    concepts_key: str | None = "concepts",
    name: str | None = None,
) -> ShardIndex:
    """Read every shard once (no image bytes) and write its index to ``output``.

    Shard URLs under the output's folder are written relative to it, so the folder can
    move. ``concepts_key=None`` writes counts only (as ``widsindex create`` does).

    Args:
        shards: shard URLs, patterns, globs or a list file (see
            :func:`~lightning_plugins.datamodules.shard_urls.expand_shards`).
        output: the index file to write (``.json``).
        concepts_key: the ``.json`` metadata key of the concepts to store, or ``None``.
        name: the dataset name in the index (default: the output's file name).

    Returns:
        The index as :func:`read_shard_index` reads it back.

    Example:
        >>> import io, json, os, tarfile, tempfile
        >>> folder = tempfile.TemporaryDirectory()
        >>> with tarfile.open(os.path.join(folder.name, "0.tar"), "w") as tar:
        ...     for key, concepts in [("a", ["dog"]), ("b", ["cat", "dog"])]:
        ...         for ext, data in [("jpg", b"..."), ("txt", b"a photo"),
        ...                           ("json", json.dumps({"concepts": concepts}).encode())]:
        ...             info = tarfile.TarInfo(f"{key}.{ext}")
        ...             info.size = len(data)
        ...             tar.addfile(info, io.BytesIO(data))
        >>> index = write_shard_index(os.path.join(folder.name, "0.tar"),
        ...                           os.path.join(folder.name, "index.json"))
        >>> index.sizes, index.concepts
        ([2], [['dog'], ['cat', 'dog']])
        >>> json.load(open(os.path.join(folder.name, "index.json")))["shardlist"][0]["url"]
        '0.tar'
        >>> folder.cleanup()
    """
    urls = expand_shards(list(shards) if not isinstance(shards, str) else shards, "shards")
    sizes, concepts, _ = scan_shards(urls, concepts_key)
    folder = os.path.dirname(os.path.abspath(output))
    shardlist: list[dict[str, Any]] = []
    start = 0
    for url, size in zip(urls, sizes, strict=True):
        entry: dict[str, Any] = {"url": url, "nsamples": size}
        if is_local(url):
            path = os.path.abspath(local_path(url))
            entry["filesize"] = os.path.getsize(path)
            relative = os.path.relpath(path, folder)
            entry["url"] = path if relative.startswith("..") else relative
        if concepts_key is not None:
            entry["concepts"] = concepts[start : start + size]
        start += size
        shardlist.append(entry)
    description: dict[str, Any] = {
        "wids_version": 1,
        "name": name or os.path.basename(output),
        "shardlist": shardlist,
    }
    if concepts_key is not None:
        description["concepts_key"] = concepts_key
    with open(output, "w", encoding="utf-8") as handle:
        json.dump(description, handle)
    return read_shard_index(output, "output")


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m lightning_plugins.datamodules.shard_index SHARDS -o FILE``."""
    parser = argparse.ArgumentParser(description=write_shard_index.__doc__.split("\n")[0])
    parser.add_argument("shards", nargs="+", help="shard URLs, patterns, globs or a list file")
    parser.add_argument("-o", "--output", required=True, help="the index file to write")
    parser.add_argument("--concepts-key", default="concepts", help="'' for counts only")
    args = parser.parse_args(argv)
    index = write_shard_index(args.shards, args.output, args.concepts_key or None)
    print(f"{args.output}: {len(index.urls)} shards, {sum(index.sizes)} samples")


if __name__ == "__main__":
    main()
