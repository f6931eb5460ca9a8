"""Bad input to the data layer: arguments, annotations, files and shards, resumes, last batches."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_plugins.datamodules import Digits, ImageTextDataModule, SyntheticShapes
from lightning_plugins.datamodules.concept_annotations import parse_concepts
from lightning_plugins.datamodules.concept_vocabulary import concept_ids, read_vocabulary
from lightning_plugins.datamodules.decoding_stream import DecodingStream
from lightning_plugins.datamodules.image_text_pairs import ImageTextPairs
from lightning_plugins.datamodules.image_text_shards import ImageTextShards
from lightning_plugins.datamodules.manifest import read_manifest
from lightning_plugins.datamodules.sample_decoding import decode_sample
from lightning_plugins.datamodules.shard_samples import scan_shards
from tests.helpers import write_shard

N = 10


def png(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 16), (10 * i, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def noise_jpeg() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def shard_sample(i: int, concepts=None, image: bytes | None = None) -> tuple[str, dict]:
    meta = {"concepts": [i % 3] if concepts is None else concepts}
    members = {"png": png(i) if image is None else image, "txt": f"photo {i}".encode()}
    return f"k{i:03d}", {**members, "json": json.dumps(meta).encode()}


@pytest.fixture
def data(tmp_path) -> Path:
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(N):
        (tmp_path / "images" / f"{i}.png").write_bytes(png(i))
        rows.append({"image": f"images/{i}.png", "caption": f"photo {i}", "concepts": [i % 3]})
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    write_shard(tmp_path / "0.tar", [shard_sample(i) for i in range(N)])
    return tmp_path


def manifest(data: Path, rows: list, name: str = "bad.jsonl") -> str:
    path = data / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows))
    return str(path)


def module(train: str, **kwargs) -> ImageTextDataModule:
    return ImageTextDataModule(train, image_size=16, batch_size=4, **kwargs)


# ---------------------------------------------------------------- constructor arguments
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"batch_size": 1.5}, TypeError, r"`batch_size` must be an integer, got 1\.5"),
        ({"batch_size": "4"}, TypeError, r"`batch_size` must be an integer, got '4'"),
        ({"batch_size": 0}, ValueError, r"`batch_size` must be a positive integer, got 0"),
        ({"train_size": 2.0}, TypeError, r"`train_size` must be an integer"),
        ({"train_size": 0}, ValueError, r"`train_size` must be a positive"),
        ({"num_workers": -1}, ValueError, r"`num_workers` must be a non-negative"),
        ({"max_objects": 5}, ValueError, r"`max_objects` must be an integer in \[1, 4\]"),
        ({"image_size": 8}, ValueError, r"`image_size` must be an integer of at least 16"),
        ({"zipf_exponent": -1.0}, ValueError, r"`zipf_exponent`"),
        ({"zipf_exponent": "1"}, TypeError, r"`zipf_exponent`"),
        ({"seed": 0.5}, TypeError, r"`seed` must be an integer"),
        ({"sampling": "random"}, ValueError, r"`sampling` must be one of \('iid', 'cabs'\)"),
        ({"drop_last": "yes"}, TypeError, r"`drop_last` must be a bool.*'yes'"),
        ({"drop_last": 1}, TypeError, r"`drop_last` must be a bool"),
        ({"sampling": "cabs", "filter_ratio": 1.0}, ValueError, r"`filter_ratio`"),
        ({"sampling": "cabs", "cabs_cap": 0}, ValueError, r"`cap`|`cabs_cap`"),
        ({"task": "caption"}, ValueError, r"`task` must be one of \('pairs', 'classification'\)"),
        (
            {"task": "classification", "sampling": "cabs"},
            ValueError,
            r"`sampling='cabs'` needs `task='pairs'`.*got `task='classification'`",
        ),
    ],
)
def test_synthetic_shapes_refuses(kwargs, error, message):
    with pytest.raises(error, match=message):
        SyntheticShapes(**{"batch_size": 4, "train_size": 64, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"batch_size": 2.5}, TypeError, r"`batch_size` must be an integer, got 2\.5"),
        ({"batch_size": -4}, ValueError, r"`batch_size` must be a positive integer"),
        ({"seed": "0"}, TypeError, r"`seed` must be an integer"),
        ({"num_workers": 0.0}, TypeError, r"`num_workers` must be an integer"),
        ({"max_objects": 0}, ValueError, r"`max_objects` must be a positive"),
        ({"image_size": 0}, ValueError, r"`image_size` must be a positive"),
        ({"drop_last": None}, TypeError, r"`drop_last` must be a bool.*got None"),
        ({"drop_last": "false"}, TypeError, r"`drop_last` must be a bool"),
        ({"sampling": "CABS"}, ValueError, r"`sampling` must be one of"),
        ({"concepts_key": ""}, ValueError, r"`concepts_key` must be a non-empty string"),
        ({"concept_vocabulary": 3}, ValueError, r"`concept_vocabulary`=3 must be a path"),
        ({"concept_vocabulary": []}, ValueError, r"`concept_vocabulary`=\[\] holds no names"),
        ({"mean": [0.5, 0.5]}, ValueError, r"`mean` must be 3 per-channel values"),
        ({"std": [1.0, 0.0, 1.0]}, ValueError, r"`std` must be 3 per-channel values above 0"),
    ],
)
def test_image_text_datamodule_refuses(data, kwargs, error, message):
    with pytest.raises(error, match=message):
        ImageTextDataModule(str(data / "train.jsonl"), **kwargs)


def _transform(image):
    return torch.zeros(3, 2, 2)


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda d: ImageTextShards(str(d / "0.tar"), [N]), TypeError, r"`shards` must be a list"),
        (lambda d: ImageTextShards([str(d / "0.tar")], [N, 1]), ValueError, r"1 shards but 2"),
        (lambda d: ImageTextShards([str(d / "0.tar")], [2.5]), TypeError, r"`sizes\[0\]`"),
        (lambda d: ImageTextShards([str(d / "0.tar")], [-1]), ValueError, r"`sizes\[0\]`"),
        (
            lambda d: ImageTextShards([str(d / "0.tar")], [N], seed=1.0),
            TypeError,
            r"`seed` must be an integer",
        ),
        (
            lambda d: ImageTextShards([str(d / "0.tar")], [N], shuffle="yes"),
            TypeError,
            r"`shuffle` must be a bool",
        ),
        (
            lambda d: ImageTextShards([str(d / "0.tar")], [N], num_replicas=2, rank=2),
            ValueError,
            r"`rank` must be in \[0, num_replicas\), got rank 2",
        ),
        (
            lambda d: ImageTextShards([str(d / "0.tar")], [N], num_replicas=1.0),
            TypeError,
            r"`num_replicas` must be an integer",
        ),
        (
            lambda d: ImageTextShards([str(d / "0.tar")], [2], [[0], [1.5]]),
            TypeError,
            r"sample 1 holds 1\.5 \(float\)",
        ),
        (
            lambda d: ImageTextShards([str(d / "0.tar")], [2], [[0]]),
            ValueError,
            r"`concepts` covers 1 samples but the data holds 2",
        ),
        (lambda d: ImageTextPairs(["a"], [], None, _transform), ValueError, r"1 images but 0"),
        (
            lambda d: ImageTextPairs(["a"], ["x"], [[2.0]], _transform),
            TypeError,
            r"sample 0 holds 2\.0 \(float\)",
        ),
        (
            lambda d: ImageTextPairs(["a"], ["x"], None, _transform, max_objects=1.5),
            TypeError,
            r"`max_objects` must be an integer",
        ),
        (
            lambda d: ImageTextPairs(["a"], ["x"], None, "resize"),
            TypeError,
            r"`transform` must be callable, got str",
        ),
        (
            lambda d: ImageTextPairs(["a"], ["x"], [[1, 2]], _transform, max_objects=1),
            ValueError,
            r"Sample 0 \('a'\) has 2 concepts, more than `max_objects`=1",
        ),
        (lambda d: DecodingStream(3, _transform, None), TypeError, r"`source` must be an iter"),
        (lambda d: DecodingStream([], None, None), TypeError, r"`transform` must be callable"),
        (lambda d: DecodingStream([], _transform, 0), ValueError, r"`max_objects` must be a pos"),
        (lambda d: read_vocabulary(["a", ""]), ValueError, r"must be a path to a text file"),
        (lambda d: read_vocabulary(str(d / "no.txt")), ValueError, r"not an existing file"),
    ],
)
def test_dataset_constructors_refuse(data, build, error, message):
    with pytest.raises(error, match=message):
        build(data)


# ------------------------------------------------------------- concept annotations
@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ([1.5], TypeError, r"line 7: `concepts` entries .*got 1\.5 \(float\).*never truncated"),
        ([2.0, 1], TypeError, r"line 7: .*got 2\.0 \(float\)"),
        (1.5, TypeError, r"line 7: `concepts` holds the float 1\.5"),
        ("[1, 2.5]", TypeError, r"got 2\.5 \(float\)"),
        ([True], TypeError, r"got True \(bool\)"),
        ([None], TypeError, r"got None \(NoneType\)"),
        ([""], ValueError, r"non-empty names"),
        ([-1], ValueError, r"negative concept id -1"),
        ({"a": 1}, ValueError, r"must be a list of concept names or ids"),
        ("[1, 2", ValueError, r"is not a JSON list"),
    ],
)
def test_parse_concepts_refuses(value, error, message):
    with pytest.raises(error, match=message):
        parse_concepts(value, "line 7", "concepts")


def test_concept_ids_refuses_mixed_and_unknown():
    with pytest.raises(ValueError, match=r"mix names and integer ids .*row 0.*'dog'.*row 1"):
        concept_ids([["dog"], [3]], ["row 0", "row 1"], None)
    with pytest.raises(ValueError, match=r"row 1: unknown concept 'cat'"):
        concept_ids([["dog"], ["cat"]], ["row 0", "row 1"], ["dog"])
    with pytest.raises(ValueError, match=r"row 0: concept id 5 is outside"):
        concept_ids([[5]], ["row 0"], ["dog"])


def test_float_concept_id_in_a_manifest_is_refused_not_truncated(data):
    rows = [{"image": "images/0.png", "caption": "x", "concepts": [0]}] * 3
    rows.append({"image": "images/1.png", "caption": "y", "concepts": [1, 2.7]})
    with pytest.raises(TypeError, match=r"line 4 of .*bad\.jsonl.*got 2\.7 \(float\)"):
        module(manifest(data, rows)).setup("fit")


def test_float_concept_id_in_a_shard_is_refused_not_truncated(data):
    write_shard(data / "f.tar", [shard_sample(0), shard_sample(1, concepts=[0, 1.0])])
    with pytest.raises(TypeError, match=r"sample 'k001' of shard .*f\.tar.*got 1\.0 \(float\)"):
        module(str(data / "f.tar")).setup("fit")


def test_float_concept_id_from_a_users_stream_is_refused(data):
    source = [{"image_bytes": png(0), "caption": "x", "index": 4, "concepts": [1, 2.5]}]
    with pytest.raises(TypeError, match=r"Sample 4 holds the concept id 2\.5 \(float\)"):
        list(DecodingStream(source, _transform, max_objects=4))
    with pytest.raises(
        TypeError, match=r"Sample 7 \(image bytes\) holds the concept id .*1\.5.* \(float64\)"
    ):
        decode_sample(png(0), "x", 7, _transform, [np.float64(1.5)], 4)


# ------------------------------------------------------------------ manifests, images
@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        ("", "empty.jsonl", r"`train`=.*empty\.jsonl.*the manifest holds no samples"),
        ("\n\n  \n", "blank.jsonl", r"the manifest holds no samples"),
        ("image,caption,concepts\n", "header.csv", r"header\.csv.*the manifest holds no samples"),
        ("", "empty.csv", r"the CSV header None lacks the column\(s\) \['caption', 'image'\]"),
    ],
)
def test_empty_manifest(data, content, name, message):
    (data / name).write_text(content)
    with pytest.raises(ValueError, match=message):
        read_manifest(str(data / name), "concepts", "train")
    with pytest.raises(ValueError, match=message):
        module(str(data / name)).setup("fit")


def _first_epoch(dm: ImageTextDataModule) -> list:
    return list(dm.train_dataloader())


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"this is a caption, not a picture", r"UnidentifiedImageError"),
        (png(3)[:40], r"UnidentifiedImageError"),
        (noise_jpeg()[:600], r"OSError: .*([Tt]runcated)"),
        (None, r"FileNotFoundError"),
    ],
    ids=["not_an_image", "cut_header", "truncated", "missing"],
)
def test_manifest_image_that_does_not_decode_names_file_and_sample(data, payload, message):
    bad = data / "images" / "bad.png"
    if payload is not None:
        bad.write_bytes(payload)
    rows = [{"image": f"images/{i}.png", "caption": "x", "concepts": [0]} for i in range(7)]
    rows.append({"image": "images/bad.png", "caption": "y", "concepts": [1]})
    dm = module(manifest(data, rows), drop_last=False)
    with pytest.raises(
        ValueError, match=rf"Cannot decode the image of sample 7 \(image '.*bad\.png'\).*{message}"
    ):
        _first_epoch(dm)


# -------------------------------------------------------------------------- shards
def test_corrupt_shard_names_the_shard(data):
    (data / "junk.tar").write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(ValueError, match=r"Shard .*junk\.tar.* (is not a readable tar|corrupt)"):
        scan_shards([str(data / "junk.tar")], "concepts")
    with pytest.raises(ValueError, match=r"junk\.tar"):
        module(str(data / "junk.tar")).setup("fit")


@pytest.mark.parametrize("cut", ["in_header", "in_data", "at_member", "in_middle"])
def test_truncated_shard_names_the_shard_and_the_sample(data, cut):
    whole = (data / "0.tar").read_bytes()
    with tarfile.open(data / "0.tar") as tar:
        members = tar.getmembers()
    position = {
        "in_header": members[-3].offset + 100,
        "in_data": members[-1].offset_data + 5,
        "at_member": members[-3].offset,
        "in_middle": len(whole) // 2,
    }[cut]
    (data / "cut.tar").write_bytes(whole[:position])
    with pytest.raises(ValueError, match=r"Shard .*cut\.tar.* truncated (after sample 'k0|before)"):
        scan_shards([str(data / "cut.tar")], "concepts")


def test_shard_truncated_after_setup_names_the_shard_when_read(data):
    dm = module(str(data / "0.tar"))
    dm.setup("fit")
    whole = (data / "0.tar").read_bytes()
    (data / "0.tar").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"0\.tar.*(truncated|corrupt)"):
        _first_epoch(dm)


def test_shard_member_that_is_not_an_image_names_key_and_shard(data):
    samples = [shard_sample(i) for i in range(N)]
    samples[5] = shard_sample(5, image=b"<html>404 not found</html>")
    write_shard(data / "html.tar", samples)
    dm = module(str(data / "html.tar"), drop_last=False)
    with pytest.raises(
        ValueError, match=r"Cannot decode the image of sample 'k005' of shard '.*html\.tar'"
    ):
        _first_epoch(dm)


def test_shard_sample_with_bad_json_and_no_caption(data):
    write_shard(data / "j.tar", [("k0", {"png": png(0), "json": b"{nope"})])
    with pytest.raises(ValueError, match=r"Sample 'k0' of shard .*j\.tar.*bad \.json"):
        scan_shards([str(data / "j.tar")], "concepts")
    write_shard(data / "c.tar", [("k0", {"png": png(0), "json": b"{}"})])
    with pytest.raises(ValueError, match=r"Sample 'k0' of shard .*c\.tar.* has no caption"):
        scan_shards([str(data / "c.tar")], "concepts")
    write_shard(data / "u.tar", [("k0", {"png": png(0), "txt": b"\xff\xfe caption"})])
    with pytest.raises(ValueError, match=r"Sample 'k0' of shard .*u\.tar.*not UTF-8"):
        scan_shards([str(data / "u.tar")], "concepts")


# -------------------------------------------------------------------------- drop_last
@pytest.mark.parametrize(("drop_last", "sizes"), [(True, [4, 4, 4, 4]), (False, [4, 4, 4, 4, 4])])
def test_synthetic_shapes_never_yields_a_one_pair_batch(drop_last, sizes):
    """17 pairs in batches of 4: the one left over is dropped, or its step filled up."""
    dm = SyntheticShapes(batch_size=4, train_size=17, image_size=16, drop_last=drop_last)
    batches = [batch["index"] for batch in dm.train_dataloader()]
    assert [len(indices) for indices in batches] == sizes
    assert all(len(set(indices.tolist())) == len(indices) for indices in batches)
    assert len(set(torch.cat(batches).tolist())) == (16 if drop_last else 17)


def test_synthetic_shapes_drops_last_by_default():
    dm = SyntheticShapes(batch_size=4, train_size=9, image_size=16)
    assert [len(batch["index"]) for batch in dm.train_dataloader()] == [4, 4]


@pytest.mark.parametrize("train", ["train.jsonl", "0.tar"])
def test_image_text_drops_the_incomplete_batch_by_default(data, train):
    # N = 10 samples, batch_size 3: 3 whole batches and one of a single pair
    dm = ImageTextDataModule(str(data / train), image_size=16, batch_size=3)
    assert [len(batch["index"]) for batch in dm.train_dataloader()] == [3, 3, 3]
    dm = ImageTextDataModule(str(data / train), image_size=16, batch_size=3, drop_last=False)
    assert [len(batch["index"]) for batch in dm.train_dataloader()] == [3, 3, 3, 1]


# ------------------------------------------------ resuming with another configuration
@pytest.mark.parametrize(
    ("saved", "resumed", "message"),
    [
        ({"sampling": "iid"}, {"sampling": "cabs"}, r"sampling='iid'.*sampling='cabs'"),
        ({"batch_size": 4}, {"batch_size": 8}, r"batch_size=4.* has batch_size=8"),
        ({"train_size": 64}, {"train_size": 65}, r"train_size=64.* has train_size=65"),
        ({"seed": 0}, {"seed": 1}, r"seed=0.* has seed=1"),
        ({"num_workers": 0}, {"num_workers": 1}, r"num_workers=0.* has num_workers=1"),
        ({"drop_last": True}, {"drop_last": False}, r"drop_last=True.* has drop_last=False"),
        ({"task": "pairs"}, {"task": "classification"}, r"task='pairs'.* has task='classif"),
    ],
)
def test_synthetic_shapes_refuses_a_checkpoint_of_other_settings(saved, resumed, message):
    base = {"batch_size": 4, "train_size": 64, "filter_ratio": 0.5}
    state = SyntheticShapes(**{**base, **saved}).state_dict()
    with pytest.raises(ValueError, match=rf"Cannot resume SyntheticShapes.*{message}.*same"):
        SyntheticShapes(**{**base, **resumed}).load_state_dict(state)


def test_synthetic_shapes_accepts_its_own_and_an_old_checkpoint():
    dm = SyntheticShapes(batch_size=4, train_size=64)
    dm.load_state_dict(SyntheticShapes(batch_size=4, train_size=64).state_dict())
    dm.load_state_dict({})  # a checkpoint of an earlier version: nothing to compare


def test_image_text_refuses_a_checkpoint_of_other_data(data):
    saved = module(str(data / "train.jsonl"))
    saved.setup("fit")
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    other = module(manifest(data, rows[:-1], "fewer.jsonl"))
    other.setup("fit")
    with pytest.raises(ValueError, match=r"train_samples=10, but this one has train_samples=9"):
        other.load_state_dict(saved.state_dict())
    cabs = module(str(data / "train.jsonl"), sampling="cabs", filter_ratio=0.5)
    cabs.setup("fit")
    with pytest.raises(ValueError, match=r"sampling='iid'.*sampling='cabs'"):
        cabs.load_state_dict(saved.state_dict())


@pytest.mark.parametrize(("first", "second"), [("iid", "cabs"), ("cabs", "iid")])
def test_shard_loader_state_of_another_sampling_names_the_mismatch(data, first, second):
    """The DecodingStream's state holds the reader's or the CABS stream's: kinds differ."""
    write_shard(data / "1.tar", [shard_sample(i) for i in range(N, 2 * N)])
    train = [str(data / "0.tar"), str(data / "1.tar")]
    settings = {"image_size": 16, "batch_size": 2, "filter_ratio": 0.5}
    loader = ImageTextDataModule(train, sampling=first, **settings).train_dataloader()
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    resumed = ImageTextDataModule(train, sampling=second, **settings).train_dataloader()
    resumed.load_state_dict(state)
    with pytest.raises(ValueError, match=r"Cannot resume (ConceptAwareStream|ImageTextShards)"):
        next(iter(resumed))


