"""What the continual-learning modules (SLCA, LoRAContinual) share about a task stream.

The checked ``task_classes``, the class maps between class ids and stream positions, the
check that a training batch belongs to the current task, the positions of evaluated labels
among the classes seen, and the :class:`~lightning_plugins.metrics.ContinualAccuracy`
summaries logged after a task's end and its matrix saved at the end of ``fit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

from lightning_plugins.datamodules.task_stream_data import StreamSchedule, read_task_stream
from lightning_plugins.functional._checks import check_int
from lightning_plugins.metrics import ContinualAccuracy

__all__ = [
    "CONTINUAL_SUMMARIES",
    "StreamEvaluation",
    "check_task_labels",
    "checked_task_classes",
    "log_continual_summaries",
    "read_stream_at_setup",
    "save_accuracy_matrix",
    "seen_positions",
    "stream_class_maps",
]

CONTINUAL_SUMMARIES = (
    "average_accuracy",
    "average_incremental_accuracy",
    "forgetting",
    "backward_transfer",
)
"""The ContinualAccuracy summaries logged as ``val/<name>`` after a task's end."""


def checked_task_classes(task_classes: Any) -> tuple[tuple[int, ...], ...]:
    """``task_classes`` as tuples: non-empty, disjoint lists of non-negative class ids.

    Example:
        >>> checked_task_classes([[3, 1], [0]])
        ((3, 1), (0,))
        >>> checked_task_classes([[3, 1], [1]])
        Traceback (most recent call last):
        ...
        ValueError: `task_classes`: tasks must not overlap, but class 1 is in task 0 and task 1.
    """
    if isinstance(task_classes, str | bytes) or not isinstance(task_classes, Sequence):
        raise TypeError(
            f"`task_classes` must be a list of lists of class ids, got {task_classes!r}."
        )
    if not task_classes:
        raise ValueError("`task_classes` must hold at least one task, got none.")
    owner: dict[int, int] = {}
    checked = []
    for t, classes in enumerate(task_classes):
        if isinstance(classes, str | bytes) or not isinstance(classes, Sequence):
            raise TypeError(f"`task_classes[{t}]` must be a list of class ids, got {classes!r}.")
        if not classes:
            raise ValueError(f"`task_classes[{t}]` is empty: every task needs a class.")
        ids = tuple(check_int(c, f"task_classes[{t}][{i}]", low=0) for i, c in enumerate(classes))
        for c in ids:
            if c in owner:
                raise ValueError(
                    f"`task_classes`: tasks must not overlap, but class {c} is in task "
                    f"{owner[c]} and task {t}."
                )
            owner[c] = t
        checked.append(ids)
    return tuple(checked)


def stream_class_maps(
    task_classes: Sequence[Sequence[int]], device: torch.device | str | None = None
) -> tuple[list[int], dict[str, torch.Tensor]]:
    """The task offsets and the int64 maps between class ids and stream positions.

    A stream position is a class's place in the concatenation of ``task_classes`` (task 0's
    classes first). Returns ``offsets`` (``T + 1`` positions where each task starts, then
    the total) and the tensors ``class_order`` (position -> class id), ``class_position``
    and ``class_task`` (class id -> position / task, ``-1`` for an id in no task, indexed up
    to the largest id) and ``position_task`` (position -> task).

    Example:
        >>> offsets, maps = stream_class_maps([[3, 1], [0]])
        >>> offsets, maps["class_order"].tolist(), maps["class_position"].tolist()
        ([0, 2, 3], [3, 1, 0], [2, 1, -1, 0])
        >>> maps["class_task"].tolist(), maps["position_task"].tolist()
        ([1, 0, -1, 0], [0, 0, 1])
    """
    sizes = [len(classes) for classes in task_classes]
    offsets = [sum(sizes[:t]) for t in range(len(sizes) + 1)]
    order = [c for classes in task_classes for c in classes]
    lookup = max(order) + 1
    position, task_of = torch.full((lookup,), -1), torch.full((lookup,), -1)
    for t, classes in enumerate(task_classes):
        for slot, c in enumerate(classes):
            position[c], task_of[c] = offsets[t] + slot, t
    position_task = [t for t, size in enumerate(sizes) for _ in range(size)]
    long = {"dtype": torch.long, "device": device}
    return offsets, {
        "class_order": torch.tensor(order, **long),
        "class_position": position.to(device),
        "class_task": task_of.to(device),
        "position_task": torch.tensor(position_task, **long),
    }


