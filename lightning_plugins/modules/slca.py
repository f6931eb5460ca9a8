"""SLCA: slow learner with classifier alignment (Zhang et al. 2023), and its baselines."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchmetrics import MeanMetric
from typing_extensions import override

from lightning_plugins.distributed import get_rank, get_world_size, global_sum, is_distributed
from lightning_plugins.functional import COVARIANCE_KINDS, class_moments, statistics_from_moments
from lightning_plugins.functional._checks import check_bool, check_choice, check_float, check_int
from lightning_plugins.metrics import ContinualAccuracy
from lightning_plugins.modules.backbone_module import BackboneModule, check_image_batch
from lightning_plugins.modules.classifier_alignment import align_linear_classifier
from lightning_plugins.modules.continual_parts import (
    StreamEvaluation,
    check_task_labels,
    checked_task_classes,
    read_stream_at_setup,
    seen_positions,
    stream_class_maps,
)
from lightning_plugins.modules.sample_weights import sample_reducer

__all__ = ["SLCA", "reference_sgd"]

_STATISTICS = {
    "full": ("covariance",),
    "diagonal": ("variance",),
    "lowrank": ("factor", "residual"),
}


def reference_sgd(params: Iterable[Any]) -> torch.optim.Optimizer:
    """SLCA's optimizer: SGD with lr 0.01, momentum 0.9 and weight decay 5e-4 (the reference).

    Example:
        >>> reference_sgd(nn.Linear(2, 2).parameters()).defaults["momentum"]
        0.9
    """
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)


class SLCA(StreamEvaluation, BackboneModule):
    """Slow learner with classifier alignment on a pretrained backbone, one head per task.

    Trains a class-incremental stream in one ``trainer.fit`` on a
    :class:`~lightning_plugins.datamodules.task_stream_data.TaskStreamData` datamodule; the
    task hooks :meth:`on_task_start` / :meth:`on_task_end` come from
    :class:`~lightning_plugins.callbacks.TaskBoundaries`, which :meth:`setup` adds when the
    trainer has none. The backbone is built as in
    :class:`~lightning_plugins.modules.ImageClassifier` (``"small_convnet"``, a timm name,
    an image-text ``.ckpt``, or an ``nn.Module`` returning ``[B, d]``).

    - **Heads**: an ``nn.Linear(d, k_t)`` per task, its columns the classes of
      ``task_classes[t]`` in that order. ``forward`` gives the logits of tasks
      ``0..current`` (the classes seen), in stream order; the prediction is the class id
      of the argmax (``class_order[argmax]``).
    - **Training** (``per_sample_loss``): cross-entropy on the current task's head only,
      the target the label's position in ``task_classes[current]``. Only the current
      head and the backbone are updated (the others' gradients are dropped before each
      optimizer step); the backbone's learning rate is ``backbone_lr_scale`` times the
      optimizer's (the *slow learner*).
    - **After each task** (with ``classifier_alignment``): the mean and covariance
      (``covariance``: ``full`` / ``diagonal`` / ``lowrank`` with ``covariance_rank``) of
      the backbone's features of the task's classes, from ``task_dataset(t)`` without
      augmentation (each rank its share, moments summed over ranks), kept in buffers; then,
      from the second task on (as the reference), the heads of all tasks seen are aligned
      on sampled features (``align_linear_classifier`` of
      :mod:`~lightning_plugins.modules.classifier_alignment`).
      As in the reference, which restores the heads after evaluating a task
      (``fc.backup()`` / ``fc.recall()``), the aligned heads are a copy used for
      prediction (``aligned_weight`` / ``aligned_bias``): the trained heads stay as
      training left them, and every alignment starts from them.

    The four methods of the paper's comparison are this class with:

    ========================  =====================  ========================
    method                    ``backbone_lr_scale``  ``classifier_alignment``
    ========================  =====================  ========================
    sequential fine-tuning    1                      False
    slow learner              0.01                   False
    linear probe              0 (frozen backbone)    False
    SLCA                      0.01                   True
    ========================  =====================  ========================

    Validation (over the tasks seen) logs ``val/loss`` and ``val/acc_top1`` and fills the
    row of the current task of ``continual_accuracy``
    (:class:`~lightning_plugins.metrics.ContinualAccuracy`, reset at each validation
    start, not in the sanity check); a validation after the current task's end also logs
    ``val/average_accuracy``, ``val/average_incremental_accuracy``, ``val/forgetting`` and
    ``val/backward_transfer``. At the end of ``fit`` rank 0 saves ``accuracy_matrix.csv``
    and ``.png`` into ``trainer.log_dir`` (paths in ``accuracy_matrix_paths``). Test logs
    ``test/loss`` and ``test/acc_top1`` over all tasks.

    Distributed: DDP; the statistics are all-reduced, the alignment runs on every rank
    from the same seed and rank 0's result is broadcast (guarding against kernels that are
    not bitwise deterministic). The statistics and aligned-head buffers are excluded from
    DDP's buffer broadcast. Sharded strategies (FSDP, ModelParallel) are not supported.

    Args:
        backbone: as :class:`~lightning_plugins.modules.ImageClassifier`'s.
        task_classes: the class ids of each task; ``None`` reads them from the datamodule at
            ``setup`` (and saves them in the hyperparameters, so that
            ``load_from_checkpoint`` rebuilds the heads). Given, they must equal the
            datamodule's.
        backbone_weights: local weights file for a backbone given by name.
        image_size: image size of the probe forward that finds the feature size.
        in_channels: image channels of a backbone given by name (and of the probe).
        label_smoothing: cross-entropy label smoothing of training, in ``[0, 1)``.
        backbone_lr_scale: the backbone's learning rate as a multiple of the optimizer's;
            0 freezes it (no gradients, eval mode).
        classifier_alignment: compute the class statistics and align the heads after
            each task.
        covariance: ``"full"`` (the reference), ``"diagonal"`` or ``"lowrank"``.
        covariance_rank: ``k`` in ``[1, d]`` for ``"lowrank"``, else ``None``.
        alignment_samples: features sampled per class and alignment epoch (ref. 256).
        alignment_epochs: alignment epochs (reference 5).
        alignment_lr: alignment SGD learning rate, cosine-annealed (reference 0.01).
        alignment_batch_size: sampled features per alignment step (reference 256).
        logit_temperature: logit-normalisation temperature ``τ > 0`` (reference 0.1).
        mean_shrink: largest shrinking of old class means, in ``[0, 1]`` (reference 0.1).
        statistics_batch_size: images per batch of the statistics pass.
        seed: seed of the alignment's sampling (combined with the task).
        optimizer: optimizer factory taking parameter groups (default :func:`reference_sgd`).
        lr_scheduler: LR scheduler factory, stepped every ``lr_scheduler_interval``.
        lr_scheduler_interval: ``"step"`` or ``"epoch"``.

    Raises:
        TypeError: for an argument of the wrong type.
        ValueError: for a negative ``backbone_lr_scale``, an unknown ``covariance``, a
            ``covariance_rank`` given without ``"lowrank"``, missing with it or outside
            ``[1, d]``, counts below 1, ``logit_temperature <= 0``, ``mean_shrink`` outside
            ``[0, 1]``, empty or overlapping ``task_classes`` or ones that differ from the
            datamodule's, and a training label outside the current task.

    Example:
        >>> torch.manual_seed(0) and None
        >>> module = SLCA(nn.Flatten(), task_classes=[[3, 1], [0, 2]], image_size=2,
        ...               in_channels=1, covariance="diagonal")
        >>> batch = {"image": torch.randn(4, 1, 2, 2), "label": torch.tensor([1, 3, 3, 1])}
        >>> module.per_sample_loss(batch).shape
        torch.Size([4])
        >>> module(batch["image"]).shape  # the classes seen: task 0's
        torch.Size([4, 2])
        >>> module.on_task_start(1)
        >>> module(batch["image"]).shape, module.class_order.tolist()
        (torch.Size([4, 4]), [3, 1, 0, 2])
    """

    def __init__(
        self,
        backbone: str | nn.Module,
        task_classes: list[list[int]] | None = None,
        backbone_weights: str | None = None,
        image_size: int = 32,
        in_channels: int = 3,
        label_smoothing: float = 0.0,
        backbone_lr_scale: float = 0.01,
        classifier_alignment: bool = True,
        covariance: str = "full",
        covariance_rank: int | None = None,
        alignment_samples: int = 256,
        alignment_epochs: int = 5,
        alignment_lr: float = 0.01,
        alignment_batch_size: int = 256,
        logit_temperature: float = 0.1,
        mean_shrink: float = 0.1,
        statistics_batch_size: int = 128,
        seed: int = 0,
        optimizer: OptimizerCallable = reference_sgd,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: str = "step",
    ) -> None:
        check_float(label_smoothing, "label_smoothing", low=0, high=1, high_open=True)
        check_bool(classifier_alignment, "classifier_alignment")
        check_choice(covariance, "covariance", COVARIANCE_KINDS)
        for name in (
            "alignment_samples",
            "alignment_epochs",
            "alignment_batch_size",
            "statistics_batch_size",
        ):
            check_int(locals()[name], name, low=1)
        check_float(alignment_lr, "alignment_lr", low=0, low_open=True)
        check_float(logit_temperature, "logit_temperature", low=0, low_open=True)
        check_float(mean_shrink, "mean_shrink", low=0, high=1)
        check_int(seed, "seed", low=0)
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
        if covariance != "lowrank" and covariance_rank is not None:
            raise ValueError(
                f"`covariance_rank` is only used with covariance='lowrank'; got "
                f"covariance_rank={covariance_rank!r} with covariance={covariance!r}."
            )
        if covariance == "lowrank":
            if covariance_rank is None:
                raise ValueError(
                    "`covariance_rank` must be given with covariance='lowrank': an integer in "
                    f"[1, d={self.feature_dim}]."
                )
            check_int(covariance_rank, "covariance_rank", low=1, high=self.feature_dim)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "lr_scheduler"])
        self.save_hyperparameters({"backbone": backbone if isinstance(backbone, str) else None})
        self.val_accuracy, self.test_accuracy = MeanMetric(), MeanMetric()
        self.task_classes: tuple[tuple[int, ...], ...] | None = None
        self.accuracy_matrix_paths: tuple[str, str] | None = None
        if task_classes is not None:
            self._build_heads(checked_task_classes(task_classes))

    # ----------------------------------------------------------------- stream
    def _build_heads(self, task_classes: tuple[tuple[int, ...], ...]) -> None:
        """Heads, class maps, task buffers, statistics buffers and the accuracy matrix."""
        self.task_classes = task_classes
        sizes = [len(classes) for classes in task_classes]
        device = next(iter(self.backbone.parameters()), torch.empty(0)).device
        self.offsets, maps = stream_class_maps(task_classes, device)
        total, dim = self.offsets[-1], self.feature_dim
        self.heads = nn.ModuleList(_head(dim, size).to(device) for size in sizes)
        long = {"dtype": torch.long, "device": device}
        # class_order: stream position -> class; class_position / class_task: class ->
        # stream position / task (-1 for none); position_task: stream position -> task
        buffers = {name: (value, False) for name, value in maps.items()}
        buffers |= {
            "current_task": (torch.tensor(0, **long), True),
            "ended_task": (torch.tensor(-1, **long), True),  # last task whose end ran
        }
        if self.hparams.classifier_alignment:
            shapes = {"mean": (total, dim), "covariance": (total, dim, dim)}
            shapes.update(variance=(total, dim), residual=(total, dim))
            shapes["factor"] = (total, dim, self.hparams.covariance_rank or 1)
            names = ("mean", *_STATISTICS[self.hparams.covariance])
            floats = {"dtype": torch.float32, "device": device}
            stats = {f"class_{n}": (torch.zeros(shapes[n], **floats), True) for n in names}
            buffers.update(stats)
            buffers["has_statistics"] = (torch.zeros(total, dtype=torch.bool, device=device), True)
            buffers["aligned_weight"] = (torch.zeros(total, dim, **floats), True)
            buffers["aligned_bias"] = (torch.zeros(total, **floats), True)
            buffers["aligned_tasks"] = (torch.tensor(0, **long), True)  # tasks 0.. aligned
            # large and equal on every rank: kept out of DDP's per-step buffer broadcast
            self._ddp_params_and_buffers_to_ignore = [*stats, "aligned_weight", "aligned_bias"]
        for name, (value, persistent) in buffers.items():
            self.register_buffer(name, value, persistent=persistent)
        self.continual_accuracy = ContinualAccuracy(len(task_classes)).to(device)

    def _require_stream(self) -> tuple[tuple[int, ...], ...]:
        if self.task_classes is None:
            raise RuntimeError(
                "SLCA has no heads yet: give `task_classes`, or fit it with a TaskStreamData "
                "datamodule (ClassIncremental, TaskStream), whose classes `setup` reads."
            )
        return self.task_classes

    @override
    def setup(self, stage: str) -> None:
        schedule = read_stream_at_setup(self, stage)
        if schedule is not None and self.task_classes is None:
            self.hparams["task_classes"] = [list(classes) for classes in schedule.task_classes]
            self._build_heads(schedule.task_classes)

    def on_task_start(self, task: int) -> None:
        """Task ``task`` trains now: its head, and the ContinualAccuracy row, are current."""
        task = check_int(task, "task", low=0, high=len(self._require_stream()) - 1)
        self.current_task.fill_(task)
        self.continual_accuracy.set_training_task(task)

    def on_task_end(self, task: int) -> None:
        """Class statistics of the task's classes, then the classifier alignment (task ≥ 1)."""
        task = check_int(task, "task", low=0, high=len(self._require_stream()) - 1)
        if self.hparams.classifier_alignment:
            self._store_statistics(task)
            if task >= 1:
                self._align(task)
        self.ended_task.fill_(task)

    # ----------------------------------------------------------------- model
    def stream_logits(
        self, features: torch.Tensor, num_tasks: int, aligned: bool = True
    ) -> torch.Tensor:
        """Logits ``[B, classes of tasks 0..num_tasks-1]`` in stream order.

        ``aligned`` uses the aligned copy of the heads that the last alignment covered.
        """
        self._require_stream()
        upto = int(self.aligned_tasks) if aligned and self.hparams.classifier_alignment else 0
        blocks = []
        for t in range(num_tasks):
            if t < upto:
                start, stop = self.offsets[t], self.offsets[t + 1]
                weight, bias = self.aligned_weight[start:stop], self.aligned_bias[start:stop]
                blocks.append(
                    F.linear(features, weight.to(features.dtype), bias.to(features.dtype))
                )
            else:
                blocks.append(self.heads[t](features))
        return torch.cat(blocks, dim=1)

    @override
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C_seen]`` of the classes of tasks ``0..current`` (stream order)."""
        return self.stream_logits(self.backbone(image), int(self.current_task) + 1)

    def predict_classes(self, logits: torch.Tensor) -> torch.Tensor:
        """The class ids ``[B]`` of the argmax of stream-order logits."""
        return self.class_order[logits.argmax(dim=1)]

    # ------------------------------------------------------------------ loss
    def _check_training_batch(self, batch: dict[str, Any], task: int) -> None:
        """Every label in ``task``'s classes and every ``batch['task']`` equal to ``task``."""
        check_image_batch(batch, "train")
        check_task_labels(batch, task, self.class_task, self.task_classes, "SLCA")

    def classification_logits(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The current task head's logits ``[B, k_t]`` and the labels' positions in it."""
        self._require_stream()
        task = int(self.current_task)
        self._check_training_batch(batch, task)
        # every head enters the graph (so DDP sees all parameters used); only the current
        # one's columns reach the loss, and on_before_optimizer_step drops the others' grads
        logits = self.stream_logits(self.backbone(batch["image"]), len(self.heads), False)
        start, stop = self.offsets[task], self.offsets[task + 1]
        return logits[:, start:stop], self.class_position[batch["label"]] - start

    def per_sample_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Cross-entropy of each sample on the current task's head, ``[B]``."""
        logits, targets = self.classification_logits(batch)
        return F.cross_entropy(
            logits, targets, reduction="none", label_smoothing=self.hparams.label_smoothing
        )

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.per_sample_loss(batch)
        loss = sample_reducer(batch, losses)(losses)
        self.log("train/loss", loss, prog_bar=True, batch_size=losses.shape[0])
        return loss

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Drop the gradients of every head but the current one: old heads stay as trained."""
        current = int(self.current_task)
        for t, head in enumerate(self.heads):
            if t != current:
                for param in head.parameters():
                    param.grad = None

    # ------------------------------------------------------------ optimizer
    @override
    def head_modules(self) -> dict[str, nn.Module]:
        """``heads``, all tasks' (groups ``heads`` and ``heads_no_decay``)."""
        self._require_stream()
        return {"heads": self.heads}

    # ------------------------------------------------------ class statistics
    def task_features(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and labels of this rank's share of ``task_dataset(task)``.

        The rank takes positions ``rank::world_size``; the features are float32, from the
        backbone in eval mode without gradient.
        """
        dataset = self.trainer.datamodule.task_dataset(task)
        rank, world = get_rank(), get_world_size()
        loader = DataLoader(
            Subset(dataset, range(rank, len(dataset), world)),
            batch_size=self.hparams.statistics_batch_size,
        )
        precision = self.trainer.precision_plugin
        was_training = self.backbone.training
        self.backbone.eval()
        features = [torch.zeros(0, self.feature_dim, device=self.device)]
        labels = [torch.zeros(0, dtype=torch.long, device=self.device)]
        try:
            with torch.no_grad():
                for batch in loader:
                    batch = precision.convert_input(batch)
                    with precision.forward_context():
                        out = self.backbone(batch["image"].to(self.device))
                    features.append(out.float())
                    labels.append(batch["label"].to(self.device))
        finally:
            self.backbone.train(was_training)
        return torch.cat(features), torch.cat(labels)

    def _store_statistics(self, task: int) -> None:
        classes = self.task_classes[task]
        features, labels = self.task_features(task)
        # summed over ranks first, so that every rank raises (none waits in a collective)
        non_finite = int(global_sum((~features.isfinite().all(dim=1)).sum()))
        if non_finite:
            raise ValueError(
                f"SLCA: {non_finite} sample(s) of task {task} have non-finite backbone features "
                "(NaN or inf), so the class statistics would be NaN; check the model (a "
                "diverged backbone) or the data of that task."
            )
        kind = self.hparams.covariance
        moments = {
            k: global_sum(v) for k, v in class_moments(features, labels, classes, kind).items()
        }
        stats = statistics_from_moments(
            moments, classes, kind, rank=self.hparams.covariance_rank, dtype=torch.float32
        )
        start, stop = self.offsets[task], self.offsets[task + 1]
        for name in ("mean", *_STATISTICS[kind]):
            getattr(self, f"class_{name}")[start:stop] = stats[name]
        self.has_statistics[start:stop] = True

    def class_gaussians(self, num_tasks: int) -> dict[str, torch.Tensor]:
        """The stored statistics of the classes of tasks ``0..num_tasks-1`` (stream order)."""
        stop = self.offsets[num_tasks]
        names = ("mean", *_STATISTICS[self.hparams.covariance])
        return {name: getattr(self, f"class_{name}")[:stop] for name in names}

    def _align(self, task: int) -> None:
        stop = self.offsets[task + 1]
        heads = self.heads[: task + 1]
        weight = torch.cat([head.weight.detach() for head in heads])
        bias = torch.cat([head.bias.detach() for head in heads])
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.hparams.seed * 1_000_003 + task)
        weight, bias, losses = align_linear_classifier(
            weight,
            bias,
            self.class_gaussians(task + 1),
            self.position_task[:stop],
            [len(classes) for classes in self.task_classes[: task + 1]],
            samples_per_class=self.hparams.alignment_samples,
            epochs=self.hparams.alignment_epochs,
            lr=self.hparams.alignment_lr,
            batch_size=self.hparams.alignment_batch_size,
            temperature=self.hparams.logit_temperature,
            mean_shrink=self.hparams.mean_shrink,
            generator=generator,
        )
        if is_distributed():  # every rank computed the same; rank 0's is the one kept
            dist.broadcast(weight, src=0)
            dist.broadcast(bias, src=0)
        self.aligned_weight[:stop] = weight
        self.aligned_bias[:stop] = bias
        self.aligned_tasks.fill_(task + 1)
        self.alignment_losses = losses
        if self._current_fx_name is not None:  # inside a Trainer hook
            self.log("train/alignment_loss", losses[-1], on_step=True, on_epoch=False)

    # ------------------------------------------------------------ evaluation
    def _eval_step(self, batch: dict[str, Any], stage: str, num_tasks: int) -> torch.Tensor:
        """Loss and accuracy of a batch over the classes of tasks ``0..num_tasks-1``."""
        check_image_batch(batch, stage)
        label = batch["label"]
        position = seen_positions(
            label, self.class_position, self.offsets, num_tasks, stage, "SLCA"
        )
        logits = self.stream_logits(self.backbone(batch["image"]), num_tasks)
        loss = F.cross_entropy(logits, position)
        self.log(f"{stage}/loss", loss, batch_size=label.shape[0], sync_dist=True)
        predictions = self.predict_classes(logits)
        (self.val_accuracy if stage == "val" else self.test_accuracy).update(
            (predictions == label).float()
        )
        return predictions


def _head(dim: int, size: int) -> nn.Linear:
    """A task's head, initialised as the reference's (truncated normal, std 0.02; bias 0)."""
    head = nn.Linear(dim, size)
    nn.init.trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head
