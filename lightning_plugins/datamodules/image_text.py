"""ImageTextDataModule: concept-annotated image-text pairs from a manifest or tar shards."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
import open_clip
import torch
from lightning.pytorch.utilities import rank_zero_warn
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_plugins.datamodules.concept_vocabulary import concept_ids, read_vocabulary
from lightning_plugins.datamodules.data_source import resolve_source
from lightning_plugins.datamodules.decoding_stream import DecodingStream
from lightning_plugins.datamodules.expand_braces import expand_braces
from lightning_plugins.datamodules.image_text_pairs import ImageTextPairs
from lightning_plugins.datamodules.image_text_shards import ImageTextShards
from lightning_plugins.datamodules.manifest import read_manifest
from lightning_plugins.datamodules.sample_decoding import decode_image
from lightning_plugins.datamodules.shard_samples import scan_shards
from lightning_plugins.distributed import get_rank, get_world_size
from lightning_plugins.functional._checks import check_choice, check_int, check_length
from lightning_plugins.functional.cabs_select import check_cabs_arguments
from lightning_plugins.functional.concept_lists import concept_csr
from lightning_plugins.models import list_model_names
from lightning_plugins.sampling import ConceptAwareBatchSampler, ShuffleSampler
from lightning_plugins.sampling.concept_aware_batch_sampler import super_batch_size
from lightning_plugins.sampling.concept_aware_stream import ConceptAwareStream

# The datasets, `decode_image` and `expand_braces` live in their own modules and are
# re-exported for imports from here; patch `sample_decoding.decode_image`, which is where
# decoding looks it up.
__all__ = [
    "DecodingStream",
    "ImageTextDataModule",
    "ImageTextPairs",
    "ImageTextShards",
    "decode_image",
    "expand_braces",
]

SAMPLINGS = ("iid", "cabs")


class ImageTextDataModule(pl.LightningDataModule):
    r"""Image-text pairs with concept annotations, sampled i.i.d. or with CABS.

    **Data.** ``train`` (and ``val``) is either a manifest or tar shards:

    - a JSONL (``.jsonl`` / ``.ndjson``, one object per line) or CSV (``.csv``) manifest
      with fields ``image`` (a path, relative to the manifest's folder or absolute),
      ``caption`` and ``concepts_key`` (a list of concept names or ids; in CSV a
      ``;``-separated string such as ``dog;ball`` or a JSON list). Tokens of a
      ``;``-list made of digits only are ids; write a JSON list of strings for names
      that look like numbers. A missing or empty field means no concepts;
    - webdataset tar shards as written by img2dataset: members ``<key>.jpg`` (or
      ``.jpeg``, ``.png``, ``.webp``), ``<key>.txt`` (the caption) and ``<key>.json``
      (metadata with the concepts under ``concepts_key``). Give a path, a glob, a brace
      pattern like ``"shards/{00000..00009}.tar"`` (quote it in YAML, where bare braces
      are a mapping) or a list of them. Shards are split
      across DDP ranks and DataLoader workers, so **their number should be a multiple of
      ranks x workers**; each rank reads as many samples per epoch as the smallest
      share holds (equal numbers of batches on every rank), and the shard order is
      reshuffled every epoch.

    **Concept vocabulary.** Concepts may be names or integer ids (not both). Names map to
    ids through ``concept_vocabulary`` (a text file with one name per line, or a list):
    an unknown name is an error. Without one, the vocabulary is every name in the training
    data, sorted by descending number of occurrences, then by name. The order only fixes
    the ids; it does not favour any concept in CABS, which breaks ties between concepts at
    random (another order changes single random draws, not what CABS prefers). Integer
    ids are used as they are (names ``"0"``, ``"1"``, ...). After :meth:`setup` the module
    has ``num_concepts``, ``concept_names`` and ``concept_frequencies``
    (``[num_concepts]`` int64 occurrences in the training set). For shards, ``setup``
    reads every ``.txt`` and ``.json`` member once (no image data) to count samples and
    concepts.

    **Sampling.** ``"iid"`` shuffles (map-style: a :class:`ShuffleSampler` per epoch;
    shards: the shard order). ``"cabs"`` is Concept-Aware Batch Sampling: each batch is
    chosen from a super-batch of ``batch_size / (1 - filter_ratio)`` candidates by their
    concepts. For a manifest this is a
    :class:`~lightning_plugins.sampling.ConceptAwareBatchSampler` over the annotations
    (created in :meth:`train_dataloader`, so Lightning gives it a ``DistributedSampler``
    under DDP); for shards a
    :class:`~lightning_plugins.sampling.concept_aware_stream.ConceptAwareStream` over
    undecoded samples. Either way only the chosen samples' images are decoded.

    **Batches.** Training batches hold ``image`` (``[B, 3, S, S]`` float, open_clip's
    transform), ``caption`` (list of ``B`` strings; the module tokenizes them),
    ``concepts`` (``[B, max_objects]`` int64 ids padded with -1) and ``index`` (``[B]``
    int64 position in the training set). Validation batches (retrieval pairs) hold
    ``image``, ``caption`` and ``index``. Training loaders are torchdata
    ``StatefulDataLoader``s, so a run resumed from a mid-epoch checkpoint continues the
    same stream. For shards the epoch is counted by the dataset itself (Lightning calls
    ``set_epoch`` on samplers only), one per pass; workers are kept alive across epochs
    so that their count carries on.

    Args:
        train: training manifest path, or shard path(s) / pattern. ``"pkg:<package>/<path>"``
            names a file in an installed package.
        val: validation (retrieval) pairs in the same forms, or ``None``.
        image_size: side of the square images; ``None`` takes ``model_name``'s image size,
            else 224.
        model_name: an open_clip config name whose image size is used (no download).
        mean: per-channel normalisation mean; OpenAI CLIP's if ``None``.
        std: per-channel normalisation std; OpenAI CLIP's if ``None``.
        batch_size: samples per batch and process.
        num_workers: DataLoader worker processes (kept alive across epochs).
        sampling: ``"iid"`` or ``"cabs"``.
        filter_ratio: CABS: share of every super-batch dropped, in ``[0, 1)``.
        cabs_variant: CABS: ``"dm"`` (diversity) or ``"fm"`` (frequency maximisation).
        cabs_cap: CABS-DM: most occurrences of one concept per batch, or ``None``.
        cabs_targets: CABS-DM: target distribution over the vocabulary, or ``None`` for
            uniform over the concepts of each super-batch.
        seed: seed of the sample order and of CABS's tie-breaking.
        concepts_key: name of the concepts field (manifest column / ``.json`` key).
        max_objects: width of the padded ``concepts`` tensor; a sample with more concepts
            is an error at :meth:`setup`.
        concept_vocabulary: path to a text file with one concept name per line, a list of
            names, or ``None`` to build it from the training data.

    Raises:
        TypeError: at construction for a size, ``num_workers`` or ``seed`` that is not an
            integer.
        ValueError: at construction for a bad argument (missing file, unknown extension,
            unknown ``sampling`` / ``cabs_variant`` / ``model_name``, ``filter_ratio``
            outside ``[0, 1)``, non-positive sizes); at :meth:`setup` for bad data (a row
            without ``image`` / ``caption``, an unknown concept name, more concepts than
            ``max_objects``, ``"cabs"`` without any annotation, ``cabs_targets`` that do
            not fit the vocabulary).

    Example:
        >>> import json, os, tempfile
        >>> from PIL import Image
        >>> folder = tempfile.TemporaryDirectory()
        >>> rows = [{"image": "a.png", "caption": "a red dog", "concepts": ["dog", "red"]},
        ...         {"image": "b.png", "caption": "a dog and a cat", "concepts": ["dog", "cat"]}]
        >>> for row, colour in zip(rows, ["red", "blue"]):
        ...     Image.new("RGB", (40, 30), colour).save(os.path.join(folder.name, row["image"]))
        >>> manifest = os.path.join(folder.name, "train.jsonl")
        >>> with open(manifest, "w") as f:
        ...     _ = f.write("\n".join(json.dumps(row) for row in rows))
        >>> dm = ImageTextDataModule(manifest, image_size=32, batch_size=2, max_objects=3)
        >>> dm.setup("fit")
        >>> dm.concept_names, dm.concept_frequencies.tolist()
        (['dog', 'cat', 'red'], [2, 1, 1])
        >>> batch = next(iter(dm.train_dataloader()))
        >>> sorted(batch), batch["image"].shape
        (['caption', 'concepts', 'image', 'index'], torch.Size([2, 3, 32, 32]))
        >>> batch["concepts"][batch["index"] == 0].tolist()
        [[0, 2, -1]]
        >>> folder.cleanup()
    """

    def __init__(
        self,
        train: str | list[str],
        val: str | list[str] | None = None,
        image_size: int | None = None,
        model_name: str | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
        sampling: str = "iid",
        filter_ratio: float = 0.8,
        cabs_variant: str = "dm",
        cabs_cap: int | None = 10,
        cabs_targets: list[float] | None = None,
        seed: int = 0,
        concepts_key: str = "concepts",
        max_objects: int = 32,
        concept_vocabulary: str | list[str] | None = None,
    ) -> None:
        super().__init__()
        batch_size = check_int(batch_size, "batch_size", low=1)
        max_objects = check_int(max_objects, "max_objects", low=1)
        num_workers = check_int(num_workers, "num_workers", low=0)
        seed = check_int(seed, "seed")
        check_choice(sampling, "sampling", SAMPLINGS)
        check_cabs_arguments(filter_ratio, cabs_variant, cabs_cap, cabs_targets, prefix="cabs_")
        if not isinstance(concepts_key, str) or not concepts_key:
            raise ValueError(f"`concepts_key` must be a non-empty string, got {concepts_key!r}.")
        for name, value in (("mean", mean), ("std", std)):
            if value is not None and (len(value) != 3 or (name == "std" and min(value) <= 0)):
                raise ValueError(
                    f"`{name}` must be 3 per-channel values{' above 0' if name == 'std' else ''} "
                    f"or None, got {value!r}."
                )
        if model_name is not None:
            names = list_model_names()
            if model_name not in names:
                raise ValueError(
                    f"`model_name`={model_name!r} is not an open_clip config; see "
                    "lightning_plugins.models.list_model_names()."
                )
            if image_size is None:
                image_size = open_clip.get_model_config(model_name)["vision_cfg"]["image_size"]
                if not isinstance(image_size, int):  # (height, width): use the larger side
                    image_size = max(image_size)
        image_size = check_int(224 if image_size is None else image_size, "image_size", low=1)
        self.train_kind, self.train_paths = resolve_source(train, "train")
        self.val_kind, self.val_paths = (None, []) if val is None else resolve_source(val, "val")
        self.vocabulary = (
            None if concept_vocabulary is None else read_vocabulary(concept_vocabulary)
        )
        self.train = train
        self.val = val
        self.image_size = image_size
        self.mean = tuple(OPENAI_DATASET_MEAN if mean is None else mean)
        self.std = tuple(OPENAI_DATASET_STD if std is None else std)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.sampling = sampling
        self.filter_ratio = float(filter_ratio)
        self.cabs_variant = cabs_variant
        self.cabs_cap = cabs_cap
        self.cabs_targets = cabs_targets
        self.seed = seed
        self.concepts_key = concepts_key
        self.max_objects = max_objects
        self.train_transform = open_clip.image_transform(
            image_size, is_train=True, mean=self.mean, std=self.std
        )
        self.eval_transform = open_clip.image_transform(
            image_size, is_train=False, mean=self.mean, std=self.std
        )
        self.num_concepts: int | None = None
        self.concept_names: list[str] | None = None
        self.concept_frequencies: torch.Tensor | None = None
        self.train_set: ImageTextPairs | None = None
        self.val_set: ImageTextPairs | None = None
        self._train_concepts: tuple[torch.Tensor, torch.Tensor] | None = None
        self._train_sizes: list[int] = []
        self._val_sizes: list[int] = []
        self._val_ready = False

    # ------------------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        """Read the annotations: build the vocabulary and the datasets (once)."""
        if stage in (None, "fit") and self._train_concepts is None:
            self._setup_train()
        if stage in (None, "fit", "validate", "test") and not self._val_ready:
            self._setup_val()

    def _setup_train(self) -> None:
        images: list[str] = []
        captions: list[str] = []
        if self.train_kind == "manifest":
            images, captions, raw, places = read_manifest(
                self.train_paths[0], self.concepts_key, "train"
            )
        else:
            self._train_sizes, raw, places = scan_shards(self.train_paths, self.concepts_key)
            if sum(self._train_sizes) == 0:
                raise ValueError(f"`train`={self.train!r}: the shards hold no samples.")
        names, ids = concept_ids(raw, places, self.vocabulary)
        for row, where in zip(ids, places, strict=True):
            if len(row) > self.max_objects:
                raise ValueError(
                    f"{where} has {len(row)} concepts, more than `max_objects`="
                    f"{self.max_objects}; raise `max_objects` (concepts are never dropped "
                    "silently)."
                )
        csr = concept_csr(ids, len(names))
        if self.sampling == "cabs" and csr[0].numel() == 0:
            raise ValueError(
                f"`sampling`='cabs' needs concept annotations, but none of the {len(ids)} "
                f"training samples of `train`={self.train!r} has any under "
                f"`concepts_key`={self.concepts_key!r}."
            )
        if self.cabs_targets is not None:
            check_length(self.cabs_targets, "cabs_targets", len(names), "concept of the vocabulary")
        if self.train_kind == "manifest" and not os.path.isfile(images[0]):
            raise ValueError(
                f"{places[0]} names the image {images[0]!r}, which does not exist (relative "
                f"paths are read from the manifest's folder)."
            )
        self.concept_names = names
        self.num_concepts = len(names)
        self.concept_frequencies = torch.bincount(csr[0], minlength=len(names))
        self._train_concepts = csr
        if self.train_kind == "manifest":
            self.train_set = ImageTextPairs(
                images, captions, csr, self.train_transform, self.max_objects
            )

    def _setup_val(self) -> None:
        if self.val_kind == "manifest":
            images, captions, _, _ = read_manifest(self.val_paths[0], None, "val")
            self.val_set = ImageTextPairs(images, captions, None, self.eval_transform)
        elif self.val_kind == "shards":
            self._val_sizes, _, _ = scan_shards(self.val_paths, None)
        self._val_ready = True

    # ------------------------------------------------------------------- dataloaders
    def _world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.world_size, self.trainer.global_rank
        return get_world_size(), get_rank()

    def train_dataloader(self) -> StatefulDataLoader:
        """Training batches (see the class docstring), i.i.d. or chosen by CABS.

        The CABS batch sampler is created here, in Lightning's hook, so that under DDP
        Lightning can hand it a ``DistributedSampler``.

        Raises:
            ValueError: for shards so few or small that a worker's share of an epoch holds
                not one CABS super-batch (or no sample at all).
        """
        if self._train_concepts is None:
            self.setup("fit")
        workers = {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}
        cabs = {
            "batch_size": self.batch_size,
            "filter_ratio": self.filter_ratio,
            "targets": self.cabs_targets,
            "cap": self.cabs_cap,
            "seed": self.seed,
            "num_concepts": self.num_concepts,
        }
        if self.train_kind == "manifest":
            if self.sampling == "iid":
                sampler = ShuffleSampler(len(self.train_set), seed=self.seed)
                return StatefulDataLoader(
                    self.train_set, batch_size=self.batch_size, sampler=sampler, **workers
                )
            batch_sampler = ConceptAwareBatchSampler(
                self._train_concepts, variant=self.cabs_variant, **cabs
            )
            return StatefulDataLoader(self.train_set, batch_sampler=batch_sampler, **workers)
        num_replicas, rank = self._world()
        per_rank = max(1, self.num_workers)
        if len(self.train_paths) % (num_replicas * per_rank):
            rank_zero_warn(
                f"{len(self.train_paths)} training shards are not a multiple of {num_replicas} "
                f"ranks x {per_rank} workers: every epoch each worker reads only as many "
                "samples as the smallest share holds, so part of the data is skipped."
            )
        reader = ImageTextShards(
            self.train_paths,
            self._train_sizes,
            self._train_concepts,
            shuffle=True,
            seed=self.seed,
            equalize=True,
            num_replicas=num_replicas,
            rank=rank,
        )
        share = min(
            sum(self._train_sizes[s] for s in shards) for shards in reader.assignment(0, per_rank)
        )
        cabs_sampling = self.sampling == "cabs"
        needed = super_batch_size(self.batch_size, self.filter_ratio) if cabs_sampling else 1
        if share < needed:
            raise ValueError(
                f"Each of the {num_replicas} ranks x {per_rank} workers reads only {share} "
                f"training samples per epoch, fewer than one "
                f"{'CABS super-batch' if cabs_sampling else 'sample'} ({needed}); use more or "
                "larger shards, fewer workers, or a smaller `batch_size` / `filter_ratio`."
            )
        source: Iterable[dict[str, Any]] = reader
        if self.sampling == "cabs":
            source = ConceptAwareStream(reader, variant=self.cabs_variant, **cabs)
        dataset = DecodingStream(source, self.train_transform, self.max_objects)
        return StatefulDataLoader(dataset, batch_size=self.batch_size, **workers)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Retrieval pairs (``image``, ``caption``, ``index``) in order; ``[]`` if no ``val``."""
        if not self._val_ready:
            self.setup("validate")
        if self.val_kind is None:
            return []
        if self.val_kind == "manifest":
            dataset: Dataset = self.val_set
        else:
            num_replicas, rank = self._world()
            reader = ImageTextShards(
                self.val_paths, self._val_sizes, num_replicas=num_replicas, rank=rank
            )
            dataset = DecodingStream(reader, self.eval_transform, None)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """The validation pairs."""
        return self.val_dataloader()
