"""ReplicaWorld: the ranks a batch sampler works with, and its epoch, from Lightning or torch."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

__all__ = ["ReplicaWorld"]


class ReplicaWorld:
    """Mixin of the batch samplers: ``(num_replicas, rank)`` and the epoch, without a flag.

    Lightning re-creates a batch sampler under DDP with a ``DistributedSampler`` as its
    ``sampler`` argument; the sampler takes the number of replicas, the rank and the epoch
    from it (never its order). Without one, it asks ``torch.distributed`` when initialised,
    else assumes one process. Explicit ``num_replicas`` / ``rank`` override both.

    A class using it sets ``self.sampler`` (anything with ``epoch`` / ``set_epoch``, e.g.
    a :class:`~lightning_plugins.sampling.ShuffleSampler`), ``self._num_replicas`` and
    ``self._rank`` in ``__init__``.

    Example:
        >>> from lightning_plugins.sampling import ShuffleSampler
        >>> class Batches(ReplicaWorld):
        ...     def __init__(self, num_replicas=None, rank=None):
        ...         self.sampler = ShuffleSampler(8)
        ...         self._num_replicas, self._rank = num_replicas, rank
        >>> Batches().world(), Batches(num_replicas=4, rank=3).world()
        ((1, 0), (4, 3))
        >>> batches = Batches()
        >>> batches.set_epoch(2)
        >>> batches.epoch, batches.sampler.epoch
        (2, 2)
    """

    sampler: Any
    _num_replicas: int | None
    _rank: int | None

    def world(self) -> tuple[int, int]:
        """``(num_replicas, rank)`` this sampler works with."""
        if self._num_replicas is not None:
            return self._num_replicas, 0 if self._rank is None else self._rank
        if hasattr(self.sampler, "num_replicas") and hasattr(self.sampler, "rank"):
            return int(self.sampler.num_replicas), int(self.sampler.rank)
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank()
        return 1, 0

    @property
    def epoch(self) -> int:
        """The epoch, as set on ``sampler`` by Lightning's ``set_epoch``."""
        return int(getattr(self.sampler, "epoch", 0))

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch`` (forwarded to ``sampler``)."""
        if callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)

    @staticmethod
    def check_rank(num_replicas: int, rank: int) -> None:
        """Raise ``ValueError`` unless ``0 <= rank < num_replicas``."""
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"`rank` must be in [0, num_replicas), got rank {rank} and num_replicas "
                f"{num_replicas}."
            )
