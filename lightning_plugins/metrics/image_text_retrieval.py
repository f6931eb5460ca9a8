"""Image-text retrieval Recall@K as a torchmetrics ``Metric``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_plugins.functional import first_occurrence, retrieval_recall
from lightning_plugins.functional._checks import check_feature_pair, check_int, check_top_k

__all__ = ["ImageTextRetrieval"]


class ImageTextRetrieval(Metric):
    """Recall@K of image→text and text→image retrieval over a whole evaluation set.

    Stores the embeddings of every pair and, at ``compute``, ranks each query against
    all candidates in row chunks, so a large set never builds an ``N x N`` matrix. Under
    DDP the embeddings of all ranks are gathered first; pairs repeated by a distributed
    sampler's padding are dropped by their dataset ``index``.

    A non-finite similarity (NaN or inf embeddings, say from a diverged model) is never
    counted as a hit: Recall@K of each direction with such a query is NaN (on every rank
    under DDP, as every rank ranks the gathered set), and ``compute`` warns how many
    queries were non-finite (see :func:`~lightning_plugins.functional.retrieval_recall`).

    Args:
        top_k: the K values.
        chunk_size: query rows scored at once.

    Raises:
        TypeError: for a ``top_k`` that is no sequence of integers or a ``chunk_size``
            that is no integer.
        ValueError: at construction for a K or ``chunk_size`` below 1; in ``update`` for
            features that are not 2-D of equal shape or an ``index`` that is not ``[B]``.

    Example:
        >>> metric = ImageTextRetrieval(top_k=(1,))
        >>> feats = torch.eye(3)
        >>> metric.update(feats, feats, index=torch.arange(3))
        >>> metric.update(feats[:1], feats[:1], index=torch.tensor([0]))  # padding repeat
        >>> {k: round(v.item(), 3) for k, v in metric.compute().items()}
        {'i2t_R@1': 1.0, 't2i_R@1': 1.0}
    """

    full_state_update = False

    def __init__(self, top_k: Sequence[int] = (1, 5, 10), chunk_size: int = 1024, **kwargs) -> None:
        super().__init__(**kwargs)
        self.top_k = check_top_k(top_k)
        self.chunk_size = check_int(chunk_size, "chunk_size", low=1)
        self.add_state("image_features", default=[], dist_reduce_fx="cat")
        self.add_state("text_features", default=[], dist_reduce_fx="cat")
        self.add_state("index", default=[], dist_reduce_fx="cat")

    def update(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        index: torch.Tensor | None = None,
    ) -> None:
        """Add a batch of paired, normalised embeddings and their dataset indices."""
        check_feature_pair(image_features, text_features)
        if index is None:
            index = torch.full((image_features.shape[0],), -1, dtype=torch.long)
        elif index.shape != image_features.shape[:1]:
            raise ValueError(
                f"`index` must be [B] with B = {image_features.shape[0]} (one dataset index "
                f"per pair), got shape {tuple(index.shape)}."
            )
        self.image_features.append(image_features.detach().float())
        self.text_features.append(text_features.detach().float())
        self.index.append(index.to(device=image_features.device, dtype=torch.long))

    def compute(self) -> dict[str, torch.Tensor]:
        """Recall@K per direction, keyed ``i2t_R@K`` and ``t2i_R@K``; NaN if non-finite."""
        images = dim_zero_cat(self.image_features)
        texts = dim_zero_cat(self.text_features)
        index = dim_zero_cat(self.index)
        if (index >= 0).all():
            keep = first_occurrence(index)
            images, texts = images[keep], texts[keep]
        i2t, t2i = retrieval_recall(images, texts, self.top_k, self.chunk_size)
        out = {f"i2t_R@{k}": v for k, v in zip(self.top_k, i2t, strict=True)}
        out.update({f"t2i_R@{k}": v for k, v in zip(self.top_k, t2i, strict=True)})
        return out
