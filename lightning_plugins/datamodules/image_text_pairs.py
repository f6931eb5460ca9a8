"""ImageTextPairs: map-style image-caption pairs that decode each image only when read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from lightning_plugins.datamodules.sample_decoding import Transform, decode_sample
from lightning_plugins.datamodules.sample_layout import checked_concepts
from lightning_plugins.functional._checks import check_int

__all__ = ["ImageTextPairs"]


class ImageTextPairs(Dataset):
    """Map-style image-caption pairs; each image is decoded only when its sample is read.

    Each sample is a dict with ``image`` (the transformed image), ``caption`` (str),
    ``index`` (int64) and, when ``concepts`` is given, ``concepts`` (``[max_objects]``
    int64 ids padded with -1).

    Args:
        images: image file paths.
        captions: one caption per image.
        concepts: concept ids per sample (lists, or CSR ``(ids, offsets)`` tensors), or
            ``None`` for no ``concepts`` key.
        transform: maps a PIL image to a tensor.
        max_objects: width of the padded ``concepts`` tensor.

    Reading a sample whose image cannot be decoded (missing, truncated, not an image)
    raises a ``ValueError`` naming the file and the sample.

    Raises:
        TypeError: for a ``max_objects`` that is not an integer, a ``transform`` that is
            not callable, or a concept id that is not an integer (never truncated).
        ValueError: for lengths that differ or a sample with more than ``max_objects``
            concepts.
    """

    def __init__(
        self,
        images: Sequence[str],
        captions: Sequence[str],
        concepts: Sequence[Sequence[int]] | tuple[torch.Tensor, torch.Tensor] | None,
        transform: Transform,
        max_objects: int = 32,
    ) -> None:
        max_objects = check_int(max_objects, "max_objects", low=1)
        if not callable(transform):
            raise TypeError(f"`transform` must be callable, got {type(transform).__name__}.")
        if len(images) != len(captions):
            raise ValueError(f"Got {len(images)} images but {len(captions)} captions.")
        self.images = list(images)
        self.captions = list(captions)
        self.concepts = checked_concepts(
            concepts, len(self.images), max_objects, lambda row: f"Sample {row} ({images[row]!r})"
        )
        self.transform = transform
        self.max_objects = max_objects

    def __len__(self) -> int:
        return len(self.images)

    def concept_ids(self, index: int) -> list[int]:
        """Concept ids of sample ``index``, read without decoding its image."""
        ids, offsets = self.concepts
        return ids[offsets[index] : offsets[index + 1]].tolist()

    def __getitem__(self, index: int) -> dict[str, Any]:
        concepts = None if self.concepts is None else self.concept_ids(index)
        return decode_sample(
            self.images[index],
            self.captions[index],
            index,
            self.transform,
            concepts,
            self.max_objects,
        )
