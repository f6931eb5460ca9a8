"""WarmupCosineLR: linear warmup, then cosine decay (open_clip's default schedule)."""

from __future__ import annotations

import warnings

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from lightning_plugins.functional._checks import check_float, check_int
from lightning_plugins.functional.schedules import warmup_cosine_schedule

__all__ = ["WarmupCosineLR"]


class WarmupCosineLR(LRScheduler):
    """Linear warmup to each group's learning rate, then cosine decay: open_clip's ``cosine_lr``.

    At step ``s`` (the number of ``step()`` calls so far) each parameter group's learning rate
    is :func:`~lightning_plugins.functional.warmup_cosine_schedule` of ``s`` with its
    initial learning rate as the peak and ``min_lr_ratio`` times it as the end: ``lr * (s +
    1) / warmup_steps`` during warmup, then a half cosine down to ``lr * min_lr_ratio`` at
    ``total_steps``, where it stays.

    ``total_steps`` may be left out when a module of ours builds the scheduler from its
    ``lr_scheduler`` argument: ``ContrastiveImageText.configure_optimizers`` then passes
    ``trainer.estimated_stepping_batches`` (``max_steps``, or the batches of
    ``max_epochs`` epochs), so a config needs only the warmup::

        lr_scheduler:
          class_path: lightning_plugins.schedulers.WarmupCosineLR
          init_args:
            warmup_steps: 25

    Args:
        optimizer: the optimizer.
        warmup_steps: steps of linear warmup, at least 0.
        total_steps: steps of the whole schedule, warmup included, at least 1; ``None``
            only for a module that fills it in.
        min_lr_ratio: the final learning rate as a fraction of the peak, in ``[0, 1]``.
        last_epoch: the index of the last step, for resuming (``-1``: start).

    Raises:
        TypeError: for an argument of the wrong type.
        ValueError: for a negative ``warmup_steps``, a missing or non-positive
            ``total_steps``, or ``min_lr_ratio`` outside ``[0, 1]``.

    Example:
        >>> import torch
        >>> optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> scheduler = WarmupCosineLR(optimizer, warmup_steps=2, total_steps=6)
        >>> lrs = []
        >>> for _ in range(7):
        ...     lrs.append(round(scheduler.get_last_lr()[0], 3))
        ...     optimizer.step()
        ...     scheduler.step()
        >>> lrs
        [0.5, 1.0, 1.0, 0.854, 0.5, 0.146, 0.0]
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int,
        total_steps: int | None = None,
        min_lr_ratio: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        self.warmup_steps = check_int(warmup_steps, "warmup_steps", low=0)
        if total_steps is None:
            raise ValueError(
                "`total_steps` is None: give the schedule's length, or let a module of "
                "lightning_plugins fill it in from `trainer.estimated_stepping_batches` "
                "(pass the scheduler as its `lr_scheduler` argument)."
            )
        if isinstance(total_steps, float) and total_steps == float("inf"):
            raise ValueError(
                "`total_steps`=inf: the run has no end (max_epochs=-1 without max_steps, or "
                "an iterable dataset); set `trainer.max_steps` or `total_steps`."
            )
        self.total_steps = check_int(total_steps, "total_steps", low=1)
        self.min_lr_ratio = check_float(min_lr_ratio, "min_lr_ratio", low=0, high=1)
        check_int(last_epoch, "last_epoch", low=-1)
        if self.warmup_steps > self.total_steps:
            warnings.warn(
                f"`warmup_steps`={self.warmup_steps} exceeds `total_steps`={self.total_steps}: "
                "the learning rate never reaches its peak.",
                stacklevel=2,
            )
        super().__init__(optimizer, last_epoch)

    def _lr(self, base_lr: float) -> float:
        return warmup_cosine_schedule(
            max(self.last_epoch, 0),
            self.warmup_steps,
            self.total_steps,
            base_lr,
            base_lr * self.min_lr_ratio,
        )

    def get_lr(self) -> list[float]:  # type: ignore[override]
        """The learning rate of every parameter group at the current step."""
        return [self._lr(base_lr) for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()
