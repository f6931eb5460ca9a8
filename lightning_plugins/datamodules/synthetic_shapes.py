"""SyntheticShapes: procedural image-text pairs with concept annotations, no download."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_plugins.datamodules.checked_resume import CheckedResume
from lightning_plugins.datamodules.shapes_scene import (
    COLORS,
    SHAPES,
    SceneObject,
    caption_for,
    concept_name,
    draw_scene,
    num_caption_templates,
    zipf_probabilities,
)
from lightning_plugins.datamodules.stateful_loader import stateful_loader
from lightning_plugins.functional._checks import (
    check_bool,
    check_choice,
    check_float,
    check_int,
)
from lightning_plugins.sampling import ConceptAwareBatchSampler, CurriculumSampler

__all__ = ["ShapesClassification", "ShapesPairs", "SyntheticShapes"]

ZERO_SHOT_TEMPLATES: tuple[str, ...] = ("one {}", "a picture of one {}", "an image with one {}")
_STREAM_TRAIN, _STREAM_RETRIEVAL, _STREAM_ZERO_SHOT, _STREAM_CLASSIFICATION_TRAIN = 0, 1, 2, 3
SAMPLING_MODES = ("iid", "cabs")
TASKS = ("pairs", "classification")


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` uint8 to a ``[3, H, W]`` float tensor scaled to [-1, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def _layout(rng: np.random.Generator, concepts: list[int], image_size: int) -> list[SceneObject]:
    """Place ``concepts`` in distinct cells of a 2x2 grid with jitter and size variation."""
    scale = image_size / 32
    cells = rng.permutation(4)[: len(concepts)]
    jitter = rng.uniform(-2.0, 2.0, size=(len(concepts), 2)) * scale
    radii = rng.uniform(4.5, 6.5, size=len(concepts)) * scale
    return [
        SceneObject(int(c), int(cell), float(jx), float(jy), float(r))
        for c, cell, (jx, jy), r in zip(concepts, cells, jitter, radii, strict=True)
    ]


class ShapesPairs(Dataset):
    """Image-caption pairs of 1-4 coloured shapes, deterministic from ``(seed, index)``.

    Concepts are drawn independently per object from ``probabilities``. Each sample is a
    dict with ``image`` (``[3, H, W]`` float in [-1, 1]), ``caption`` (str), ``concepts``
    (``[max_objects]`` int64 concept ids, padded with -1; one entry per object, so
    duplicates encode multiplicity) and ``index`` (int64).

    Args:
        size: number of samples.
        probabilities: concept probabilities, summing to 1.
        seed: seed of the whole dataset.
        stream: distinguishes datasets drawn with the same seed (train, validation).
        image_size: side of the square images in pixels.
        min_objects: fewest objects per image.
        max_objects: most objects per image (at most 4).

    Raises:
        ValueError: unless ``1 <= min_objects <= max_objects <= 4``.

    Example:
        >>> ds = ShapesPairs(10, zipf_probabilities(64, 1.0), seed=0)
        >>> sample = ds[3]
        >>> sample["image"].shape, sample["concepts"].shape
        (torch.Size([3, 32, 32]), torch.Size([4]))
        >>> ds.concepts(3) == [c for c in sample["concepts"].tolist() if c >= 0]
        True
    """

    def __init__(
        self,
        size: int,
        probabilities: np.ndarray,
        seed: int = 0,
        stream: int = _STREAM_TRAIN,
        image_size: int = 32,
        min_objects: int = 1,
        max_objects: int = 4,
    ) -> None:
        if not 1 <= min_objects <= max_objects <= 4:
            raise ValueError(
                "`min_objects` and `max_objects` must satisfy 1 <= min_objects <= max_objects "
                f"<= 4 (a 2x2 grid), got {min_objects} and {max_objects}."
            )
        self.size = size
        self.probabilities = np.asarray(probabilities, dtype=np.float64)
        self.seed = seed
        self.stream = stream
        self.image_size = image_size
        self.min_objects = min_objects
        self.max_objects = max_objects

    def __len__(self) -> int:
        return self.size

    def _rng(self, index: int, part: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.stream, index, part])

    def _metadata(self, index: int) -> tuple[list[int], int]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} samples")
        rng = self._rng(index, 0)
        count = int(rng.integers(self.min_objects, self.max_objects + 1))
        concepts = rng.choice(len(self.probabilities), size=count, p=self.probabilities)
        return concepts.tolist(), int(rng.integers(num_caption_templates()))

    def concepts(self, index: int) -> list[int]:
        """Concept ids of sample ``index`` (one per object), computed without drawing."""
        return self._metadata(index)[0]

    def caption(self, index: int) -> str:
        """Caption of sample ``index``, computed without drawing."""
        return caption_for(*self._metadata(index))

    def __getitem__(self, index: int) -> dict[str, Any]:
        concepts, template = self._metadata(index)
        rng = self._rng(index, 1)
        noise = rng.uniform(-1.0, 1.0, size=(self.image_size, self.image_size, 3))
        image = draw_scene(_layout(rng, concepts, self.image_size), self.image_size, noise)
        padded = torch.full((self.max_objects,), -1, dtype=torch.long)
        padded[: len(concepts)] = torch.as_tensor(concepts, dtype=torch.long)
        return {
            "image": _to_tensor(image),
            "caption": caption_for(concepts, template),
            "concepts": padded,
            "index": torch.tensor(index, dtype=torch.long),
        }


class ShapesClassification(Dataset):
    """Single-object images balanced over all concepts, for (zero-shot) classification.

    Sample ``i`` shows concept ``i % num_concepts``, drawn deterministically from
    ``(seed, stream, i)``. Each sample is a dict with ``image``, ``label`` (int64 concept
    id) and ``index`` (int64).

    Args:
        size: number of samples.
        num_concepts: number of concepts (classes), 1 to 64.
        seed: seed of the whole dataset.
        image_size: side of the square images in pixels.
        stream: distinguishes datasets drawn with the same seed (the zero-shot validation
            set by default; ``SyntheticShapes(task="classification")`` trains on another).

    Example:
        >>> ds = ShapesClassification(128, num_concepts=64, seed=0)
        >>> int(ds[70]["label"]), ds.concepts(70)
        (6, [6])
    """

    def __init__(
        self,
        size: int,
        num_concepts: int,
        seed: int = 0,
        image_size: int = 32,
        stream: int = _STREAM_ZERO_SHOT,
    ) -> None:
        if not 1 <= num_concepts <= len(SHAPES) * len(COLORS):
            raise ValueError(
                f"`num_concepts` must be in 1..{len(SHAPES) * len(COLORS)}, got {num_concepts}."
            )
        self.size = size
        self.num_concepts = num_concepts
        self.seed = seed
        self.image_size = image_size
        self.stream = stream

    def __len__(self) -> int:
        return self.size

    @property
    def labels(self) -> torch.Tensor:
        """The int64 label of every sample (``index % num_concepts``), without drawing."""
        return torch.arange(self.size) % self.num_concepts

    def concepts(self, index: int) -> list[int]:
        """The one concept id (the label) of sample ``index``, computed without drawing."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} samples")
        return [index % self.num_concepts]

    def __getitem__(self, index: int) -> dict[str, Any]:
        label = self.concepts(index)[0]
        rng = np.random.default_rng([self.seed, self.stream, index])
        noise = rng.uniform(-1.0, 1.0, size=(self.image_size, self.image_size, 3))
        image = draw_scene(_layout(rng, [label], self.image_size), self.image_size, noise)
        return {
            "image": _to_tensor(image),
            "label": torch.tensor(label, dtype=torch.long),
            "index": torch.tensor(index, dtype=torch.long),
        }


