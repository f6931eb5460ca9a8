"""The concept vocabulary: concept names, read or built from the data, and their ids."""

from __future__ import annotations

import os
from collections import Counter

from lightning_plugins.datamodules.concept_annotations import Concept
from lightning_plugins.models import resolve_path

__all__ = ["ConceptLookup", "concept_ids", "read_vocabulary"]


def read_vocabulary(value: str | list[str], argument: str = "concept_vocabulary") -> list[str]:
    """The names of an ``argument`` such as ``concept_vocabulary``: a text file or a list."""
    if isinstance(value, str):
        path = resolve_path(value)
        if not os.path.isfile(path):
            raise ValueError(f"`{argument}`={value!r} is not an existing file.")
        with open(path, encoding="utf-8") as handle:
            names = [line.strip() for line in handle if line.strip()]
    elif isinstance(value, (list, tuple)) and all(isinstance(n, str) and n for n in value):
        names = list(value)
    else:
        raise ValueError(
            f"`{argument}`={value!r} must be a path to a text file with one name per "
            "line, a list of non-empty names, or None."
        )
    if not names:
        raise ValueError(f"`{argument}`={value!r} holds no names.")
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise ValueError(f"`{argument}` lists {duplicates[:5]} more than once.")
    return names


def concept_ids(
    concepts: list[list[Concept]], places: list[str], vocabulary: list[str] | None
) -> tuple[list[str], list[list[int]]]:
    """The vocabulary and every sample's concept ids."""
    first_name = next(
        ((i, c) for i, row in enumerate(concepts) for c in row if isinstance(c, str)), None
    )
    first_id = next(
        ((i, c) for i, row in enumerate(concepts) for c in row if isinstance(c, int)), None
    )
    if first_name is not None and first_id is not None:
        raise ValueError(
            f"The training concepts mix names and integer ids ({places[first_name[0]]} has the "
            f"name {first_name[1]!r}, {places[first_id[0]]} the id {first_id[1]}); use one kind."
        )
    if vocabulary is None:
        if first_id is not None:
            size = 1 + max(c for row in concepts for c in row)
            return [str(i) for i in range(size)], [list(row) for row in concepts]
        counts = Counter(c for row in concepts for c in row)
        vocabulary = sorted(counts, key=lambda name: (-counts[name], name))
    lookup = ConceptLookup(vocabulary)
    return list(vocabulary), [
        lookup.ids(row, where) for row, where in zip(concepts, places, strict=True)
    ]


class ConceptLookup:
    """Concept ids of annotated names (or ids) in a fixed vocabulary.

    Args:
        vocabulary: the concept names; a name's id is its position.

    Example:
        >>> lookup = ConceptLookup(["dog", "cat"])
        >>> lookup.ids(["cat", "dog", "cat"], "sample 0"), lookup.ids([1], "sample 1")
        ([1, 0, 1], [1])
        >>> lookup.ids(["cow"], "sample 2")
        Traceback (most recent call last):
        ...
        ValueError: sample 2: unknown concept 'cow', not in the `concept_vocabulary` of 2 names.
    """

    def __init__(self, vocabulary: list[str]) -> None:
        self.size = len(vocabulary)
        self.lookup = {name: i for i, name in enumerate(vocabulary)}

    def ids(self, row: list[Concept], where: str) -> list[int]:
        """The ids of one sample's concepts (names looked up, integer ids checked).

        Raises:
            ValueError: naming ``where``, for an unknown name or an id outside the vocabulary.
        """
        row_ids = []
        for concept in row:
            if isinstance(concept, int):
                if concept >= self.size:
                    raise ValueError(
                        f"{where}: concept id {concept} is outside the `concept_vocabulary` of "
                        f"{self.size} names."
                    )
                row_ids.append(concept)
            elif concept in self.lookup:
                row_ids.append(self.lookup[concept])
            else:
                raise ValueError(
                    f"{where}: unknown concept {concept!r}, not in the `concept_vocabulary` of "
                    f"{self.size} names."
                )
        return row_ids
