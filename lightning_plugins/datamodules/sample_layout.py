"""Checked layouts of a set of samples: shard sizes and per-sample concept annotations."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lightning_plugins.functional._checks import check_int
from lightning_plugins.functional.concept_lists import concept_csr

__all__ = ["checked_concepts", "shard_starts"]

Concepts = Sequence[Sequence[int]] | tuple[torch.Tensor, torch.Tensor]
"""Concept ids per sample: lists, or CSR ``(ids, offsets)`` tensors."""


def shard_starts(shards: Sequence[str], sizes: Sequence[int]) -> tuple[list[int], list[int]]:
    """Checked ``sizes`` and the index of each shard's first sample (and the total last).

    Raises:
        TypeError: for ``shards`` that are not a list of strings, or a size that is not an
            integer.
        ValueError: for as many sizes as shards, or a negative size.

    Example:
        >>> shard_starts(["a.tar", "b.tar"], [3, 2])
        ([3, 2], [0, 3, 5])
    """
    if isinstance(shards, str) or not all(isinstance(url, str) for url in shards):
        raise TypeError(f"`shards` must be a list of shard paths or URLs, got {shards!r}.")
    if len(shards) != len(sizes):
        raise ValueError(f"Got {len(shards)} shards but {len(sizes)} sizes.")
    sizes = [check_int(size, f"sizes[{i}]", low=0) for i, size in enumerate(sizes)]
    starts = [0]
    for size in sizes:
        starts.append(starts[-1] + size)
    return sizes, starts


def checked_concepts(
    concepts: Concepts | None,
    num_samples: int,
    max_objects: int | None = None,
    describe: Callable[[int], str] = lambda row: f"Sample {row}",
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``concepts`` as CSR tensors, checked against the samples, or ``None`` for ``None``.

    Args:
        concepts: concept ids per sample, or ``None``.
        num_samples: the number of samples they must cover.
        max_objects: the most concepts of one sample, or ``None`` for no limit.
        describe: names sample ``row`` in the message (``"Sample 3 ('a.jpg')"``).

    Raises:
        TypeError: for a concept id that is not an integer.
        ValueError: for concepts of another number of samples, or a sample with more than
            ``max_objects`` concepts.

    Example:
        >>> checked_concepts([[0], [1, 2]], 2, max_objects=1)
        Traceback (most recent call last):
        ...
        ValueError: Sample 1 has 2 concepts, more than `max_objects`=1; raise `max_objects`.
    """
    if concepts is None:
        return None
    csr = concept_csr(concepts)
    lengths = csr[1].diff()
    if lengths.numel() != num_samples:
        raise ValueError(
            f"`concepts` covers {lengths.numel()} samples but the data holds {num_samples}."
        )
    if max_objects is not None and lengths.numel() and int(lengths.max()) > max_objects:
        row = int(lengths.argmax())
        raise ValueError(
            f"{describe(row)} has {int(lengths[row])} concepts, more than `max_objects`="
            f"{max_objects}; raise `max_objects`."
        )
    return csr
