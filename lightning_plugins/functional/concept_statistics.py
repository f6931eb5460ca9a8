"""How concepts are spread over a batch: histogram, coverage, entropy and imbalance."""

from __future__ import annotations

import torch

from lightning_plugins.functional._checks import check_int

__all__ = [
    "concept_batch_statistics",
    "concept_counts",
    "concept_histogram",
    "concept_histogram_statistics",
]


def concept_histogram(concepts: torch.Tensor, num_concepts: int) -> torch.Tensor:
    """Number of occurrences of each concept in a padded batch of concept lists.

    Every annotated object counts, so a sample that holds a concept twice adds 2.

    Args:
        concepts: ``[B, M]`` integer tensor of concept ids per sample, one entry per
            annotated object, padded with ``-1``.
        num_concepts: size of the concept vocabulary; ids must lie in ``[0, num_concepts)``.

    Returns:
        ``[num_concepts]`` int64 counts on the device of ``concepts``.

    Raises:
        TypeError: if ``concepts`` is not an integer tensor or ``num_concepts`` not an
            integer.
        ValueError: if ``num_concepts < 1``, ``concepts`` is not 2-D, or it holds an id
            outside ``[0, num_concepts)`` other than the padding ``-1``.

    Example:
        >>> concept_histogram(torch.tensor([[3, 3, -1], [-1, -1, -1], [0, 3, 1]]), 5)
        tensor([1, 1, 0, 3, 0])
    """
    num_concepts = check_int(num_concepts, "num_concepts", low=1)
    wanted = "a 2-D integer [batch, max_objects] tensor padded with -1"
    if (
        not isinstance(concepts, torch.Tensor)
        or concepts.dtype.is_floating_point
        or concepts.dtype.is_complex
        or concepts.dtype == torch.bool
    ):
        is_tensor = isinstance(concepts, torch.Tensor)
        got = f"dtype {concepts.dtype}" if is_tensor else f"a {type(concepts).__name__}"
        raise TypeError(f"`concepts` must be {wanted}, got {got}.")
    if concepts.ndim != 2:
        raise ValueError(f"`concepts` must be {wanted}, got shape {tuple(concepts.shape)}.")
    concepts = concepts.detach().long()
    bad = (concepts < -1) | (concepts >= num_concepts)
    if bool(bad.any()):
        raise ValueError(
            f"`concepts` holds concept id {int(concepts[bad][0])}; ids must lie in "
            f"[0, num_concepts={num_concepts}) and -1 is the only padding value."
        )
    # bin 0 collects the padding, so the count needs no masked (host-synchronising) gather
    counts = torch.zeros(num_concepts + 1, dtype=torch.long, device=concepts.device)
    counts.scatter_add_(0, concepts.flatten() + 1, torch.ones_like(concepts).flatten())
    return counts[1:]


