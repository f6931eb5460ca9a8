"""CurriculumSampler: a batch sampler that callbacks steer (subset, weights, pacing) in place."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
from torch.utils.data import BatchSampler, Sampler

from lightning_plugins.functional._checks import (
    check_bool,
    check_int,
    check_resume_state,
)
from lightning_plugins.functional.random_streams import keyed_generator
from lightning_plugins.sampling.replica_world import ReplicaWorld
from lightning_plugins.sampling.shuffle_sampler import ShuffleSampler
from lightning_plugins.sampling.steered_position import SteeredPosition
from lightning_plugins.sampling.steering import (
    Steering,
    checked_pacing,
    checked_subset,
    checked_weights,
)

__all__ = ["CurriculumSampler", "Steering"]

_PASS_KEY = "curriculum-pass"  # separates this sampler's streams from other keyed users


class CurriculumSampler(ReplicaWorld, BatchSampler):
    """Batches of dataset indices that a callback steers: subset, weights and pacing.

    Every step yields exactly ``batch_size`` indices per rank; ``len`` is
    ``ceil(num_samples / (batch_size * num_replicas))`` steps (``floor`` with ``drop_last``),
    or exactly ``num_steps`` when given, the same on every rank. Unsteered on one process
    the batches are :class:`ShuffleSampler`'s order of ``(seed, epoch)`` cut into batches.

    **Selection.** An epoch is drawn in *passes*. A pass gives every sample a key: uniform,
    a random permutation (the first pass of an epoch uses ``torch.randperm`` seeded with
    ``seed + epoch``, later ones a keyed stream of ``(seed, epoch, pass)``); with
    ``weights``, the Efraimidis-Spirakis key ``E / w`` (``E ~ Exp(1)``, smallest first), so
    a pass visits the samples in a weighted random order without replacement. Each step
    takes, from its *pool* (allowed samples, narrowed by pacing), the
    ``batch_size * num_replicas`` samples with the smallest keys not yet drawn in the pass;
    when fewer remain, it takes them, starts the next pass (fresh keys, nothing drawn) and
    fills the rest, never repeating an index within a step unless the pool is smaller than
    the step. Rank ``r`` gets positions ``[r * batch_size, (r + 1) * batch_size)`` of the
    step's list, so the ranks' batches are disjoint.

    **Steering** (:meth:`set_subset`, :meth:`set_weights`, :meth:`set_pacing`) is checked
    at once and is *pending*: it takes effect at the first step of the next iteration
    (the next epoch), when that step is drawn. Within an epoch only the per-step
    ``fractions`` of pacing vary, and they are part of the state. A change thus takes
    effect at a defined step, never "when the prefetched batches run out": with
    ``num_workers > 0`` the loader draws indices ahead, and what it drew is what the step
    trains on. Callbacks steer in ``on_train_epoch_start``: Lightning calls it before the
    epoch's first draw, except in the first epoch of a ``fit`` with ``num_workers > 0``,
    whose iterator (and the workers' prefetching) Lightning starts before any training
    hook; there, steering from ``on_train_epoch_start`` applies from the second epoch on
    (with ``num_workers=0`` the first draw comes after the hook and epoch 0 is steered).
    Under DDP every rank must be steered the same (callbacks compute updates from
    all-reduced statistics).

    **DDP.** Create the sampler in ``train_dataloader``; under DDP Lightning re-creates it
    with a ``DistributedSampler`` as ``sampler``, from which it takes the epoch, the
    number of replicas and the rank (never the order): no extra Trainer flag. Without
    one it asks ``torch.distributed`` when initialised, else assumes one process;
    ``num_replicas`` / ``rank`` override both.

    **Resume.** ``state_dict()`` holds the epoch, the steps yielded in it, whether its
    iteration had begun, the active and the pending steering, and ``"config"``
    (``kind``, ``num_samples``, ``batch_size``, ``num_replicas``, ``seed``, ``drop_last``,
    ``num_steps``),
    checked on load (a ``ValueError`` names each difference). torchdata's
    ``StatefulDataLoader`` stores it in checkpoints (with workers, as of the step it
    snapshots); the resumed iteration replays the selection of the steps already
    yielded, on indices only (no data is loaded), and continues with exactly the batches
    the uninterrupted run would have drawn. A change made *during* an epoch may be older
    than the loader's last snapshot: steer at epoch start, as above.

    Args:
        num_samples: dataset size ``N``.
        batch_size: indices per batch and rank.
        seed: seed of every order.
        drop_last: drop the last, incomplete step instead of filling it from the next pass.
        sampler: set by Lightning under DDP; supplies epoch, replicas and rank only.
        num_replicas: number of ranks, overriding ``sampler`` and ``torch.distributed``.
        rank: this rank, in ``[0, num_replicas)``.
        num_steps: exactly this many steps per epoch (``None``: one pass, as above). The
            steps follow the same rule: when a pass runs out, the next pass continues it,
            so fewer steps than a pass see a part of the data and more see some samples
            again; every step is full, so ``drop_last`` has no effect.

    Raises:
        TypeError: for a ``num_samples``, ``batch_size``, ``seed``, ``num_steps``,
            ``num_replicas`` or ``rank`` that is not an integer, or a ``drop_last`` that is
            not a bool.
        ValueError: for non-positive sizes or ``num_steps``, an inconsistent ``rank``, or
            no step at all (``drop_last`` with fewer samples than one step of all ranks).

    Example:
        >>> sampler = CurriculumSampler(10, batch_size=4, seed=0)
        >>> len(sampler), [len(batch) for batch in sampler]
        (3, [4, 4, 4])
        >>> sampler.set_subset(torch.arange(5))  # pending: applies when the next epoch begins
        >>> sampler.set_pacing(torch.arange(10), torch.tensor([0.2, 0.6, 1.0], dtype=torch.float64))
        >>> sampler.set_epoch(1)
        >>> [sorted(batch) for batch in sampler]  # pools {0}, {0, 1, 2}, {0, ..., 4}
        [[0, 0, 0, 0], [0, 1, 1, 2], [0, 2, 3, 4]]
        >>> it = iter(sampler)
        >>> seen = [next(it)]
        >>> resumed = CurriculumSampler(10, batch_size=4, seed=0)
        >>> resumed.load_state_dict(sampler.state_dict())
        >>> seen + list(resumed) == list(sampler)
        True
        >>> [len(batch) for batch in CurriculumSampler(10, batch_size=4, num_steps=5)]
        [4, 4, 4, 4, 4]
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int = 0,
        drop_last: bool = False,
        sampler: Sampler[int] | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        num_steps: int | None = None,
    ) -> None:
        self._num_samples = check_int(num_samples, "num_samples", low=1)
        self._batch_size = check_int(batch_size, "batch_size", low=1)
        self.seed = check_int(seed, "seed")
        self.drop_last = check_bool(drop_last, "drop_last")
        self.num_steps = check_int(num_steps, "num_steps", low=1, optional=True)
        self._num_replicas = check_int(num_replicas, "num_replicas", low=1, optional=True)
        self._rank = check_int(rank, "rank", low=0, optional=True)
        self.sampler = sampler if sampler is not None else ShuffleSampler(num_samples, seed)
        self._check_world(*self.world())
        self._active = Steering()
        self._pending: Steering | None = None
        self._position = SteeredPosition()

    # ------------------------------------------------------------------------ properties
    @property
    def num_samples(self) -> int:
        """Dataset size ``N``."""
        return self._num_samples

    @property
    def batch_size(self) -> int:
        """Indices per batch and rank."""
        return self._batch_size

    @property
    def steering(self) -> Steering:
        """The steering in effect in the current epoch."""
        return self._active

    @property
    def pending(self) -> Steering:
        """The steering the next epoch will use (the current one when nothing changed)."""
        return self._active if self._pending is None else self._pending

    def __len__(self) -> int:
        num_replicas, _ = self.world()
        return self._num_steps(num_replicas)

    def _num_steps(self, num_replicas: int) -> int:
        if self.num_steps is not None:
            return self.num_steps
        step = self._batch_size * num_replicas
        if self.drop_last:
            return self._num_samples // step
        return -(-self._num_samples // step)

    def _check_world(self, num_replicas: int, rank: int) -> None:
        self.check_rank(num_replicas, rank)
        if self._num_steps(num_replicas) == 0:
            raise ValueError(
                f"`drop_last`=True with {num_replicas} ranks x `batch_size` {self._batch_size} "
                f"leaves no step: a step needs {num_replicas * self._batch_size} samples, more "
                f"than `num_samples` {self._num_samples}; lower `batch_size` or set "
                "`drop_last`=False."
            )

    # -------------------------------------------------------------------------- steering
    def set_subset(self, subset: Any) -> None:
        """Allow only ``subset`` from the next epoch on (``None``: all samples).

        Args:
            subset: a bool mask ``[num_samples]`` or integer indices (a tensor, array or
                list), or ``None``.

        Raises:
            TypeError: for anything else.
            ValueError: for a mask of the wrong length, indices outside
                ``[0, num_samples)``, or no sample left to draw (with the weights).
        """
        mask = None if subset is None else checked_subset(subset, self._num_samples)
        self._set(replace(self.pending, subset=mask), "subset")

    def set_weights(self, weights: Any) -> None:
        """Draw with per-sample ``weights`` from the next epoch on (``None``: uniform).

        A weight of 0 excludes a sample. Only ratios matter.

        Raises:
            TypeError: for weights that are not real numbers.
            ValueError: for the wrong length, NaN, infinite or negative weights, or no
                sample left to draw (with the subset).
        """
        checked = None if weights is None else checked_weights(weights, self._num_samples)
        self._set(replace(self.pending, weights=checked), "weights")

    def set_pacing(self, ranking: Any, fractions: Any) -> None:
        """Pace the allowed samples from the next epoch on (both ``None``: no pacing).

        At step ``s`` of the epoch only the first ``max(1, ceil(fractions[s] * n))`` of the
        ``n`` allowed samples, in ``ranking`` order, are in the pool.

        Args:
            ranking: a permutation of ``range(num_samples)``, easiest sample first.
            fractions: ``[len(self)]`` shares in ``(0, 1]``, one per step of the epoch
                (e.g. a pacing function of the global step). Pass float64: a float32
                ``0.2`` is ``0.2000000030``, and ``ceil(0.2000000030 * 5)`` is 2.

        Raises:
            TypeError: for non-integer ``ranking`` or non-real ``fractions``.
            ValueError: for one of them ``None`` and not the other, the wrong lengths, a
                ``ranking`` that is no permutation, or a fraction outside ``(0, 1]``.
        """
        if (ranking is None) != (fractions is None):
            given, missing = (
                ("ranking", "fractions") if fractions is None else ("fractions", "ranking")
            )
            raise ValueError(
                f"`{missing}` is None but `{given}` is not: pass both to pace the epoch, or "
                "both None to stop pacing."
            )
        if ranking is None:
            self._set(replace(self.pending, ranking=None, fractions=None), "ranking")
            return
        order, shares = checked_pacing(ranking, fractions, self._num_samples, len(self))
        self._set(replace(self.pending, ranking=order, fractions=shares), "ranking")

    def _set(self, steering: Steering, name: str) -> None:
        if not bool(steering.allowed(self._num_samples).any()):
            raise ValueError(
                f"This `{name}` leaves no sample to draw: `subset` and `weights` together "
                "must allow at least one sample (weight > 0 inside the subset)."
            )
        self._pending = steering

    def pool(self, step: int) -> torch.Tensor:
        """Bool mask ``[num_samples]`` of the pool at ``step`` of the current epoch."""
        return _EpochDraw(self, self.epoch, self.world()[0]).pool(step)

    # ------------------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[list[int]]:
        # the epoch (and its steering) is taken at the first draw, not when the loader is
        # iterated: Lightning creates the first epoch's iterator before any hook
        self._position.restart()
        return self._lazy()

    def _lazy(self) -> Iterator[list[int]]:
        yield from self._begin()

    def _begin(self) -> Iterator[list[int]]:
        num_replicas, rank = self.world()
        self._check_world(num_replicas, rank)
        epoch = self.epoch
        skip, fresh = self._position.begin(epoch)
        if fresh and self._pending is not None:  # a new iteration: the pending steering applies
            self._active, self._pending = self._pending, None
        fractions = self._active.fractions
        if fractions is not None and fractions.numel() != len(self):
            raise ValueError(
                f"`fractions` holds {fractions.numel()} entries, but this epoch has {len(self)} "
                "steps (the number of ranks changed?); call `set_pacing` with one per step."
            )
        return self._batches(_EpochDraw(self, epoch, num_replicas), skip, rank)

    def _batches(self, draw: _EpochDraw, skip: int, rank: int) -> Iterator[list[int]]:
        for step in range(skip):  # replay the selection (indices only) of the yielded steps
            draw.step(step)
        size = self._batch_size
        for step in range(skip, draw.num_steps):
            batch = draw.step(step)[rank * size : (rank + 1) * size].tolist()
            self._position.advance()
            yield batch

    # ---------------------------------------------------------------------------- resume
    def config(self) -> dict[str, Any]:
        """The settings a saved position depends on (primitives)."""
        return {
            "kind": type(self).__name__,
            "num_samples": self._num_samples,
            "batch_size": self._batch_size,
            "num_replicas": self.world()[0],
            "seed": self.seed,
            "drop_last": self.drop_last,
            "num_steps": self.num_steps,
        }

    def state_dict(self) -> dict[str, Any]:
        """Epoch, steps yielded, whether the epoch began, active/pending steering, config."""
        return {
            **self._position.state_dict(self.epoch),
            "steering": self._active.state_dict(),
            "pending": None if self._pending is None else self._pending.state_dict(),
            "config": self.config(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue after the steps already yielded in the saved epoch, steered as saved.

        Raises:
            ValueError: for a state saved with other settings (see :meth:`config`) or not
                by a ``CurriculumSampler`` (the message names each difference).
        """
        check_resume_state(state_dict, "CurriculumSampler", self.config(), ("epoch", "yielded"))
        active = self._checked_steering(state_dict.get("steering"))
        pending = state_dict.get("pending")
        self._pending = None if pending is None else self._checked_steering(pending)
        self._active = active
        self.set_epoch(self._position.load_state_dict(state_dict))

    def _checked_steering(self, saved: dict[str, Any] | None) -> Steering:
        """A saved steering, through the same checks as the setters."""
        keep, self._pending = self._pending, Steering()
        try:
            if saved:
                self.set_subset(saved.get("subset"))
                self.set_weights(saved.get("weights"))
                self.set_pacing(saved.get("ranking"), saved.get("fractions"))
            return self._pending
        finally:
            self._pending = keep


class _EpochDraw:
    """The selection of one epoch, step by step (see :class:`CurriculumSampler`)."""

    def __init__(self, sampler: CurriculumSampler, epoch: int, num_replicas: int) -> None:
        steering = sampler.steering
        self.seed, self.epoch = sampler.seed, epoch
        self.num_samples = sampler.num_samples
        self.global_size = sampler.batch_size * num_replicas
        self.num_steps = sampler._num_steps(num_replicas)
        self.weights = steering.weights
        self.allowed = steering.allowed(self.num_samples)
        self.limits: torch.Tensor | None = None
        if steering.ranking is not None and steering.fractions is not None:
            ranked = self.allowed[steering.ranking]
            self.allowed_rank = torch.empty(self.num_samples, dtype=torch.long)
            self.allowed_rank[steering.ranking] = torch.cumsum(ranked, 0)
            count = float(int(ranked.sum()))
            self.limits = torch.ceil(steering.fractions * count).long().clamp(min=1)
        # without pacing the pool is the same at every step: walk the pass in order, O(B)
        self.static = self.limits is None and int(self.allowed.sum()) >= self.global_size
        self.pass_index = -1
        self._new_pass()

    def _new_pass(self) -> None:
        self.pass_index += 1
        self.drawn = torch.zeros(self.num_samples, dtype=torch.bool)
        if self.weights is None:
            if self.pass_index == 0:
                generator = torch.Generator().manual_seed(self.seed + self.epoch)
            else:
                generator = keyed_generator(_PASS_KEY, self.seed, self.epoch, self.pass_index)
            self.order = torch.randperm(self.num_samples, generator=generator)
        else:
            generator = keyed_generator(_PASS_KEY, self.seed, self.epoch, self.pass_index)
            exponential = torch.empty(self.num_samples, dtype=torch.float64)
            exponential.exponential_(generator=generator)
            keys = torch.where(self.weights > 0, exponential / self.weights, torch.inf)
            self.order = torch.argsort(keys, stable=True)
        if self.static:  # the pool's samples in pass order, not yet drawn from `position` on
            self.sequence = self.order[self.allowed[self.order]]
            self.position = 0

    def pool(self, step: int) -> torch.Tensor:
        if self.limits is None:
            return self.allowed
        return self.allowed & (self.allowed_rank <= self.limits[step])

    def step(self, step: int) -> torch.Tensor:
        """The global list of ``step``: ``global_size`` indices, smallest keys first."""
        if self.static:
            return self._static_step()
        pool = self.pool(step)
        in_step = torch.zeros(self.num_samples, dtype=torch.bool)
        chosen: list[torch.Tensor] = []
        need = self.global_size
        while need:
            left = pool & ~self.drawn
            fresh = left & ~in_step
            if bool(fresh.any()):
                left = fresh
            elif not bool(left.any()):
                self._new_pass()
                continue
            picks = self.order[left[self.order]][:need]
            self.drawn[picks] = True
            in_step[picks] = True
            chosen.append(picks)
            need -= picks.numel()
        return torch.cat(chosen)

    def _static_step(self) -> torch.Tensor:
        """:meth:`step` for a pool that does not change within the epoch, in O(batch).

        The same rule: the next undrawn samples of the pass; when the pass runs out, the
        rest from the next pass, skipping the samples this step already took (which stay
        in the new pass, in their place, for later steps).
        """
        taken = self.sequence[self.position : self.position + self.global_size]
        self.position += taken.numel()
        need = self.global_size - taken.numel()
        if not need:
            return taken
        self._new_pass()
        in_step = torch.zeros(self.num_samples, dtype=torch.bool)
        in_step[taken] = True
        picks = self.sequence[~in_step[self.sequence]][:need]
        picked = torch.zeros(self.num_samples, dtype=torch.bool)
        picked[picks] = True
        self.sequence = self.sequence[~picked[self.sequence]]
        return torch.cat([taken, picks])
