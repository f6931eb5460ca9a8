"""Digits: scikit-learn's handwritten digits as a classification DataModule, no download."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_plugins.datamodules.checked_resume import CheckedResume
from lightning_plugins.datamodules.stateful_loader import stateful_loader
from lightning_plugins.functional._checks import check_bool, check_choice, check_float, check_int
from lightning_plugins.sampling import CurriculumSampler

__all__ = ["Digits", "LabelledTensors", "digit_images", "split_sizes"]

NUM_DIGITS = 1797
"""Images in scikit-learn's digits (``load_digits``)."""
_SPLIT_STREAM, _NOISE_STREAM = 0, 1


def digit_images(images: torch.Tensor, image_size: int, channels: int) -> torch.Tensor:
    """``[N, 8, 8]`` pixel counts (0-16) to ``[N, channels, image_size, image_size]`` in [-1, 1].

    Pixels are divided by 16 (to [0, 1]), mapped to [-1, 1], upsampled bilinearly
    (``align_corners=False``) and repeated over ``channels``.

    Example:
        >>> digit_images(torch.full((2, 8, 8), 16.0), 16, 3).shape
        torch.Size([2, 3, 16, 16])
    """
    scaled = images.to(torch.float32).div(16.0).mul(2.0).sub(1.0).unsqueeze(1)
    resized = F.interpolate(
        scaled, size=(image_size, image_size), mode="bilinear", align_corners=False
    )
    return resized.repeat(1, channels, 1, 1).contiguous()


def split_sizes(num_samples: int, val_fraction: float, test_fraction: float) -> tuple[int, ...]:
    """Train, validation and test sizes: ``round(fraction * num_samples)`` each, train the rest.

    Example:
        >>> split_sizes(1797, 0.2, 0.2)
        (1079, 359, 359)
    """
    val, test = round(val_fraction * num_samples), round(test_fraction * num_samples)
    return num_samples - val - test, val, test