def check_task_labels(
    batch: dict[str, Any],
    task: int,
    class_task: torch.Tensor,
    task_classes: Sequence[Sequence[int]],
    who: str,
) -> None:
    """Raise unless every ``batch['label']`` is in ``task``'s classes and ``batch['task']`` is it.

    Args:
        batch: a training batch with ``label`` (and optionally ``task``).
        task: the task that trains now.
        class_task: class id -> task (``-1`` for none), from :func:`stream_class_maps`.
        task_classes: the classes of each task (for the message).
        who: the module's name, for the message.

    Example:
        >>> _, maps = stream_class_maps([[3, 1], [0]])
        >>> check_task_labels({"label": torch.tensor([1, 0])}, 0, maps["class_task"],
        ...                   [[3, 1], [0]], "SLCA")
        Traceback (most recent call last):
        ...
        ValueError: `train batch['label']` holds class 0, which is not in the current task 0 (classes [3, 1]): SLCA trains one task at a time; check that the datamodule's training batches follow its task_classes.
    """  # noqa: E501
    label = batch["label"]
    size = class_task.numel()
    inside = (label >= 0) & (label < size)
    ok = inside & (class_task[label.clamp(0, size - 1)] == task)
    if not bool(ok.all()):
        bad = int(label[~ok][0])
        raise ValueError(
            f"`train batch['label']` holds class {bad}, which is not in the current task "
            f"{task} (classes {list(task_classes[task])}): {who} trains one task at a "
            "time; check that the datamodule's training batches follow its task_classes."
        )
    batch_task = batch.get("task")
    if batch_task is not None and not bool((batch_task == task).all()):
        other = int(batch_task[batch_task != task][0])
        raise ValueError(
            f"`train batch['task']` holds task {other} while task {task} trains; the "
            "datamodule's epochs and the task hooks disagree."
        )


def seen_positions(
    label: torch.Tensor,
    class_position: torch.Tensor,
    offsets: Sequence[int],
    num_tasks: int,
    stage: str,
    who: str,
) -> torch.Tensor:
    """The stream positions of ``label``; raise for a class outside tasks ``0..num_tasks-1``.

    Example:
        >>> offsets, maps = stream_class_maps([[3, 1], [0]])
        >>> seen_positions(torch.tensor([1, 3]), maps["class_position"], offsets, 1, "val",
        ...                "SLCA").tolist()
        [1, 0]
    """
    size = class_position.numel()
    inside = (label >= 0) & (label < size)
    position = class_position[label.clamp(0, size - 1)]
    known = inside & (position >= 0) & (position < offsets[num_tasks])
    if not bool(known.all()):
        raise ValueError(
            f"`{stage} batch['label']` holds class {int(label[~known][0])}, which is in "
            f"none of the tasks 0..{num_tasks - 1} that {who} evaluates (the tasks seen)."
        )
    return position


def log_continual_summaries(module: pl.LightningModule, metric: ContinualAccuracy) -> None:
    """Log ``val/<summary>`` of ``metric`` for :data:`CONTINUAL_SUMMARIES` (every rank).

    Call it in ``on_validation_epoch_end`` of a validation that follows the current task's
    end: ``compute`` syncs the counts under DDP, so every rank must call it.
    """
    result = metric.compute()
    for name in CONTINUAL_SUMMARIES:
        module.log(f"val/{name}", result[name].float(), sync_dist=True)


def save_accuracy_matrix(
    module: pl.LightningModule, metric: ContinualAccuracy
) -> tuple[str, str] | None:
    """Save ``accuracy_matrix.csv`` / ``.png`` into the trainer's log dir (rank 0's paths).

    Every rank computes (a sync under DDP); rank 0 writes into ``trainer.log_dir`` (or
    ``default_root_dir`` without a logger) and gets the paths, the others ``None``.
    """
    result = metric.compute()
    trainer = module.trainer
    # log_dir broadcasts from rank 0: every rank asks, or the collectives fall out of step
    folder = trainer.log_dir or trainer.default_root_dir
    if not trainer.is_global_zero:
        return None
    return metric.save(folder, result)


