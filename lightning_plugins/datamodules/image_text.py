"""ImageTextDataModule: concept-annotated image-text pairs from a manifest or tar shards."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import open_clip
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_plugins.datamodules.checked_resume import CheckedResume
from lightning_plugins.datamodules.concept_annotations import Concept
from lightning_plugins.datamodules.concept_vocabulary import concept_ids, read_vocabulary
from lightning_plugins.datamodules.data_source import resolve_source
from lightning_plugins.datamodules.decoding_stream import DecodingStream
from lightning_plugins.datamodules.image_text_pairs import ImageTextPairs
from lightning_plugins.datamodules.image_text_shards import ImageTextShards
from lightning_plugins.datamodules.indexed_shards import IndexedShards
from lightning_plugins.datamodules.labelled_images import LabelledImages, read_labelled_images
from lightning_plugins.datamodules.manifest import read_manifest
from lightning_plugins.datamodules.sample_decoding import decode_image
from lightning_plugins.datamodules.shard_index import read_shard_index
from lightning_plugins.datamodules.shard_samples import scan_shards
from lightning_plugins.datamodules.stateful_loader import stateful_loader
from lightning_plugins.distributed import get_rank, get_world_size
from lightning_plugins.functional._checks import (
    check_bool,
    check_choice,
    check_int,
    check_length,
)
from lightning_plugins.functional.cabs_select import check_cabs_arguments
from lightning_plugins.functional.concept_lists import concept_csr
from lightning_plugins.functional.zero_shot import check_templates
from lightning_plugins.metrics import ZeroShotClasses
from lightning_plugins.models import list_model_names, resolve_path
from lightning_plugins.sampling import ConceptAwareBatchSampler, ShuffleSampler
from lightning_plugins.sampling.concept_aware_batch_sampler import super_batch_size
from lightning_plugins.sampling.concept_aware_stream import ConceptAwareStream

# The datasets and `decode_image` live in their own modules and are re-exported for
# imports from here; patch `sample_decoding.decode_image`, which is where decoding looks
# it up.
__all__ = [
    "DecodingStream",
    "ImageTextDataModule",
    "ImageTextPairs",
    "ImageTextShards",
    "IndexedShards",
    "decode_image",
]

SAMPLINGS = ("iid", "cabs")
SHARD_ACCESS = ("stream", "indexed")


@dataclass
class _Split:
    """One split's source and what :meth:`ImageTextDataModule.setup` read of it."""

    kind: str | None  # "manifest", "shards", "index" (shards after setup), or None: no data
    paths: list[str]
    sizes: list[int] = field(default_factory=list)  # samples per shard
    dataset: ImageTextPairs | IndexedShards | None = None  # map-style: manifest, indexed
    concepts: tuple[torch.Tensor, torch.Tensor] | None = None  # training annotations (CSR)
    ready: bool = False


