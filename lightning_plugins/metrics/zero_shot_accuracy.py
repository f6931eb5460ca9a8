"""Zero-shot classification accuracy with class groups, as a torchmetrics ``Metric``."""

from __future__ import annotations

import warnings
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

    A sample whose scores hold NaN or inf (a diverged model) is never counted as a hit:
    every accuracy over samples that include one is NaN (on every rank under DDP), and
    ``compute`` warns how many samples were non-finite. Targets outside
    ``[0, num_classes)`` and scores with another number of columns raise.

    Args:
        num_classes: number of classes.
        top_k: the K values; those above ``num_classes`` are dropped, so the default
            ``(1, 5)`` works with fewer than 5 classes.
        groups: named subsets of class ids.

    Raises:
        TypeError: for a ``num_classes`` that is no integer, a ``top_k`` that is no
            sequence of integers, or ``groups`` that is no mapping of class-id lists.
        ValueError: at construction for ``num_classes`` below 1, no K up to
            ``num_classes``, or group ids outside ``[0, num_classes)``; in ``update`` for
            ``logits`` that are not ``[B, num_classes]``, targets outside
            ``[0, num_classes)`` or an ``index`` of another shape than ``target``.

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
        if groups is not None and not isinstance(groups, Mapping):
            raise TypeError(
                "`groups` must map group names to lists of class ids, got "
                f"{groups!r} ({type(groups).__name__})."
            )
        self.groups = {
            name: sorted({check_int(i, f"groups[{name!r}]") for i in ids})
            for name, ids in (groups or {}).items()
        }
        for name, ids in self.groups.items():
            if ids and not (0 <= ids[0] and ids[-1] < num_classes):
                raise ValueError(f"`groups[{name!r}]` holds class ids outside [0, {num_classes}).")
        self.add_state("correct", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self.add_state("index", default=[], dist_reduce_fx="cat")

    def update(
        self, logits: torch.Tensor, target: torch.Tensor, index: torch.Tensor | None = None
    ) -> None:
        """Add ``[B, num_classes]`` class scores, ``[B]`` targets and their dataset indices."""
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else logits
            raise ValueError(f"`logits` must be a [B, num_classes] tensor, got {shape!r}.")
        if logits.shape[1] != self.num_classes:
            raise ValueError(
                f"`logits` must hold one column per class (num_classes={self.num_classes}), "
                f"got shape {tuple(logits.shape)}."
            )
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
        """Accuracy keyed ``topK`` and ``topK_<group>``; NaN where a sample was non-finite."""
        correct = dim_zero_cat(self.correct).float()  # NaN rows: non-finite scores
        target = dim_zero_cat(self.target)
        index = dim_zero_cat(self.index)
        if (index >= 0).all():
            keep = first_occurrence(index)
            correct, target = correct[keep], target[keep]
        non_finite = int(correct[:, 0].isnan().sum())
        if non_finite:
            warnings.warn(
                f"ZeroShotAccuracy: {non_finite} of {correct.shape[0]} samples have non-finite "
                "scores (NaN or inf), so their rank is undefined: the accuracy over any set "
                "of samples that includes one is NaN instead of counting them as hits. Check "
                "the towers' outputs (a diverged model, a NaN projection).",
                stacklevel=2,
            )
        out = {f"top{k}": correct[:, i].mean() for i, k in enumerate(self.top_k)}
        for name, ids in self.groups.items():
            member = torch.isin(target, torch.tensor(ids, device=target.device))
            for i, k in enumerate(self.top_k):
                out[f"top{k}_{name}"] = correct[member, i].mean()
        return out
