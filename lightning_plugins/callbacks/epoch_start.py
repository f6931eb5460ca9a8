"""When a steering callback's epoch-start work must run from ``on_train_start`` instead."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

__all__ = ["EpochStartSteering", "resumed_at_epoch_end"]


def resumed_at_epoch_end(trainer: pl.Trainer) -> bool:
    """Whether this fit resumed from a checkpoint saved after the last batch of an epoch.

    Lightning then begins the next epoch without calling ``on_train_epoch_start`` (the
    progress it restores is that of the finished epoch). The callbacks that steer the
    sampler at every epoch start (``Curriculum``, ``DataDiet``, ``SkillIt``,
    ``GradientAlignmentMixing``) run that work from ``on_train_start`` in this case; with
    ``num_workers=0`` it still comes before the epoch's first batch is drawn.
    Reads the public progress counters of ``trainer.fit_loop``.
    """
    progress = trainer.fit_loop.epoch_loop.batch_progress.current
    return trainer.global_step > 0 and progress.ready >= trainer.num_training_batches


class EpochStartSteering(Callback):
    """A callback that steers the sampler once at the start of every epoch.

    Subclasses put their work in :meth:`steer_epoch`. It runs from
    ``on_train_epoch_start``, once per epoch, and from ``on_train_start`` when the fit
    resumed from a checkpoint saved after an epoch's last batch (see
    :func:`resumed_at_epoch_end`): subclasses that override ``on_train_start`` call
    ``super().on_train_start(...)`` last.
    """

    _handled_epoch: int | None = None  # the epoch whose start was handled

    def steer_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The work of an epoch start (a subclass's)."""

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if resumed_at_epoch_end(trainer):  # Lightning skips on_train_epoch_start here
            self.on_train_epoch_start(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._handled_epoch == trainer.current_epoch:
            return
        self._handled_epoch = trainer.current_epoch
        self.steer_epoch(trainer, pl_module)
