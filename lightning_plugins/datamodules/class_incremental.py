"""ClassIncremental: one labelled dataset's classes split into a stream of tasks."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
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

__all__ = ["ClassIncremental", "checked_class_order", "class_increments"]


def class_increments(
    num_classes: int,
    num_tasks: int | None = None,
    classes_per_task: int | None = None,
    increments: list[int] | None = None,
) -> list[int]:
    """The number of classes of each task, from exactly one of the three ways to say it.

    Example:
        >>> class_increments(10, num_tasks=5), class_increments(10, classes_per_task=4)
        ([2, 2, 2, 2, 2], [4, 4, 2])
        >>> class_increments(10, increments=[5, 3, 2])
        [5, 3, 2]
    """
    given = {
        name: value
        for name, value in (
            ("num_tasks", num_tasks),
            ("classes_per_task", classes_per_task),
            ("increments", increments),
        )
        if value is not None
    }
    if len(given) != 1:
        raise ValueError(
            "Give exactly one of `num_tasks`, `classes_per_task` or `increments` to split the "
            f"classes into tasks, got {sorted(given) or 'none'}."
        )
    if num_tasks is not None:
        num_tasks = check_int(num_tasks, "num_tasks", low=1, high=num_classes)
        if num_classes % num_tasks:
            raise ValueError(
                f"`num_tasks`={num_tasks} does not divide the {num_classes} classes evenly; "
                f"give `increments` (a list of task sizes summing to {num_classes}) or "
                "`classes_per_task` for unequal tasks."
            )
        return [num_classes // num_tasks] * num_tasks
    if classes_per_task is not None:
        size = check_int(classes_per_task, "classes_per_task", low=1, high=num_classes)
        return [size] * (num_classes // size) + ([num_classes % size] if num_classes % size else [])
    if isinstance(increments, str | bytes) or not isinstance(increments, list | tuple):
        raise TypeError(f"`increments` must be a list of task sizes, got {increments!r}.")
    sizes = [check_int(size, f"increments[{i}]", low=1) for i, size in enumerate(increments)]
    if not sizes or sum(sizes) != num_classes:
        raise ValueError(
            f"`increments` {sizes} must sum to the dataset's num_classes {num_classes}, but "
            f"they sum to {sum(sizes)}."
        )
    return sizes


def checked_class_order(
    num_classes: int, class_order: list[int] | None, class_order_seed: int | None
) -> list[int]:
    """The order in which classes join the stream: given, a seeded permutation, or ``0..C-1``.

    Example:
        >>> checked_class_order(4, [3, 1, 0, 2], None), checked_class_order(4, None, None)
        ([3, 1, 0, 2], [0, 1, 2, 3])
        >>> checked_class_order(3, [0, 1, 1], None)
        Traceback (most recent call last):
        ...
        ValueError: `class_order` must be a permutation of the 3 class ids 0..2, but classes [1] are repeated (the tasks overlap); classes [2] are missing.
    """  # noqa: E501
    if class_order is not None and class_order_seed is not None:
        raise ValueError(
            "Give `class_order` or `class_order_seed`, not both: `class_order` is the order "
            "itself, `class_order_seed` draws one."
        )
    if class_order_seed is not None:
        seed = check_int(class_order_seed, "class_order_seed", low=0)
        return np.random.default_rng(seed).permutation(num_classes).tolist()
    if class_order is None:
        return list(range(num_classes))
    if isinstance(class_order, str | bytes) or not isinstance(class_order, list | tuple):
        raise TypeError(f"`class_order` must be a list of class ids, got {class_order!r}.")
    order = [check_int(c, f"class_order[{i}]") for i, c in enumerate(class_order)]
    outside = [c for c in order if not 0 <= c < num_classes]
    repeated = sorted(c for c in set(order) if order.count(c) > 1)
    missing = sorted(set(range(num_classes)) - set(order))
    problems = [
        *([f"class ids {outside} are outside it"] if outside else []),
        *([f"classes {repeated} are repeated (the tasks overlap)"] if repeated else []),
        *([f"classes {missing} are missing"] if missing else []),
    ]
    if problems:
        raise ValueError(
            f"`class_order` must be a permutation of the {num_classes} class ids "
            f"0..{num_classes - 1}, but " + "; ".join(problems) + "."
        )
    return order


class ClassIncremental(TaskStreamBase):
    """The classes of one labelled dataset split into a stream of tasks (class-incremental).

    ``dataset`` is a datamodule with labelled splits, the **LabelledSplits** protocol:
    after ``dataset.setup(stage)`` it has ``train_set`` and ``val_set`` (and, for
    ``trainer.test``, ``test_set``), map-style datasets whose samples are dicts with
    ``image`` and ``label`` (an integer class id in ``[0, num_classes)``), and the
    attributes ``num_classes``, ``batch_size`` and ``num_workers`` (used by this stream's
    loaders, so nothing is written twice). A split's labels are read from its ``labels``
    or ``targets`` attribute when it has one, else from every sample's ``label`` once.
    :class:`~lightning_plugins.datamodules.Digits` and
    ``SyntheticShapes(task="classification")`` provide it.

    The classes, in ``class_order`` (or a permutation drawn from ``class_order_seed``
    with numpy's ``default_rng``, or ``0..C-1``), are cut into tasks by exactly one of
    ``num_tasks`` (equal tasks), ``classes_per_task`` (the last task takes the rest) or
    ``increments`` (the size of each task, unequal allowed): ``task_classes[t]``. Labels
    stay the source's class ids, and ``class_names`` are the source's (indexed by class id;
    ``None`` when the source has none). Batches are dicts with ``image``, ``label``, ``task``
    (int64) and ``index`` (int64, the position in the source's ``train_set``; in its
    ``val_set`` / ``test_set`` for those loaders).

    One ``trainer.fit`` runs the stream: task ``t`` trains in epochs ``[t * E, (t + 1) *
    E)``, ``E = epochs_per_task``; with ``steps_per_task=S`` each task trains one epoch
    of exactly ``S`` batches (``epochs_per_task`` stays 1). Each task's training loader is
    a ``StatefulDataLoader`` over a :class:`~lightning_plugins.sampling.CurriculumSampler`
    of that task's samples (shuffled per ``(seed, epoch)``, steerable, DDP-ready,
    resumable mid-epoch); validation covers the tasks seen so far, test all tasks (plain,
    in order). ``setup("fit")`` sets the trainer's ``reload_dataloaders_every_n_epochs``
    to 1 and ``max_epochs`` to the stream's epochs, and adds a
    :class:`~lightning_plugins.callbacks.TaskBoundaries` that calls the module's (and
    callbacks') ``on_task_start`` / ``on_task_end``.

    It is a :class:`~lightning_plugins.datamodules.task_stream_data.TaskStreamData`;
    :meth:`task_dataset` gives a task's training samples. A source that augments its
    ``train_set`` should keep it unaugmented (augment in the module) for statistics
    passes over it.

    From YAML (LightningCLI)::

        data:
          class_path: lightning_plugins.datamodules.ClassIncremental
          init_args:
            dataset:
              class_path: lightning_plugins.datamodules.Digits
              init_args: {batch_size: 32, image_size: 8, channels: 1}
            num_tasks: 5

    Args:
        dataset: the labelled source datamodule (LabelledSplits, above).
        num_tasks: split the classes into this many equal tasks.
        classes_per_task: tasks of this many classes (the last one smaller if needed).
        increments: the number of classes of each task, summing to ``num_classes``.
        class_order: a permutation of the class ids (the first task's classes first).
        class_order_seed: draw the class order from this seed instead.
        epochs_per_task: training epochs of each task.
        steps_per_task: train each task one epoch of exactly this many batches instead.
        seed: seed of the training order.

    **Resuming.** :meth:`config` (checked when a fit resumes) holds the split, the
    schedule, ``seed`` and the source's own ``config()`` (or class name); a resume with
    other values raises a ``ValueError`` naming each.

    Raises:
        TypeError: for arguments of the wrong type, or a ``dataset`` without
            ``num_classes``, ``batch_size`` or ``num_workers``.
        ValueError: for not exactly one of ``num_tasks`` / ``classes_per_task`` /
            ``increments``, classes that ``num_tasks`` does not divide, ``increments``
            not summing to ``num_classes``, a ``class_order`` that is no permutation,
            both ``class_order`` and ``class_order_seed``, ``steps_per_task`` with
            ``epochs_per_task`` other than 1; at setup, a task without training or
            validation samples, a label outside ``[0, num_classes)``; at ``setup("fit")``,
            a ``max_epochs`` that ends the fit before the stream or
            ``reload_dataloaders_every_n_epochs`` other than 0 or 1.

    Example:
        >>> from lightning_plugins.datamodules import Digits
        >>> stream = ClassIncremental(Digits(batch_size=16, image_size=8, channels=1),
        ...                           increments=[4, 3, 3], class_order_seed=0)
        >>> stream.task_classes, stream.class_names[4]
        ([[4, 6, 2, 7], [3, 5, 9], [0, 8, 1]], '4')
        >>> stream.setup("fit")
        >>> batch = next(iter(stream.train_dataloader()))  # task 0 without a trainer
        >>> sorted(batch), set(batch["label"].tolist()) <= {4, 6, 2, 7}, batch["task"][:3]
        (['image', 'index', 'label', 'task'], True, tensor([0, 0, 0]))
        >>> [len(stream.task_dataset(task)) for task in range(3)]  # training samples
        [420, 335, 324]
    """

    def __init__(
        self,
        dataset: pl.LightningDataModule,
        num_tasks: int | None = None,
        classes_per_task: int | None = None,
        increments: list[int] | None = None,
        class_order: list[int] | None = None,
        class_order_seed: int | None = None,
        epochs_per_task: int = 1,
        steps_per_task: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__([dataset], epochs_per_task, steps_per_task, seed)
        missing = [
            name
            for name in ("num_classes", "batch_size", "num_workers")
            if not hasattr(dataset, name)
        ]
        if missing:
            raise TypeError(
                f"`dataset` ({type(dataset).__name__}) lacks {missing}: ClassIncremental needs "
                "a datamodule with num_classes, batch_size, num_workers and, after setup, "
                "train_set / val_set of {'image', 'label'} samples (see LabelledSplits)."
            )
        self.dataset = dataset
        self.num_classes = check_int(dataset.num_classes, "dataset.num_classes", low=1)
        self.increments = class_increments(
            self.num_classes, num_tasks, classes_per_task, increments
        )
        self.class_names = source_class_names(dataset, "dataset")
        self.class_order = checked_class_order(self.num_classes, class_order, class_order_seed)
        self.class_order_seed = class_order_seed
        self.num_tasks = len(self.increments)
        bounds = np.cumsum([0, *self.increments]).tolist()
        self.task_classes = [
            self.class_order[bounds[t] : bounds[t + 1]] for t in range(self.num_tasks)
        ]

    @override
    def task_views(self, split: str) -> list[TaskView] | None:
        source = getattr(self.dataset, f"{split}_set", None)
        if source is None:
            return None
        what = f"{type(self.dataset).__name__}.{split}_set"
        labels = split_labels(source, what)
        outside = labels[(labels < 0) | (labels >= self.num_classes)]
        if len(outside):
            raise ValueError(
                f"{what} holds labels {sorted(set(outside.tolist()))[:5]} outside "
                f"[0, num_classes={self.num_classes})."
            )
        task_of_class = torch.as_tensor(self.schedule.task_of_class)
        task_of_sample = task_of_class[labels]
        views = []
        for task in range(self.num_tasks):
            positions = torch.nonzero(task_of_sample == task).flatten()
            views.append(TaskView(source, positions, labels[positions], task))
        return views

    @override
    def loader_settings(self, task: int) -> tuple[int, int]:
        return self.dataset.batch_size, self.dataset.num_workers

    @override
    def stream_config(self) -> dict[str, Any]:
        return {
            "task_classes": [list(classes) for classes in self.task_classes],
            "batch_size": self.dataset.batch_size,
            "source": source_config(self.dataset),
        }