def read_stream_at_setup(module: pl.LightningModule, stage: str) -> StreamSchedule | None:
    """The part of ``setup`` every module on a task stream shares (SLCA, LoRAContinual).

    Refuses sharded strategies (the module's state is replicated); reads the stream of
    ``trainer.datamodule`` (:func:`read_task_stream`) and checks that the module's
    ``task_classes``, when it has them already, are the datamodule's; under ``fit`` adds a
    :class:`~lightning_plugins.callbacks.TaskBoundaries`. Without a datamodule, evaluating a
    module that knows its classes is allowed (``None`` is returned); fitting is not.

    Raises:
        RuntimeError: from the module's ``_require_stream`` without a datamodule nor classes.
        ValueError: for FSDP / ModelParallel, a fit without a datamodule, or
            ``task_classes`` that differ from the datamodule's.
    """
    name, trainer = type(module).__name__, module.trainer
    if isinstance(trainer.strategy, FSDPStrategy | ModelParallelStrategy):
        raise ValueError(
            f"{name} does not support the sharded strategy {type(trainer.strategy).__name__} "
            "yet (its heads, adapters and statistics are replicated on every rank); use DDP."
        )
    datamodule = trainer.datamodule
    if datamodule is None:
        if stage == "fit" or module.task_classes is None:
            module._require_stream()
            raise ValueError(
                f"{name} trains on a TaskStreamData datamodule (ClassIncremental, TaskStream): "
                "pass it as `datamodule` to trainer.fit."
            )
        return None
    schedule = read_task_stream(datamodule)
    if module.task_classes is not None and module.task_classes != schedule.task_classes:
        raise ValueError(
            f"`task_classes` {[list(c) for c in module.task_classes]} differ from the "
            f"datamodule's {type(datamodule).__name__}.task_classes "
            f"{[list(c) for c in schedule.task_classes]}."
        )
    if stage == "fit":
        from lightning_plugins.callbacks.task_boundaries import ensure_task_boundaries

        ensure_task_boundaries(trainer)
    return schedule


class StreamEvaluation:
    """Validation and test hooks of a module that trains a task stream (SLCA, LoRAContinual).

    Mixed into a LightningModule (before it in the bases) that defines
    ``_eval_step(batch, stage, num_tasks) -> predicted class ids`` (which also updates
    ``val_accuracy`` / ``test_accuracy``) and ``_require_stream()`` (the task classes, or a
    clear error), and holds the buffers ``current_task`` and ``ended_task``, the maps
    ``class_task``, the metrics ``continual_accuracy``, ``val_accuracy`` and
    ``test_accuracy``, and ``accuracy_matrix_paths``.

    Validation covers the tasks ``0..current_task``; it fills the current task's row of
    ``continual_accuracy`` (reset at each validation start, not in the sanity check) and,
    after the current task's end, logs the summaries. At the end of ``fit`` the matrix is
    saved; test covers every task. :meth:`_clear_eval_cache` runs at each evaluation's
    start and end (for what a module computes once per evaluation).
    """

    def _clear_eval_cache(self) -> None:
        """Forget what the module computed once per evaluation (nothing by default)."""

    def on_validation_epoch_start(self) -> None:
        """Reset the accuracy and, outside the sanity check, the current task's row."""
        self._require_stream()
        self.val_accuracy.reset()
        self._clear_eval_cache()
        if not self.trainer.sanity_checking:
            self.continual_accuracy.reset_row(int(self.current_task))

    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Evaluate a batch over the tasks seen; count it into the current row."""
        predictions = self._eval_step(batch, "val", int(self.current_task) + 1)
        if not self.trainer.sanity_checking:
            task = batch.get("task")
            task = self.class_task[batch["label"]] if task is None else task
            self.continual_accuracy.update(predictions, batch["label"], task)

    def on_validation_epoch_end(self) -> None:
        """Log ``val/acc_top1``; after the current task's end, the continual summaries."""
        self._clear_eval_cache()
        self.log("val/acc_top1", self.val_accuracy.compute(), sync_dist=True)  # equal on all
        self.val_accuracy.reset()
        if self.trainer.sanity_checking or int(self.ended_task) != int(self.current_task):
            return
        log_continual_summaries(self, self.continual_accuracy)  # every rank: syncs under DDP

    def on_fit_end(self) -> None:
        """Save ``accuracy_matrix.csv`` / ``.png`` with the run (every rank computes)."""
        if self.task_classes is None:
            return
        paths = save_accuracy_matrix(self, self.continual_accuracy)
        if paths is not None:
            self.accuracy_matrix_paths = paths

    def on_test_epoch_start(self) -> None:
        """Reset the test accuracy."""
        self._require_stream()
        self.test_accuracy.reset()
        self._clear_eval_cache()

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Evaluate a test batch over the classes of every task."""
        self._eval_step(batch, "test", len(self._require_stream()))

    def on_test_epoch_end(self) -> None:
        """Log ``test/acc_top1``."""
        self._clear_eval_cache()
        self.log("test/acc_top1", self.test_accuracy.compute(), sync_dist=True)
        self.test_accuracy.reset()
