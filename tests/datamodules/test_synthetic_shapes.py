"""SyntheticShapes datamodule and its ShapesPairs / ShapesClassification datasets."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_plugins.datamodules import ShapesClassification, ShapesPairs, SyntheticShapes
from lightning_plugins.datamodules.shapes_scene import (
    COLORS,
    SHAPES,
    caption_for,
    concept_name,
    zipf_probabilities,
)
from lightning_plugins.sampling import CurriculumSampler, ShuffleSampler, find_steerable_sampler

P = zipf_probabilities(64, 1.0)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` in [-1, 1] back to ``[H, W, 3]`` uint8."""
    return ((image + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


def object_colours(image: torch.Tensor) -> Counter:
    """Pixel count of each non-background colour (background is 30 +- 12 grey)."""
    pixels = to_uint8(image).reshape(-1, 3)
    drawn = pixels.max(axis=1) > 60
    return Counter(map(tuple, pixels[drawn].tolist()))


def samples_equal(a: dict, b: dict) -> bool:
    return all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


# ---------------------------------------------------------------- determinism


def test_pairs_deterministic_from_seed_and_index():
    a, b = ShapesPairs(20, P, seed=4), ShapesPairs(20, P, seed=4)
    for i in (0, 7, 19):
        assert samples_equal(a[i], b[i])
        assert samples_equal(a[i], a[i])
    assert not torch.equal(a[0]["image"], a[1]["image"])


def test_pairs_seed_and_stream_change_samples():
    base = ShapesPairs(30, P, seed=0, stream=0)
    other_seed = ShapesPairs(30, P, seed=1, stream=0)
    other_stream = ShapesPairs(30, P, seed=0, stream=1)
    for other in (other_seed, other_stream):
        assert all(not torch.equal(base[i]["image"], other[i]["image"]) for i in range(5))
        metadata = [(base.concepts(i), base.caption(i)) for i in range(30)]
        assert metadata != [(other.concepts(i), other.caption(i)) for i in range(30)]


def test_datamodule_streams_differ_and_follow_seed():
    dm, dm_again, dm_other = (
        SyntheticShapes(batch_size=4, train_size=16, retrieval_size=16, seed=s) for s in (0, 0, 1)
    )
    train = [dm.train_set.caption(i) for i in range(16)]
    assert train != [dm.retrieval_set.caption(i) for i in range(16)]
    assert train == [dm_again.train_set.caption(i) for i in range(16)]
    assert train != [dm_other.train_set.caption(i) for i in range(16)]
    assert not torch.equal(dm.train_set[0]["image"], dm.retrieval_set[0]["image"])
    assert not torch.equal(dm.zero_shot_set[0]["image"], dm_other.zero_shot_set[0]["image"])
    assert samples_equal(dm.zero_shot_set[5], dm_again.zero_shot_set[5])


# ---------------------------------------------------------------- metadata


@pytest.mark.parametrize("max_objects", [1, 2, 4])
def test_metadata_without_pixels_matches_getitem(max_objects):
    ds = ShapesPairs(60, P, seed=2, max_objects=max_objects)
    seen_counts = set()
    for i in range(60):
        sample = ds[i]
        concepts = ds.concepts(i)
        padded = sample["concepts"]
        assert padded.dtype == torch.long and padded.shape == (max_objects,)
        assert padded[: len(concepts)].tolist() == concepts
        assert (padded[len(concepts) :] == -1).all()
        assert 1 <= len(concepts) <= max_objects
        assert all(0 <= c < 64 for c in concepts)
        assert ds.caption(i) == sample["caption"]
        assert sample["caption"] in {caption_for(concepts, t) for t in range(4)}
        assert sample["index"].dtype == torch.long and int(sample["index"]) == i
        seen_counts.add(len(concepts))
    assert seen_counts == set(range(1, max_objects + 1))


def test_duplicates_encode_multiplicity():
    ds = ShapesPairs(300, zipf_probabilities(64, 3.0), seed=0)  # steep: repeats are common
    repeated = [i for i in range(300) if len(set(ds.concepts(i))) < len(ds.concepts(i))]
    assert repeated
    for i in repeated[:10]:
        concepts = ds.concepts(i)
        for c, n in Counter(concepts).items():
            assert int((ds[i]["concepts"] == c).sum()) == n
            if n > 1:
                assert f" {SHAPES[c % 8][1]}" in ds.caption(i)


def test_retrieval_set_has_at_least_two_objects():
    dm = SyntheticShapes(batch_size=4, retrieval_size=300)
    counts = [len(dm.retrieval_set.concepts(i)) for i in range(300)]
    assert min(counts) >= 2 and max(counts) == 4


def test_index_out_of_range():
    with pytest.raises(IndexError):
        ShapesPairs(5, P).concepts(5)
    with pytest.raises(IndexError):
        ShapesPairs(5, P)[-1]
    with pytest.raises(IndexError):
        ShapesClassification(5, 64)[5]
    assert len(list(ShapesClassification(5, 64))) == 5  # iteration stops


@pytest.mark.parametrize(("min_objects", "max_objects"), [(0, 2), (1, 5), (3, 2)])
def test_pairs_bad_object_counts(min_objects, max_objects):
    with pytest.raises(ValueError, match="max_objects"):
        ShapesPairs(5, P, min_objects=min_objects, max_objects=max_objects)


@pytest.mark.parametrize("num_concepts", [0, 65])
def test_classification_bad_num_concepts(num_concepts):
    with pytest.raises(ValueError, match="num_concepts"):
        ShapesClassification(5, num_concepts)


# ---------------------------------------------------------------- long tail


def test_concept_frequencies_follow_zipf():
    dm = SyntheticShapes(batch_size=4, train_size=5000)
    p = dm.probabilities
    counts = np.bincount(
        [c for i in range(5000) for c in dm.train_set.concepts(i)], minlength=64
    ).astype(float)
    expected = counts.sum() * p
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 63 + 5 * np.sqrt(2 * 63)  # 63 degrees of freedom: mean 63, sd ~11
    order = np.argsort(p)
    assert counts[order[-1]] >= 10 * np.median(counts[order[:16]])


def test_uniform_exponent_is_not_long_tailed():
    dm = SyntheticShapes(batch_size=4, train_size=3000, zipf_exponent=0.0)
    np.testing.assert_allclose(dm.probabilities, np.full(64, 1 / 64))
    counts = np.bincount([c for i in range(3000) for c in dm.train_set.concepts(i)], minlength=64)
    assert counts.max() < 2 * counts.min()


@pytest.mark.parametrize("exponent", [0.5, 1.0, 2.0])
def test_class_names_and_rare_group(exponent):
    dm = SyntheticShapes(batch_size=4, zipf_exponent=exponent)
    assert dm.class_names == [concept_name(c) for c in range(64)]
    assert len(set(dm.class_names)) == 64
    rare = dm.class_groups["rare"]
    assert rare == sorted(rare) and len(set(rare)) == 16
    p = dm.probabilities
    np.testing.assert_allclose(p, zipf_probabilities(64, exponent))
    others = [c for c in range(64) if c not in rare]
    assert p[rare].max() < p[others].min()
    assert set(rare) == set(np.argsort(p)[:16].tolist())
    assert all("{}" in t for t in dm.templates)


# ---------------------------------------------------------------- pixels


def test_classification_object_colour_is_concept_colour():
    ds = ShapesClassification(64, num_concepts=64, seed=3)
    for i in range(64):
        sample = ds[i]
        label = int(sample["label"])
        assert label == i
        colours = object_colours(sample["image"])
        assert colours.most_common(1)[0][0] == COLORS[label // len(SHAPES)][1]
        assert colours.most_common(1)[0][1] > 20


def test_pairs_show_every_object_colour():
    ds = ShapesPairs(40, P, seed=1)
    rgb = {i: c for i, (_, c) in enumerate(COLORS)}
    for i in range(40):
        sample = ds[i]
        colours = object_colours(sample["image"])
        wanted = {rgb[c // len(SHAPES)] for c in ds.concepts(i)}
        assert wanted == {c for c, n in colours.items() if n > 5}
        image = sample["image"]
        assert image.dtype == torch.float32 and image.min() >= -1 and image.max() <= 1


def test_classification_labels_cycle_over_all_concepts():
    ds = ShapesClassification(150, num_concepts=64)
    labels = [int(ds[i]["label"]) for i in range(150)]
    assert labels == [i % 64 for i in range(150)]
    assert sorted(labels[:64]) == list(range(64))


# ---------------------------------------------------------------- datamodule


def check_batch(batch, keys, batch_size, image_size, max_objects=4):
    assert set(batch) == keys
    assert batch["image"].dtype == torch.float32
    assert batch["image"].shape == (batch_size, 3, image_size, image_size)
    assert batch["index"].dtype == torch.long and batch["index"].shape == (batch_size,)
    if "caption" in keys:
        assert isinstance(batch["caption"], list) and len(batch["caption"]) == batch_size
        assert all(isinstance(c, str) and c for c in batch["caption"])
    if "concepts" in keys:
        assert batch["concepts"].dtype == torch.long
        assert batch["concepts"].shape == (batch_size, max_objects)
    if "label" in keys:
        assert batch["label"].dtype == torch.long and batch["label"].shape == (batch_size,)


@pytest.mark.parametrize(("image_size", "max_objects"), [(32, 4), (64, 2)])
def test_dataloaders(image_size, max_objects):
    dm = SyntheticShapes(
        batch_size=4,
        train_size=8,
        zero_shot_size=8,
        retrieval_size=8,
        image_size=image_size,
        max_objects=max_objects,
    )
    dm.setup("fit")
    train = next(iter(dm.train_dataloader()))
    check_batch(train, {"image", "caption", "concepts", "index"}, 4, image_size, max_objects)
    for i, caption, concepts in zip(
        train["index"], train["caption"], train["concepts"], strict=True
    ):
        assert caption == dm.train_set.caption(int(i))
        assert [c for c in concepts.tolist() if c >= 0] == dm.train_set.concepts(int(i))
    for loaders in (dm.val_dataloader(), dm.test_dataloader()):
        zero_shot, retrieval = loaders
        zs = next(iter(zero_shot))
        check_batch(zs, {"image", "label", "index"}, 4, image_size)
        assert zs["label"].tolist() == [0, 1, 2, 3]
        rt = next(iter(retrieval))
        check_batch(rt, {"image", "caption", "concepts", "index"}, 4, image_size, max_objects)
        assert rt["index"].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"train_size": 0}, "train_size"),
        ({"zero_shot_size": 0}, "zero_shot_size"),
        ({"retrieval_size": 0}, "retrieval_size"),
        ({"max_objects": 5}, "max_objects"),
        ({"max_objects": 0}, "max_objects"),
        ({"image_size": 8}, "image_size"),
        ({"zipf_exponent": -1.0}, "zipf_exponent"),
        ({"num_workers": -1}, "num_workers"),
        ({"sampling": "balanced"}, "sampling"),
        ({"sampling": "cabs", "filter_ratio": 1.0}, "filter_ratio"),
        ({"sampling": "cabs", "cabs_variant": "xx"}, "variant"),
        ({"sampling": "cabs", "cabs_cap": 0}, "cap"),
        ({"sampling": "cabs", "cabs_targets": [1.0]}, "targets"),
        ({"sampling": "cabs", "batch_size": 64, "train_size": 100}, "batch_size"),
    ],
)
def test_bad_arguments_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SyntheticShapes(**kwargs)


@pytest.mark.parametrize("variant", ["dm", "fm"])
def test_cabs_sampling_chooses_on_metadata(variant):
    dm = SyntheticShapes(
        batch_size=8, train_size=200, sampling="cabs", filter_ratio=0.75, cabs_variant=variant
    )
    loader = dm.train_dataloader()
    batches = list(loader)
    sampler = loader.batch_sampler
    assert len(batches) == len(sampler) == 200 // 32
    for step, batch in enumerate(batches):
        assert batch["image"].shape[0] == 8
        assert set(batch["index"].tolist()) <= set(sampler.candidates(step).tolist())
        for index, concepts in zip(batch["index"].tolist(), batch["concepts"], strict=True):
            assert [c for c in concepts.tolist() if c >= 0] == dm.train_concepts[index]
    if variant == "fm":  # FM keeps the samples with most objects
        objects = [(b["concepts"] >= 0).sum(1).float().mean() for b in batches]
        assert min(objects) > 2.5
    frequencies = dm.concept_frequencies
    assert frequencies.shape == (64,) and int(frequencies.sum()) == sum(map(len, dm.train_concepts))


# ---------------------------------------------------------------- i.i.d. stream
def reference_batches(dm: SyntheticShapes, epoch: int, drop_last: bool) -> list[dict]:
    """The earlier i.i.d. loader: ShuffleSampler's order of (seed, epoch), batched."""
    sampler = ShuffleSampler(len(dm.train_set), seed=dm.seed)
    sampler.set_epoch(epoch)
    loader = DataLoader(
        dm.train_set, batch_size=dm.batch_size, sampler=sampler, drop_last=drop_last
    )
    return list(loader)


def batches_equal(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("task", ["pairs", "classification"])
def test_iid_stream_is_the_shuffle_sampler_stream(task, drop_last):
    """Bitwise the batches of ShuffleSampler + batching (the pairs stream of earlier versions).

    Without ``drop_last`` the last, incomplete step starts with the same samples and is
    filled up with other ones (a whole batch, no repeats).
    """
    dm = SyntheticShapes(
        batch_size=4, train_size=18, image_size=16, seed=3, drop_last=drop_last, task=task
    )
    loader = dm.train_dataloader()
    assert isinstance(loader.batch_sampler, CurriculumSampler)
    for epoch in (0, 1):
        loader.batch_sampler.set_epoch(epoch)
        batches = list(loader)
        expected = reference_batches(dm, epoch, drop_last)
        assert len(batches) == len(expected) == (4 if drop_last else 5)
        for batch, reference in zip(batches[:4], expected[:4], strict=True):
            assert batches_equal(batch, reference)
        if not drop_last:
            last, partial = batches[4], expected[4]
            assert len(last["index"]) == 4 and len(set(last["index"].tolist())) == 4
            assert torch.equal(last["index"][:2], partial["index"])
            assert torch.equal(last["image"][:2], partial["image"])
    assert not torch.equal(reference_batches(dm, 0, True)[0]["index"], expected[0]["index"])


def test_iid_loader_is_steerable():
    dm = SyntheticShapes(batch_size=4, train_size=40, image_size=16)
    loader = dm.train_dataloader()
    sampler = find_steerable_sampler(loader)
    assert sampler is loader.batch_sampler and sampler.num_samples == 40
    sampler.set_subset(torch.arange(8))
    assert set(torch.cat([b["index"] for b in loader]).tolist()) <= set(range(8))


# ---------------------------------------------------------------- classification view
def test_classification_task():
    dm = SyntheticShapes(batch_size=8, train_size=80, zero_shot_size=16, task="classification")
    assert dm.num_classes == dm.num_concepts == 64 == len(dm.class_names)
    assert isinstance(dm.train_set, ShapesClassification) and len(dm.train_set) == 80
    batch = next(iter(dm.train_dataloader()))
    check_batch(batch, {"image", "label", "index"}, 8, 32)
    assert torch.equal(batch["label"], batch["index"] % 64)
    assert dm.train_concepts[70] == [6] and int(dm.concept_frequencies.sum()) == 80
    # the training images are not the zero-shot validation images
    assert all(
        not torch.equal(dm.train_set[i]["image"], dm.zero_shot_set[i]["image"]) for i in range(16)
    )
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        assert isinstance(loader, DataLoader)
        val = list(loader)
        assert torch.equal(torch.cat([b["label"] for b in val]), torch.arange(16) % 64)
        assert batches_equal(val[0], next(iter(DataLoader(dm.zero_shot_set, batch_size=8))))
    assert find_steerable_sampler(dm.train_dataloader()).num_samples == 80


def test_classification_stream_is_its_own():
    train = ShapesClassification(8, 64, seed=0, stream=3)
    zero_shot = ShapesClassification(8, 64, seed=0)
    assert all(not torch.equal(train[i]["image"], zero_shot[i]["image"]) for i in range(8))
    assert [int(train[i]["label"]) for i in range(8)] == list(range(8))


def test_classification_task_refuses_cabs():
    with pytest.raises(ValueError, match=r"`sampling='cabs'` needs `task='pairs'`"):
        SyntheticShapes(task="classification", sampling="cabs")


def test_task_is_part_of_the_resume_config():
    pairs = SyntheticShapes(batch_size=4, train_size=64)
    classification = SyntheticShapes(batch_size=4, train_size=64, task="classification")
    assert pairs.config()["task"] == "pairs"
    with pytest.raises(ValueError, match=r"task='pairs', but this one has task='classification'"):
        classification.load_state_dict(pairs.state_dict())
    classification.load_state_dict(classification.state_dict())
    # a checkpoint saved before `task` existed was a pairs run
    old = {"config": {k: v for k, v in pairs.config().items() if k != "task"}}
    pairs.load_state_dict(old)
    with pytest.raises(ValueError, match=r"task='pairs', but this one has task='classification'"):
        classification.load_state_dict(old)
