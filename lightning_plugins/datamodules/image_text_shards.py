"""ImageTextShards: undecoded image-text samples read from tar shards, split over ranks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from lightning_plugins.datamodules.concept_annotations import parse_concepts
from lightning_plugins.datamodules.concept_vocabulary import ConceptLookup
from lightning_plugins.datamodules.sample_layout import checked_concepts, shard_starts
from lightning_plugins.datamodules.shard_samples import read_shard, sample_fields
from lightning_plugins.distributed import get_rank, get_world_size
from lightning_plugins.functional._checks import check_bool, check_int, check_resume_state
from lightning_plugins.sampling.epoch_position import EpochPosition

__all__ = ["ImageTextShards"]


class ImageTextShards(IterableDataset):
    """Undecoded samples from tar shards in img2dataset / webdataset layout.

    Every sample is a group of members ``<key>.jpg`` (or ``.jpeg``, ``.png``, ``.webp``),
    ``<key>.txt`` (the caption; else the ``caption`` of the ``.json``) and optionally
    ``<key>.json``. The dataset yields dicts with ``image_bytes`` (the encoded image),
    ``caption``, ``index`` (int: the sample's position in all shards, from ``sizes``),
    ``__key__`` and ``__url__`` (the sample's key and shard path, as in webdataset; error
    messages name them) and, when ``concepts`` is given, ``concepts`` (a list of concept
    ids, looked up by index); with ``concepts_key`` and ``vocabulary`` instead, the ids of
    the names (or ids) under ``concepts_key`` in the sample's ``.json``, read as the sample
    streams by (so no pass over the data is needed first; an unknown name is an error
    naming the sample). A shard that cannot be read (corrupt or truncated tar)
    raises a ``ValueError`` naming the shard and the last sample read.
    Images are not decoded here, so a selection step (such as
    :class:`~lightning_plugins.sampling.concept_aware_stream.ConceptAwareStream`) can run
    before :class:`~lightning_plugins.datamodules.decoding_stream.DecodingStream` decodes the
    chosen ones.

    The shards are split across DDP ranks and DataLoader workers: consumer ``r * W + w``
    (rank ``r``, worker ``w`` of ``W``) reads every ``R * W``-th shard of the epoch's shard
    order, so the number of shards should be a multiple of ``R * W``. With
    ``shuffle=True`` the shard order is a permutation drawn from ``seed + epoch``; samples
    inside a shard keep their order. With ``equalize=True`` every consumer stops after
    :meth:`consumer_samples` samples: the smallest share any consumer can get in any
    epoch (the sum of the ``K // (R * W)`` smallest shards, for ``K`` shards), so every
    rank yields the same number of samples (DDP needs equal numbers of batches) and every
    epoch has the same length; the dropped tails change with the epoch's shard order.

    ``state_dict`` holds the epoch and the samples handed out in it; after
    ``load_state_dict`` the next iteration skips them (whole shards without opening them).
    Its ``"config"`` (``kind``, ``shards``, ``samples``, ``shuffle``, ``seed``,
    ``equalize``, ``num_replicas``) must match: a state saved with other shards or
    settings, or by another dataset, is refused with a ``ValueError`` naming each
    difference. A state without ``"config"`` (an earlier version) loads unchecked.
    Without ``equalize`` a consumer may get no shard and yield nothing (fine for
    validation).

    Args:
        shards: tar file paths.
        sizes: number of samples of each shard.
        concepts: concept ids of every sample across all shards (lists, or CSR
            ``(ids, offsets)`` tensors), or ``None``.
        concepts_key: without ``concepts``: the ``.json`` key of each sample's concepts,
            read while streaming; ``None`` (and no ``concepts``) for no ``concepts`` key.
        vocabulary: the concept names that ``concepts_key`` ids refer to (required with
            ``concepts_key``).
        shuffle: draw a new shard order every epoch.
        seed: seed of the shard order.
        equalize: cut every consumer to :meth:`consumer_samples` samples.
        num_replicas: number of DDP ranks; ``torch.distributed``'s (at construction) if
            ``None``.
        rank: this rank; ``torch.distributed``'s (at construction) if ``None``.

    Raises:
        TypeError: for ``shards`` that are not paths, a size, ``seed``, ``num_replicas``
            or ``rank`` that is not an integer, ``shuffle`` / ``equalize`` that are not
            bools, or a concept id that is not an integer.
        ValueError: for ``sizes`` or ``concepts`` that do not match the shards, both
            ``concepts`` and ``concepts_key``, ``concepts_key`` without ``vocabulary``, a bad
            ``rank``, or (when iterating with ``equalize``) fewer shards than ranks x
            workers; when iterating, for a corrupt or truncated shard or an unknown concept.
    """

    def __init__(
        self,
        shards: Sequence[str],
        sizes: Sequence[int],
        concepts: Sequence[Sequence[int]] | tuple[torch.Tensor, torch.Tensor] | None = None,
        shuffle: bool = False,
        seed: int = 0,
        equalize: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
        concepts_key: str | None = None,
        vocabulary: list[str] | None = None,
    ) -> None:
        self.sizes, self.starts = shard_starts(shards, sizes)
        self.shards = list(shards)
        self.concepts = checked_concepts(concepts, self.starts[-1])
        if concepts_key is not None and (concepts is not None or vocabulary is None):
            raise ValueError(
                "`concepts_key` reads each sample's concepts from its .json while streaming: "
                "give it with a `vocabulary` and without `concepts` (ids known beforehand)."
            )
        self.concepts_key = concepts_key
        self.lookup = None if vocabulary is None else ConceptLookup(list(vocabulary))
        self.shuffle = check_bool(shuffle, "shuffle")
        self.seed = check_int(seed, "seed")
        self.equalize = check_bool(equalize, "equalize")
        num_replicas = check_int(num_replicas, "num_replicas", low=1, optional=True)
        rank = check_int(rank, "rank", low=0, optional=True)
        self.num_replicas = get_world_size() if num_replicas is None else num_replicas
        self.rank = get_rank() if rank is None else rank
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(
                f"`rank` must be in [0, num_replicas), got rank {self.rank} and num_replicas "
                f"{self.num_replicas}."
            )
        self.position = EpochPosition()

    @property
    def epoch(self) -> int:
        """The epoch whose shard order is read."""
        return self.position.epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the shard order of ``epoch``; a loaded position in another epoch is dropped."""
        self.position.set_epoch(epoch)

    def shard_order(self, epoch: int) -> list[int]:
        """Shard numbers in the order of ``epoch``."""
        if not self.shuffle:
            return list(range(len(self.shards)))
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(len(self.shards), generator=generator).tolist()

    def assignment(self, epoch: int, num_workers: int = 1) -> list[list[int]]:
        """Shard numbers of every consumer (``rank * num_workers + worker``) in ``epoch``."""
        consumers = self.num_replicas * num_workers
        if self.equalize and len(self.shards) < consumers:
            raise ValueError(
                f"{len(self.shards)} shards cannot feed {self.num_replicas} ranks x {num_workers} "
                "workers: every DataLoader worker of every rank needs at least one shard. Use "
                "more shards (a multiple of ranks x workers) or fewer workers."
            )
        order = self.shard_order(epoch)
        return [order[consumer::consumers] for consumer in range(consumers)]

    def consumer_samples(self, num_workers: int = 1) -> int:
        """Samples each consumer yields per epoch under ``equalize`` (the same every epoch).

        Every consumer reads ``K // C`` or ``K // C + 1`` of the ``K`` shards (``C`` =
        ranks x ``num_workers``), so none can hold fewer than the ``K // C`` smallest.

        Raises:
            ValueError: for fewer shards than consumers.
        """
        consumers = self.num_replicas * max(1, num_workers)
        self.assignment(0, max(1, num_workers))  # checks that every consumer gets a shard
        return sum(sorted(self.sizes)[: len(self.shards) // consumers])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        num_workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        mine = self.assignment(self.epoch, num_workers)[self.rank * num_workers + worker]
        limit = self.consumer_samples(num_workers) if self.equalize else None
        return self._samples(mine, self.position.start(), limit)

    def _samples(self, mine: list[int], skip: int, limit: int | None) -> Iterator[dict[str, Any]]:
        for shard in mine:
            if limit is not None and self.position.yielded >= limit:
                return
            if skip >= self.sizes[shard]:
                skip -= self.sizes[shard]
                continue
            url = self.shards[shard]
            samples = read_shard(url)
            position = -1
            try:
                for position, raw in enumerate(samples):
                    if position < skip:
                        continue
                    if limit is not None and self.position.yielded >= limit:
                        return
                    if position >= self.sizes[shard]:
                        raise ValueError(
                            f"Shard {url!r} holds more than the {self.sizes[shard]} samples "
                            f"counted for it (sample {raw['__key__']!r}); it changed since "
                            "its samples were counted (or the shard index is stale)."
                        )
                    image, caption, metadata = sample_fields(raw)
                    index = self.starts[shard] + position
                    sample: dict[str, Any] = {
                        "image_bytes": image,
                        "caption": caption,
                        "index": index,
                        "__key__": raw["__key__"],
                        "__url__": url,
                    }
                    if self.concepts is not None:
                        ids, offsets = self.concepts
                        sample["concepts"] = ids[offsets[index] : offsets[index + 1]].tolist()
                    elif self.concepts_key is not None:
                        sample["concepts"] = self._read_concepts(metadata, raw["__key__"], url)
                    self.position.advance()
                    yield sample
            finally:
                samples.close()
            if position + 1 < self.sizes[shard]:
                raise ValueError(
                    f"Shard {url!r} holds {position + 1} samples, fewer than the "
                    f"{self.sizes[shard]} counted for it; it changed since its samples were "
                    "counted (or the shard index is stale)."
                )
            skip = 0

    def _read_concepts(self, metadata: dict[str, Any], key: str, url: str) -> list[int]:
        where = f"sample {key!r} of shard {url!r}"
        names = parse_concepts(metadata.get(self.concepts_key), where, self.concepts_key)
        return self.lookup.ids(names, where)

    def config(self) -> dict[str, Any]:
        """The settings a saved position depends on (primitives)."""
        return {
            "kind": type(self).__name__,
            "shards": len(self.shards),
            "samples": self.starts[-1],
            "shuffle": self.shuffle,
            "seed": self.seed,
            "equalize": self.equalize,
            "num_replicas": self.num_replicas,
        }

    def state_dict(self) -> dict[str, Any]:
        """The epoch, how many samples of it were handed out, and :meth:`config`."""
        return {**self.position.state_dict(), "config": self.config()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue after the samples already handed out in the saved epoch.

        Raises:
            ValueError: for a state saved with other shards or settings (see
                :meth:`config`) or not by an ``ImageTextShards`` (naming each difference).
        """
        check_resume_state(state_dict, "ImageTextShards", self.config(), ("epoch", "yielded"))
        self.position.load_state_dict(state_dict)