def test_validating_from_a_checkpoint_of_other_settings_is_allowed():
    """Only a fit resumes the training stream; validate/test/predict compare nothing."""
    import lightning.pytorch as pl

    dm = SyntheticShapes(batch_size=8, train_size=64)
    dm.trainer = pl.Trainer(logger=False, enable_progress_bar=False)
    dm.trainer.state.fn = "validate"
    dm.load_state_dict(SyntheticShapes(batch_size=4, train_size=64).state_dict())
    dm.trainer.state.fn = "fit"
    with pytest.raises(ValueError, match=r"batch_size=4, but this one has batch_size=8"):
        dm.load_state_dict(SyntheticShapes(batch_size=4, train_size=64).state_dict())


# ------------------------------------------------------------------------------ Digits
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"label_noise": 1.0}, ValueError, r"`label_noise` must be a finite number in \[0, 1\)"),
        ({"label_noise": -0.1}, ValueError, r"`label_noise` must be .* \[0, 1\), got -0\.1"),
        ({"label_noise": float("nan")}, ValueError, r"`label_noise` must be a finite.*nan"),
        ({"label_noise": "0.2"}, TypeError, r"`label_noise` must be a number, got '0\.2'"),
        ({"label_noise": True}, TypeError, r"`label_noise` must be a number"),
        ({"val_fraction": 1.0}, ValueError, r"`val_fraction` must be .* \[0, 1\), got 1\.0"),
        ({"test_fraction": -0.2}, ValueError, r"`test_fraction` must be .* \[0, 1\)"),
        ({"val_fraction": None}, TypeError, r"`val_fraction` must be a number, got None"),
        (
            {"val_fraction": 0.5, "test_fraction": 0.5},
            ValueError,
            r"`val_fraction` \+ `test_fraction` must be below 1.*0\.5 \+ 0\.5",
        ),
        ({"channels": 2}, ValueError, r"`channels` must be one of \(1, 3\), got 2"),
        ({"channels": 3.0}, TypeError, r"`channels` must be an integer, got 3\.0"),
        ({"image_size": 7}, ValueError, r"`image_size` must be an integer of at least 8, got 7"),
        ({"image_size": "32"}, TypeError, r"`image_size` must be an integer, got '32'"),
        ({"batch_size": 0}, ValueError, r"`batch_size` must be a positive integer, got 0"),
        ({"batch_size": 2.5}, TypeError, r"`batch_size` must be an integer, got 2\.5"),
        ({"num_workers": -1}, ValueError, r"`num_workers` must be a non-negative"),
        ({"seed": 0.5}, TypeError, r"`seed` must be an integer"),
        ({"split_seed": "1"}, TypeError, r"`split_seed` must be an integer"),
        ({"drop_last": 1}, TypeError, r"`drop_last` must be a bool"),
        (
            {"batch_size": 2000, "drop_last": True},
            ValueError,
            r"`batch_size` must not exceed the 1079 training images with `drop_last=True`",
        ),
    ],
)
def test_digits_refuses(kwargs, error, message):
    with pytest.raises(error, match=message):
        Digits(**kwargs)


