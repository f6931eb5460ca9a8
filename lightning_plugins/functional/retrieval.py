"""Recall@K for paired image-text retrieval, computed in row chunks."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_plugins.functional._checks import check_int, check_top_k

__all__ = ["retrieval_recall"]


def _recall_one_way(
    queries: torch.Tensor, keys: torch.Tensor, top_k: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    hits = torch.zeros(len(top_k), dtype=torch.float64, device=queries.device)
    for start in range(0, queries.shape[0], chunk_size):
        block = queries[start : start + chunk_size] @ keys.T
        rows = torch.arange(block.shape[0], device=block.device)
        positive = block[rows, rows + start]
        # pessimistic ties: every other key scoring at least the positive ranks above it
        rank = (block >= positive[:, None]).sum(dim=1) - 1
        hits += (rank[None, :] < top_k[:, None]).sum(dim=1)
    return (hits / queries.shape[0]).to(queries.dtype)


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

    Args:
        image_features: ``[N, D]`` normalised image embeddings.
        text_features: ``[N, D]`` normalised text embeddings.
        top_k: the K values.
        chunk_size: query rows per block.

    Returns:
        ``(image_to_text, text_to_image)``, each ``[len(top_k)]`` recall in [0, 1].

    Example:
        >>> feats = torch.eye(4)
        >>> i2t, t2i = retrieval_recall(feats, feats, top_k=(1, 2))
        >>> i2t.tolist(), t2i.tolist()
        ([1.0, 1.0], [1.0, 1.0])
        >>> i2t, _ = retrieval_recall(feats, feats.roll(1, 0), top_k=(1, 2))
        >>> i2t.tolist()
        [0.0, 0.0]
    """
    if image_features.shape != text_features.shape or image_features.ndim != 2:
        raise ValueError(
            "`image_features` and `text_features` must be paired [N, D] tensors of equal "
            f"shape, got {tuple(image_features.shape)} and {tuple(text_features.shape)}."
        )
    top_k = check_top_k(top_k)
    chunk_size = check_int(chunk_size, "chunk_size", low=1)
    ks = torch.tensor(list(top_k), device=image_features.device)
    return (
        _recall_one_way(image_features, text_features, ks, chunk_size),
        _recall_one_way(text_features, image_features, ks, chunk_size),
    )
