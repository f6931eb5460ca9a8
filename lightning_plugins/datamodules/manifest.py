"""Reading a JSONL / CSV manifest of image paths, captions and concept annotations."""

from __future__ import annotations

import csv
import json
import os
from typing import Any

from lightning_plugins.datamodules.concept_annotations import Concept, parse_concepts

__all__ = ["manifest_rows", "read_manifest"]


def manifest_rows(
    path: str, argument: str, columns: tuple[str, ...], extra: str | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """The rows of a JSONL / CSV manifest with a description of each (``line N of 'path'``).

    Args:
        path: the manifest; ``.csv`` is read as CSV with a header, anything else as JSONL.
        argument: the argument that named it, for the messages.
        columns: the columns a CSV header must have.
        extra: an optional column to mention in the message for a short header.

    Raises:
        ValueError: for a CSV header without ``columns``, a JSONL line that is not a JSON
            object, or a manifest without rows, naming ``argument`` and the line.
    """
    rows: list[tuple[str, dict[str, Any]]] = []
    with open(path, encoding="utf-8", newline="") as handle:
        if path.lower().endswith(".csv"):
            reader = csv.DictReader(handle)
            missing = set(columns) - set(reader.fieldnames or [])
            if missing:
                also = f" ({extra!r} too, if used)" if extra else ""
                raise ValueError(
                    f"`{argument}`={path!r}: the CSV header {reader.fieldnames} lacks the "
                    f"column(s) {sorted(missing)}; needed are {list(columns)}{also}."
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
    return rows


def read_manifest(
    path: str, concepts_key: str | None, argument: str
) -> tuple[list[str], list[str], list[list[Concept]], list[str]]:
    """Image paths, captions, concept lists and row descriptions of a JSONL / CSV manifest.

    With ``concepts_key=None`` concepts are not read (every list is empty).
    """
    folder = os.path.dirname(os.path.abspath(path))
    rows = manifest_rows(path, argument, ("image", "caption"), concepts_key or "concepts")
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
            concepts.append(parse_concepts(row.get(concepts_key), where, concepts_key))
        else:
            concepts.append([])
        places.append(where)
    return images, captions, concepts, places