# -------------------------------------------------------------------------- LegoSkills
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"num_variables": 1},
            ValueError,
            r"`num_variables` must be an integer in \[2, 26\], got 1",
        ),
        ({"num_variables": 27}, ValueError, r"`num_variables` must be an integer in \[2, 26\]"),
        ({"num_variables": 5.0}, TypeError, r"`num_variables` must be an integer, got 5\.0"),
        ({"train_size": 0}, ValueError, r"`train_size` must be a positive integer, got 0"),
        ({"val_size": 0}, ValueError, r"`val_size` must be a positive integer, got 0"),
        ({"val_size": "10"}, TypeError, r"`val_size` must be an integer, got '10'"),
        ({"batch_size": 0}, ValueError, r"`batch_size` must be a positive integer, got 0"),
        ({"num_workers": -1}, ValueError, r"`num_workers` must be a non-negative integer"),
        ({"seed": 0.5}, TypeError, r"`seed` must be an integer"),
        ({"shuffle_clauses": "yes"}, TypeError, r"`shuffle_clauses` must be a bool"),
    ],
)
def test_lego_skills_refuses(kwargs, error, message):
    from lightning_plugins.datamodules import LegoSkills

    with pytest.raises(error, match=message):
        LegoSkills(**kwargs)


def test_lego_skills_refuses_an_unknown_split_word_and_index():
    from lightning_plugins.datamodules import LegoDataset, LegoSkills
    from lightning_plugins.datamodules.lego_chains import encode

    with pytest.raises(ValueError, match=r"`split` must be one of \('train', 'val'\), got 'test'"):
        LegoSkills(train_size=2, val_size=1).skill_datasets("test")
    with pytest.raises(ValueError, match=r"Words \['xor'\] are not in the LEGO vocabulary"):
        encode("a = xor b")
    with pytest.raises(ValueError, match=r"`skill` must be an integer in \[0, 4\], got 5"):
        LegoDataset(5, 2, seed=0, stream=0, skill=5)
    with pytest.raises(IndexError, match=r"index 10 out of range for 10 samples"):
        LegoDataset(5, 2, seed=0, stream=0)[10]


