"""TaskStream: a sequence of labelled datamodules, each its own task and label space."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from lightning_plugins.datamodules.task_stream_base import (
    TaskStreamBase,
    TaskView,
    source_class_names,
    source_config,
    split_labels,
)
from lightning_plugins.functional._checks import check_int

__all__ = ["TaskStream"]


class TaskStream(TaskStreamBase):
    """A stream of different datasets, each its own task and label space.

    Each element of ``tasks`` is a labelled datamodule (the **LabelledSplits** protocol of
    :class:`~lightning_plugins.datamodules.ClassIncremental`: ``train_set``, ``val_set``
    and optionally ``test_set`` of ``{"image", "label"}`` samples after ``setup``, and
    ``num_classes``, ``batch_size``, ``num_workers``). Task ``t``'s class ``c`` becomes the
    stream's class ``offset_t + c`` in ``label`` (``offset_t`` is the sum of the earlier
    tasks' ``num_classes``, so ``task_classes[t]`` is ``offset_t .. offset_t + C_t - 1``);
    the source's own label stays in ``task_label``. ``class_names`` (indexed by stream class
    id) are the sources' names concatenated in that order, ``None`` unless every source has
    them; names that recur across tasks are kept as they are (two tasks' ``"0"`` stay two
    classes with one name: a module that classifies by names, such as
    :class:`~lightning_plugins.modules.LoRAContinual`, then cannot tell them apart and
    should get distinct names from the sources). Tasks may differ in size, classes,
    batch size and workers (each task's loaders use its source's ``batch_size`` and
    ``num_workers``; validation of several tasks those of the current one).

    Batches are dicts with ``image``, ``label``, ``task_label``, ``task`` and ``index``
    (int64; for training the position in the stream's training set: the earlier tasks'
    training sizes plus the position in the task's ``train_set``). Images of all tasks
    must share a shape where tasks meet in one batch (validation).

    The schedule, loaders, trainer settings, task hooks and resume checks are those of
    :class:`~lightning_plugins.datamodules.ClassIncremental` (a shared base).

    From YAML (LightningCLI)::

        data:
          class_path: lightning_plugins.datamodules.TaskStream
          init_args:
            tasks:
              - class_path: lightning_plugins.datamodules.Digits
                init_args: {image_size: 8, channels: 1}
              - class_path: lightning_plugins.datamodules.Digits
                init_args: {image_size: 8, channels: 1, split_seed: 1}
            epochs_per_task: 2

    Args:
        tasks: the labelled source datamodules, one per task, in order.
        epochs_per_task: training epochs of each task.
        steps_per_task: train each task one epoch of exactly this many batches instead.
        seed: seed of the training order.

    Raises:
        TypeError: for a ``tasks`` that is no non-empty list, or an element without
            ``num_classes``, ``batch_size`` or ``num_workers``.
        ValueError: as ``ClassIncremental``'s schedule, loader and setup checks (a task
            without training or validation samples, a label outside its source's
            ``[0, num_classes)``).

    Example:
        >>> from lightning_plugins.datamodules import Digits
        >>> stream = TaskStream([Digits(batch_size=8, image_size=8, channels=1),
        ...                      Digits(batch_size=4, image_size=8, channels=1, split_seed=1)])
        >>> stream.num_classes, stream.task_classes[1], stream.class_names[10]
        (20, [10, 11, 12, 13, 14, 15, 16, 17, 18, 19], '0')
        >>> stream.setup("fit")
        >>> sample = stream.task_dataset(1)[0]
        >>> int(sample["label"]) - int(sample["task_label"]), int(sample["task"])
        (10, 1)
        >>> int(sample["index"]) == len(stream.task_dataset(0))  # after task 0's samples
        True
    """

    def __init__(
        self,
        tasks: list[pl.LightningDataModule],
        epochs_per_task: int = 1,
        steps_per_task: int | None = None,
        seed: int = 0,
    ) -> None:
        if isinstance(tasks, str | bytes) or not isinstance(tasks, list | tuple) or not tasks:
            raise TypeError(f"`tasks` must be a non-empty list of datamodules, got {tasks!r}.")
        for t, source in enumerate(tasks):
            missing = [
                name
                for name in ("num_classes", "batch_size", "num_workers")
                if not hasattr(source, name)
            ]
            if missing:
                raise TypeError(
                    f"`tasks[{t}]` ({type(source).__name__}) lacks {missing}: each task needs a "
                    "datamodule with num_classes, batch_size, num_workers and, after setup, "
                    "train_set / val_set of {'image', 'label'} samples (see LabelledSplits)."
                )
        super().__init__(list(tasks), epochs_per_task, steps_per_task, seed)
        self.tasks = list(tasks)
        sizes = [
            check_int(source.num_classes, f"tasks[{t}].num_classes", low=1)
            for t, source in enumerate(self.tasks)
        ]
        self.num_tasks = len(sizes)
        self.offsets = [sum(sizes[:t]) for t in range(self.num_tasks)]
        self.num_classes = sum(sizes)
        names = [source_class_names(source, f"tasks[{t}]") for t, source in enumerate(tasks)]
        self.class_names = (
            None if any(n is None for n in names) else [name for n in names for name in n]
        )
        self.task_classes = [
            list(range(offset, offset + size))
            for offset, size in zip(self.offsets, sizes, strict=True)
        ]

    @override
    def task_views(self, split: str) -> list[TaskView] | None:
        views = []
        index_offset = 0
        for task, source in enumerate(self.tasks):
            dataset = getattr(source, f"{split}_set", None)
            if dataset is None:
                return None
            what = f"tasks[{task}].{split}_set ({type(source).__name__})"
            labels = split_labels(dataset, what)
            size = len(self.task_classes[task])
            outside = labels[(labels < 0) | (labels >= size)]
            if len(outside):
                raise ValueError(
                    f"{what} holds labels {sorted(set(outside.tolist()))[:5]} outside its "
                    f"[0, num_classes={size})."
                )
            positions = torch.arange(len(dataset))
            views.append(
                TaskView(
                    dataset,
                    positions,
                    labels,
                    task,
                    label_offset=self.offsets[task],
                    index_offset=index_offset,
                    keep_source_label=True,
                )
            )
            index_offset += len(dataset)
        return views

    @override
    def loader_settings(self, task: int) -> tuple[int, int]:
        return self.tasks[task].batch_size, self.tasks[task].num_workers

    @override
    def stream_config(self) -> dict[str, Any]:
        return {
            "num_classes": [len(classes) for classes in self.task_classes],
            "batch_size": [source.batch_size for source in self.tasks],
            "sources": [source_config(source) for source in self.tasks],
        }