class LabelledTensors(Dataset):
    """Map-style samples ``{"image", "label", "index"}`` from precomputed tensors.

    ``index`` is the position in this dataset (int64).

    Example:
        >>> ds = LabelledTensors(torch.zeros(3, 1, 8, 8), torch.tensor([4, 5, 6]))
        >>> sample = ds[2]
        >>> int(sample["label"]), int(sample["index"]), sample["image"].shape
        (6, 2, torch.Size([1, 8, 8]))
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if len(images) != len(labels):
            raise ValueError(f"Got {len(images)} images but {len(labels)} labels.")
        self.images = images
        self.labels = labels.to(torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        return {
            "image": self.images[index],
            "label": self.labels[index],
            "index": torch.tensor(index, dtype=torch.long),
        }


class Digits(CheckedResume):
    """scikit-learn's handwritten digits (1,797 real 8x8 images of 0-9); needs no download.

    Images are scaled to [-1, 1], upsampled bilinearly to ``image_size`` and repeated to
    ``channels`` (3 suits ImageNet-style backbones), computed once in :meth:`setup`. The
    train/val/test split is a permutation drawn from ``split_seed`` (fixed across runs
    that change ``seed``); ``val_fraction`` and ``test_fraction`` of the images, rounded,
    go to validation and test, the rest to training.

    ``label_noise`` flips ``round(label_noise * len(train_set))`` *training* labels,
    chosen from ``seed``, each to a uniformly drawn other class, so that curricula and
    data pruning can be tested where they matter. ``flipped_indices`` holds the flipped
    train-set positions (sorted), ``clean_train_labels`` the original labels and
    ``train_labels`` the ones trained on. The split and the noise are drawn from numpy
    generators keyed by ``(split_seed, 0)`` and ``(seed, 1)``, independent of the
    sampler's ``torch.randperm`` order.

    Batches are dicts with ``image`` (``[B, channels, image_size, image_size]`` float),
    ``label`` (int64) and ``index`` (int64, the position in its split's dataset; for
    training, the index the sampler and callbacks use). ``train_indices``,
    ``val_indices`` and ``test_indices`` map positions back to ``load_digits`` rows.

    The training loader is a ``StatefulDataLoader`` over a
    :class:`~lightning_plugins.sampling.CurriculumSampler` (shuffled per ``(seed, epoch)``,
    steerable by callbacks such as ``Curriculum`` and ``DataDiet``, DDP-ready and
    resumable mid-epoch); validation and test are plain, unshuffled DataLoaders.
    ``num_classes`` is 10 and ``class_names`` are ``"0"`` to ``"9"``.

    Args:
        batch_size: samples per batch and process.
        num_workers: dataloader worker processes.
        image_size: side of the square images in pixels (at least 8).
        channels: 1 (grey) or 3 (the grey image repeated).
        val_fraction: share of the images for validation, in ``[0, 1)``.
        test_fraction: share of the images for test, in ``[0, 1)``; the two shares sum to
            less than 1.
        label_noise: share of training labels flipped, in ``[0, 1)``.
        seed: seed of the label noise and of the training order.
        split_seed: seed of the train/val/test split.
        drop_last: drop the last incomplete training batch of every epoch.

    **Resuming.** :meth:`state_dict` (saved by Lightning in checkpoints) holds the
    settings the training stream depends on; resuming a fit with other values raises a
    ``ValueError`` naming each.

    Raises:
        TypeError: for an argument of the wrong type (``1.5`` for ``batch_size``, ``"0.1"``
            for ``label_noise``, ``1`` for ``drop_last``).
        ValueError: for values outside the ranges above, fractions that leave no training
            image, or ``drop_last`` with fewer training images than ``batch_size``.

    Example:
        >>> dm = Digits(batch_size=8, image_size=16, label_noise=0.1)
        >>> dm.setup("fit")
        >>> batch = next(iter(dm.train_dataloader()))
        >>> sorted(batch), batch["image"].shape, batch["label"].dtype
        (['image', 'index', 'label'], torch.Size([8, 3, 16, 16]), torch.int64)
        >>> len(dm.train_set), len(dm.val_set), len(dm.test_set), len(dm.flipped_indices)
        (1079, 359, 359, 108)
        >>> flipped = dm.flipped_indices
        >>> bool((dm.train_labels[flipped] != dm.clean_train_labels[flipped]).all())
        True
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        image_size: int = 32,
        channels: int = 3,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        label_noise: float = 0.0,
        seed: int = 0,
        split_seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = 10
        self.class_names: list[str] = [str(digit) for digit in range(10)]
        self.batch_size = check_int(batch_size, "batch_size", low=1)
        self.num_workers = check_int(num_workers, "num_workers", low=0)
        self.image_size = check_int(image_size, "image_size", low=8)
        self.channels = check_choice(check_int(channels, "channels"), "channels", (1, 3))
        self.val_fraction = check_float(val_fraction, "val_fraction", low=0, high=1, high_open=True)
        self.test_fraction = check_float(
            test_fraction, "test_fraction", low=0, high=1, high_open=True
        )
        self.label_noise = check_float(label_noise, "label_noise", low=0, high=1, high_open=True)
        self.seed = check_int(seed, "seed")
        self.split_seed = check_int(split_seed, "split_seed")
        self.drop_last = check_bool(drop_last, "drop_last")
        self.sizes = split_sizes(NUM_DIGITS, self.val_fraction, self.test_fraction)
        if self.val_fraction + self.test_fraction >= 1 or self.sizes[0] < 1:
            raise ValueError(
                f"`val_fraction` + `test_fraction` must be below 1 and leave at least one "
                f"training image, got {val_fraction!r} + {test_fraction!r} "
                f"({self.sizes[0]} of {NUM_DIGITS} images left for training)."
            )
        if self.drop_last and self.sizes[0] < self.batch_size:
            raise ValueError(
                f"`batch_size` must not exceed the {self.sizes[0]} training images with "
                f"`drop_last=True` (no whole batch would remain), got {batch_size!r}."
            )
        # set by setup(): positions in load_digits, labels, and the three datasets
        self.train_indices: torch.Tensor | None = None
        self.val_indices: torch.Tensor | None = None
        self.test_indices: torch.Tensor | None = None
        self.clean_train_labels: torch.Tensor | None = None
        self.train_labels: torch.Tensor | None = None
        self.flipped_indices: torch.Tensor | None = None
        self.train_set: LabelledTensors | None = None
        self.val_set: LabelledTensors | None = None
        self.test_set: LabelledTensors | None = None

    def setup(self, stage: str | None = None) -> None:
        """Load the digits, split them, flip training labels and precompute the images (once)."""
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits  # scikit-learn is slow to import

        digits = load_digits()
        if len(digits.target) != NUM_DIGITS:
            raise RuntimeError(
                f"scikit-learn's load_digits returned {len(digits.target)} images, "
                f"expected {NUM_DIGITS}."
            )
        images = digit_images(torch.from_numpy(digits.images), self.image_size, self.channels)
        labels = torch.from_numpy(digits.target).to(torch.long)
        order = np.random.default_rng([self.split_seed, _SPLIT_STREAM]).permutation(NUM_DIGITS)
        n_train, n_val, _ = self.sizes
        parts = np.split(order, [n_train, n_train + n_val])
        self.train_indices, self.val_indices, self.test_indices = (
            torch.from_numpy(part.copy()).to(torch.long) for part in parts
        )
        self.clean_train_labels = labels[self.train_indices]
        self.flipped_indices, self.train_labels = self._flip(self.clean_train_labels)
        self.train_set = LabelledTensors(images[self.train_indices], self.train_labels)
        self.val_set = LabelledTensors(images[self.val_indices], labels[self.val_indices])
        self.test_set = LabelledTensors(images[self.test_indices], labels[self.test_indices])

    def _flip(self, clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sorted flipped positions and the noisy labels (each flip to another class)."""
        rng = np.random.default_rng([self.seed, _NOISE_STREAM])
        count = round(self.label_noise * len(clean))
        chosen = np.sort(rng.permutation(len(clean))[:count])
        shifts = rng.integers(1, self.num_classes, size=count)  # never 0: another class
        flipped = torch.from_numpy(chosen).to(torch.long)
        noisy = clean.clone()
        noisy[flipped] = (clean[flipped] + torch.from_numpy(shifts)) % self.num_classes
        return flipped, noisy

    def train_dataloader(self) -> StatefulDataLoader:
        """Training batches from a steerable :class:`~lightning_plugins.sampling.CurriculumSampler`.

        Unsteered on one process it yields a permutation from ``(seed, epoch)`` in batches
        (``drop_last`` drops the last incomplete one). Under DDP Lightning hands the
        sampler a distributed sampler, from which it takes the epoch, replicas and rank.
        """
        self.setup("fit")
        sampler = CurriculumSampler(
            len(self.train_set), self.batch_size, seed=self.seed, drop_last=self.drop_last
        )
        return stateful_loader(
            self.train_set,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        """The validation images in order."""
        self.setup("validate")
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        """The test images in order."""
        self.setup("test")
        return self._loader(self.test_set)

    def config(self) -> dict[str, Any]:
        """The settings the training stream (and a saved loader position) depends on."""
        return {
            "kind": type(self).__name__,
            "batch_size": self.batch_size,
            "train_size": self.sizes[0],
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "label_noise": self.label_noise,
            "seed": self.seed,
            "split_seed": self.split_seed,
            "num_workers": self.num_workers,
            "drop_last": self.drop_last,
        }
