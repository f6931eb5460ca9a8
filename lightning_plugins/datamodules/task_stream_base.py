"""The shared base of the task-stream datamodules: per-task loaders and the trainer's settings."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_plugins.datamodules.checked_resume import CheckedResume
from lightning_plugins.datamodules.stateful_loader import stateful_loader
from lightning_plugins.datamodules.task_stream_data import StreamSchedule, read_task_stream
from lightning_plugins.functional._checks import check_int
from lightning_plugins.sampling import CurriculumSampler

__all__ = ["TaskStreamBase", "TaskView", "source_class_names", "source_config", "split_labels"]


def source_class_names(source: Any, what: str) -> list[str] | None:
    """A source datamodule's ``class_names`` (one string per class), or ``None`` without them.

    Raises:
        TypeError: for ``class_names`` that are not a list of strings.
        ValueError: for a number of names other than the source's ``num_classes``.

    Example:
        >>> class Source:
        ...     num_classes, class_names = 2, ("cat", "dog")
        >>> source_class_names(Source(), "dataset")
        ['cat', 'dog']
    """
    names = getattr(source, "class_names", None)
    if names is None:
        return None
    if isinstance(names, str | bytes) or not all(isinstance(name, str) for name in names):
        raise TypeError(f"`{what}.class_names` must be a list of strings, got {names!r}.")
    names = list(names)
    if len(names) != source.num_classes:
        raise ValueError(
            f"`{what}.class_names` holds {len(names)} names for its {source.num_classes} "
            "classes (num_classes); give one name per class."
        )
    return names


def split_labels(dataset: Dataset, what: str) -> torch.Tensor:
    """The int64 labels of a map-style split: ``labels`` or ``targets``, else each sample's.

    The attribute (a tensor, array or list) is read when the split has one; otherwise
    ``dataset[i]["label"]`` of every sample, once.

    Example:
        >>> split_labels([{"label": 2}, {"label": 0}], "train_set").tolist()
        [2, 0]
    """
    for name in ("labels", "targets"):
        labels = getattr(dataset, name, None)
        if labels is not None:
            break
    else:
        labels = [int(dataset[i]["label"]) for i in range(len(dataset))]
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.ndim != 1:
        raise TypeError(f"{what}: labels must be one integer class id per sample, got {labels!r}.")
    if len(labels) != len(dataset):
        raise ValueError(f"{what}: {len(labels)} labels for {len(dataset)} samples.")
    return labels.to(torch.long)


class TaskView(Dataset):
    """The samples of one task: ``image``, ``label`` (+ ``label_offset``), ``task``, ``index``.

    Sample ``i`` is ``source[positions[i]]``; its ``index`` is ``index_offset +
    positions[i]``. With ``keep_source_label`` the source's own label is kept as
    ``task_label``. ``labels`` holds the (offset) labels of the view. Other keys of the
    source's samples are dropped, so that the views of different sources batch together.

    Example:
        >>> source = [{"image": torch.zeros(2), "label": torch.tensor(c)} for c in (0, 1, 0)]
        >>> view = TaskView(source, torch.tensor([0, 2]), torch.tensor([0, 0]), task=1,
        ...                 label_offset=5, index_offset=10, keep_source_label=True)
        >>> {key: int(value) for key, value in view[1].items() if key != "image"}
        {'label': 5, 'task': 1, 'index': 12, 'task_label': 0}
    """

    def __init__(
        self,
        source: Dataset,
        positions: torch.Tensor,
        source_labels: torch.Tensor,
        task: int,
        label_offset: int = 0,
        index_offset: int = 0,
        keep_source_label: bool = False,
    ) -> None:
        self.source = source
        self.positions = positions.to(torch.long)
        self.labels = source_labels.to(torch.long) + label_offset
        self.task = task
        self.label_offset = label_offset
        self.index_offset = index_offset
        self.keep_source_label = keep_source_label

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        position = int(self.positions[index])
        sample = self.source[position]
        label = torch.as_tensor(sample["label"]).to(torch.long)
        out = {
            "image": sample["image"],
            "label": label + self.label_offset,
            "task": torch.tensor(self.task, dtype=torch.long),
            "index": torch.tensor(self.index_offset + position, dtype=torch.long),
        }
        if self.keep_source_label:
            out["task_label"] = label
        return out


class TaskStreamBase(CheckedResume, ABC):
    """A task stream's loaders, schedule and trainer settings; subclasses split the sources.

    A subclass passes its source datamodules and sets ``num_tasks``, ``num_classes`` and
    ``task_classes`` in ``__init__``; it returns one :class:`TaskView` per task of a split
    in :meth:`task_views` and each task's ``(batch_size, num_workers)`` in
    :meth:`loader_settings`.

    ``setup("fit")`` under a trainer: sets ``reload_dataloaders_every_n_epochs`` to 1
    (the loaders change with the task), fits ``max_epochs`` to the stream and adds a
    :class:`~lightning_plugins.callbacks.TaskBoundaries` (see
    :func:`~lightning_plugins.callbacks.task_boundaries.ensure_task_boundaries`).
    """

    def __init__(
        self, sources: list[Any], epochs_per_task: int, steps_per_task: int | None, seed: int
    ) -> None:
        super().__init__()
        self.steps_per_task = check_int(steps_per_task, "steps_per_task", low=1, optional=True)
        epochs = check_int(epochs_per_task, "epochs_per_task", low=1)
        if self.steps_per_task is not None and epochs != 1:
            raise ValueError(
                f"`steps_per_task` ({steps_per_task}) trains each task for one epoch of that many "
                f"steps, so `epochs_per_task` must stay 1, got {epochs_per_task!r}; give one "
                "of the two."
            )
        self.epochs_per_task = epochs
        self.seed = check_int(seed, "seed")
        self.sources = sources
        self.num_tasks = 0
        self.num_classes = 0
        self.task_classes: list[list[int]] = []
        self.views: dict[str, list[TaskView] | None] = {}

    # -------------------------------------------------------------------- subclasses
    @abstractmethod
    def task_views(self, split: str) -> list[TaskView] | None:
        """One view per task of ``split`` (``train``, ``val``, ``test``); None if missing."""

    @abstractmethod
    def loader_settings(self, task: int) -> tuple[int, int]:
        """``(batch_size, num_workers)`` of ``task``'s loaders."""

    @abstractmethod
    def stream_config(self) -> dict[str, Any]:
        """What the split into tasks depends on (primitives), for :meth:`config`."""

    @property
    def schedule(self) -> StreamSchedule:
        """The checked stream (:func:`read_task_stream` of this datamodule)."""
        return read_task_stream(self)

    @property
    def current_task(self) -> int:
        """The task of the trainer's current epoch (0 without a trainer)."""
        trainer = self.trainer
        if trainer is None:
            return 0
        return self.schedule.task_of_epoch(trainer.current_epoch)

    def _seen_tasks(self) -> int:
        """Tasks validated: those seen so far in a fit, all of them in ``trainer.validate``."""
        trainer = self.trainer
        if trainer is not None and trainer.state.fn not in (None, "fit"):
            return self.num_tasks
        return self.current_task + 1

    def task_dataset(self, task: int) -> TaskView:
        """The training samples of ``task`` (the view the training loader draws from).

        Our built-in sources do not augment; a source that does should hold unaugmented
        samples in its ``train_set`` (augment in the module) for statistics passes.
        """
        self._build()
        task = check_int(task, "task", low=0, high=self.num_tasks - 1)
        return self.views["train"][task]

    def prepare_data(self) -> None:
        """The sources' ``prepare_data`` (downloads), on one process."""
        for source in self.sources:
            source.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        """Split the sources into tasks (once); under a fit, adjust the trainer (see class).

        Raises:
            ValueError: for a task without training or validation samples.
        """
        self._build()
        if stage == "test" and "test" not in self.views:
            for source in self.sources:
                source.setup("test")
            self.views["test"] = self.task_views("test")
        trainer = self.trainer
        if stage == "fit" and trainer is not None:
            self._adjust_trainer(trainer)

    def _build(self) -> None:
        """Set the sources up and split their training and validation sets (once)."""
        if not self.views:
            for source in self.sources:
                source.setup("fit")
            read_task_stream(self)
            for split in ("train", "val"):
                views = self.task_views(split)
                if views is None:
                    raise ValueError(
                        f"{type(self).__name__}: every source needs a `{split}_set` after "
                        "`setup('fit')` (the LabelledSplits protocol)."
                    )
                self._check_not_empty(split, views)
                self.views[split] = views

    def _check_not_empty(self, split: str, views: list[TaskView]) -> None:
        for task, view in enumerate(views):
            if len(view) == 0:
                raise ValueError(
                    f"{type(self).__name__}: task {task} (classes {self.task_classes[task]}) has "
                    f"no {'training' if split == 'train' else 'validation'} sample: every task "
                    f"needs samples of its classes in the source's `{split}_set`. Choose "
                    "another split (increments, class order) or data."
                )

    def _adjust_trainer(self, trainer: Any) -> None:
        from lightning_plugins.callbacks.task_boundaries import ensure_task_boundaries

        schedule = self.schedule
        where = type(self).__name__
        reload = trainer.reload_dataloaders_every_n_epochs
        if reload == 0:
            trainer.reload_dataloaders_every_n_epochs = 1
            rank_zero_info(
                f"{where}: set `reload_dataloaders_every_n_epochs=1` (each epoch's loaders "
                "follow the task it trains)."
            )
        elif reload != 1:
            raise ValueError(
                f"{where} needs `reload_dataloaders_every_n_epochs` 0 or 1 (each epoch's "
                f"loaders follow its task), got {reload}."
            )
        max_epochs = trainer.fit_loop.max_epochs
        if not trainer.fast_dev_run:
            if max_epochs is not None and 0 <= max_epochs < schedule.num_epochs:
                raise ValueError(
                    f"`max_epochs`={max_epochs} ends the fit before the stream: {where} trains "
                    f"{schedule.num_tasks} tasks x {schedule.epochs_per_task} epochs = "
                    f"{schedule.num_epochs} epochs, so the fit would stop in task "
                    f"{schedule.task_of_epoch(max_epochs)}. Set `max_epochs` to "
                    f"{schedule.num_epochs} or -1."
                )
            if max_epochs != schedule.num_epochs:
                trainer.fit_loop.max_epochs = schedule.num_epochs
                rank_zero_info(
                    f"{where}: set `max_epochs={schedule.num_epochs}` (was {max_epochs}): the "
                    "fit ends with the stream."
                )
        ensure_task_boundaries(trainer)

    # ------------------------------------------------------------------------ loaders
    def train_dataloader(self) -> StatefulDataLoader:
        """The current task's training batches from a :class:`CurriculumSampler`.

        Shuffled per ``(seed, epoch)``; ``steps_per_task`` gives exactly that many
        batches; steerable, DDP-ready and resumable mid-epoch as ``Digits``' loader.
        """
        self._build()
        task = self.current_task
        view = self.views["train"][task]
        batch_size, num_workers = self.loader_settings(task)
        sampler = CurriculumSampler(
            len(view),
            batch_size,
            seed=self.seed,
            drop_last=False,
            num_steps=self.steps_per_task,
        )
        return stateful_loader(
            view,
            batch_sampler=sampler,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
        )

    def _loader(self, views: list[TaskView], task: int) -> DataLoader:
        batch_size, num_workers = self.loader_settings(task)
        return DataLoader(
            ConcatDataset(views),
            batch_size=batch_size,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        """The validation samples of the tasks seen so far (0 to the current task), in order.

        Within a fit (and without a trainer) the tasks seen so far; under
        ``trainer.validate`` all tasks (a fresh trainer's epoch says nothing of the stream).
        Batch size and workers are those of the last task validated.
        """
        self._build()
        seen = self._seen_tasks()
        return self._loader(self.views["val"][:seen], seen - 1)

    def test_dataloader(self) -> DataLoader:
        """The test samples of all tasks, in order (the last task's batch size and workers).

        Raises:
            ValueError: when a source has no ``test_set``.
        """
        self.setup("test")
        views = self.views.get("test")
        if views is None:
            raise ValueError(
                f"{type(self).__name__}: a source has no `test_set`, so there is nothing to "
                "test on; use `trainer.validate` (the validation samples of the seen tasks)."
            )
        return self._loader(views, self.num_tasks - 1)

    # ------------------------------------------------------------------------- resume
    def config(self) -> dict[str, Any]:
        """What the training stream depends on: the split, schedule, seed and sources."""
        return {
            "kind": type(self).__name__,
            **self.stream_config(),
            "epochs_per_task": self.epochs_per_task,
            "steps_per_task": self.steps_per_task,
            "seed": self.seed,
        }


def source_config(source: Any) -> Any:
    """A source datamodule's ``config()`` when it has one, else its class name."""
    config = getattr(source, "config", None)
    return config() if callable(config) else type(source).__name__