# --------------------------------------------------------------------- MixtureDataModule
def _mixture_sources() -> dict:
    return {"a": [{"x": 0}] * 3, "b": [{"x": 1}] * 2}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"weights": {"a": 1, "c": 2}},
            ValueError,
            r"`weights`.*unknown sources \['c'\].*\['a', 'b'\]",
        ),
        ({"weights": {"a": 1}}, ValueError, r"`weights`.*misses \['b'\]"),
        ({"weights": [1, -1]}, ValueError, r"`weights` must be finite and non-negative"),
        ({"weights": [1, float("nan")]}, ValueError, r"`weights`.*nan"),
        ({"weights": [0, 0]}, ValueError, r"`weights`"),
        ({"weights": [1, 2, 3]}, ValueError, r"`weights` must hold one weight per source \(2\)"),
        ({"target": "c"}, ValueError, r"`target` 'c' is no source.*\['a', 'b'\]"),
        ({"target": "a"}, ValueError, r"`target` 'a' names a source without held-out data"),
        ({"target": []}, ValueError, r"`target` is empty"),
        (
            {"mode": "mixed"},
            ValueError,
            r"`mode` must be one of \('dynamic', 'static', 'stratified'\), got 'mixed'",
        ),
        ({"steps_per_epoch": 0}, ValueError, r"`steps_per_epoch`.*got 0"),
        ({"batch_size": 1.5}, TypeError, r"`batch_size` must be an integer"),
        ({"val_sources": {"c": [{"x": 0}]}}, ValueError, r"`val_sources`.*unknown source 'c'"),
        ({"val_sources": {"a": []}}, ValueError, r"`val_sources\['a'\]` is empty"),
    ],
)
def test_mixture_bad_arguments(kwargs, error, match):
    from lightning_plugins.datamodules import MixtureDataModule

    with pytest.raises(error, match=match):
        MixtureDataModule(_mixture_sources(), **kwargs)


