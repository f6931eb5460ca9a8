"""Decoding one sample: its image (`decode_image`) and its training dict (`decode_sample`)."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

__all__ = ["Transform", "decode_image", "decode_sample"]

Transform = Callable[[Image.Image], torch.Tensor]
"""Maps a PIL image to the image tensor of a sample."""


def decode_image(source: str | bytes) -> Image.Image:
    """Open an image file (a path) or encoded image bytes as an RGB PIL image.

    Every image that :class:`ImageTextPairs` and :class:`DecodingStream` load passes through
    here, once per sample.
    """
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        return image.convert("RGB")


def _pad_concepts(ids: Sequence[int], max_objects: int) -> torch.Tensor:
    if len(ids) > max_objects:
        raise ValueError(
            f"A sample has {len(ids)} concepts, more than `max_objects`={max_objects}; raise "
            "`max_objects` (nothing is dropped silently)."
        )
    padded = torch.full((max_objects,), -1, dtype=torch.long)
    padded[: len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
    return padded


def decode_sample(
    image: str | bytes,
    caption: str,
    index: int,
    transform: Transform,
    concepts: Sequence[int] | None,
    max_objects: int,
) -> dict[str, Any]:
    """The training sample of one image, caption and (optionally) concept ids.

    Args:
        image: an image file path or encoded image bytes, decoded by :func:`decode_image`.
        caption: the caption.
        index: the sample's position in its dataset.
        transform: maps the decoded PIL image to a tensor.
        concepts: concept ids, or ``None`` for no ``concepts`` key.
        max_objects: width of the padded ``concepts`` tensor.

    Returns:
        A dict with ``image`` (the transformed image), ``caption``, ``index`` (int64) and,
        unless ``concepts`` is ``None``, ``concepts`` (``[max_objects]`` int64 ids padded
        with -1).

    Raises:
        ValueError: for more than ``max_objects`` concepts.
    """
    sample = {
        "image": transform(decode_image(image)),
        "caption": caption,
        "index": torch.tensor(index, dtype=torch.long),
    }
    if concepts is not None:
        sample["concepts"] = _pad_concepts(concepts, max_objects)
    return sample