class ImageTextDataModule(CheckedResume):
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
      (metadata with the concepts under ``concepts_key``), read with webdataset. Give a
      path or URL (``file:``, ``pipe:<command writing the shard to stdout>``,
      ``http(s)://``), a brace pattern like ``"s3/{00000..00009}.tar"`` (quote it in YAML,
      where bare braces are a mapping), a glob over local files, a text file listing
      shards (``.txt``), or a list of them;
    - a shard index (``.json``): a wids dataset description with each shard's URL and
      sample count, and optionally its concepts (write one with
      :func:`~lightning_plugins.datamodules.shard_index.write_shard_index`); setup then
      reads no shard.

    **Shard access.** ``shard_access="stream"`` (default) reads shards front to back:
    they are split across DDP ranks and DataLoader workers, so **their number should be a
    multiple of ranks x workers**; each rank reads as many samples per epoch as the
    smallest share holds (equal numbers of batches on every rank: our accounting on top of
    webdataset's reader, not ``with_epoch``), the shard order is reshuffled every epoch,
    and a mid-epoch checkpoint resumes the stream exactly where it stood. ``"indexed"``
    reads samples by index through wids
    (:class:`~lightning_plugins.datamodules.indexed_shards.IndexedShards`), as a manifest
    is read: i.i.d. with a :class:`ShuffleSampler`, CABS with a
    :class:`ConceptAwareBatchSampler` (exact batches, DDP without communication, exact
    resume). Remote shards are then downloaded once into ``cache_dir`` and memory-mapped;
    ``.tar.gz`` shards cannot be.

    **Concept vocabulary.** Concepts may be names or integer ids (not both). Names map to
    ids through ``concept_vocabulary`` (a text file with one name per line, or a list):
    an unknown name is an error. Without one, the vocabulary is every name in the training
    data, sorted by descending number of occurrences, then by name. The order only fixes
    the ids; it does not favour any concept in CABS, which breaks ties between concepts at
    random (another order changes single random draws, not what CABS prefers). Integer
    ids are used as they are (names ``"0"``, ``"1"``, ...). After :meth:`setup` the module
    has ``num_concepts``, ``concept_names`` and ``concept_frequencies``
    (``[num_concepts]`` int64 occurrences in the training set). For shards without an
    index (or an index without concepts), ``setup`` reads every shard once, keeping only
    the ``.txt`` and ``.json`` members (no image is decoded), to count samples and
    concepts. Streamed shards with an index without concepts and a
    ``concept_vocabulary`` need no such pass: each sample's concepts are read from its
    ``.json`` as it streams by, before CABS chooses (an unknown name stops training with
    an error naming the sample), and ``concept_frequencies`` is ``None``.

    **Zero-shot evaluation.** ``zero_shot_val`` names labelled images: a JSONL / CSV
    manifest with ``image`` and ``label`` (a class name, or an integer id into
    ``class_names``), or a folder laid out as torchvision's ``ImageFolder``
    (``<root>/<class name>/<image>``). The classes are ``class_names`` (a list or a text
    file with one name per line) or, without it, the sorted label names or sub-folders.
    After :meth:`setup` the module has ``class_names``, ``templates`` and ``class_groups``
    (the :class:`~lightning_plugins.metrics.ZeroShotData` protocol our modules read), and
    validation batches of those images carry ``label``, so the module logs
    ``val/zero_shot_top1`` etc. Without ``zero_shot_val``, ``class_names`` is ``None`` and
    validation is retrieval only.

    **Sampling.** ``"iid"`` shuffles (map-style: a :class:`ShuffleSampler` per epoch;
    streamed shards: the shard order). ``"cabs"`` is Concept-Aware Batch Sampling: each
    batch is chosen from a super-batch of ``batch_size / (1 - filter_ratio)`` candidates by
    their concepts. For a manifest and indexed shards this is a
    :class:`~lightning_plugins.sampling.ConceptAwareBatchSampler` over the annotations
    (created in :meth:`train_dataloader`, so Lightning gives it a ``DistributedSampler``
    under DDP); for streamed shards a
    :class:`~lightning_plugins.sampling.concept_aware_stream.ConceptAwareStream` over
    undecoded samples, which chooses on the metadata read with them. Either way only the
    chosen samples' images are decoded.

    **State.** The constructor's arguments stay attributes of the same names (except the
    CABS settings, grouped in ``cabs``, and ``mean`` / ``std``, kept in ``transforms``);
    what :meth:`setup` reads is in one record per split and in ``num_concepts``,
    ``concept_names`` and ``concept_frequencies``; zero-shot evaluation adds
    ``zero_shot_val``, its dataset and the three protocol attributes. That makes 25
    attributes, and the class is long mostly for this docstring (three data sources, two
    shard accesses, the vocabulary, two samplings, zero-shot data).

    **Batches.** Training batches hold ``image`` (``[B, 3, S, S]`` float, open_clip's
    transform), ``caption`` (list of ``B`` strings; the module tokenizes them),
    ``concepts`` (``[B, max_objects]`` int64 ids padded with -1) and ``index`` (``[B]``
    int64 position in the training set). Validation batches of retrieval pairs hold
    ``image``, ``caption`` and ``index``; those of ``zero_shot_val`` hold ``image``,
    ``label`` and ``index``; the validation loaders are ``[zero-shot, retrieval]`` (either
    alone when only one is given; validation shards are always streamed). Training
    loaders are torchdata ``StatefulDataLoader``s, so a run resumed from a mid-epoch
    checkpoint continues the same stream. For streamed shards the epoch is counted by the
    dataset itself (Lightning calls ``set_epoch`` on samplers only), one per pass; workers
    are kept alive across epochs so that their count carries on. With ``drop_last`` (the
    default) the i.i.d. loader drops the last incomplete batch of every epoch, as
    open_clip's does: a contrastive loss never sees a batch of a single pair. CABS never
    yields incomplete batches.

    **Bad samples.** An image that cannot be decoded (missing, truncated, not an image)
    or a shard that cannot be read stops training with a ``ValueError`` naming the file
    or shard and the sample; nothing is skipped silently.

    **Resuming.** :meth:`state_dict` (saved by Lightning in checkpoints) holds the
    settings the training stream depends on (``sampling``, ``shard_access``,
    ``batch_size``, ``seed``, ``num_workers``, ``drop_last``, the number of training
    samples and, for CABS, ``filter_ratio``); resuming with other values raises a
    ``ValueError`` naming each, before any batch is loaded, instead of skipping data or
    failing inside the loader.
    Checkpoints without this state (earlier versions) resume unchecked.

    Args:
        train: training manifest path, shard index, or shard path(s) / URL(s) / pattern.
            ``"pkg:<package>/<path>"`` names a file in an installed package.
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
        drop_last: ``"iid"``: drop the last incomplete training batch of every epoch.
        zero_shot_val: labelled validation images for zero-shot classification: a JSONL /
            CSV manifest with ``image`` and ``label``, or an ImageFolder-style folder; or
            ``None``.
        class_names: ``zero_shot_val``'s classes (a list, or a text file with one name per
            line); ``None`` to take the sorted label names or sub-folders.
        templates: zero-shot prompt templates with one ``{}``; ``None`` for the default.
        class_groups: named subsets of class ids reported apart (``zero_shot_top1_<name>``),
            or ``None``.
        shard_access: training shards: ``"stream"`` (read front to back) or ``"indexed"``
            (random access through wids).
        cache_dir: ``"indexed"``: the folder remote shards are downloaded to (and local
            ones linked from); ``None`` for ``$WIDS_CACHE`` or a folder in the temp dir.

    Raises:
        TypeError: at construction for a size, ``num_workers`` or ``seed`` that is not an
            integer, a ``drop_last`` that is not a bool, a ``train`` / ``val`` that is not
            a string or a list of strings, or a ``cache_dir`` that is not a path; at
            :meth:`setup` for a concept id that is not an integer (``1.5`` is never
            truncated).
        ValueError: at construction for a bad argument (missing file, unknown extension,
            unknown ``sampling`` / ``cabs_variant`` / ``model_name`` / ``shard_access``,
            ``"indexed"`` with a manifest or ``.tar.gz`` shards, ``filter_ratio``
            outside ``[0, 1)``, non-positive sizes); at :meth:`setup` for bad data (a row
            without ``image`` / ``caption``, an unknown concept name, more concepts than
            ``max_objects``, ``"cabs"`` without any annotation, ``cabs_targets`` that do
            not fit the vocabulary; in ``zero_shot_val`` an unknown class name or id, an
            empty folder or class folder, each naming the file or folder). ``class_names``,
            ``templates`` or ``class_groups`` without ``zero_shot_val``, or a template
            without ``{}``, is a ``ValueError`` at construction.

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
        drop_last: bool = True,
        zero_shot_val: str | None = None,
        class_names: str | list[str] | None = None,
        templates: list[str] | None = None,
        class_groups: dict[str, list[int]] | None = None,
        shard_access: str = "stream",
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        batch_size = check_int(batch_size, "batch_size", low=1)
        max_objects = check_int(max_objects, "max_objects", low=1)
        num_workers = check_int(num_workers, "num_workers", low=0)
        seed = check_int(seed, "seed")
        check_choice(sampling, "sampling", SAMPLINGS)
        check_choice(shard_access, "shard_access", SHARD_ACCESS)
        if cache_dir is not None and not isinstance(cache_dir, str):
            raise TypeError(f"`cache_dir` must be a folder path or None, got {cache_dir!r}.")
        self.drop_last = check_bool(drop_last, "drop_last")
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
        if zero_shot_val is None:
            given = [
                name
                for name, value in (
                    ("class_names", class_names),
                    ("templates", templates),
                    ("class_groups", class_groups),
                )
                if value is not None
            ]
            if given:
                raise ValueError(
                    f"{', '.join(f'`{n}`' for n in given)} describe the zero-shot classes of "
                    "`zero_shot_val`, which is None; give `zero_shot_val` (a labelled manifest "
                    "or an image folder) or leave them None."
                )
        elif not isinstance(zero_shot_val, str) or not os.path.exists(resolve_path(zero_shot_val)):
            raise ValueError(
                f"`zero_shot_val`={zero_shot_val!r} must be an existing folder of class "
                "sub-folders or a JSONL / CSV manifest with `image` and `label`, or None."
            )
        if templates is not None:
            check_templates(templates)
        self._train = _Split(*resolve_source(train, "train"))
        if shard_access == "indexed" and self._train.kind == "manifest":
            raise ValueError(
                f"`shard_access`='indexed' reads tar shards by index, but `train`={train!r} "
                "is a manifest (which is always read by index); leave `shard_access` at "
                "'stream' or give shards."
            )
        compressed = [p for p in self._train.paths if p.lower().endswith((".tar.gz", ".tgz"))]
        if shard_access == "indexed" and compressed:
            raise ValueError(
                f"`shard_access`='indexed' memory-maps the shards, which {compressed[0]!r} "
                "(compressed) cannot be: unpack the shards, or use `shard_access`='stream'."
            )
        self._val = _Split(None, []) if val is None else _Split(*resolve_source(val, "val"))
        self.vocabulary = (
            None if concept_vocabulary is None else read_vocabulary(concept_vocabulary)
        )
        self.train = train
        self.val = val
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.sampling = sampling
        self.shard_access = shard_access
        self.cache_dir = cache_dir
        self.cabs = {
            "filter_ratio": float(filter_ratio),
            "variant": cabs_variant,
            "cap": cabs_cap,
            "targets": cabs_targets,
        }
        self.seed = seed
        self.concepts_key = concepts_key
        self.max_objects = max_objects
        mean = tuple(OPENAI_DATASET_MEAN if mean is None else mean)
        std = tuple(OPENAI_DATASET_STD if std is None else std)
        self.transforms = {
            "train": open_clip.image_transform(image_size, is_train=True, mean=mean, std=std),
            "eval": open_clip.image_transform(image_size, is_train=False, mean=mean, std=std),
        }
        self.num_concepts: int | None = None
        self.concept_names: list[str] | None = None
        self.concept_frequencies: torch.Tensor | None = None
        self.zero_shot_val = zero_shot_val
        self.zero_shot_set: LabelledImages | None = None
        self.class_names: list[str] | None = (
            None if class_names is None else read_vocabulary(class_names, "class_names")
        )
        self.templates: list[str] | None = None if templates is None else list(templates)
        self.class_groups: dict[str, list[int]] | None = class_groups

    @property
    def train_set(self) -> ImageTextPairs | IndexedShards | None:
        """The map-style training set after :meth:`setup` (``None`` for streamed shards)."""
        return self._train.dataset

    @property
    def val_set(self) -> ImageTextPairs | None:
        """The validation pairs of a manifest (after :meth:`setup`); ``None`` otherwise."""
        return self._val.dataset

    @property
    def train_paths(self) -> list[str]:
        """The training manifest (one path), shard index (before :meth:`setup`) or shards."""
        return self._train.paths

    # ------------------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        """Read the annotations: build the vocabulary and the datasets (once)."""
        if stage in (None, "fit") and not self._train.ready:
            self._setup_train()
        if stage in (None, "fit", "validate", "test") and not self._val.ready:
            self._setup_val()
        if stage in (None, "fit", "validate", "test") and self.zero_shot_val is not None:
            self._setup_zero_shot()

    def _setup_train(self) -> None:
        images: list[str] = []
        captions: list[str] = []
        split = self._train
        if split.kind == "manifest":
            images, captions, raw, places = read_manifest(
                split.paths[0], self.concepts_key, "train"
            )
        else:
            # a stream with a vocabulary can read the concepts as the samples go by
            streamed = self.vocabulary is not None and self.shard_access == "stream"
            raw, places = _read_shards(split, self.concepts_key, "train", streamed)
            if sum(split.sizes) == 0:
                raise ValueError(f"`train`={self.train!r}: the shards hold no samples.")
            if raw is None:
                self._concepts_while_streaming()
                return
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
        if self.cabs["targets"] is not None:
            check_length(
                self.cabs["targets"], "cabs_targets", len(names), "concept of the vocabulary"
            )
        if split.kind == "manifest" and not os.path.isfile(images[0]):
            raise ValueError(
                f"{places[0]} names the image {images[0]!r}, which does not exist (relative "
                f"paths are read from the manifest's folder)."
            )
        self.concept_names = names
        self.num_concepts = len(names)
        self.concept_frequencies = torch.bincount(csr[0], minlength=len(names))
        split.concepts = csr
        if split.kind == "manifest":
            split.dataset = ImageTextPairs(
                images, captions, csr, self.transforms["train"], self.max_objects
            )
        elif self.shard_access == "indexed":
            split.dataset = IndexedShards(
                split.paths,
                split.sizes,
                csr,
                transform=self.transforms["train"],
                max_objects=self.max_objects,
                cache_dir=self.cache_dir,
            )
        split.ready = True

    def _concepts_while_streaming(self) -> None:
        """Setup without the concepts of the set: the stream reads them with the samples."""
        names = list(self.vocabulary)
        if self.cabs["targets"] is not None:
            check_length(
                self.cabs["targets"], "cabs_targets", len(names), "concept of the vocabulary"
            )
        self.concept_names = names
        self.num_concepts = len(names)
        self.concept_frequencies = None
        self._train.concepts = None
        self._train.ready = True

    def _setup_val(self) -> None:
        split = self._val
        if split.kind == "manifest":
            images, captions, _, _ = read_manifest(split.paths[0], None, "val")
            split.dataset = ImageTextPairs(images, captions, None, self.transforms["eval"])
        elif split.kind is not None:
            _read_shards(split, None, "val")
        split.ready = True

    def _setup_zero_shot(self) -> None:
        if self.zero_shot_set is not None:
            return
        images, labels, names = read_labelled_images(self.zero_shot_val, self.class_names)
        # Checks the groups against the classes now, not at the first validation.
        ZeroShotClasses(names, self.templates, self.class_groups)
        self.class_names = names
        self.zero_shot_set = LabelledImages(images, labels, self.transforms["eval"])

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
        if not self._train.ready:
            self.setup("fit")
        split = self._train
        workers = {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}
        cabs = {
            "batch_size": self.batch_size,
            "filter_ratio": self.cabs["filter_ratio"],
            "variant": self.cabs["variant"],
            "targets": self.cabs["targets"],
            "cap": self.cabs["cap"],
            "seed": self.seed,
            "num_concepts": self.num_concepts,
        }
        if split.dataset is not None:  # map-style: a manifest or indexed shards
            if self.sampling == "iid":
                sampler = ShuffleSampler(len(split.dataset), seed=self.seed)
                return stateful_loader(
                    split.dataset,
                    batch_size=self.batch_size,
                    sampler=sampler,
                    drop_last=self.drop_last,
                    **workers,
                )
            batch_sampler = ConceptAwareBatchSampler(split.concepts, **cabs)
            return stateful_loader(split.dataset, batch_sampler=batch_sampler, **workers)
        drop_last = self.drop_last and self.sampling == "iid"  # CABS: whole batches only
        streamed = {"concepts_key": self.concepts_key, "vocabulary": self.concept_names}
        source, batches = _shard_stream(
            split,
            self.sampling,
            cabs,
            *self._world(),
            self.num_workers,
            drop_last,
            streamed if split.concepts is None else {},
        )
        dataset = DecodingStream(source, self.transforms["train"], self.max_objects)
        return stateful_loader(
            dataset, batches, batch_size=self.batch_size, drop_last=drop_last, **workers
        )

    def config(self) -> dict[str, Any]:
        """The settings the training stream (and a saved loader position) depends on."""
        config: dict[str, Any] = {
            "kind": type(self).__name__,
            "sampling": self.sampling,
            "shard_access": self.shard_access,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "num_workers": self.num_workers,
            "drop_last": self.drop_last,
        }
        if self.sampling == "cabs":
            config["filter_ratio"] = self.cabs["filter_ratio"]
        if self._train.ready:
            config["train_samples"] = (
                len(self._train.dataset)
                if self._train.kind == "manifest"
                else sum(self._train.sizes)
            )
        return config

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """``[zero-shot, retrieval]`` loaders in order, each alone if only one is given.

        Zero-shot batches hold ``image``, ``label`` and ``index``; retrieval batches
        ``image``, ``caption`` and ``index``. ``[]`` without ``val`` and ``zero_shot_val``.
        """
        if not self._val.ready or (self.zero_shot_val is not None and self.zero_shot_set is None):
            self.setup("validate")
        loaders = [] if self.zero_shot_set is None else [self._eval_loader(self.zero_shot_set)]
        if self._val.kind is not None:
            loaders.append(self._retrieval_loader())
        return loaders[0] if len(loaders) == 1 else loaders

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _retrieval_loader(self) -> DataLoader:
        if self._val.kind == "manifest":
            dataset: Dataset = self._val.dataset
        else:
            num_replicas, rank = self._world()
            reader = ImageTextShards(
                self._val.paths, self._val.sizes, num_replicas=num_replicas, rank=rank
            )
            dataset = DecodingStream(reader, self.transforms["eval"], None)
        return self._eval_loader(dataset)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """The validation pairs."""
        return self.val_dataloader()


