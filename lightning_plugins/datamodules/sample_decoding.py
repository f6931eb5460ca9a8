"""Decoding one sample: its image (`decode_image`) and its training dict (`decode_sample`)."""

from __future__ import annotations

import io
import operator
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


_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
"""What PIL raises for a missing, truncated, corrupt or non-image file."""


def _integer_id(item: object, where: str) -> int:
    """``item`` as an int; a float (or anything else) is an error, never truncated."""
    try:
        if isinstance(item, bool):
            raise TypeError
        return operator.index(item)
    except TypeError:
        raise TypeError(
            f"{where} holds the concept id {item!r} ({type(item).__name__}); concept ids must "
            "be integers (they are never truncated)."
        ) from None


def _pad_concepts(ids: Sequence[int], max_objects: int, where: str = "A sample") -> torch.Tensor:
    ids = [_integer_id(item, where) for item in ids]
    if len(ids) > max_objects:
        raise ValueError(
            f"{where} has {len(ids)} concepts, more than `max_objects`={max_objects}; raise "
            "`max_objects` (nothing is dropped silently)."
        )
    padded = torch.full((max_objects,), -1, dtype=torch.long)
    padded[: len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    return padded


def decode_sample(
    image: str | bytes,
    caption: str,
    index: int,
    transform: Transform,
    concepts: Sequence[int] | None,
    max_objects: int,
    where: str | None = None,
) -> dict[str, Any]:
    """The training sample of one image, caption and (optionally) concept ids.

    Args:
        image: an image file path or encoded image bytes, decoded by :func:`decode_image`.
        caption: the caption.
        index: the sample's position in its dataset.
        transform: maps the decoded PIL image to a tensor.
        concepts: concept ids, or ``None`` for no ``concepts`` key.
        max_objects: width of the padded ``concepts`` tensor.
        where: the sample in error messages (e.g. ``"sample 'k' of shard 'a.tar'"``);
            by default the image path (or ``"the image bytes"``) and ``index``.

    Returns:
        A dict with ``image`` (the transformed image), ``caption``, ``index`` (int64) and,
        unless ``concepts`` is ``None``, ``concepts`` (``[max_objects]`` int64 ids padded
        with -1).

    Raises:
        ValueError: for more than ``max_objects`` concepts, or an image that cannot be
            decoded (missing, truncated, not an image): the message names the file or
            shard and the sample, with PIL's error.
        TypeError: for a concept id that is not an integer.
    """
    if where is None:
        source = f"image {image!r}" if isinstance(image, str) else "image bytes"
        where = f"sample {index} ({source})"
    try:
        decoded = decode_image(image)
    except _DECODE_ERRORS as err:
        raise ValueError(
            f"Cannot decode the image of {where}: {type(err).__name__}: {err}. Fix or remove "
            "the sample (no sample is skipped silently)."
        ) from err
    sample = {
        "image": transform(decoded),
        "caption": caption,
        "index": torch.tensor(index, dtype=torch.long),
    }
    if concepts is not None:
        sample["concepts"] = _pad_concepts(concepts, max_objects, where[:1].upper() + where[1:])
    return sample
