"""What modules and callbacks read from a continual-learning datamodule: ``TaskStreamData``.

DESIGN contract 5 and 6: one ``trainer.fit`` runs a whole stream of tasks; the datamodule
says how many tasks there are, which classes each holds and which epochs train which
task. :class:`~lightning_plugins.datamodules.ClassIncremental` and
:class:`~lightning_plugins.datamodules.TaskStream` provide it; a user's datamodule that
has these attributes works with :class:`~lightning_plugins.callbacks.TaskBoundaries` and
:class:`~lightning_plugins.modules.SLCA` the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch.utils.data import Dataset

from lightning_plugins.functional._checks import check_int

__all__ = ["StreamSchedule", "TaskStreamData", "read_task_stream"]


@runtime_checkable
class TaskStreamData(Protocol):
    """A datamodule whose training is a sequence of tasks, each with its own classes.

    Task ``t`` is trained in epochs ``[t * epochs_per_task, (t + 1) * epochs_per_task)``
    of one ``fit``; an epoch past the last task counts as the last task.

    Batches carry ``image``, ``label`` (the class id in the stream's label space
    ``[0, num_classes)``), ``task`` (int64, the task of each sample) and ``index``.

    Attributes:
        num_tasks: number of tasks ``T`` (at least 1).
        num_classes: size of the stream's label space.
        task_classes: ``T`` non-empty, pairwise disjoint lists of the class ids in
            ``[0, num_classes)`` of each task, in the order the task's head outputs them.
        epochs_per_task: training epochs of each task (at least 1).
    """

    num_tasks: int
    num_classes: int
    task_classes: Sequence[Sequence[int]]
    epochs_per_task: int

    def task_dataset(self, task: int) -> Dataset:
        """The training samples of ``task`` without augmentation (statistics passes)."""


@dataclass(frozen=True)
class StreamSchedule:
    """A checked copy of a :class:`TaskStreamData`'s stream: primitives only.

    Example:
        >>> schedule = StreamSchedule(3, 6, ((4, 5), (0, 1, 2), (3,)), 2)
        >>> [schedule.task_of_epoch(e) for e in range(8)]
        [0, 0, 1, 1, 2, 2, 2, 2]
        >>> schedule.last_epoch(1), schedule.task_sizes, schedule.task_of_class
        (3, (2, 3, 1), (1, 1, 1, 2, 0, 0))
    """

    num_tasks: int
    num_classes: int
    task_classes: tuple[tuple[int, ...], ...]
    epochs_per_task: int

    @property
    def num_epochs(self) -> int:
        """Epochs the whole stream trains: ``num_tasks * epochs_per_task``."""
        return self.num_tasks * self.epochs_per_task

    @property
    def task_sizes(self) -> tuple[int, ...]:
        """Number of classes of each task."""
        return tuple(len(classes) for classes in self.task_classes)

    @property
    def task_of_class(self) -> tuple[int, ...]:
        """The task of each class id in ``[0, num_classes)``; -1 for a class in no task."""
        owner = [-1] * self.num_classes
        for task, classes in enumerate(self.task_classes):
            for c in classes:
                owner[c] = task
        return tuple(owner)

    def task_of_epoch(self, epoch: int) -> int:
        """The task that epoch ``epoch`` (0-based) trains; the last task past the stream."""
        return min(max(int(epoch), 0) // self.epochs_per_task, self.num_tasks - 1)

    def last_epoch(self, task: int) -> int:
        """The last epoch (0-based) that trains ``task``."""
        return (int(task) + 1) * self.epochs_per_task - 1


def read_task_stream(source: Any) -> StreamSchedule:
    """Check what ``source`` (a :class:`TaskStreamData`) says about its stream.

    Raises:
        TypeError: for a ``source`` without the protocol's attributes, or attributes of
            the wrong type.
        ValueError: for fewer than one task, ``task_classes`` not one list per task, an
            empty task, a class outside ``[0, num_classes)``, a class in two tasks (or
            twice in one), or ``epochs_per_task`` below 1.

    Example:
        >>> class Stream:
        ...     num_tasks, num_classes, epochs_per_task = 2, 4, 1
        ...     task_classes = [[0, 1], [1, 3]]
        >>> read_task_stream(Stream())
        Traceback (most recent call last):
        ...
        ValueError: Stream.task_classes: tasks must not overlap, but class 1 is in task 0 and task 1.
    """  # noqa: E501
    where = type(source).__name__
    missing = [
        name
        for name in ("num_tasks", "num_classes", "task_classes", "epochs_per_task")
        if not hasattr(source, name)
    ]
    if missing:
        raise TypeError(
            f"{where} is no task stream: it lacks {missing} (the TaskStreamData protocol of "
            "lightning_plugins.datamodules.task_stream_data: num_tasks, num_classes, "
            "task_classes, epochs_per_task, task_dataset). Use ClassIncremental or "
            "TaskStream, or give your datamodule these attributes."
        )
    num_tasks = check_int(source.num_tasks, f"{where}.num_tasks", low=1)
    num_classes = check_int(source.num_classes, f"{where}.num_classes", low=1)
    epochs = check_int(source.epochs_per_task, f"{where}.epochs_per_task", low=1)
    tasks = source.task_classes
    if isinstance(tasks, str | bytes) or not isinstance(tasks, Sequence):
        raise TypeError(
            f"{where}.task_classes must be a list of lists of class ids, got {tasks!r}."
        )
    if len(tasks) != num_tasks:
        raise ValueError(
            f"{where}.task_classes must hold one list per task ({num_tasks}), got {len(tasks)}."
        )
    owner: dict[int, int] = {}
    checked = []
    for task, classes in enumerate(tasks):
        if isinstance(classes, str | bytes) or not isinstance(classes, Sequence):
            raise TypeError(
                f"{where}.task_classes[{task}] must be a list of class ids, got {classes!r}."
            )
        if len(classes) == 0:
            raise ValueError(f"{where}.task_classes[{task}] is empty: every task needs a class.")
        ids = tuple(
            check_int(c, f"{where}.task_classes[{task}][{i}]", low=0, high=num_classes - 1)
            for i, c in enumerate(classes)
        )
        for c in ids:
            if c in owner:
                raise ValueError(
                    f"{where}.task_classes: tasks must not overlap, but class {c} is in task "
                    f"{owner[c]} and task {task}."
                )
            owner[c] = task
        checked.append(ids)
    return StreamSchedule(num_tasks, num_classes, tuple(checked), epochs)
