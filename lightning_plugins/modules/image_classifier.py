"""ImageClassifier: a backbone and a linear head, trained with per-sample cross-entropy."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lightning_plugins.functional._checks import check_float, check_int
from lightning_plugins.modules.backbone_module import BackboneModule, check_image_batch
from lightning_plugins.modules.sample_weights import sample_reducer

__all__ = ["ImageClassifier"]

_PER_CLASS_LIMIT = 100  # classes up to which per-class accuracy is logged


class ImageClassifier(BackboneModule):
    """Image classification: a backbone's features ``[B, D]`` and a linear head ``D → C``.

    The backbone is a built-in name (``"small_convnet"``: a
    :class:`~lightning_plugins.models.SmallConvNet`, fast on a CPU for 32x32 images), a timm
    model name (random init, or a local weights file as ``backbone_weights``), the path of
    a Lightning checkpoint (``.ckpt``) of our ``ContrastiveImageText`` / ``CLIP`` /
    ``SigLIP`` (its image tower; the features are the image embeddings), or any
    ``nn.Module`` returning features ``[B, D]`` (``D`` read from its ``num_features``,
    ``output_dim`` or ``embed_dim``, else from one forward of ``image_size`` images); see
    :func:`~lightning_plugins.modules.image_backbone.create_backbone`. Hyperparameters
    stay primitives: a module backbone is saved as ``backbone=None`` (pass it again to
    ``load_from_checkpoint``). In LightningCLI YAML, ``backbone: small_convnet`` (or a timm
    name, or a checkpoint path), or a module as ``{class_path: ..., init_args: {...}}``.

    Batches are dicts with ``image`` (float ``[B, C, H, W]``) and ``label`` (integer
    ``[B]`` in ``[0, num_classes)``); ``index`` and other keys are ignored. Training
    reduces :meth:`per_sample_loss` (cross-entropy with ``label_smoothing``) to its mean
    over the global batch, or, when a callback put per-sample weights ``weight`` (float
    ``[B]``) into the batch, to the weighted mean ``sum(w * l) / sum(w)`` over the global
    batch (exact under DDP; see :func:`~lightning_plugins.modules.sample_weights.sample_reducer`),
    as :class:`~lightning_plugins.modules.ContrastiveImageText` does.
    :meth:`classification_logits` gives what Data Diet's EL2N scores read.

    Validation and test log ``val/loss`` (``test/loss``), top-1 accuracy ``val/acc_top1``,
    top-5 accuracy ``val/acc_top5`` (with at least 5 classes) and, with at most 100
    classes, the accuracy of each class ``val/acc_class/<class index>`` (0 for a class
    that none of the data holds), from torchmetrics' ``MulticlassAccuracy`` (synchronised
    over DDP ranks), at the end of the epoch over all validation (test) dataloaders
    together.

    Optimizer and scheduler follow ``ContrastiveImageText``'s conventions: the
    ``optimizer`` factory gets :meth:`parameter_groups` (norms and biases without weight
    decay, by :meth:`no_weight_decay`), a scheduler factory that takes ``total_steps`` and
    was left without it gets ``trainer.estimated_stepping_batches``. The backbone's groups
    get the optimizer's learning rate times ``backbone_lr_scale`` (set before the scheduler
    is built); ``backbone_lr_scale=0`` freezes the backbone (no gradients, kept in eval
    mode: a linear probe).

    Args:
        backbone: ``"small_convnet"``, a timm model name, a ``.ckpt`` path of an image-text
            module, or an ``nn.Module`` returning ``[B, D]``.
        num_classes: number of classes ``C``.
        backbone_weights: local weights file for a backbone given by name.
        image_size: image size of the probe forward that finds the feature size of a
            module without a size attribute.
        in_channels: image channels of a backbone given by name (and of the probe).
        label_smoothing: cross-entropy label smoothing, in ``[0, 1)``.
        backbone_lr_scale: the backbone's learning rate as a multiple of the optimizer's;
            0 freezes the backbone.
        optimizer: optimizer factory taking parameter groups.
        lr_scheduler: LR scheduler factory, stepped every ``lr_scheduler_interval``.
        lr_scheduler_interval: ``"step"`` or ``"epoch"``.

    Raises:
        TypeError: for an argument of the wrong type.
        ValueError: for ``num_classes`` < 2, an unknown backbone name (naming close
            matches), an unreadable checkpoint or weights file, ``label_smoothing``
            outside ``[0, 1)``, a negative ``backbone_lr_scale``, an unknown scheduler
            interval; and for a batch the model cannot read (see :meth:`check_batch`).

    Example:
        >>> module = ImageClassifier("small_convnet", num_classes=10)
        >>> batch = {"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0, 3, 9, 3])}
        >>> module.per_sample_loss(batch).shape
        torch.Size([4])
        >>> logits, targets = module.classification_logits(batch)
        >>> logits.shape, targets.tolist()
        (torch.Size([4, 10]), [0, 3, 9, 3])
    """

    def __init__(
        self,
        backbone: str | nn.Module,
        num_classes: int,
        backbone_weights: str | None = None,
        image_size: int = 32,
        in_channels: int = 3,
        label_smoothing: float = 0.0,
        backbone_lr_scale: float = 1.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: str = "step",
    ) -> None:
        num_classes = check_int(num_classes, "num_classes", low=2)
        label_smoothing = check_float(
            label_smoothing, "label_smoothing", low=0, high=1, high_open=True
        )
        super().__init__(
            backbone,
            backbone_weights,
            image_size,
            in_channels,
            backbone_lr_scale,
            optimizer,
            lr_scheduler,
            lr_scheduler_interval,
        )
        # as primitives, so that checkpoints load with torch.load(weights_only=True)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "lr_scheduler"])
        self.save_hyperparameters({"backbone": backbone if isinstance(backbone, str) else None})
        self.head = nn.Linear(self.feature_dim, num_classes)
        self.metrics = nn.ModuleDict(_accuracy_metrics(num_classes))
        # labels are checked against [0, num_classes) at the first batch of each stage
        self._label_range_checked: set[str] = set()

    # ----------------------------------------------------------------- model
    @override
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, num_classes]`` of images ``[B, C, H, W]``."""
        return self.head(self.backbone(image))

    def check_batch(self, batch: Any, stage: str) -> None:
        """Raise a clear error for a batch the model cannot read.

        ``image`` must be a float tensor ``[B, C, H, W]`` and ``label`` an integer tensor
        ``[B]`` (at every batch: shapes and dtypes); the labels' range ``[0, num_classes)``
        is checked at the first batch of each ``stage`` (a host sync).

        Raises:
            KeyError: for a batch without ``image`` or ``label``.
            TypeError: for a batch that is no dict, or an ``image`` or ``label`` of the
                wrong type or dtype.
            ValueError: for an ``image`` or ``label`` of the wrong shape, or labels outside
                ``[0, num_classes)``.
        """
        check_image_batch(batch, stage)
        label = batch["label"]
        if stage not in self._label_range_checked and label.numel():
            low, high = int(label.min()), int(label.max())
            if low < 0 or high >= self.hparams.num_classes:
                raise ValueError(
                    f"`{stage} batch['label']` holds classes in [{low}, {high}], outside "
                    f"[0, {self.hparams.num_classes}) (`num_classes`="
                    f"{self.hparams.num_classes})."
                )
            self._label_range_checked.add(stage)

    # ------------------------------------------------------------------ loss
    def classification_logits(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits ``[B, num_classes]`` and the batch's labels ``[B]``."""
        self.check_batch(batch, "train" if self.training else "loss")
        return self(batch["image"]), batch["label"]

    def per_sample_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Cross-entropy (with ``label_smoothing``) of each sample, ``[B]``.

        ``training_step`` reduces it to its (weighted) mean over the global batch:
        override it to change the loss that is trained; callbacks that score or weight
        samples call it too.
        """
        logits, labels = self.classification_logits(batch)
        return F.cross_entropy(
            logits, labels, reduction="none", label_smoothing=self.hparams.label_smoothing
        )

    @override
    def on_fit_start(self) -> None:
        self._label_range_checked.clear()

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.per_sample_loss(batch)
        loss = sample_reducer(batch, losses)(losses)
        self.log("train/loss", loss, prog_bar=True, batch_size=losses.shape[0])
        return loss

    # ------------------------------------------------------------ optimizer
    @override
    def head_modules(self) -> dict[str, nn.Module]:
        """``head``: its groups ``head`` and ``head_no_decay`` follow the backbone's."""
        return {"head": self.head}

    # ------------------------------------------------------------ evaluation
    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        self.check_batch(batch, stage)
        logits, labels = self(batch["image"]), batch["label"]
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        self.log(f"{stage}/loss", loss, batch_size=labels.shape[0], sync_dist=True)
        for metric in self.metrics.values():
            metric.update(logits, labels)

    def _eval_epoch_end(self, stage: str) -> None:
        for key, metric in self.metrics.items():
            value = metric.compute()
            metric.reset()
            if key == "acc_class":
                for index, accuracy in enumerate(value):
                    self.log(f"{stage}/acc_class/{index}", accuracy)
            else:
                self.log(f"{stage}/{key}", value)

    @override
    def on_validation_epoch_start(self) -> None:
        for metric in self.metrics.values():
            metric.reset()

    @override
    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_step(batch, "val")

    @override
    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    @override
    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    @override
    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test")

    @override
    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")


def _accuracy_metrics(num_classes: int) -> dict[str, MulticlassAccuracy]:
    """Top-1, top-5 (with at least 5 classes) and per-class (with at most 100) accuracy."""
    metrics = {"acc_top1": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
    if num_classes >= 5:
        metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    if num_classes <= _PER_CLASS_LIMIT:
        metrics["acc_class"] = MulticlassAccuracy(num_classes, average=None)
    return metrics
