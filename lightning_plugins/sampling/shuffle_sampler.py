"""A shuffling sampler whose order is a pure function of (seed, epoch), resumable mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler

from lightning_plugins.functional._checks import check_int, check_resume_state
from lightning_plugins.sampling.epoch_position import EpochPosition

__all__ = ["ShuffleSampler"]


class ShuffleSampler(Sampler[int]):
    """Random permutation of ``range(size)`` per epoch, drawn from ``seed + epoch``.

    Unlike ``RandomSampler`` with a generator, the order of every epoch depends on
    ``(seed, epoch)`` only, so a run resumed from a checkpoint sees the same batches in
    every later epoch too. Lightning calls :meth:`set_epoch` at the start of each epoch
    (as for ``DistributedSampler``). ``state_dict`` holds the epoch and the number of
    indices handed out; torchdata's ``StatefulDataLoader`` saves it in checkpoints and
    the next iteration after :meth:`load_state_dict` skips what was already seen.

    The state also holds ``"config"``, the settings the position depends on (``kind``,
    ``size``, ``seed``): :meth:`load_state_dict` refuses a state saved with other settings
    or by another sampler (``ValueError`` naming each differing field and both values)
    instead of skipping the wrong samples. A state without ``"config"`` (saved by an
    earlier version) loads unchecked.

    Args:
        size: number of indices.
        seed: base seed.

    Raises:
        TypeError: for a ``size`` or ``seed`` that is not an integer.
        ValueError: for a negative ``size``.

    Example:
        >>> sampler = ShuffleSampler(5, seed=0)
        >>> first = list(sampler)
        >>> sorted(first), list(sampler) == first
        ([0, 1, 2, 3, 4], True)
        >>> sampler.set_epoch(1)
        >>> it = iter(sampler)
        >>> seen = [next(it), next(it)]
        >>> resumed = ShuffleSampler(5, seed=0)
        >>> resumed.load_state_dict(sampler.state_dict())
        >>> seen + list(resumed) == list(ShuffleSampler(5, seed=1))
        True
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = check_int(size, "size", low=0)
        self.seed = check_int(seed, "seed")
        self.position = EpochPosition()

    @property
    def epoch(self) -> int:
        """The epoch whose permutation is drawn."""
        return self.position.epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.position.set_epoch(epoch)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        return self._indices(order[self.position.start() :])

    def _indices(self, order: list[int]) -> Iterator[int]:
        for index in order:
            self.position.advance()
            yield index

    def config(self) -> dict[str, Any]:
        """The settings a saved position depends on (primitives)."""
        return {"kind": type(self).__name__, "size": self.size, "seed": self.seed}

    def state_dict(self) -> dict[str, Any]:
        """The epoch, how many of its indices were handed out, and :meth:`config`."""
        return {**self.position.state_dict(), "config": self.config()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue after the indices already handed out in the saved epoch.

        Raises:
            ValueError: for a state saved with another ``size`` or ``seed``, or not by a
                ``ShuffleSampler`` (the message names each difference).
        """
        check_resume_state(state_dict, "ShuffleSampler", self.config(), ("epoch", "yielded"))
        self.position.load_state_dict(state_dict)
