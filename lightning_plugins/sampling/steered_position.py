"""SteeredPosition: where a steered sampler stands, and when its pending steering applies."""

from __future__ import annotations

from typing import Any

__all__ = ["SteeredPosition"]


class SteeredPosition:
    """The resumable position of a sampler whose steering applies from the next iteration.

    A steered sampler (:class:`CurriculumSampler`, :class:`MixtureSampler`) keeps its
    steering *active* for the epoch being drawn and *pending* for the next one. Its
    ``__iter__`` calls :meth:`restart` (nothing drawn yet) and, lazily at the first draw,
    :meth:`begin`, which says how many steps to skip (after :meth:`load_state_dict`) and
    whether this is a new iteration, in which the pending steering applies. The state
    says whether the saved epoch had begun: one saved before its first draw still applies
    the pending steering when resumed, one saved mid-epoch does not.

    Example:
        >>> position = SteeredPosition()
        >>> position.restart(); position.begin(0)
        (0, True)
        >>> position.advance(); position.state_dict(epoch=0)
        {'epoch': 0, 'yielded': 1, 'started': True}
        >>> resumed = SteeredPosition()
        >>> resumed.load_state_dict(position.state_dict(epoch=0))
        0
        >>> resumed.begin(0)  # skip the step drawn; the same iteration continues
        (1, False)
    """

    def __init__(self) -> None:
        self.yielded = 0  # steps handed out in this iteration, including skipped ones
        self.started = False  # whether the current iteration has drawn its first step
        self.iter_epoch: int | None = None  # the epoch whose iteration began last
        self.resume: tuple[int, int, bool] | None = None  # (epoch, steps to skip, started)

    def restart(self) -> None:
        """A new iteration was requested; nothing is drawn from it yet."""
        self.started = False

    def begin(self, epoch: int) -> tuple[int, bool]:
        """The first draw of ``epoch``'s iteration: ``(steps to skip, new iteration)``."""
        resume, self.resume = self.resume, None
        skip = resume[1] if resume is not None and resume[0] == epoch else 0
        fresh = resume is None or resume[0] != epoch or not resume[2]
        self.iter_epoch, self.started, self.yielded = epoch, True, skip
        return skip, fresh

    def advance(self) -> None:
        """One more step handed out."""
        self.yielded += 1

    def state_dict(self, epoch: int) -> dict[str, Any]:
        """The epoch, the steps handed out in it and whether its iteration had begun."""
        if not self.started and self.resume is not None:  # loaded, not drawn from yet
            epoch, yielded, started = self.resume
        else:
            started = self.started and self.iter_epoch == epoch
            yielded = self.yielded if started else 0
        return {"epoch": epoch, "yielded": yielded, "started": started}

    def load_state_dict(self, state_dict: dict[str, Any]) -> int:
        """Continue after the saved position; returns the saved epoch."""
        epoch = int(state_dict["epoch"])
        self.resume = (epoch, int(state_dict["yielded"]), bool(state_dict.get("started", True)))
        return epoch