def concept_histogram_statistics(
    histogram: torch.Tensor,
    num_samples: int | torch.Tensor,
    num_empty_samples: int | torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Summary statistics of a concept histogram and the samples it was counted over.

    The formulas behind :func:`concept_batch_statistics`, split off so that histograms
    and counts summed over ranks (or batches) give the statistics of their union.

    Args:
        histogram: ``[num_concepts]`` occurrence counts, from :func:`concept_histogram`.
        num_samples: number of samples the histogram was counted over.
        num_empty_samples: how many of them have no concept at all.

    Returns:
        A dict of 0-d tensors: ``coverage`` (share of the vocabulary present),
        ``distinct`` (number of concepts present), ``entropy`` (Shannon entropy in nats
        of the normalised histogram, 0 when it is empty), ``objects`` (total
        occurrences), ``objects_per_sample``, ``no_concept_share`` (share of samples
        without concepts; both 0 when there are no samples) and ``max_count`` (largest
        count of one concept, what a CABS cap bounds). Counts are int64, the rest float.

    Example:
        >>> stats = concept_histogram_statistics(torch.tensor([2, 0, 1, 1]), 4, 1)
        >>> for name, value in stats.items():
        ...     print(name, round(float(value), 4))
        coverage 0.75
        distinct 3.0
        entropy 1.0397
        objects 4.0
        objects_per_sample 1.0
        no_concept_share 0.25
        max_count 2.0
    """
    if histogram.ndim != 1 or histogram.numel() < 1:
        raise ValueError(
            f"`histogram` must be a non-empty 1-D [num_concepts] tensor, got shape "
            f"{tuple(histogram.shape)}."
        )
    dtype = torch.get_default_dtype()
    histogram = histogram.detach()
    num_samples = torch.as_tensor(num_samples, device=histogram.device)
    num_empty_samples = torch.as_tensor(num_empty_samples, device=histogram.device)
    total = histogram.sum()
    distinct = (histogram > 0).sum()
    share = histogram.to(dtype) / total.clamp(min=1)
    entropy = -torch.xlogy(share, share).sum()  # 0 * log 0 = 0, so an empty histogram gives 0
    samples = num_samples.clamp(min=1).to(dtype)
    return {
        "coverage": distinct.to(dtype) / histogram.numel(),
        "distinct": distinct,
        "entropy": entropy,
        "objects": total.long(),
        "objects_per_sample": total.to(dtype) / samples,
        "no_concept_share": num_empty_samples.to(dtype) / samples,
        "max_count": histogram.max().long(),
    }


def concept_counts(concepts: torch.Tensor, num_concepts: int) -> torch.Tensor:
    """The counts of a padded batch that add up over batches and ranks, in one tensor.

    Entries ``[0, num_concepts)`` are :func:`concept_histogram`, then the number of
    samples and the number of samples without any concept: sum it over batches or
    all-reduce it, then split it for :func:`concept_histogram_statistics`.

    Raises:
        TypeError, ValueError: as :func:`concept_histogram`.

    Example:
        >>> concept_counts(torch.tensor([[3, 3, -1], [-1, -1, -1], [0, 3, 1]]), 5)
        tensor([1, 1, 0, 3, 0, 3, 1])
    """
    histogram = concept_histogram(concepts, num_concepts)
    counts = torch.empty(histogram.numel() + 2, dtype=torch.long, device=histogram.device)
    counts[:-2] = histogram
    counts[-2] = concepts.shape[0]
    counts[-1] = ((concepts >= 0).sum(1) == 0).sum()
    return counts


def concept_batch_statistics(concepts: torch.Tensor, num_concepts: int) -> dict[str, torch.Tensor]:
    """How the concepts of a padded batch are spread: coverage, entropy, imbalance.

    Args:
        concepts: ``[B, M]`` integer tensor of concept ids per sample, one entry per
            annotated object, padded with ``-1``.
        num_concepts: size of the concept vocabulary.

    Returns:
        The dict of :func:`concept_histogram_statistics`: ``coverage``, ``distinct``,
        ``entropy``, ``objects``, ``objects_per_sample``, ``no_concept_share`` and
        ``max_count``.

    Raises:
        TypeError, ValueError: as :func:`concept_histogram`.

    Example:
        >>> concepts = torch.tensor([[3, 3, -1], [-1, -1, -1], [0, 3, 1], [2, -1, -1]])
        >>> stats = concept_batch_statistics(concepts, num_concepts=8)
        >>> stats["distinct"], stats["coverage"], stats["max_count"]
        (tensor(4), tensor(0.5000), tensor(3))
        >>> stats["objects_per_sample"], stats["no_concept_share"]
        (tensor(1.5000), tensor(0.2500))
        >>> round(float(stats["entropy"]), 4)  # shares 3/6, 1/6, 1/6, 1/6
        1.2425
    """
    counts = concept_counts(concepts, num_concepts)
    return concept_histogram_statistics(counts[:-2], counts[-2], counts[-1])
