"""BackboneModule: what image classifiers share, an image backbone with a scaled learning rate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from typing_extensions import override

from lightning_plugins.functional._checks import check_choice, check_float, check_int
from lightning_plugins.modules.image_backbone import create_backbone, feature_size
from lightning_plugins.modules.optimizer_setup import (
    named_parameter_groups,
    no_weight_decay,
    scale_backbone_lr,
    scheduled_optimizer,
)

__all__ = ["BackboneModule", "check_image_batch"]


class BackboneModule(pl.LightningModule):
    """An image backbone, heads of the subclass's making, and the optimizer around them.

    The part :class:`~lightning_plugins.modules.ImageClassifier` and
    :class:`~lightning_plugins.modules.SLCA` share: the backbone from a name, a
    checkpoint or a module (:func:`~lightning_plugins.modules.image_backbone.create_backbone`)
    and its feature size ``feature_dim``; ``backbone_lr_scale`` (the backbone's learning
    rate as a multiple of the optimizer's; 0 freezes it: no gradients, kept in eval mode);
    parameter groups without weight decay for norms and biases (:meth:`no_weight_decay`);
    the optimizer and scheduler from LightningCLI factories. A subclass names its heads in
    :meth:`head_modules`, and saves its hyperparameters in its own ``__init__``.

    Args:
        backbone: ``"small_convnet"``, a timm model name, a ``.ckpt`` path of an image-text
            module, or an ``nn.Module`` returning ``[B, D]``.
        backbone_weights: local weights file for a backbone given by name.
        image_size: image size of the probe forward that finds the feature size of a
            module without a size attribute.
        in_channels: image channels of a backbone given by name (and of the probe).
        backbone_lr_scale: the backbone's learning rate as a multiple of the optimizer's;
            0 freezes the backbone.
        optimizer: optimizer factory taking parameter groups.
        lr_scheduler: LR scheduler factory, stepped every ``lr_scheduler_interval``.
        lr_scheduler_interval: ``"step"`` or ``"epoch"``.

    Example:
        >>> class Probe(BackboneModule):
        ...     def __init__(self):
        ...         super().__init__("small_convnet", backbone_lr_scale=0.1)
        ...         self.head = nn.Linear(self.feature_dim, 3)
        ...     def head_modules(self):
        ...         return {"head": self.head}
        >>> optimizer = Probe().configure_optimizers()
        >>> [(group["name"], group["lr"]) for group in optimizer.param_groups]  # doctest: +ELLIPSIS
        [('backbone', 0.0001), ('backbone_no_decay', 0.0001), ('head', 0.001), ...]
    """

    def __init__(
        self,
        backbone: str | nn.Module,
        backbone_weights: str | None = None,
        image_size: int = 32,
        in_channels: int = 3,
        backbone_lr_scale: float = 1.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: str = "step",
    ) -> None:
        super().__init__()
        image_size = check_int(image_size, "image_size", low=1)
        in_channels = check_int(in_channels, "in_channels", low=1)
        self.backbone_lr_scale = check_float(backbone_lr_scale, "backbone_lr_scale", low=0)
        self.lr_scheduler_interval = check_choice(
            lr_scheduler_interval, "lr_scheduler_interval", ("step", "epoch")
        )
        self.backbone = create_backbone(backbone, backbone_weights, in_channels)
        self.feature_dim = feature_size(self.backbone, image_size, in_channels)
        if self.backbone_lr_scale == 0:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler

    def head_modules(self) -> dict[str, nn.Module]:
        """The subclass's trainable parts besides the backbone, by parameter-group name."""
        raise TypeError(f"{type(self).__name__} must define `head_modules()`.")

    @override
    def train(self, mode: bool = True) -> BackboneModule:
        """Set train mode, keeping a frozen backbone (``backbone_lr_scale=0``) in eval mode."""
        super().train(mode)
        if self.backbone_lr_scale == 0:
            self.backbone.eval()
        return self

    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        """Whether a parameter is exempt from weight decay: ContrastiveImageText's rule.

        Override to change the policy. Default: 0- and 1-D tensors (norm weights, biases)
        and names with ``bn``, ``ln`` or ``bias``.
        """
        return no_weight_decay(name, param)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The trainable parameters in named groups, empty ones left out.

        ``backbone`` and ``backbone_no_decay`` (the learning rate is scaled by
        ``backbone_lr_scale`` in :meth:`configure_optimizers`), then ``<part>`` and
        ``<part>_no_decay`` of each of :meth:`head_modules`; the ``*_no_decay`` groups
        have ``weight_decay=0``.
        """
        parts = {"backbone": self.backbone, **self.head_modules()}
        return named_parameter_groups(parts, self.no_weight_decay)

    @override
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameter_groups())
        scale_backbone_lr(optimizer, self.backbone_lr_scale)
        return scheduled_optimizer(
            optimizer, self.lr_scheduler_factory, self.lr_scheduler_interval, self
        )


def check_image_batch(batch: Any, stage: str) -> None:
    """Raise a clear error for a batch the image classifiers cannot read.

    The batch must be a dict with a float ``image`` ``[B, C, H, W]`` and an integer
    ``label`` ``[B]`` (:class:`ImageClassifier`'s and ``SLCA``'s check, without the
    label range).

    Raises:
        KeyError: for a batch without ``image`` or ``label``.
        TypeError: for a batch that is no dict, or an ``image`` or ``label`` of the wrong
            type or dtype.
        ValueError: for an ``image`` or ``label`` of the wrong shape.

    Example:
        >>> check_image_batch({"image": torch.zeros(2, 1, 4, 4), "label": torch.zeros(3)}, "val")
        Traceback (most recent call last):
        ...
        TypeError: `val batch['label']` must be an integer tensor [B] of class indices, got torch.float32.
    """  # noqa: E501
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"A {stage} batch must be a dict with `image` and `label`, got {type(batch).__name__}."
        )
    for key in ("image", "label"):
        if key not in batch:
            raise KeyError(f"A {stage} batch needs `{key}`; got keys {sorted(batch)}.")
    image, label = batch["image"], batch["label"]
    if not isinstance(image, torch.Tensor) or not image.is_floating_point():
        got = getattr(image, "dtype", type(image).__name__)
        raise TypeError(f"`{stage} batch['image']` must be a float tensor, got {got}.")
    if image.ndim != 4:
        raise ValueError(
            f"`{stage} batch['image']` must be [B, C, H, W], got shape {tuple(image.shape)}."
        )
    if not isinstance(label, torch.Tensor) or label.is_floating_point() or label.is_complex():
        got = getattr(label, "dtype", type(label).__name__)
        raise TypeError(
            f"`{stage} batch['label']` must be an integer tensor [B] of class indices, got {got}."
        )
    if label.shape != image.shape[:1]:
        raise ValueError(
            f"`{stage} batch['label']` must have shape ({image.shape[0]},) (one class per "
            f"image), got {tuple(label.shape)}."
        )
