"""Base class of the contrastive loss modules: one call signature, one set of checks."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from lightning_plugins.functional._checks import check_bool, check_unit_norm
from lightning_plugins.losses._global_batch import GlobalBatch, check_inputs, ensure_finite

__all__ = ["ContrastiveLoss"]


class ContrastiveLoss(nn.Module, ABC):
    """A loss over the global batch with open_clip's call signature.

    ``forward`` checks the inputs (shapes and one floating dtype of the features, the
    reduction, ``logit_scale`` and ``logit_bias`` as scalars: numbers or 0-d / 1-element
    floating tensors not less precise than the features, a global batch of at least two
    pairs, unit-norm features on the first call unless ``normalized=False``), learns the
    global batch, calls :meth:`global_loss`, and raises an error naming the input at
    fault if the result is non-finite or a tensor ``logit_scale`` is not positive (both
    found by one check of the result, no pass over the features). Subclasses implement
    :meth:`global_loss` only; they get the scale and bias as a number or a 0-d tensor.

    Args:
        normalized: the features must be L2-normalised; checked on the first call (one
            host sync), after which the check is skipped. ``False`` accepts any features.

    Example:
        >>> class Alignment(ContrastiveLoss):  # pulls pairs together, no negatives
        ...     def global_loss(self, image, text, scale, bias, batch, reduction):
        ...         return batch.reduce(1 - (image * text).sum(-1), reduction)
        >>> feats = torch.eye(2)
        >>> Alignment()(feats, feats, torch.tensor(1.0))
        tensor(0.)
        >>> Alignment()(2 * feats, feats, torch.tensor(1.0))
        Traceback (most recent call last):
        ...
        ValueError: `image_features` must be L2-normalised ...
    """

    def __init__(self, normalized: bool = True) -> None:
        super().__init__()
        self.normalized = check_bool(normalized, "normalized")
        self._norm_checked = False

    @abstractmethod
    def global_loss(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float | None,
        batch: GlobalBatch,
        reduction: str,
    ) -> torch.Tensor:
        """The loss of this rank's rows against the global ``batch``, reduced."""

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """Loss of the local rows against the global batch.

        Args:
            image_features: ``[B, D]`` normalised image embeddings of this rank.
            text_features: ``[B, D]`` normalised text embeddings of this rank.
            logit_scale: exponentiated scale: a positive number or a 0-d or 1-element
                floating tensor.
            logit_bias: additive bias (a number or a 0-d or 1-element floating tensor) or
                ``None``; softmax losses ignore it (a constant shift does not change a
                softmax) but check it alike.
            reduction: ``"mean"`` (this rank's share of the global mean: DDP's gradient
                averaging completes it), ``"sum"`` or ``"none"`` (``[B]`` local rows).

        Returns:
            The loss, or ``[B]`` per-sample losses for ``reduction="none"``.

        Raises:
            TypeError: features of different or non-floating dtypes, or a scale or bias
                that is no number or floating tensor, or less precise than the features.
            ValueError: see the class; also a scale or bias that is not a scalar, a
                scale that is not finite and positive, or a non-finite bias.
        """
        batch, logit_scale, logit_bias = check_inputs(
            image_features, text_features, logit_scale, logit_bias, reduction
        )
        if self.normalized and not self._norm_checked:
            check_unit_norm(image_features=image_features, text_features=text_features)
            self._norm_checked = True
        loss = self.global_loss(
            image_features, text_features, logit_scale, logit_bias, batch, reduction
        )
        return ensure_finite(
            loss,
            logit_scale,
            logit_bias,
            image_features=image_features,
            text_features=text_features,
        )
