"""Shard URLs: expanding shard lists (patterns, lists, list files) and opening one shard.

A shard is named by a local path, a ``file:`` URL, a ``pipe:<command>`` (webdataset's:
the command writes the shard to its standard output, e.g. ``pipe:aws s3 cp s3://b/0.tar -``)
or an ``http(s)://`` URL. Brace patterns are expanded with ``braceexpand`` (webdataset's
dependency) and opened with webdataset's ``gopen``, except ``http(s)``, which is read with
Python's ``urllib`` so that no ``curl`` needs to be installed (for retries or credentials,
write ``pipe:curl -s -f -L --retry 5 <url>``).
"""

from __future__ import annotations

import glob
import os
import urllib.error
import urllib.request
from typing import BinaryIO

import braceexpand
from webdataset.gopen import gopen

__all__ = ["SHARD_SUFFIXES", "expand_shards", "is_local", "local_path", "open_url"]

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
"""Extensions of tar shards (before any ``?query`` of a URL)."""

HTTP_TIMEOUT = 60.0
"""Seconds an ``http(s)`` read may wait for data before it fails."""


def is_local(url: str) -> bool:
    """Whether ``url`` names a local file: a plain path or a ``file:`` URL.

    Example:
        >>> [is_local(u) for u in ["a/0.tar", "file:/a/0.tar", "pipe:cat a", "https://h/0.tar"]]
        [True, True, False, False]
    """
    return url.startswith("file:") or ("://" not in url and not url.startswith("pipe:"))


def local_path(url: str) -> str:
    """The path of a local ``url`` (``file:///a`` and ``file:/a`` are ``/a``)."""
    if url.startswith("file://"):
        return url[len("file://") :]
    return url[len("file:") :] if url.startswith("file:") else url


def _suffix_ok(url: str) -> bool:
    if url.startswith("pipe:"):
        return True  # a command's name says nothing of what it writes
    return url.split("?", 1)[0].lower().endswith(SHARD_SUFFIXES)


def expand_shards(value: str | list[str], argument: str) -> list[str]:
    """The shard URLs that ``value`` names, in order.

    ``value`` is one string or a list of them; each is a shard URL or path, a brace
    pattern (``"s3/{00000..00099}.tar"``, expanded by ``braceexpand``), a glob over local
    files (``"shards/*.tar"``, sorted) or a text file (``.txt`` / ``.shards``) that lists
    shards, one per line (relative paths from the file's folder; ``#`` starts a comment).

    Raises:
        TypeError: naming ``argument``, for a value that is not a string or a list of them.
        ValueError: naming ``argument`` and the value: for something that is not a shard
            (unknown extension), a local shard that does not exist, a glob that matches
            nothing, or no shard at all. Remote URLs are not checked here; a shard that
            cannot be read is an error when it is opened.

    Example:
        >>> expand_shards("https://host/data/{000..002}.tar", "train")
        ['https://host/data/000.tar', 'https://host/data/001.tar', 'https://host/data/002.tar']
        >>> expand_shards(["pipe:aws s3 cp s3://bucket/{a,b}.tar -"], "train")
        ['pipe:aws s3 cp s3://bucket/a.tar -', 'pipe:aws s3 cp s3://bucket/b.tar -']
    """
    items = [value] if isinstance(value, str) else value
    allowed = (
        "a shard path or URL, a brace pattern, a glob, a shard list file (.txt), or a "
        "non-empty list of them"
    )
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
        raise TypeError(f"`{argument}`={value!r} must be {allowed}.")
    if not items or not all(items):
        raise ValueError(f"`{argument}`={value!r} must be {allowed}.")
    shards: list[str] = []
    for item in items:
        if is_local(item) and local_path(item).lower().endswith((".txt", ".shards")):
            shards.extend(_read_list_file(local_path(item), argument))
            continue
        for url in braceexpand.braceexpand(item):
            shards.extend(_check_shard(url, argument, value))
    if not shards:
        raise ValueError(f"`{argument}`={value!r} names no shard.")
    return shards


def _check_shard(url: str, argument: str, value: object) -> list[str]:
    if not _suffix_ok(url):
        raise ValueError(
            f"`{argument}`={value!r}: {url!r} has an unknown extension; give a JSONL "
            "(.jsonl, .ndjson) or CSV (.csv) manifest, a shard index (.json), a shard list "
            f"(.txt) or tar shards ({', '.join(SHARD_SUFFIXES)}; pipe: commands may end in "
            "anything)."
        )
    if not is_local(url):
        return [url]
    path = local_path(url)
    if glob.has_magic(path):
        matches = sorted(glob.glob(path))
        if not matches:
            raise ValueError(f"`{argument}`={value!r}: {path!r} matches no file.")
        return matches
    if not os.path.isfile(path):
        raise ValueError(f"`{argument}`={value!r}: shard {path!r} does not exist.")
    return [url]


def _read_list_file(path: str, argument: str) -> list[str]:
    if not os.path.isfile(path):
        raise ValueError(f"`{argument}`: the shard list file {path!r} does not exist.")
    folder = os.path.dirname(os.path.abspath(path))
    shards = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            entry = line.split("#", 1)[0].strip() if not line.startswith("pipe:") else line.strip()
            if not entry:
                continue
            if is_local(entry) and not os.path.isabs(local_path(entry)):
                entry = os.path.join(folder, local_path(entry))
            where = f"line {number} of the shard list {path!r}"
            for url in braceexpand.braceexpand(entry):
                shards.extend(_check_shard(url, argument, where))
    return shards


def open_url(url: str) -> BinaryIO:
    """Open shard ``url`` for reading as a binary stream.

    ``http(s)`` URLs are read with ``urllib`` (timeout :data:`HTTP_TIMEOUT`); everything
    else with webdataset's ``gopen``: local paths, ``file:`` and ``pipe:`` (whose
    command's exit status is checked when the stream is closed).

    Raises:
        ValueError: naming ``url``, when it cannot be opened (a missing file, an HTTP
            error status, a refused connection).
    """
    try:
        if url.startswith(("http://", "https://")):
            return urllib.request.urlopen(url, timeout=HTTP_TIMEOUT)
        return gopen(url, "rb")
    except (OSError, urllib.error.URLError, ValueError) as err:
        raise ValueError(f"Cannot open shard {url!r}: {type(err).__name__}: {err}.") from err