def _read_shards(
    split: _Split, concepts_key: str | None, argument: str, streamed: bool = False
) -> tuple[list[list[Concept]] | None, list[str] | None]:
    """Fill ``split.paths`` / ``sizes`` from its index or a scan; concept lists and places.

    A scan reads every shard once (``.txt`` / ``.json`` members only); it is skipped when
    an index gives the sizes and, with ``concepts_key``, the concepts under that key, or
    gives the sizes only and ``streamed`` allows the stream to read the concepts (then
    ``(None, None)`` is returned).

    Raises:
        ValueError: for an index whose concepts were read under another key.
    """
    if split.kind == "index":
        index = read_shard_index(split.paths[0], argument)
        split.kind, split.paths, split.sizes = "shards", index.urls, index.sizes
        if concepts_key is None:
            return [], []
        if index.concepts is not None:
            if index.concepts_key != concepts_key:
                raise ValueError(
                    f"`{argument}`: the shard index holds concepts under "
                    f"{index.concepts_key!r}, but `concepts_key`={concepts_key!r}; write the "
                    "index with that key, or set `concepts_key` to the index's."
                )
            return index.concepts, index.places
        if streamed:
            return None, None
        rank_zero_info(
            f"The shard index of `{argument}` has no concepts: reading them from all "
            f"{len(index.urls)} shards (write the index with concepts, or give a "
            "`concept_vocabulary` to a stream, to skip this)."
        )
    split.sizes, raw, places = scan_shards(split.paths, concepts_key)
    return raw, places


