"""Base class of the contrastive loss modules: one call signature, one set of checks."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from lightning_plugins.distributed import get_rank, get_world_size
from lightning_plugins.functional._checks import check_bool, check_int, check_unit_norm
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

    ``output_dict=True`` returns ``{"contrastive_loss": loss}``, as open_clip's losses do.
    Subclasses that take open_clip's constructor arguments ``rank`` and ``world_size``
    pass them to :meth:`_check_process_group`: the process group is always read from
    ``torch.distributed``, and a given value that contradicts it raises ``ValueError``.

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
        self._claimed_group: tuple[int | None, int | None] = (None, None)

    def _check_process_group(self, rank: int | None, world_size: int | None) -> None:
        """Check open_clip's ``rank`` and ``world_size`` arguments; they are otherwise ignored.

        ``None`` (not given) always passes. Given values must be integers with
        ``0 <= rank < world_size``; when ``torch.distributed`` is initialized they must be
        its rank and world size. They are checked now and, if the process group starts
        later (Lightning starts it after the module is built), at the first call.
        """
        rank = check_int(rank, "rank", low=0, optional=True)
        world_size = check_int(world_size, "world_size", low=1, optional=True)
        if rank is not None and world_size is not None and rank >= world_size:
            raise ValueError(f"`rank` must be below `world_size`={world_size}, got {rank}.")
        self._claimed_group = (rank, world_size)
        self._compare_process_group()

    def _compare_process_group(self) -> None:
        """Raise ``ValueError`` if the given rank or world size contradicts torch.distributed."""
        rank, world_size = self._claimed_group
        if (rank is None and world_size is None) or not torch.distributed.is_available():
            return
        if not torch.distributed.is_initialized():
            return
        actual = {"rank": get_rank(), "world_size": get_world_size()}
        for name, given in (("world_size", world_size), ("rank", rank)):
            if given is not None and given != actual[name]:
                raise ValueError(
                    f"`{name}`={given} contradicts torch.distributed, whose {name} is "
                    f"{actual[name]} (rank {actual['rank']} of {actual['world_size']}). "
                    f"{type(self).__name__} reads the rank and world size from "
                    "torch.distributed and ignores these arguments: drop them, or pass the "
                    "process group's values."
                )
        self._claimed_group = (None, None)  # checked against the live group: done

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
        output_dict: bool = False,
        reduction: str = "mean",
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Loss of the local rows against the global batch.

        Args:
            image_features: ``[B, D]`` normalised image embeddings of this rank.
            text_features: ``[B, D]`` normalised text embeddings of this rank.
            logit_scale: exponentiated scale: a positive number or a 0-d or 1-element
                floating tensor.
            logit_bias: additive bias (a number or a 0-d or 1-element floating tensor) or
                ``None``; softmax losses ignore it (a constant shift does not change a
                softmax) but check it alike.
            output_dict: return ``{"contrastive_loss": loss}`` (open_clip's training loop
                asks for it) instead of the loss.
            reduction: ``"mean"`` (this rank's share of the global mean: DDP's gradient
                averaging completes it), ``"sum"`` or ``"none"`` (``[B]`` local rows).

        Returns:
            The loss, or ``[B]`` per-sample losses for ``reduction="none"``; in a dict
            under ``"contrastive_loss"`` with ``output_dict=True``.

        Raises:
            TypeError: features of different or non-floating dtypes, or a scale or bias
                that is no number or floating tensor, or less precise than the features,
                or an ``output_dict`` that is no bool.
            ValueError: see the class; also a scale or bias that is not a scalar, a
                scale that is not finite and positive, a non-finite bias, or (first call
                under torch.distributed) a constructor ``rank`` / ``world_size`` that
                contradicts the process group.
        """
        output_dict = check_bool(output_dict, "output_dict")
        if self._claimed_group != (None, None):
            self._compare_process_group()
        batch, logit_scale, logit_bias = check_inputs(
            image_features, text_features, logit_scale, logit_bias, reduction
        )
        if self.normalized and not self._norm_checked:
            check_unit_norm(image_features=image_features, text_features=text_features)
            self._norm_checked = True
        loss = self.global_loss(
            image_features, text_features, logit_scale, logit_bias, batch, reduction
        )
        loss = ensure_finite(
            loss,
            logit_scale,
            logit_bias,
            image_features=image_features,
            text_features=text_features,
        )
        return {"contrastive_loss": loss} if output_dict else loss
