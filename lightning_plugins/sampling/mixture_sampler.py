"""MixtureSampler: batches over concatenated sources, mixed by weights that callbacks steer."""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import BatchSampler, Sampler

from lightning_plugins.functional._checks import (
    _type_name,
    check_choice,
    check_int,
    check_resume_state,
)
from lightning_plugins.functional.mixing import check_mixture_weights
from lightning_plugins.functional.random_streams import keyed_generator
from lightning_plugins.sampling.replica_world import ReplicaWorld
from lightning_plugins.sampling.shuffle_sampler import ShuffleSampler
from lightning_plugins.sampling.steerable import find_one_sampler
from lightning_plugins.sampling.steered_position import SteeredPosition

__all__ = ["MODES", "MixtureSampler", "find_mixture_sampler"]

MODES = ("dynamic", "static", "stratified")
_STEP_KEY = "mixture-step"  # separates this sampler's streams from other keyed users
_PASS_KEY = "mixture-pass"


class MixtureSampler(ReplicaWorld, BatchSampler):
    """Batches over a concatenation of sources, each batch's sources drawn from mixture weights.

    The dataset is the concatenation of ``k`` sources: global index
    ``offset[s] + i`` is sample ``i`` of source ``s`` (``offset[s]`` = the sizes before
    ``s``; :meth:`source_of` inverts it). Every step yields exactly ``batch_size`` indices
    per rank; ``len`` is ``num_steps``, or ``ceil(sum(source_sizes) / (batch_size *
    num_replicas))``, the same on every rank.

    **Selection.** Each step ``t`` of epoch ``e`` draws a *global batch* of
    ``G = batch_size * num_replicas`` indices with the keyed generator of
    ``(seed, e, t)``, in this order:

    1. a random order ``pi`` of the sources (``torch.randperm(k)``);
    2. the *counts* per source: ``dynamic`` and ``static`` draw ``G`` sources i.i.d. from
       the weights (``torch.multinomial`` with replacement, then counted), so a batch is
       a sample of the mixture and the frequencies converge to the weights; ``stratified``
       gives every source ``G // k`` and one more to the first ``G % k`` sources of ``pi``
       (the counts differ by at most 1, weights ignored);
    3. each source's samples: a source is read in *passes*, each a random permutation of
       the source keyed by ``(seed, e, source, pass)``; a step takes the next ``count``
       of the current pass. When the pass runs out, the next begins, with the samples
       this step already took from the source moved (stably) to its end, so a step
       repeats a sample only when it takes more than the source holds, and every pass
       visits each sample once. Passes restart with every epoch;
    4. the step's list: the sources' samples concatenated in the order ``pi``, dealt
       round-robin to the ranks (position ``j`` to rank ``j % num_replicas``), each
       rank's ``batch_size`` shuffled (``torch.rand`` keys); rank ``r`` takes positions
       ``[r * batch_size, (r + 1) * batch_size)`` of it. The ranks' batches are
       disjoint (unless a source is smaller than its count) and each rank gets
       ``floor`` or ``ceil`` of ``count / num_replicas`` of every source: with
       ``stratified`` every rank's batch, not only the global one, holds each source's
       share ``±1``.

    Per step this costs ``O(k + G)`` tensor work (plus a permutation of a source when a
    pass of it begins); there is no Python loop over samples.

    **Weights** (``dynamic``, ``static``): ``weights`` at construction (``None``:
    proportional to the source sizes, i.e. every sample equally likely), checked and
    normalised to sum to 1 (only ratios matter; 0 excludes a source). In ``dynamic``
    mode a callback steers them with :meth:`set_weights`, which is checked at once and
    *pending*: it takes effect at the first step of the next iteration (the next epoch),
    when that step is drawn, never "when the prefetched batches run out", so a run with
    ``num_workers > 0`` and its resumed copy see the same batches. As with
    :class:`CurriculumSampler`, Lightning starts the first epoch's iterator (and the
    workers' prefetching) of a ``fit`` with ``num_workers > 0`` before any hook, so
    weights set in ``on_train_epoch_start`` apply from the second epoch on there. To
    update every ``n`` steps, give the loader epochs of ``n`` steps (``num_steps``).
    Under DDP every rank must set the same weights (computed from all-reduced
    statistics). ``static`` refuses :meth:`set_weights`; ``stratified`` ignores weights
    (``weights`` reports the uniform share).

    **DDP.** Create the sampler in ``train_dataloader``; under DDP Lightning re-creates it
    with a ``DistributedSampler`` as ``sampler``, from which it takes the epoch, the
    number of replicas and the rank (never the order). Without one it asks
    ``torch.distributed`` when initialised, else assumes one process; ``num_replicas`` /
    ``rank`` override both. Every rank draws the same global batch and takes its slice.

    **Resume.** ``state_dict()`` holds the epoch, the steps yielded in it, whether its
    iteration had begun, the active and the pending weights, and ``"config"``
    (``kind``, ``source_sizes``, ``batch_size``, ``num_replicas``, ``seed``, ``mode``,
    ``num_steps``), checked on load (a ``ValueError`` names each difference; in
    ``static`` mode the weights must match too). torchdata's ``StatefulDataLoader``
    stores it in checkpoints; the resumed iteration replays the counts and pass positions
    of the steps already yielded, on indices only (no data is loaded), and continues
    with exactly the batches the uninterrupted run would have drawn.

    Args:
        source_sizes: the number of samples of each source (each at least 1).
        batch_size: indices per batch and rank.
        weights: ``[k]`` mixture weights (``None``: proportional to ``source_sizes``).
        mode: ``"dynamic"``, ``"static"`` or ``"stratified"``.
        seed: seed of every draw.
        num_steps: steps per epoch (``None``: one pass over the concatenation's size).
        sampler: set by Lightning under DDP; supplies epoch, replicas and rank only.
        num_replicas: number of ranks, overriding ``sampler`` and ``torch.distributed``.
        rank: this rank, in ``[0, num_replicas)``.

    Raises:
        TypeError: for a size, ``batch_size``, ``seed``, ``num_steps``, ``num_replicas``
            or ``rank`` that is not an integer, or non-numeric ``weights``.
        ValueError: for no source or an empty one, non-positive sizes, an unknown
            ``mode``, bad ``weights`` (see :func:`check_mixture_weights`) or an
            inconsistent ``rank``.

    Example:
        >>> sampler = MixtureSampler([6, 4], batch_size=5, weights=[1, 1], seed=0)
        >>> len(sampler), [sampler.source_of(i) for i in (0, 5, 6, 9)]
        (2, [0, 0, 1, 1])
        >>> sampler.set_weights([3, 0])  # normalised; pending until the next epoch's first draw
        >>> sampler.weights.tolist(), sampler.pending_weights.tolist()
        ([0.5, 0.5], [1.0, 0.0])
        >>> sampler.set_epoch(1)
        >>> [[sampler.source_of(i) for i in batch] for batch in sampler]
        [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
        >>> stratified = MixtureSampler([6, 4, 9], batch_size=4, mode="stratified")
        >>> [sorted(stratified.source_of(i) for i in batch) for batch in stratified][:2]
        [[0, 0, 1, 2], [0, 1, 1, 2]]
        >>> it = iter(stratified)
        >>> seen = [next(it)]
        >>> resumed = MixtureSampler([6, 4, 9], batch_size=4, mode="stratified")
        >>> resumed.load_state_dict(stratified.state_dict())
        >>> seen + list(resumed) == list(stratified)
        True
    """

    def __init__(
        self,
        source_sizes: Sequence[int],
        batch_size: int,
        weights: Sequence[float] | torch.Tensor | None = None,
        mode: str = "dynamic",
        seed: int = 0,
        num_steps: int | None = None,
        sampler: Sampler[int] | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        self._sizes = _checked_sizes(source_sizes)
        self._ends = [sum(self._sizes[: s + 1]) for s in range(len(self._sizes))]
        self._batch_size = check_int(batch_size, "batch_size", low=1)
        self.mode = check_choice(mode, "mode", MODES)
        self.seed = check_int(seed, "seed")
        self._num_steps = check_int(num_steps, "num_steps", low=1, optional=True)
        self._num_replicas = check_int(num_replicas, "num_replicas", low=1, optional=True)
        self._rank = check_int(rank, "rank", low=0, optional=True)
        self.drop_last = False  # read by loaders that inspect batch samplers
        total = self._ends[-1]
        self.sampler = sampler if sampler is not None else ShuffleSampler(total, seed)
        self.check_rank(*self.world())
        if mode == "stratified":
            weights = None
        if weights is None:
            weights = torch.tensor(self._sizes, dtype=torch.float64)
        self._initial = check_mixture_weights(weights, "weights", len(self._sizes))
        if mode == "stratified":
            self._initial = torch.full_like(self._initial, 1.0 / len(self._sizes))
        self._active = self._initial.clone()
        self._pending: torch.Tensor | None = None
        self._position = SteeredPosition()

    # ------------------------------------------------------------------------ properties
    @property
    def source_sizes(self) -> list[int]:
        """The number of samples of each source."""
        return list(self._sizes)

    @property
    def num_sources(self) -> int:
        """The number of sources ``k``."""
        return len(self._sizes)

    @property
    def num_samples(self) -> int:
        """The size of the concatenation (the dataset the indices point into)."""
        return self._ends[-1]

    @property
    def batch_size(self) -> int:
        """Indices per batch and rank."""
        return self._batch_size

    @property
    def weights(self) -> torch.Tensor:
        """The float64 ``[k]`` weights in effect in the current epoch (sum 1; a copy)."""
        return self._active.clone()

    @property
    def pending_weights(self) -> torch.Tensor:
        """The weights the next epoch will use (the current ones when none were set)."""
        return (self._active if self._pending is None else self._pending).clone()

    def source_of(self, index: int) -> int:
        """The source of global ``index`` (in ``[0, num_samples)``)."""
        index = check_int(index, "index", low=0, high=self.num_samples - 1)
        return bisect.bisect_right(self._ends, index)

    def __len__(self) -> int:
        if self._num_steps is not None:
            return self._num_steps
        step = self._batch_size * self.world()[0]
        return -(-self.num_samples // step)

    # -------------------------------------------------------------------------- steering
    def set_weights(self, weights: Any) -> None:
        """Mix with ``weights`` from the next epoch's first draw on (``dynamic`` mode only).

        Args:
            weights: ``[num_sources]`` non-negative finite weights, not all 0; normalised
                to sum to 1 (0 excludes a source).

        Raises:
            TypeError: for weights that are not real numbers.
            ValueError: in ``static`` or ``stratified`` mode, or for the wrong length,
                NaN, infinite or negative weights, or all 0.
        """
        if self.mode != "dynamic":
            why = "fixed weights" if self.mode == "static" else "equal shares, weights ignored"
            raise ValueError(
                f"`set_weights` needs `mode`='dynamic', but this MixtureSampler has "
                f"`mode`={self.mode!r} ({why}); create it with mode='dynamic' to steer the "
                "mixture."
            )
        self._pending = check_mixture_weights(weights, "weights", self.num_sources)

    # ------------------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[list[int]]:
        # the epoch (and its weights) is taken at the first draw, not when the loader is
        # iterated: Lightning creates the first epoch's iterator before any hook
        self._position.restart()
        return self._lazy()

    def _lazy(self) -> Iterator[list[int]]:
        yield from self._begin()

    def _begin(self) -> Iterator[list[int]]:
        num_replicas, rank = self.world()
        self.check_rank(num_replicas, rank)
        epoch = self.epoch
        skip, fresh = self._position.begin(epoch)
        if fresh and self._pending is not None:  # a new iteration: the pending weights apply
            self._active, self._pending = self._pending, None
        return self._batches(_EpochDraw(self, epoch, num_replicas), skip, rank)

    def _batches(self, draw: _EpochDraw, skip: int, rank: int) -> Iterator[list[int]]:
        for step in range(skip):  # replay the counts and pass positions of the yielded steps
            draw.step(step, deal=False)
        size = self._batch_size
        for step in range(skip, len(self)):
            batch = draw.step(step)[rank * size : (rank + 1) * size].tolist()
            self._position.advance()
            yield batch

    # ---------------------------------------------------------------------------- resume
    def config(self) -> dict[str, Any]:
        """The settings a saved position depends on (primitives)."""
        return {
            "kind": type(self).__name__,
            "source_sizes": list(self._sizes),
            "batch_size": self._batch_size,
            "num_replicas": self.world()[0],
            "seed": self.seed,
            "mode": self.mode,
            "num_steps": self._num_steps,
        }

    def state_dict(self) -> dict[str, Any]:
        """Epoch, steps yielded, whether the epoch began, active/pending weights, config."""
        return {
            **self._position.state_dict(self.epoch),
            "weights": self._active.clone(),
            "pending": None if self._pending is None else self._pending.clone(),
            "config": self.config(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue after the steps already yielded in the saved epoch, mixed as saved.

        Raises:
            ValueError: for a state saved with other settings (see :meth:`config`), with
                other weights in ``static`` mode, or not by a ``MixtureSampler`` (the
                message names each difference).
        """
        check_resume_state(
            state_dict, "MixtureSampler", self.config(), ("epoch", "yielded", "weights")
        )
        active = check_mixture_weights(state_dict["weights"], "weights", self.num_sources)
        pending = state_dict.get("pending")
        if pending is not None:
            pending = check_mixture_weights(pending, "pending", self.num_sources)
        if self.mode == "static" and not torch.allclose(active, self._initial):
            raise ValueError(
                f"Cannot resume MixtureSampler from this state: it was saved with static "
                f"weights {active.tolist()}, but this one has {self._initial.tolist()}. Resume "
                "with the same settings, or start the epoch afresh without this state."
            )
        self._active, self._pending = active, pending
        self.set_epoch(self._position.load_state_dict(state_dict))


def find_mixture_sampler(dataloader: Any) -> MixtureSampler:
    """The one :class:`MixtureSampler` in ``dataloader`` (e.g. ``trainer.train_dataloader``).

    The search of :func:`find_steerable_sampler`: a DataLoader's ``batch_sampler`` then
    its ``sampler``, the entries of lists, tuples and dicts, and the ``.iterables`` of
    Lightning's ``CombinedLoader``, recursively; public attributes only.

    Raises:
        ValueError: when there is none (the message names what was found and how to add
            one) or more than one (the message names where each is).

    Example:
        >>> from torch.utils.data import DataLoader
        >>> sampler = MixtureSampler([5, 3], batch_size=2)
        >>> find_mixture_sampler({"mix": DataLoader(range(8), batch_sampler=sampler)}) is sampler
        True
        >>> find_mixture_sampler(DataLoader(range(8), shuffle=True))
        Traceback (most recent call last):
        ...
        ValueError: No mixture sampler in the train dataloader: found DataLoader(batch_sampler=BatchSampler, sampler=RandomSampler). ...
    """  # noqa: E501
    return find_one_sampler(
        dataloader,
        lambda obj: isinstance(obj, MixtureSampler),
        "mixture sampler",
        "Build the training DataLoader over the concatenated sources with "
        "`batch_sampler=MixtureSampler(source_sizes, batch_size, weights=..., seed=...)` "
        "from `lightning_plugins.sampling` (`datamodules.MixtureDataModule` does).",
    )


def _checked_sizes(source_sizes: Any) -> list[int]:
    if isinstance(source_sizes, torch.Tensor):
        source_sizes = source_sizes.tolist()
    if isinstance(source_sizes, str | bytes) or not isinstance(source_sizes, Sequence):
        raise TypeError(
            f"`source_sizes` must be a sequence of integers (one size per source), got "
            f"{source_sizes!r} ({_type_name(source_sizes)})."
        )
    if len(source_sizes) == 0:
        raise ValueError(
            f"`source_sizes` must hold at least one source, got {list(source_sizes)!r}."
        )
    sizes = [check_int(size, f"source_sizes[{s}]", low=0) for s, size in enumerate(source_sizes)]
    for position, size in enumerate(sizes):
        if size == 0:
            raise ValueError(
                f"`source_sizes[{position}]` is 0: source {position} is an empty source, got "
                f"`source_sizes`={sizes}; every source needs at least one sample."
            )
    return sizes


class _EpochDraw:
    """The selection of one epoch, step by step (see :class:`MixtureSampler`)."""

    def __init__(self, sampler: MixtureSampler, epoch: int, num_replicas: int) -> None:
        self.seed, self.epoch = sampler.seed, epoch
        self.sizes = sampler.source_sizes
        self.offsets = [end - size for end, size in zip(sampler._ends, self.sizes, strict=True)]
        self.stratified = sampler.mode == "stratified"
        self.weights = sampler._active
        self.batch_size, self.num_replicas = sampler.batch_size, num_replicas
        k = len(self.sizes)
        self.passes = [-1] * k
        self.cursors = [0] * k
        self.orders: list[torch.Tensor | None] = [None] * k

    def counts(self, generator: torch.Generator) -> tuple[list[int], list[int]]:
        """The source order ``pi`` and the count of each source, for one step."""
        k = len(self.sizes)
        global_size = self.batch_size * self.num_replicas
        order = torch.randperm(k, generator=generator)
        if self.stratified:
            share, extra = divmod(global_size, k)
            counts = torch.full((k,), share, dtype=torch.long)
            counts[order[:extra]] += 1
        else:
            draws = torch.multinomial(self.weights, global_size, True, generator=generator)
            counts = torch.bincount(draws, minlength=k)
        return order.tolist(), counts.tolist()

    def take(self, source: int, count: int) -> torch.Tensor:
        """The next ``count`` local indices of ``source``'s passes."""
        size = self.sizes[source]
        parts: list[torch.Tensor] = []
        while count:
            order = self.orders[source]
            if order is None or self.cursors[source] == size:
                order = self._new_pass(source, parts)
            start = self.cursors[source]
            part = order[start : start + count]
            self.cursors[source] = start + part.numel()
            parts.append(part)
            count -= part.numel()
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _new_pass(self, source: int, taken: list[torch.Tensor]) -> torch.Tensor:
        self.passes[source] += 1
        size = self.sizes[source]
        generator = keyed_generator(_PASS_KEY, self.seed, self.epoch, source, self.passes[source])
        order = torch.randperm(size, generator=generator)
        if taken:  # this step's samples of the source go last, so the step repeats none
            in_step = torch.zeros(size, dtype=torch.bool)
            in_step[torch.cat(taken)] = True
            later = in_step[order]
            order = torch.cat((order[~later], order[later]))
        self.orders[source], self.cursors[source] = order, 0
        return order

    def step(self, step: int, deal: bool = True) -> torch.Tensor:
        """The step's list of ``batch_size * num_replicas`` global indices (rank-major)."""
        generator = keyed_generator(_STEP_KEY, self.seed, self.epoch, step)
        order, counts = self.counts(generator)
        parts = [
            self.take(source, counts[source]) + self.offsets[source]
            for source in order
            if counts[source]
        ]
        if not deal:  # a replayed step: only the pass positions matter
            return parts[0]
        listing = torch.cat(parts).view(self.batch_size, self.num_replicas).t()
        keys = torch.rand(self.num_replicas, self.batch_size, generator=generator)
        return listing.gather(1, torch.argsort(keys, dim=1, stable=True)).reshape(-1)
