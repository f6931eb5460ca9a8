"""Concept-Aware Batch Sampling (CABS) for map-style datasets, selecting on metadata only."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import BatchSampler, Sampler

from lightning_plugins.functional._checks import check_int, check_length, check_resume_state
from lightning_plugins.functional.cabs_select import (
    cabs_generator,
    cabs_select,
    check_cabs_arguments,
    check_cabs_targets,
)
from lightning_plugins.functional.concept_lists import ConceptLists, concept_csr, concept_rows
from lightning_plugins.sampling.replica_world import ReplicaWorld
from lightning_plugins.sampling.shuffle_sampler import ShuffleSampler

__all__ = ["ConceptAwareBatchSampler", "super_batch_size"]


def super_batch_size(batch_size: int, filter_ratio: float) -> int:
    """Candidates per step and rank: ``batch_size / (1 - filter_ratio)``, rounded.

    Example:
        >>> super_batch_size(1024, 0.8)
        5120
    """
    return max(batch_size, round(batch_size / (1.0 - filter_ratio)))


class ConceptAwareBatchSampler(ReplicaWorld, BatchSampler):
    """Batches chosen by CABS from super-batches, using concept annotations only.

    Each step, every rank takes its share of a global super-batch of
    ``num_replicas * super_batch_size`` candidates (``super_batch_size = batch_size / (1 -
    filter_ratio)``) and keeps ``batch_size`` of them with
    :func:`~lightning_plugins.functional.cabs_select`. The choice reads the annotations
    held here, so the DataLoader loads and decodes only the chosen samples. The
    candidates of an epoch are a permutation drawn from ``(seed, epoch)``; the last
    incomplete global super-batch is dropped.

    Under DDP every rank yields exactly ``batch_size`` indices per step, the ranks'
    candidates (so their batches) are disjoint, and the DM targets are computed from the
    *global* super-batch: uniform over the concepts present in it (or the user's
    ``targets``), the same on every rank without any communication. Each rank selects
    from its own candidates with the per-rank ``cap``, as the reference does per GPU.
    DM breaks ties with :func:`~lightning_plugins.functional.cabs_select.cabs_generator` keyed by
    ``(seed, epoch, step, 0, rank)``, the scheme :class:`ConceptAwareStream` uses.

    Lightning needs no extra flag: create the sampler in ``train_dataloader`` and, under
    DDP, Lightning hands it a ``DistributedSampler`` as ``sampler``, from which it takes
    the epoch, the number of replicas and the rank (never the order). Without one, it
    asks ``torch.distributed`` when initialised, else assumes one process.

    ``state_dict()`` holds the epoch, the batches already yielded and the current
    targets; torchdata's ``StatefulDataLoader`` stores it in checkpoints, and a resumed
    run continues with exactly the batches it would have seen. The state's ``"config"``
    holds what the position depends on (``kind``, ``num_samples``, ``batch_size``,
    ``super_batch_size``, ``num_replicas``, ``seed``, ``num_concepts``); a state saved
    with other values, or by another sampler, is refused with a ``ValueError`` naming each
    difference, instead of skipping the wrong batches. ``variant`` and ``cap`` may change
    between runs (they steer the choice, not the position). A state without ``"config"``
    (saved by an earlier version) loads unchecked.

    Its seventeen attributes are the settings, the annotations (CSR arrays), the world it
    runs in and the position (batches yielded, a pending resume): what ``BatchSampler``,
    DDP and an exact resume need.

    Args:
        concepts: concept ids of every dataset sample (see
            :data:`~lightning_plugins.functional.concept_lists.ConceptLists`). Samples
            without concepts are allowed and are picked last.
        batch_size: indices per batch and rank.
        filter_ratio: share of the candidates dropped, in ``[0, 1)`` (0.8 in the paper).
        variant: ``"dm"`` (diversity maximisation) or ``"fm"`` (frequency maximisation).
        targets: a distribution over the concept vocabulary for DM, or ``None`` for
            uniform over the concepts of each global super-batch.
        cap: most occurrences of one concept per batch and rank (DM), or ``None``.
        seed: seed of the candidate order and of DM's tie-breaking.
        num_concepts: vocabulary size; defaults to ``len(targets)``, else the largest id
            plus one.
        sampler: set by Lightning under DDP; supplies epoch, replicas and rank only.
        num_replicas: number of ranks, overriding what ``sampler`` or
            ``torch.distributed`` say.
        rank: this rank, in ``[0, num_replicas)``.

    Raises:
        TypeError: for a ``batch_size``, ``cap``, ``seed``, ``num_concepts``,
            ``num_replicas`` or ``rank`` that is not an integer, or a ``filter_ratio``
            that is not a number.
        ValueError: for a bad ``batch_size``, ``filter_ratio``, ``variant``, ``cap``,
            ``targets``, an id outside the vocabulary, a super-batch larger than the
            dataset, or an inconsistent ``num_replicas`` / ``rank``.

    Example:
        >>> concepts = [[i % 7] * (1 + i % 3) for i in range(40)]
        >>> sampler = ConceptAwareBatchSampler(concepts, batch_size=4, filter_ratio=0.5)
        >>> len(sampler), [len(batch) for batch in sampler]
        (5, [4, 4, 4, 4, 4])
        >>> it = iter(sampler)
        >>> seen = [next(it), next(it)]
        >>> resumed = ConceptAwareBatchSampler(concepts, batch_size=4, filter_ratio=0.5)
        >>> resumed.load_state_dict(sampler.state_dict())
        >>> seen + list(resumed) == list(sampler)
        True
    """

    def __init__(
        self,
        concepts: ConceptLists,
        batch_size: int,
        filter_ratio: float = 0.8,
        variant: str = "dm",
        targets: torch.Tensor | Sequence[float] | None = None,
        cap: int | None = 10,
        seed: int = 0,
        num_concepts: int | None = None,
        sampler: Sampler[int] | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        batch_size = check_int(batch_size, "batch_size", low=1)
        targets = check_cabs_arguments(filter_ratio, variant, cap, targets)
        seed = check_int(seed, "seed")
        num_concepts = check_int(num_concepts, "num_concepts", low=1, optional=True)
        num_replicas = check_int(num_replicas, "num_replicas", low=1, optional=True)
        rank = check_int(rank, "rank", low=0, optional=True)
        if targets is not None:
            if num_concepts is not None:
                check_length(targets, "targets", num_concepts, "concept")
            num_concepts = targets.numel()
        self.ids, self.offsets = concept_csr(concepts, num_concepts)
        self.num_samples = self.offsets.numel() - 1
        self.num_concepts = (
            num_concepts
            if num_concepts is not None
            else (int(self.ids.max()) + 1 if self.ids.numel() else 1)
        )
        self.batch_size = batch_size
        self.filter_ratio = float(filter_ratio)
        self.super_batch_size = super_batch_size(batch_size, self.filter_ratio)
        if self.super_batch_size > self.num_samples:
            raise ValueError(
                f"`batch_size` {batch_size} at `filter_ratio` {filter_ratio} needs super-batches "
                f"of {self.super_batch_size} candidates, more than the {self.num_samples} samples "
                "of the dataset; lower one of them."
            )
        self.variant = variant
        self.targets = targets
        self.cap = cap
        self.seed = seed
        self.sampler = sampler if sampler is not None else ShuffleSampler(self.num_samples, seed)
        self.drop_last = True  # an incomplete super-batch is never used
        self._num_replicas, self._rank = num_replicas, rank
        self._check_world(*self.world())
        self._yielded = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches to skip)

    def set_targets(self, targets: torch.Tensor | Sequence[float] | None) -> None:
        """Steer DM towards ``targets`` (a distribution over concepts) from the next batch."""
        if targets is not None:
            targets = check_cabs_targets(torch.as_tensor(targets))
            check_length(targets, "targets", self.num_concepts, "concept")
        self.targets = targets

    def __len__(self) -> int:
        num_replicas, _ = self.world()
        return self.num_samples // (num_replicas * self.super_batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        num_replicas, rank = self.world()
        self._check_world(num_replicas, rank)
        epoch = self.epoch
        skip = 0
        if self._resume is not None and self._resume[0] == epoch:
            skip = self._resume[1]
        self._resume = None
        self._yielded = skip  # now, not at the first batch: a state saved before it is right
        return self._batches(self._order(epoch), skip, epoch, num_replicas, rank)

    def _batches(
        self, order: torch.Tensor, skip: int, epoch: int, num_replicas: int, rank: int
    ) -> Iterator[list[int]]:
        global_size = num_replicas * self.super_batch_size
        for step in range(skip, len(self)):
            candidates = order[step * global_size : (step + 1) * global_size]
            batch = self._select(candidates, step, epoch, rank)
            self._yielded += 1
            yield batch

    def step_targets(self, candidates: torch.Tensor) -> torch.Tensor | None:
        """DM targets for the global super-batch ``candidates``, the same on every rank.

        The user's ``targets`` when set, else uniform over the concepts present in the
        global super-batch; ``None`` for FM.
        """
        if self.variant != "dm":
            return None
        if self.targets is not None:
            return self.targets
        global_ids, _ = concept_rows(self.ids, self.offsets, candidates)
        present = torch.zeros(self.num_concepts, dtype=torch.float64)
        present[global_ids] = 1.0
        if not present.any():  # no annotations at all: any distribution will do
            return torch.full((self.num_concepts,), 1.0 / self.num_concepts, dtype=torch.float64)
        return present / present.sum()

    def _select(self, candidates: torch.Tensor, step: int, epoch: int, rank: int) -> list[int]:
        """This rank's batch from the global super-batch ``candidates``."""
        size = self.super_batch_size
        local = candidates[rank * size : (rank + 1) * size]
        chosen = cabs_select(
            concept_rows(self.ids, self.offsets, local),
            self.batch_size,
            self.variant,
            targets=self.step_targets(candidates),
            cap=self.cap,
            generator=cabs_generator(self.seed, epoch, step, 0, rank),
            num_concepts=self.num_concepts,
        )
        return local[chosen].tolist()

    def candidates(self, step: int) -> torch.Tensor:
        """Dataset indices of the global super-batch of ``step`` in the current epoch."""
        num_replicas, _ = self.world()
        global_size = num_replicas * self.super_batch_size
        return self._order(self.epoch)[step * global_size : (step + 1) * global_size]

    def _order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.num_samples, generator=generator)

    def _check_world(self, num_replicas: int, rank: int) -> None:
        self.check_rank(num_replicas, rank)
        if self.num_samples < num_replicas * self.super_batch_size:
            raise ValueError(
                f"{num_replicas} ranks x {self.super_batch_size} candidates per super-batch need "
                f"more than the {self.num_samples} samples of the dataset; lower `batch_size` "
                "or `filter_ratio`."
            )

    def config(self) -> dict[str, Any]:
        """The settings a saved position depends on (primitives)."""
        return {
            "kind": type(self).__name__,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "super_batch_size": self.super_batch_size,
            "num_replicas": self.world()[0],
            "seed": self.seed,
            "num_concepts": self.num_concepts,
        }

    def state_dict(self) -> dict[str, Any]:
        """The epoch, the batches yielded in it, the current targets and :meth:`config`."""
        return {
            "epoch": self.epoch,
            "yielded": self._yielded,
            "targets": None if self.targets is None else self.targets.clone(),
            "config": self.config(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue after the batches already yielded in the saved epoch.

        Raises:
            ValueError: for a state saved with other settings (see :meth:`config`) or not
                by a ``ConceptAwareBatchSampler`` (the message names each difference).
        """
        check_resume_state(
            state_dict, "ConceptAwareBatchSampler", self.config(), ("epoch", "yielded")
        )
        self._resume = (int(state_dict["epoch"]), int(state_dict["yielded"]))
        self.set_epoch(int(state_dict["epoch"]))
        self.set_targets(state_dict.get("targets"))
