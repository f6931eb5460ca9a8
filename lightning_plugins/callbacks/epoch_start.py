"""When a steering callback's epoch-start work must run from ``on_train_start`` instead."""

from __future__ import annotations

import lightning.pytorch as pl

__all__ = ["resumed_at_epoch_end"]


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
