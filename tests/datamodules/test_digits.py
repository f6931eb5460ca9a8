"""Digits: scikit-learn's handwritten digits as a classification datamodule."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from lightning_plugins.datamodules import Digits
from lightning_plugins.sampling import CurriculumSampler, ShuffleSampler, find_steerable_sampler

DIGITS = load_digits()


@pytest.fixture(scope="module")
def dm() -> Digits:
    module = Digits(batch_size=16, image_size=16, label_noise=0.2)
    module.setup("fit")
    return module


def reference_image(row: int, image_size: int, channels: int) -> torch.Tensor:
    """One image the obvious way: [0, 16] -> [0, 1] -> [-1, 1], bilinear, repeated."""
    pixels = torch.tensor(DIGITS.images[row], dtype=torch.float32) / 16.0
    pixels = pixels * 2.0 - 1.0
    resized = F.interpolate(
        pixels[None, None], size=(image_size, image_size), mode="bilinear", align_corners=False
    )[0]
    return resized.expand(channels, image_size, image_size)


# ---------------------------------------------------------------- images and labels
@pytest.mark.parametrize(("image_size", "channels"), [(16, 3), (8, 1), (28, 1)])
def test_images_match_an_independent_reference(image_size, channels):
    dm = Digits(image_size=image_size, channels=channels)
    dm.setup("fit")
    for dataset, rows in (
        (dm.train_set, dm.train_indices),
        (dm.val_set, dm.val_indices),
        (dm.test_set, dm.test_indices),
    ):
        for position in (0, 5, len(dataset) - 1):
            row = int(rows[position])
            sample = dataset[position]
            expected = reference_image(row, image_size, channels)
            assert torch.equal(sample["image"], expected)
            assert sample["image"].dtype == torch.float32
            assert int(sample["label"]) == int(DIGITS.target[row]) or dataset is dm.train_set
            assert int(sample["index"]) == position
    images = dm.train_set.images
    assert images.min() >= -1 and images.max() <= 1
    assert images.min() == -1 and images.max() > 0.9


def test_val_and_test_labels_are_the_true_labels(dm):
    assert torch.equal(dm.val_set.labels, torch.from_numpy(DIGITS.target)[dm.val_indices])
    assert torch.equal(dm.test_set.labels, torch.from_numpy(DIGITS.target)[dm.test_indices])
    assert torch.equal(dm.clean_train_labels, torch.from_numpy(DIGITS.target)[dm.train_indices])


def test_classes(dm):
    assert dm.num_classes == 10
    assert dm.class_names == [str(d) for d in range(10)]


# ---------------------------------------------------------------- split
@pytest.mark.parametrize(("val", "test"), [(0.2, 0.2), (0.1, 0.3), (0.0, 0.5), (0.25, 0.0)])
def test_split_sizes_and_disjointness(val, test):
    dm = Digits(val_fraction=val, test_fraction=test, image_size=8)
    dm.setup("fit")
    n_val, n_test = round(val * 1797), round(test * 1797)
    assert (len(dm.val_set), len(dm.test_set)) == (n_val, n_test)
    assert len(dm.train_set) == 1797 - n_val - n_test
    rows = torch.cat([dm.train_indices, dm.val_indices, dm.test_indices])
    assert sorted(rows.tolist()) == list(range(1797))  # disjoint and complete
    assert dm.config()["train_size"] == len(dm.train_set)


def test_split_follows_split_seed_only():
    def split(**kwargs) -> list[list[int]]:
        dm = Digits(image_size=8, **kwargs)
        dm.setup("fit")
        return [dm.train_indices.tolist(), dm.val_indices.tolist(), dm.test_indices.tolist()]

    def rows(parts: list[list[int]]) -> list[int]:
        return sorted(row for part in parts for row in part)

    first = split(split_seed=0)
    assert split(split_seed=0) == first
    assert split(split_seed=0, seed=5, label_noise=0.3) == first  # seed steers noise, not split
    other = split(split_seed=1)
    assert other != first and rows(other) == rows(first) == list(range(1797))


# ---------------------------------------------------------------- label noise
@pytest.mark.parametrize("noise", [0.05, 0.2, 0.5])
def test_label_noise_flips_exactly_the_named_labels(noise):
    dm = Digits(image_size=8, label_noise=noise, seed=3)
    dm.setup("fit")
    clean, noisy, flipped = dm.clean_train_labels, dm.train_labels, dm.flipped_indices
    n_train = len(dm.train_set)
    assert flipped.dtype == torch.long and len(flipped) == round(noise * n_train)
    assert flipped.tolist() == sorted(set(flipped.tolist()))  # sorted, no repeats
    assert (flipped >= 0).all() and (flipped < n_train).all()
    assert (noisy[flipped] != clean[flipped]).all()
    kept = torch.ones(n_train, dtype=torch.bool)
    kept[flipped] = False
    assert torch.equal(noisy[kept], clean[kept])
    assert torch.equal(noisy != clean, ~kept)
    assert ((noisy >= 0) & (noisy < 10)).all()
    assert torch.equal(dm.train_set.labels, noisy)
    labels = [int(dm.train_set[int(i)]["label"]) for i in flipped[:5]]
    assert labels == noisy[flipped[:5]].tolist()


def test_label_noise_goes_to_every_other_class():
    dm = Digits(image_size=8, label_noise=0.9)
    dm.setup("fit")
    flipped = dm.flipped_indices
    shift = (dm.train_labels[flipped] - dm.clean_train_labels[flipped]) % 10
    counts = torch.bincount(shift, minlength=10)
    assert counts[0] == 0 and (counts[1:] > 0.5 * len(flipped) / 9).all()


def test_label_noise_is_seeded():
    def noise(seed: int) -> tuple[list[int], list[int]]:
        dm = Digits(image_size=8, label_noise=0.2, seed=seed)
        dm.setup("fit")
        return dm.flipped_indices.tolist(), dm.train_labels.tolist()

    assert noise(0) == noise(0)
    assert noise(0)[0] != noise(1)[0]


def test_no_label_noise_by_default():
    dm = Digits(image_size=8)
    dm.setup("fit")
    assert dm.flipped_indices.dtype == torch.long and dm.flipped_indices.numel() == 0
    assert torch.equal(dm.train_labels, dm.clean_train_labels)


# ---------------------------------------------------------------- loaders
def test_batches(dm):
    train = next(iter(dm.train_dataloader()))
    assert set(train) == {"image", "label", "index"}
    assert train["image"].shape == (16, 3, 16, 16) and train["image"].dtype == torch.float32
    assert train["label"].shape == (16,) and train["label"].dtype == torch.long
    assert train["index"].shape == (16,) and train["index"].dtype == torch.long
    assert torch.equal(train["label"], dm.train_labels[train["index"]])
    assert torch.equal(train["image"], dm.train_set.images[train["index"]])
    for loader, dataset in ((dm.val_dataloader(), dm.val_set), (dm.test_dataloader(), dm.test_set)):
        batches = list(loader)
        assert torch.equal(torch.cat([b["index"] for b in batches]), torch.arange(len(dataset)))
        assert torch.equal(torch.cat([b["label"] for b in batches]), dataset.labels)


@pytest.mark.parametrize("drop_last", [True, False])
def test_train_loader_is_a_steerable_curriculum_sampler(dm, drop_last):
    module = Digits(batch_size=16, image_size=8, seed=4, drop_last=drop_last)
    loader = module.train_dataloader()
    sampler = loader.batch_sampler
    assert isinstance(sampler, CurriculumSampler)
    assert find_steerable_sampler(loader) is sampler
    assert sampler.num_samples == len(module.train_set) == 1079
    assert sampler.batch_size == 16
    indices = torch.cat([batch["index"] for batch in loader])
    expected = list(ShuffleSampler(1079, seed=4))  # unsteered: a (seed, epoch) permutation
    full = 1079 // 16 * 16
    assert indices[:full].tolist() == expected[:full]
    assert len(loader) == (1079 // 16 if drop_last else 1079 // 16 + 1)


def test_train_loader_can_be_steered_to_a_subset():
    dm = Digits(batch_size=8, image_size=8)
    loader = dm.train_dataloader()
    allowed = torch.zeros(len(dm.train_set), dtype=torch.bool)
    allowed[:100] = True
    find_steerable_sampler(loader).set_subset(allowed)
    seen = torch.cat([batch["index"] for batch in loader])
    assert (seen < 100).all()


# ---------------------------------------------------------------- resume
def test_state_dict_is_the_config():
    dm = Digits(batch_size=8, label_noise=0.2)
    state = dm.state_dict()
    assert state == {"config": dm.config()}
    assert state["config"]["kind"] == "Digits" and state["config"]["label_noise"] == 0.2
    Digits(batch_size=8, label_noise=0.2).load_state_dict(state)
    Digits(batch_size=8, label_noise=0.2, image_size=16).load_state_dict(state)  # pixels only


@pytest.mark.parametrize(
    ("resumed", "message"),
    [
        ({"label_noise": 0.3}, r"label_noise=0\.2.* has label_noise=0\.3"),
        ({"batch_size": 4}, r"batch_size=8.* has batch_size=4"),
        ({"seed": 1}, r"seed=0.* has seed=1"),
        ({"split_seed": 1}, r"split_seed=0.* has split_seed=1"),
        (
            {"val_fraction": 0.1},
            r"train_size=1079, val_fraction=0\.2.* has train_size=1258, val_fraction=0\.1",
        ),
        ({"drop_last": True}, r"drop_last=False.* has drop_last=True"),
    ],
)
def test_resume_with_other_settings_is_refused(resumed, message):
    base = {"batch_size": 8, "label_noise": 0.2}
    state = Digits(**base).state_dict()
    with pytest.raises(ValueError, match=rf"Cannot resume Digits.*{message}"):
        Digits(**{**base, **resumed}).load_state_dict(state)


# ---------------------------------------------------------------- Lightning
class TinyClassifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(8 * 8, 10)
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["index"].clone())
        logits = self.head(batch["image"].flatten(1))
        return F.cross_entropy(logits, batch["label"])

    def validation_step(self, batch, batch_idx):
        logits = self.head(batch["image"].flatten(1))
        self.log("val_loss", F.cross_entropy(logits, batch["label"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_fits_with_lightning(tmp_path):
    dm = Digits(batch_size=32, image_size=8, channels=1, label_noise=0.1)
    model = TinyClassifier()
    trainer = pl.Trainer(
        max_steps=4,
        limit_val_batches=2,
        val_check_interval=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 4
    assert "val_loss" in trainer.callback_metrics
    expected = list(ShuffleSampler(len(dm.train_set), seed=0))[: 4 * 32]
    assert torch.cat(model.seen).tolist() == expected
