"""Zero-shot classification accuracy with class groups, as a torchmetrics ``Metric``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_plugins.functional import first_occurrence, topk_correct
from lightning_plugins.functional._checks import check_int, check_top_k

__all__ = ["ZeroShotAccuracy"]


class ZeroShotAccuracy(Metric):
    """Top-K accuracy over all samples and over named groups of classes.

    ``groups`` maps a name to class ids (say ``{"rare": [...]}``); the accuracy of a group
    counts the samples whose target lies in it. Under DDP samples repeated by a
    distributed sampler's padding are dropped by their dataset ``index``.

    Args:
        num_classes: number of classes.
        top_k: the K values; those above ``num_classes`` are dropped, so the default
            ``(1, 5)`` works with fewer than 5 classes.
        groups: named subsets of class ids.

    Example:
        >>> metric = ZeroShotAccuracy(num_classes=3, top_k=(1,), groups={"rare": [2]})
        >>> logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4]])
        >>> metric.update(logits, torch.tensor([0, 1, 2]), index=torch.arange(3))
        >>> {k: round(v.item(), 3) for k, v in metric.compute().items()}
        {'top1': 0.667, 'top1_rare': 0.0}
    """

    full_state_update = False

    def __init__(
        self,
        num_classes: int,
        top_k: Sequence[int] = (1, 5),
        groups: Mapping[str, Sequence[int]] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        num_classes = check_int(num_classes, "num_classes", low=1)
        given = check_top_k(top_k)
        top_k = tuple(k for k in given if k <= num_classes)
        if not top_k:
            raise ValueError(
                f"`top_k` must hold at least one K <= num_classes={num_classes}, got {given}."
            )
        self.num_classes = num_classes
        self.top_k = top_k
        self.groups = {name: sorted(set(ids)) for name, ids in (groups or {}).items()}
        for name, ids in self.groups.items():
            if ids and not (0 <= ids[0] and ids[-1] < num_classes):
                raise ValueError(f"`groups[{name!r}]` holds class ids outside [0, {num_classes}).")
        self.add_state("correct", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self.add_state("index", default=[], dist_reduce_fx="cat")

    def update(
        self, logits: torch.Tensor, target: torch.Tensor, index: torch.Tensor | None = None
    ) -> None:
        """Add ``[B, C]`` class scores, ``[B]`` targets and their dataset indices."""
        if index is None:
            index = torch.full(target.shape, -1, dtype=torch.long)
        elif index.shape != target.shape:
            raise ValueError(
                f"`index` must have the shape of `target` {tuple(target.shape)} (one dataset "
                f"index per sample), got {tuple(index.shape)}."
            )
        self.correct.append(topk_correct(logits, target, self.top_k))
        self.target.append(target.long())
        self.index.append(index.to(device=target.device, dtype=torch.long))

    def compute(self) -> dict[str, torch.Tensor]:
        """Accuracy keyed ``topK`` and ``topK_<group>``."""
        correct = dim_zero_cat(self.correct).float()
        target = dim_zero_cat(self.target)
        index = dim_zero_cat(self.index)
        if (index >= 0).all():
            keep = first_occurrence(index)
            correct, target = correct[keep], target[keep]
        out = {f"top{k}": correct[:, i].mean() for i, k in enumerate(self.top_k)}
        for name, ids in self.groups.items():
            member = torch.isin(target, torch.tensor(ids, device=target.device))
            for i, k in enumerate(self.top_k):
                out[f"top{k}_{name}"] = correct[member, i].mean()
        return out
