"""A sample's concept annotation: the concept names or ids in one manifest / metadata field."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["Concept", "parse_concepts"]

Concept = str | int
"""A concept as annotated: a name or an integer id."""


def parse_concepts(value: Any, where: str, key: str) -> list[Concept]:
    """Concept names (str) and ids (int) of one sample's ``key`` field.

    Raises:
        TypeError: for an entry that is neither a name nor an integer id, such as the
            float ``1.5`` or ``2.0`` (never truncated to an id); the message names
            ``where`` and the value.
        ValueError: for a field that is no list, an empty name or a negative id.
    """
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
    if isinstance(value, float):
        raise TypeError(
            f"{where}: `{key}` holds the float {value!r}; concept ids must be integers "
            "(a float is never truncated to an id)."
        )
    if not isinstance(value, list):
        raise ValueError(
            f"{where}: `{key}` must be a list of concept names or ids (or a ';'-separated "
            f"string), got {type(value).__name__} {value!r}."
        )
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise TypeError(
                f"{where}: `{key}` entries must be concept names or integer ids, got "
                f"{item!r} ({type(item).__name__}); a float is never truncated to an id."
            )
        if item == "":
            raise ValueError(
                f"{where}: `{key}` entries must be non-empty names or integer ids, got {item!r}."
            )
        if isinstance(item, int) and item < 0:
            raise ValueError(f"{where}: `{key}` holds a negative concept id {item}.")
    return list(value)
