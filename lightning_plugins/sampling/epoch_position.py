"""EpochPosition: where a resumable sampler or stream stands in its epoch."""

from __future__ import annotations

from typing import Any

__all__ = ["EpochPosition"]


class EpochPosition:
    """The epoch and how many items of it were handed out: the resumable part of a sampler.

    A sampler whose order is a pure function of ``(seed, epoch)`` resumes exactly by
    skipping what it had already handed out. It keeps one ``EpochPosition`` and calls
    :meth:`start` when an iteration begins (which returns the number of items to skip) and
    :meth:`advance` for every item it hands out; its ``state_dict`` is this one's.
    :meth:`set_epoch` to another epoch drops a loaded position, which belongs to the epoch
    it was saved in.

    Example:
        >>> position = EpochPosition()
        >>> position.start(), [position.advance() for _ in range(3)], position.state_dict()
        (0, [None, None, None], {'epoch': 0, 'yielded': 3})
        >>> resumed = EpochPosition()
        >>> resumed.load_state_dict(position.state_dict())
        >>> resumed.set_epoch(0)  # the same epoch: keep the position
        >>> resumed.start()  # items to skip
        3
        >>> resumed.start()  # a second iteration starts the epoch afresh
        0
    """

    def __init__(self) -> None:
        self.epoch = 0
        self.yielded = 0  # items handed out in this epoch, including the skipped ones
        self._skip = 0  # items to skip at the next start (after load_state_dict)

    def set_epoch(self, epoch: int) -> None:
        """Select ``epoch``; a loaded position in another epoch is dropped."""
        if epoch != self.epoch:
            self._skip = 0
        self.epoch = int(epoch)

    def start(self) -> int:
        """Begin an iteration; the number of items already handed out, to skip."""
        skip, self._skip = self._skip, 0
        self.yielded = skip  # now, not at the first item: a state saved before it is right
        return skip

    def advance(self, count: int = 1) -> None:
        """Count ``count`` more items handed out."""
        self.yielded += count

    def state_dict(self) -> dict[str, Any]:
        """The epoch and how many of its items were handed out."""
        return {"epoch": self.epoch, "yielded": self.yielded}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue after the items already handed out in the saved epoch."""
        self.epoch = int(state_dict["epoch"])
        self._skip = int(state_dict["yielded"])
