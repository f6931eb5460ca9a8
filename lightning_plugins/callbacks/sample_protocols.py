"""What the sample-steering callbacks need from a LightningModule: two small protocols."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["ClassificationLogits", "PerSampleLoss", "require_protocol"]


@runtime_checkable
class PerSampleLoss(Protocol):
    """A module whose training loss is the (weighted) mean of ``per_sample_loss(batch)``.

    Contract 2 of the design: ``per_sample_loss(batch) -> Tensor[B]``. Self-paced
    curricula and GraNd scoring call it. Every module of ours implements it.
    """

    def per_sample_loss(self, batch: Any) -> torch.Tensor:
        """The loss of each sample of ``batch``, ``[B]``."""
        ...


@runtime_checkable
class ClassificationLogits(Protocol):
    """A module that can say, per sample, which of several classes it predicts.

    ``classification_logits(batch) -> (logits [B, C], targets [B])``: EL2N scores and
    forgetting events read the softmax of each row and its target class.
    :class:`~lightning_plugins.modules.ImageClassifier` returns its class logits;
    :class:`~lightning_plugins.modules.ContrastiveImageText` the rows of the in-batch
    image-to-text softmax, whose target is the sample's own caption.
    """

    def classification_logits(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[B, C]`` and target classes ``[B]`` of ``batch``."""
        ...


def require_protocol(module: Any, protocol: type, needed_by: str) -> None:
    """Raise a ``TypeError`` unless ``module`` implements ``protocol``.

    Example:
        >>> import torch.nn as nn
        >>> try:
        ...     require_protocol(nn.Linear(2, 2), PerSampleLoss, "Curriculum")
        ... except TypeError as error:
        ...     print(str(error)[:60])
        Curriculum needs a LightningModule with `per_sample_loss(bat
    """
    if isinstance(module, protocol):
        return
    method = {
        PerSampleLoss: "`per_sample_loss(batch) -> Tensor[B]`",
        ClassificationLogits: "`classification_logits(batch) -> (logits [B, C], targets [B])`",
    }.get(protocol, protocol.__name__)
    raise TypeError(
        f"{needed_by} needs a LightningModule with {method}, but {type(module).__name__} has none."
    )