@pytest.mark.parametrize(
    ("sources", "error", "match"),
    [
        ({"a": [{"x": 0}], "b": []}, ValueError, r"Source 'b' \(`sources\['b'\]`\) is empty"),
        ({}, ValueError, r"`sources` must hold at least one source"),
        (
            {"a": 3},
            TypeError,
            r"`sources\['a'\]` must be a map-style Dataset or a LightningDataModule, got 3",
        ),
        ([[{"x": 0}]], TypeError, r"`sources` must be a mapping"),
        (
            Digits(batch_size=4),
            TypeError,
            r"`sources` must be a mapping.*Digits.*no `skill_datasets`",
        ),
    ],
)
def test_mixture_bad_sources(sources, error, match):
    from lightning_plugins.datamodules import MixtureDataModule

    with pytest.raises(error, match=match):
        MixtureDataModule(sources)


def test_mixture_source_with_samples_that_are_no_dicts():
    from lightning_plugins.datamodules import MixtureDataModule

    dm = MixtureDataModule({"good": [{"x": 0}] * 2, "tensors": [torch.zeros(2)] * 2}, batch_size=4)
    with pytest.raises(TypeError, match=r"Source 'tensors' \(source 1\) returned a Tensor"):
        next(iter(dm.train_dataloader()))


def test_mixture_source_samples_that_already_have_a_source_key():
    from lightning_plugins.datamodules import MixtureDataModule

    dm = MixtureDataModule({"a": [{"x": 0, "source": 3}]}, batch_size=1)
    with pytest.raises(ValueError, match=r"Source 'a' .* key 'source'"):
        next(iter(dm.train_dataloader()))
