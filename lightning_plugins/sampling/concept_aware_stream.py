"""Concept-Aware Batch Sampling (CABS) on a stream of samples, for iterable datasets."""

from __future__ import annotations

import copy
import itertools
import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from lightning_plugins.distributed import get_rank
from lightning_plugins.functional._checks import check_int, check_length, check_resume_state
from lightning_plugins.functional.cabs_select import (
    cabs_generator,
    cabs_select,
    check_cabs_arguments,
    check_cabs_targets,
)
from lightning_plugins.sampling.concept_aware_batch_sampler import super_batch_size

__all__ = ["ConceptAwareStream"]

Sample = Mapping[str, Any]
"""One decoded sample: a dict that carries its concept ids under ``concepts_key``."""


class ConceptAwareStream(IterableDataset[Sample]):
    """Concept-Aware Batch Sampling over an iterable stream of samples (e.g. webdataset).

    The stream reads ``super_batch_size = round(batch_size / (1 - filter_ratio))``
    samples from ``source``, keeps the ``batch_size`` of them that
    :func:`~lightning_plugins.functional.cabs_select` picks by their concepts, yields
    those one by one (in pick order), drops the rest and repeats. A
    ``DataLoader(stream, batch_size=batch_size)`` therefore collates exactly one CABS
    batch per step. An incomplete last super-batch is dropped, like ``drop_last``.
    Samples without concepts are allowed; DM picks them last. Each sample's
    ``concepts_key`` holds a list of concept ids (one per object, duplicates encode
    multiplicity) or a 1-D integer tensor padded with ``-1``; samples are yielded
    unchanged, so give them a fixed-length padded tensor (or use your own
    ``collate_fn``) when the default collate must batch them. A sample that is not a
    dict (``TypeError``), has no ``concepts_key`` (``KeyError``) or, under DM, holds ids
    outside the vocabulary (``ValueError``) stops the iteration with an error (FM reads
    only how many objects a sample has).

    **Workers and ranks.** The source shards itself: under DataLoader workers and DDP
    each copy of ``source`` must yield its own share (webdataset's ``split_by_node`` /
    ``split_by_worker`` do this); the stream does not split it. Every worker forms whole
    super-batches from its share and drops its own incomplete tail. A DataLoader takes
    each batch from one worker, so batches stay whole CABS batches **only if the
    DataLoader's** ``batch_size`` **equals the stream's**. Equal numbers of batches on
    every rank need equally long shards (e.g. webdataset's ``with_epoch``).

    **Determinism.** DM's tie-breaking for super-batch ``j`` draws from
    :meth:`generator`: :func:`~lightning_plugins.functional.cabs_select.cabs_generator` keyed by
    ``(seed, epoch, j, worker id, rank)``, the scheme :class:`ConceptAwareBatchSampler`
    uses. The rank is
    read from ``torch.distributed`` at construction, in :meth:`set_epoch` and when
    iteration starts in the main process. Lightning calls ``set_epoch`` on samplers
    only, so call :meth:`set_epoch` on the stream yourself (e.g. from the datamodule or
    a callback's ``on_train_epoch_start``).

    **Resuming.** :meth:`state_dict` holds the epoch, the number of super-batches fully
    yielded, the samples yielded of the next one and the targets (primitives and
    tensors). torchdata's ``StatefulDataLoader`` saves it (per worker) and restores it
    before the next iteration, which continues the exact same stream. If ``source``
    has ``state_dict`` / ``load_state_dict`` (torchdata's ``Stateful``), the state
    includes the source's state at the start of the current super-batch and resuming
    restores the source instead of re-reading it; otherwise the source is iterated
    from the start and the consumed super-batches are read again and discarded. The
    state's ``"config"`` holds what the position depends on (``kind``, ``batch_size``,
    ``super_batch_size``, ``seed``, ``num_concepts``); a state saved with other values, or
    by another dataset, is refused with a ``ValueError`` naming each difference. A state
    without ``"config"`` (saved by an earlier version) loads unchecked.

    **Steering.** :meth:`set_targets` changes the DM targets. It takes effect from the
    next super-batch in this process; DataLoader workers see it when they are started
    again (the next epoch, unless ``persistent_workers=True``).

    The stream holds more than fifteen attributes on purpose: its ten settings plus the
    position inside the current epoch (super-batches and samples yielded, the source's
    state and where it was taken) that an exact resume needs.

    Args:
        source: iterable of sample dicts (typically an ``IterableDataset``); it must
            be iterable more than once to serve more than one epoch.
        batch_size: samples kept per super-batch, ``>= 1``.
        filter_ratio: share of each super-batch dropped, in ``[0, 1)`` (0.8 in CABS).
        variant: ``"dm"`` (diversity maximisation) or ``"fm"`` (frequency maximisation).
        targets: ``[num_concepts]`` target distribution over concepts for DM, or
            ``None`` for uniform over the concepts present in each super-batch.
        cap: most occurrences of one concept in a DM batch, ``None`` for no cap.
        seed: base seed of the tie-breaking generators.
        num_concepts: vocabulary size, to check concept ids; defaults to
            ``len(targets)``.
        concepts_key: the key of the concept ids in each sample.

    Raises:
        ValueError: for a ``batch_size`` below 1, a ``filter_ratio`` outside ``[0, 1)``,
            an unknown ``variant``, a ``cap`` below 1, a ``num_concepts`` below 1, or
            ``targets`` that are not a distribution or do not match ``num_concepts``.
        TypeError: for a ``source`` that is not iterable, a ``concepts_key`` that is not
            a non-empty string, a ``batch_size``, ``cap``,
            ``seed`` or ``num_concepts`` that is not an integer, or a ``filter_ratio``
            that is not a number.

    Example:
        >>> source = [{"index": i, "concepts": [i % 3] * (i % 4)} for i in range(10)]
        >>> stream = ConceptAwareStream(source, batch_size=2, filter_ratio=0.5, variant="fm")
        >>> stream.super_batch_size
        4
        >>> [sample["index"] for sample in stream]  # the last 2 samples are dropped
        [3, 2, 7, 6]
        >>> it = iter(stream)
        >>> seen = [next(it)["index"] for _ in range(3)]
        >>> resumed = ConceptAwareStream(source, batch_size=2, filter_ratio=0.5, variant="fm")
        >>> resumed.load_state_dict(stream.state_dict())
        >>> seen + [sample["index"] for sample in resumed]
        [3, 2, 7, 6]
    """

    def __init__(
        self,
        source: Iterable[Sample],
        batch_size: int,
        filter_ratio: float = 0.8,
        variant: str = "dm",
        targets: torch.Tensor | Sequence[float] | None = None,
        cap: int | None = 10,
        seed: int = 0,
        num_concepts: int | None = None,
        concepts_key: str = "concepts",
    ) -> None:
        if not isinstance(source, Iterable):
            raise TypeError(
                f"`source` must be an iterable of sample dicts, got {type(source).__name__}."
            )
        self.batch_size = check_int(batch_size, "batch_size", low=1)
        check_cabs_arguments(filter_ratio, variant, cap)  # targets: in set_targets
        self.seed = check_int(seed, "seed")
        self.num_concepts = check_int(num_concepts, "num_concepts", low=1, optional=True)
        self.source = source
        self.filter_ratio = float(filter_ratio)
        self.super_batch_size = super_batch_size(self.batch_size, self.filter_ratio)
        self.variant = variant
        self.cap = None if cap is None else int(cap)
        if not isinstance(concepts_key, str) or not concepts_key:
            raise TypeError(f"`concepts_key` must be a non-empty string, got {concepts_key!r}.")
        self.concepts_key = concepts_key
        self.targets: torch.Tensor | None = None
        self.set_targets(targets)
        self.epoch = 0
        self._rank = get_rank()
        self._source_is_stateful = callable(getattr(source, "state_dict", None)) and callable(
            getattr(source, "load_state_dict", None)
        )
        self._resume: dict[str, Any] | None = None
        # position of the current iteration
        self._super_batches = 0  # super-batches fully yielded
        self._yielded = 0  # samples yielded of the next super-batch
        self._snapshot: Any = None  # source state at the start of super-batch `_snapshot_at`
        self._snapshot_at = -1
        self._positioned = False  # the source stands at the start of super-batch `_super_batches`

    def set_epoch(self, epoch: int) -> None:
        """Select the tie-breaking generators of ``epoch``.

        A loaded position in another epoch is discarded: the epoch starts from its beginning.
        """
        if epoch != self.epoch:
            self._resume = None
        self.epoch = int(epoch)
        if get_worker_info() is None:
            self._rank = get_rank()

    def set_targets(self, targets: torch.Tensor | Sequence[float] | None) -> None:
        """Set the DM target distribution over concepts (``None``: uniform over the present).

        Raises:
            ValueError: if ``targets`` is not a distribution or does not have
                ``num_concepts`` entries.
        """
        if targets is not None:
            targets = check_cabs_targets(torch.as_tensor(targets))
            if self.num_concepts is not None:
                check_length(targets, "targets", self.num_concepts, "concept")
        self.targets = targets

    def generator(self, super_batch: int, worker: int = 0, rank: int = 0) -> torch.Generator:
        """The random source of super-batch ``super_batch`` in this epoch, worker and rank."""
        return cabs_generator(self.seed, self.epoch, super_batch, worker, rank)

    def select(self, concepts: list[list[int]], generator: torch.Generator) -> torch.Tensor:
        """Positions of the ``batch_size`` samples kept from one super-batch, in pick order.

        The selection policy; override it to select differently. The default is
        :func:`~lightning_plugins.functional.cabs_select` with this stream's settings.
        """
        return cabs_select(
            concepts,
            self.batch_size,
            self.variant,
            targets=self.targets,
            cap=self.cap,
            generator=generator,
            num_concepts=self.num_concepts,
        )

    def __iter__(self) -> Iterator[Sample]:
        worker_info = get_worker_info()
        worker = 0 if worker_info is None else worker_info.id
        if worker_info is None:
            self._rank = get_rank()
        resume, self._resume = self._resume, None
        start = 0 if resume is None else int(resume["super_batches"])
        skip = 0 if resume is None else int(resume["yielded"])
        restore = (
            resume is not None and resume.get("source") is not None and self._source_is_stateful
        )
        if restore:
            self.source.load_state_dict(resume["source"])  # type: ignore[attr-defined]
        self._super_batches, self._yielded = start, skip
        self._snapshot, self._snapshot_at = None, -1
        self._positioned = restore
        return self._stream(worker, self._rank, start, skip, restored=restore)

    def _stream(
        self, worker: int, rank: int, start: int, skip: int, restored: bool
    ) -> Iterator[Sample]:
        samples = iter(self.source)
        size = self.super_batch_size
        # a restored source is positioned; otherwise re-read the consumed super-batches
        if not restored and start > 0:
            for _ in range(start):
                if len(list(itertools.islice(samples, size))) < size:
                    return
        # the source's state can be trusted once it was restored or has been read from
        trusted = restored or start > 0
        index = start
        while True:
            if self._source_is_stateful:
                state = self.source.state_dict() if trusted else None  # type: ignore[attr-defined]
                self._snapshot, self._snapshot_at = copy.deepcopy(state), index
                self._positioned = False
            buffer = list(itertools.islice(samples, size))
            trusted = True
            if len(buffer) < size:
                return  # an incomplete last super-batch is dropped
            concepts = [self._concepts(sample) for sample in buffer]
            chosen = self.select(concepts, self.generator(index, worker, rank)).tolist()
            for offset in range(skip, len(chosen)):
                if offset + 1 == len(chosen):
                    self._super_batches, self._yielded = index + 1, 0
                    self._positioned = True
                else:
                    self._yielded = offset + 1
                yield buffer[chosen[offset]]
            skip = 0
            index += 1

    def _concepts(self, sample: Sample) -> list[int]:
        if not isinstance(sample, Mapping):
            raise TypeError(f"`source` must yield sample dicts, got a {type(sample).__name__}.")
        if self.concepts_key not in sample:
            raise KeyError(
                f"A sample has no concepts under `concepts_key`={self.concepts_key!r}; "
                f"its keys are {sorted(map(str, sample))}."
            )
        value = sample[self.concepts_key]
        if isinstance(value, torch.Tensor):
            if value.ndim != 1 or value.is_floating_point() or value.is_complex():
                raise ValueError(
                    f"A sample's {self.concepts_key!r} tensor must be 1-D integer ids padded "
                    f"with -1, got dtype {value.dtype} and shape {tuple(value.shape)}."
                )
            return value[value != -1].tolist()
        ids = list(value)
        for item in ids:
            try:  # ints, numpy and 0-d torch integers; never floats (they would be truncated)
                valid = not isinstance(item, bool) and operator.index(item) is not None
            except TypeError:
                valid = False
            if not valid:
                raise TypeError(
                    f"A sample's {self.concepts_key!r} must hold integer concept ids; sample "
                    f"{sample.get('index', '?')!r} holds {item!r} ({type(item).__name__}), "
                    "which is never truncated."
                )
        return ids

    def state_dict(self) -> dict[str, Any]:
        """The epoch, the position in it, the targets and (if stateful) the source's state."""
        targets = None if self.targets is None else self.targets.clone()
        if self._resume is not None:  # loaded, iteration not started yet
            return {
                "epoch": self.epoch,
                **copy.deepcopy(self._resume),
                "targets": targets,
                "config": self.config(),
            }
        source_state = None
        if self._source_is_stateful:
            if self._snapshot_at == self._super_batches:
                source_state = copy.deepcopy(self._snapshot)
            elif self._positioned:
                source_state = copy.deepcopy(self.source.state_dict())  # type: ignore[attr-defined]
        return {
            "epoch": self.epoch,
            "super_batches": self._super_batches,
            "yielded": self._yielded,
            "targets": targets,
            "source": source_state,
            "config": self.config(),
        }

    def config(self) -> dict[str, Any]:
        """The settings a saved position depends on (primitives)."""
        return {
            "kind": type(self).__name__,
            "batch_size": self.batch_size,
            "super_batch_size": self.super_batch_size,
            "seed": self.seed,
            "num_concepts": self.num_concepts,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the epoch, targets and position saved by :meth:`state_dict`.

        The targets apply at once; the next iteration continues the saved epoch after the
        samples already yielded (unless :meth:`set_epoch` selects another epoch first).

        Raises:
            ValueError: for a state saved with other settings (see :meth:`config`) or not
                by a ``ConceptAwareStream`` (the message names each difference).
        """
        check_resume_state(
            state_dict,
            "ConceptAwareStream",
            self.config(),
            ("epoch", "super_batches", "yielded"),
        )
        self.epoch = int(state_dict["epoch"])
        if "targets" in state_dict:
            self.set_targets(state_dict["targets"])
        self._resume = {
            "super_batches": int(state_dict["super_batches"]),
            "yielded": int(state_dict["yielded"]),
            "source": copy.deepcopy(state_dict.get("source")),
        }
