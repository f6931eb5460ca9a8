"""TaskBoundaries: calls the ``on_task_start`` / ``on_task_end`` hooks of a task stream."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from typing_extensions import override

from lightning_plugins.datamodules.task_stream_data import StreamSchedule, read_task_stream

__all__ = ["TaskBoundaries", "TaskHooks", "ensure_task_boundaries"]


@runtime_checkable
class TaskHooks(Protocol):
    """What a callback defines to take part in a task stream's boundaries.

    :class:`TaskBoundaries` calls these on every rank, after the module's own
    ``on_task_start(task)`` / ``on_task_end(task)`` and in the order of
    ``trainer.callbacks``; a callback may define either or both (collectives inside them
    are allowed: every rank calls them at the same batch).
    """

    def on_task_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: int) -> None:
        """Task ``task`` begins: before the training step of its first batch."""

    def on_task_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: int) -> None:
        """Task ``task`` ends: after its last training batch, before that epoch's validation."""


class TaskBoundaries(Callback):
    """Calls the task hooks of the module and the callbacks when a stream's task begins or ends.

    The stream is that of ``trainer.datamodule`` (a
    :class:`~lightning_plugins.datamodules.task_stream_data.TaskStreamData`, read with
    :func:`~lightning_plugins.datamodules.task_stream_data.read_task_stream` at ``setup``):
    task ``t`` trains in epochs ``[t * E, (t + 1) * E)``, ``E = epochs_per_task``.

    **Order.** At the first training batch of task ``t`` (``on_train_batch_start``, before
    its training step): ``pl_module.on_task_start(t)``, then ``on_task_start(trainer,
    pl_module, t)`` of every callback that defines it (the :class:`TaskHooks` protocol).
    After the last batch of the task's last epoch (``on_train_batch_end``):
    ``pl_module.on_task_end(t)``, then the callbacks' ``on_task_end``. Lightning validates
    after the epoch's last batch, so a task's end runs *before* the validation of its
    last epoch: the accuracy measured there is that after the module's end-of-task work.
    A module or callback without these methods is skipped.

    **Resume.** ``state_dict`` holds ``started`` (the last task whose start ran, -1
    before any) and ``ended`` (likewise for ends). A resumed fit calls no hook twice: at
    its first batch, the starts (and the ends of started tasks) that the checkpoint had
    not yet run are caught up in order. :func:`ensure_task_boundaries` places this
    callback before the first ``ModelCheckpoint``, so a checkpoint saved at a task's last
    batch already holds the task's end.

    **DDP.** Every rank runs the hooks at the same batch.

    The stream datamodules (``ClassIncremental``, ``TaskStream``) and ``SLCA`` add one with
    :func:`ensure_task_boundaries`; add it yourself only for another module.

    Example:
        >>> import torch
        >>> from lightning_plugins.datamodules import ClassIncremental, Digits
        >>> class Log(pl.Callback):
        ...     def on_task_start(self, trainer, pl_module, task):
        ...         print("start", task, trainer.current_epoch)
        ...     def on_task_end(self, trainer, pl_module, task):
        ...         print("end", task, trainer.current_epoch)
        >>> isinstance(Log(), TaskHooks)
        True
        >>> class Tiny(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = torch.nn.Linear(64, 10)
        ...     def training_step(self, batch, batch_idx):
        ...         return self.net(batch["image"].flatten(1)).logsumexp(1).mean()
        ...     def validation_step(self, batch, batch_idx):
        ...         pass
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.01)
        >>> digits = Digits(image_size=8, channels=1)
        >>> stream = ClassIncremental(digits, num_tasks=2, steps_per_task=2)
        >>> trainer = pl.Trainer(max_epochs=-1, callbacks=[Log()], logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False,
        ...                      enable_model_summary=False)
        >>> trainer.fit(Tiny(), stream)
        start 0 0
        end 0 0
        start 1 1
        end 1 1
        >>> [c for c in trainer.callbacks if isinstance(c, TaskBoundaries)]  # the stream's
        [TaskBoundaries(started=1, ended=1)]
    """

    def __init__(self) -> None:
        self.started = -1
        self.ended = -1
        self._schedule: StreamSchedule | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(started={self.started}, ended={self.ended})"

    def schedule(self, trainer: pl.Trainer) -> StreamSchedule:
        """The stream of ``trainer.datamodule`` (read once).

        Raises:
            TypeError: when the fit has no datamodule or one that is no task stream.
        """
        if self._schedule is None:
            datamodule = trainer.datamodule
            if datamodule is None:
                raise TypeError(
                    "TaskBoundaries needs a task-stream datamodule (ClassIncremental, "
                    "TaskStream, or one with the TaskStreamData attributes), but the fit has "
                    "no datamodule: pass one as `trainer.fit(model, datamodule=...)`."
                )
            self._schedule = read_task_stream(datamodule)
        return self._schedule

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._schedule = None  # a new fit may bring another stream
        if stage == "fit":
            self.schedule(trainer)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        task = self.schedule(trainer).task_of_epoch(trainer.current_epoch)
        while self.started < task:
            if self.ended < self.started:
                self._end(trainer, pl_module, self.started)
            self._start(trainer, pl_module, self.started + 1)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        last_batch = (
            trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
            or batch_idx + 1 >= trainer.num_training_batches
        )
        if not last_batch:
            return
        schedule = self.schedule(trainer)
        task = schedule.task_of_epoch(trainer.current_epoch)
        if trainer.current_epoch == schedule.last_epoch(task) and self.ended < task:
            self._end(trainer, pl_module, task)

    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: int) -> None:
        self.started = task
        self._call(trainer, pl_module, "on_task_start", task)

    def _end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: int) -> None:
        self.ended = task
        self._call(trainer, pl_module, "on_task_end", task)

    def _call(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str, task: int):
        hook = getattr(pl_module, name, None)
        if callable(hook):
            hook(task)
        for callback in list(trainer.callbacks):
            hook = getattr(callback, name, None)
            if callback is not self and callable(hook):
                hook(trainer, pl_module, task)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"started": self.started, "ended": self.ended}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.started = int(state_dict["started"])
        self.ended = int(state_dict["ended"])


def ensure_task_boundaries(trainer: pl.Trainer) -> TaskBoundaries:
    """The trainer's :class:`TaskBoundaries`, added when it has none (idempotent).

    A new one goes before the first ``ModelCheckpoint`` of ``trainer.callbacks`` (at the
    end without one), so that a checkpoint saved at a task's last batch holds its end.

    Example:
        >>> trainer = pl.Trainer(logger=False, enable_progress_bar=False)
        >>> added = ensure_task_boundaries(trainer)
        >>> ensure_task_boundaries(trainer) is added
        True
        >>> [type(c).__name__ for c in trainer.callbacks][-2:]
        ['TaskBoundaries', 'ModelCheckpoint']
    """
    callbacks = trainer.callbacks
    for callback in callbacks:
        if isinstance(callback, TaskBoundaries):
            return callback
    boundaries = TaskBoundaries()
    position = next(
        (i for i, c in enumerate(callbacks) if isinstance(c, ModelCheckpoint)), len(callbacks)
    )
    callbacks.insert(position, boundaries)
    return boundaries
