"""Recall@K for paired image-text retrieval, computed in row chunks."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from lightning_plugins.functional._checks import (
    check_feature_dtypes,
    check_feature_pair,
    check_int,
    check_top_k,
)

__all__ = ["retrieval_recall"]


def _recall_one_way(
    queries: torch.Tensor, keys: torch.Tensor, top_k: torch.Tensor, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Recall@K of ``queries`` against ``keys``, and how many queries scored a non-finite."""
    hits = torch.zeros(len(top_k), dtype=torch.float64, device=queries.device)
    non_finite = torch.zeros((), dtype=torch.long, device=queries.device)
    for start in range(0, queries.shape[0], chunk_size):
        block = queries[start : start + chunk_size] @ keys.T
        rows = torch.arange(block.shape[0], device=block.device)
        positive = block[rows, rows + start]
        # pessimistic ties: every other key scoring at least the positive ranks above it
        rank = (block >= positive[:, None]).sum(dim=1) - 1
        hits += (rank[None, :] < top_k[:, None]).sum(dim=1)
        # NaN compares false, so a NaN row would rank first: it must not count as a hit
        non_finite += (~torch.isfinite(block)).any(dim=1).sum()
    recall = hits / queries.shape[0]
    recall = torch.where(non_finite > 0, torch.full_like(recall, float("nan")), recall)
    return recall.to(queries.dtype), non_finite


def retrieval_recall(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    top_k: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Recall@K of image→text and text→image retrieval for paired features.

    Pair ``i`` is ``(image_features[i], text_features[i])``. A query's rank is the number
    of other candidates whose similarity is at least the true match's (ties count
    against the query, so a collapsed embedding scores zero). Similarities are computed
    ``chunk_size`` rows at a time: memory is ``O(chunk_size * N)``, never ``N x N``.

    A non-finite similarity (NaN or inf, say from a diverged tower) leaves its query's
    rank undefined, and is never counted as a hit: the recall of a direction with such a
    query is NaN, and a ``UserWarning`` says how many queries of each direction had one.
    (A similarity of pair ``(i, j)`` is a score of image query ``i`` and of text query
    ``j``, so both directions turn NaN together.)

    Args:
        image_features: ``[N, D]`` normalised image embeddings.
        text_features: ``[N, D]`` normalised text embeddings.
        top_k: the K values.
        chunk_size: query rows per block.

    Returns:
        ``(image_to_text, text_to_image)``, each ``[len(top_k)]`` recall in [0, 1], or NaN
        (see above).

    Raises:
        TypeError: for features that are not floating point or of different dtypes, a
            ``top_k`` that is no sequence of integers, or a ``chunk_size`` that is no
            integer.
        ValueError: for features that are not 2-D of equal shape, a K below 1, or a
            ``chunk_size`` below 1.

    Example:
        >>> feats = torch.eye(4)
        >>> i2t, t2i = retrieval_recall(feats, feats, top_k=(1, 2))
        >>> i2t.tolist(), t2i.tolist()
        ([1.0, 1.0], [1.0, 1.0])
        >>> i2t, _ = retrieval_recall(feats, feats.roll(1, 0), top_k=(1, 2))
        >>> i2t.tolist()
        [0.0, 0.0]
    """
    check_feature_pair(image_features, text_features)
    check_feature_dtypes(image_features=image_features, text_features=text_features)
    top_k = check_top_k(top_k)
    chunk_size = check_int(chunk_size, "chunk_size", low=1)
    ks = torch.tensor(list(top_k), device=image_features.device)
    i2t, i2t_non_finite = _recall_one_way(image_features, text_features, ks, chunk_size)
    t2i, t2i_non_finite = _recall_one_way(text_features, image_features, ks, chunk_size)
    counts = torch.stack([i2t_non_finite, t2i_non_finite]).tolist()  # one host sync
    if any(counts):
        n = image_features.shape[0]
        warnings.warn(
            f"Retrieval: {counts[0]} of {n} image queries and {counts[1]} of {n} text "
            "queries have a non-finite similarity (NaN or inf), so their rank is undefined: "
            "Recall@K is NaN for those directions instead of counting them as hits. Check "
            "the towers' outputs (a diverged model, a NaN projection).",
            stacklevel=2,
        )
    return i2t, t2i