def _shard_stream(
    split: _Split,
    sampling: str,
    cabs: dict[str, Any],
    num_replicas: int,
    rank: int,
    num_workers: int,
    drop_last: bool,
    streamed: dict[str, Any],
) -> tuple[Iterable[dict[str, Any]], int]:
    """This rank's undecoded training samples (the reader, or CABS on it) and batch count.

    Raises:
        ValueError: for shards so few or small that a worker's share of an epoch holds
            not one CABS super-batch (or batch, under ``drop_last``; or sample).
    """
    per_rank = max(1, num_workers)
    if len(split.paths) % (num_replicas * per_rank):
        rank_zero_warn(
            f"{len(split.paths)} training shards are not a multiple of {num_replicas} "
            f"ranks x {per_rank} workers: every epoch each worker reads only as many "
            "samples as the smallest share holds, so part of the data is skipped."
        )
    reader = ImageTextShards(
        split.paths,
        split.sizes,
        split.concepts,
        shuffle=True,
        seed=cabs["seed"],
        equalize=True,
        num_replicas=num_replicas,
        rank=rank,
        **streamed,
    )
    share = reader.consumer_samples(per_rank)
    size = cabs["batch_size"]
    if sampling == "cabs":
        needed, unit = super_batch_size(size, cabs["filter_ratio"]), "CABS super-batch"
    else:
        needed, unit = (size, "batch (`drop_last`)") if drop_last else (1, "sample")
    if share < needed:
        raise ValueError(
            f"Each of the {num_replicas} ranks x {per_rank} workers reads only {share} "
            f"training samples per epoch, fewer than one {unit} ({needed}); use more or "
            "larger shards, fewer workers, or a smaller `batch_size` / `filter_ratio`."
        )
    if sampling == "cabs":  # every worker forms whole super-batches from its share
        return ConceptAwareStream(reader, **cabs), per_rank * (share // needed)
    return reader, per_rank * (share // size if drop_last else -(-share // size))