class SyntheticShapes(CheckedResume):
    """Built-in image-text data with long-tailed concepts; needs no download.

    Images (default 32x32) hold 1-4 objects, each one of 64 concepts (8 shapes x 8
    colours) drawn from a Zipf-like distribution, so rare concepts are rare. Captions
    name each object with its count ("two red circles and one blue star").

    ``task="pairs"`` (image-text training): batches carry ``image``, ``caption``,
    ``concepts`` and ``index``; the module tokenizes ``caption`` into ``text``. Validation
    has two dataloaders: single-object images balanced over all concepts, with ``label``,
    for zero-shot classification (class names in ``class_names``, prompts in
    ``templates``, the rarest quarter of concepts in ``class_groups["rare"]``), and
    multi-object image-caption pairs for retrieval. ``concept_names`` names the ids of
    ``concepts`` (the same 64 names as ``class_names``).

    ``task="classification"`` (the view an image classifier such as
    :class:`~lightning_plugins.modules.ImageClassifier` trains on): ``train_size``
    single-object images, balanced over the concepts, the concept as class; batches carry
    ``image``, ``label`` and ``index``. The training images are drawn from their own
    stream, never the validation images. Validation is one dataloader, the zero-shot set
    above with its ``label``. ``num_classes`` is the number of concepts (64) for both
    tasks. For ``ClassIncremental`` (its LabelledSplits protocol) this view names its
    splits ``train_set`` and ``val_set`` (the zero-shot set; ``None`` for pairs), and
    their ``labels``.

    The i.i.d. training loader is a steerable
    :class:`~lightning_plugins.sampling.CurriculumSampler`: callbacks such as
    ``Curriculum`` or ``DataDiet`` find it with
    :func:`~lightning_plugins.sampling.find_steerable_sampler`. Unsteered on one process
    it yields :class:`~lightning_plugins.sampling.ShuffleSampler`'s order of
    ``(seed, epoch)`` in batches, the same pairs stream as earlier versions.

    Args:
        batch_size: samples per batch and process.
        num_workers: dataloader worker processes.
        train_size: training samples per epoch.
        zero_shot_size: single-object validation images (a multiple of 64 keeps it balanced).
        retrieval_size: image-caption pairs for retrieval validation.
        image_size: side of the square images in pixels (at least 16).
        max_objects: most objects per training image, 1 to 4.
        zipf_exponent: long-tail strength; 0 is uniform.
        seed: seed of all data.
        sampling: ``"iid"`` (shuffled batches) or, for ``task="pairs"`` only, ``"cabs"``
            (Concept-Aware Batch Sampling: a
            :class:`~lightning_plugins.sampling.ConceptAwareBatchSampler` chooses each
            batch from a super-batch by concept annotations, before any image is drawn).
        filter_ratio: CABS: share of each super-batch dropped, in ``[0, 1)``.
        cabs_variant: CABS: ``"dm"`` (diversity) or ``"fm"`` (most objects first).
        cabs_cap: CABS DM: most occurrences of one concept per batch, or ``None``.
        cabs_targets: CABS DM: a target distribution over the 64 concepts, or ``None``
            for uniform over the concepts of each super-batch.
        drop_last: ``"iid"``: drop the last incomplete training step of every epoch (as
            open_clip's loader does); without it the last step is filled up from the
            next shuffled pass, so no batch is ever smaller than ``batch_size`` (a
            contrastive loss never sees a batch of one pair). ``"cabs"`` never yields
            incomplete batches.
        task: ``"pairs"`` (image-caption pairs) or ``"classification"`` (single-object
            images with the concept as ``label``).

    **Resuming.** :meth:`state_dict` (saved by Lightning in checkpoints) holds the
    settings the training stream depends on (``task``, ``sampling``, ``batch_size``,
    ``train_size``, ``seed``, ``max_objects``, ``zipf_exponent``, ``num_workers``,
    ``drop_last`` and, for CABS, ``filter_ratio``); resuming with other values raises a
    ``ValueError`` naming each, before any batch is loaded. Checkpoints without this
    state (earlier versions) resume unchecked; a saved state without ``task`` (saved
    before it existed) counts as ``task="pairs"``.

    Raises:
        TypeError: for a size, seed or ``zipf_exponent`` that is not a number (``1.5``
            or ``"64"`` for a size), or a ``drop_last`` that is not a bool.
        ValueError: for sizes below 1, ``max_objects`` outside 1-4, ``image_size`` below
            16, a negative ``zipf_exponent``, an unknown ``sampling`` or ``task``, CABS
            with ``task="classification"``, or CABS settings the sampler rejects.

    Example:
        >>> dm = SyntheticShapes(batch_size=8, train_size=32)
        >>> dm.setup("fit")
        >>> batch = next(iter(dm.train_dataloader()))
        >>> sorted(batch), batch["image"].shape
        (['caption', 'concepts', 'image', 'index'], torch.Size([8, 3, 32, 32]))
        >>> len(dm.class_names), len(dm.class_groups["rare"])
        (64, 16)
        >>> dm = SyntheticShapes(batch_size=8, train_size=32, task="classification")
        >>> batch = next(iter(dm.train_dataloader()))
        >>> sorted(batch), batch["label"].dtype, dm.num_classes
        (['image', 'index', 'label'], torch.int64, 64)
    """

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 0,
        train_size: int = 20_000,
        zero_shot_size: int = 640,
        retrieval_size: int = 512,
        image_size: int = 32,
        max_objects: int = 4,
        zipf_exponent: float = 1.0,
        seed: int = 0,
        sampling: str = "iid",
        filter_ratio: float = 0.8,
        cabs_variant: str = "dm",
        cabs_cap: int | None = 10,
        cabs_targets: list[float] | None = None,
        drop_last: bool = True,
        task: str = "pairs",
    ) -> None:
        super().__init__()
        batch_size = check_int(batch_size, "batch_size", low=1)
        train_size = check_int(train_size, "train_size", low=1)
        zero_shot_size = check_int(zero_shot_size, "zero_shot_size", low=1)
        retrieval_size = check_int(retrieval_size, "retrieval_size", low=1)
        num_workers = check_int(num_workers, "num_workers", low=0)
        max_objects = check_int(max_objects, "max_objects", low=1, high=4)  # a 2x2 grid
        image_size = check_int(image_size, "image_size", low=16)
        zipf_exponent = check_float(zipf_exponent, "zipf_exponent", low=0)
        seed = check_int(seed, "seed")
        check_choice(sampling, "sampling", SAMPLING_MODES)
        self.task = check_choice(task, "task", TASKS)
        if sampling == "cabs" and task != "pairs":
            raise ValueError(
                f"`sampling='cabs'` needs `task='pairs'` (CABS chooses image-caption pairs by "
                f"their concepts), got `task={task!r}`; use `sampling='iid'` for "
                f"{task!r}."
            )
        self.drop_last = check_bool(drop_last, "drop_last")
        self.zipf_exponent = zipf_exponent
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.num_concepts = len(SHAPES) * len(COLORS)
        self.num_classes = self.num_concepts  # one class per concept
        self.probabilities = zipf_probabilities(self.num_concepts, zipf_exponent)
        self.concept_names: list[str] = [concept_name(c) for c in range(self.num_concepts)]
        self.class_names: list[str] = list(self.concept_names)  # one class per concept
        self.templates: list[str] = list(ZERO_SHOT_TEMPLATES)
        by_frequency = np.argsort(self.probabilities, kind="stable")
        self.class_groups: dict[str, list[int]] = {
            "rare": sorted(by_frequency[: self.num_concepts // 4].tolist())
        }
        self.train_set: ShapesPairs | ShapesClassification = (
            ShapesPairs(
                train_size, self.probabilities, seed, _STREAM_TRAIN, image_size, 1, max_objects
            )
            if task == "pairs"
            else ShapesClassification(
                train_size, self.num_concepts, seed, image_size, _STREAM_CLASSIFICATION_TRAIN
            )
        )
        self.retrieval_set = ShapesPairs(
            retrieval_size,
            self.probabilities,
            seed,
            _STREAM_RETRIEVAL,
            image_size,
            min(2, max_objects),
            max_objects,
        )
        self.zero_shot_set = ShapesClassification(
            zero_shot_size, self.num_concepts, seed, image_size
        )
        self.val_set = self.zero_shot_set if task == "classification" else None
        self.max_objects = max_objects
        self.sampling = sampling
        self.cabs = {
            "filter_ratio": filter_ratio,
            "variant": cabs_variant,
            "cap": cabs_cap,
            "targets": cabs_targets,
        }
        self._train_concepts: list[list[int]] | None = None
        if sampling == "cabs":
            self._cabs_sampler()  # check the CABS settings now, not at the first batch

    @property
    def train_concepts(self) -> list[list[int]]:
        """Concept ids of every training sample (computed once, without drawing)."""
        if self._train_concepts is None:
            self._train_concepts = [self.train_set.concepts(i) for i in range(len(self.train_set))]
        return self._train_concepts

    @property
    def concept_frequencies(self) -> torch.Tensor:
        """Occurrences of each concept in the training set (what IID batches show)."""
        flat = [c for row in self.train_concepts for c in row]
        return torch.bincount(torch.tensor(flat, dtype=torch.long), minlength=self.num_concepts)

    def _cabs_sampler(self) -> ConceptAwareBatchSampler:
        return ConceptAwareBatchSampler(
            self.train_concepts,
            self.batch_size,
            seed=self.seed,
            num_concepts=self.num_concepts,
            **self.cabs,
        )

    def _loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> StatefulDataLoader:
        """Training samples shuffled per epoch from ``(seed, epoch)``, or CABS batches.

        A ``StatefulDataLoader`` over a steerable :class:`CurriculumSampler`
        (``sampling="iid"``) or a :class:`ConceptAwareBatchSampler` (``"cabs"``):
        Lightning saves its position in checkpoints, so a run resumed from a mid-epoch
        checkpoint sees exactly the batches it would have seen. Under DDP Lightning hands
        each a distributed sampler; both stay deterministic per epoch and give every rank
        its own samples. With ``drop_last`` (the default) the last incomplete i.i.d. step
        is dropped, otherwise filled up from the next shuffled pass.
        """
        if self.sampling == "cabs":
            return stateful_loader(
                self.train_set,
                batch_sampler=self._cabs_sampler(),
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
            )
        sampler = CurriculumSampler(
            len(self.train_set), self.batch_size, seed=self.seed, drop_last=self.drop_last
        )
        return stateful_loader(
            self.train_set,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def config(self) -> dict[str, Any]:
        """The settings the training stream (and a saved loader position) depends on."""
        config = {
            "kind": type(self).__name__,
            "task": self.task,
            "sampling": self.sampling,
            "batch_size": self.batch_size,
            "train_size": len(self.train_set),
            "seed": self.seed,
            "max_objects": self.max_objects,
            "zipf_exponent": self.zipf_exponent,
            "num_workers": self.num_workers,
            "drop_last": self.drop_last,
        }
        if self.sampling == "cabs":
            config["filter_ratio"] = float(self.cabs["filter_ratio"])
        return config

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Check a checkpoint's settings (see :class:`CheckedResume`); no ``task`` means pairs.

        Raises:
            ValueError: naming every setting of :meth:`config` that differs.
        """
        saved = state_dict.get("config") if isinstance(state_dict, dict) else None
        if isinstance(saved, dict) and "task" not in saved:  # saved before `task` existed
            state_dict = {**state_dict, "config": {**saved, "task": "pairs"}}
        super().load_state_dict(state_dict)

    def val_dataloader(self) -> list[DataLoader] | DataLoader:
        """Pairs: zero-shot classification images, then retrieval pairs.

        Classification: the single-object validation images with their ``label``.
        """
        if self.task == "classification":
            return self._loader(self.zero_shot_set)
        return [self._loader(self.zero_shot_set), self._loader(self.retrieval_set)]

    def test_dataloader(self) -> list[DataLoader] | DataLoader:
        """The validation sets."""
        return self.val_dataloader()
