import csv
import io
import json
import tarfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lightning_plugins.datamodules import ImageTextDataModule, sample_decoding
from lightning_plugins.datamodules.decoding_stream import DecodingStream
from lightning_plugins.datamodules.image_text_shards import ImageTextShards
from lightning_plugins.sampling import ConceptAwareBatchSampler
from lightning_plugins.sampling.concept_aware_stream import ConceptAwareStream

NAMES = ["dog", "cat", "ball", "tree", "car", "boat"]
N = 24


def concepts_of(i: int) -> list[str]:
    """Sample i's concept names: a long tail (dog most frequent), some samples without any."""
    if i % 7 == 6:
        return []
    names = [NAMES[0]] if i % 2 == 0 else []
    names += [NAMES[1 + i % 5]] * (1 + i % 2)
    return names


def caption_of(i: int) -> str:
    return f"photo {i} of " + " and ".join(concepts_of(i) or ["nothing"])


def jpeg(i: int) -> bytes:
    rng = np.random.default_rng(i)
    pixels = np.broadcast_to(rng.integers(0, 256, size=3, dtype=np.uint8), (32, 32, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("image_text"))


def write_data(root: Path) -> Path:
    """Images with a JSONL and a CSV manifest, and 3 shards of 8 samples (img2dataset)."""
    (root / "images").mkdir()
    rows = []
    for i in range(N):
        (root / "images" / f"{i:03d}.jpg").write_bytes(jpeg(i))
        rows.append(
            {"image": f"images/{i:03d}.jpg", "caption": caption_of(i), "concepts": concepts_of(i)}
        )
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    with open(root / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption", "concepts"])
        for i, r in enumerate(rows):  # both list forms of CSV, and an absolute path
            value = json.dumps(r["concepts"]) if i % 2 else ";".join(r["concepts"])
            image = str(root / r["image"]) if i == 3 else r["image"]
            writer.writerow([image, r["caption"], value])
    (root / "val.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:6]))
    (root / "shards").mkdir()
    for shard in range(3):  # img2dataset layout, 8 samples each
        with tarfile.open(root / "shards" / f"{shard:05d}.tar", "w") as tar:
            for i in range(shard * 8, shard * 8 + 8):
                key = f"{shard:05d}{i:04d}"
                meta = {"key": key, "status": "success", "caption": caption_of(i)}
                meta["concepts"] = concepts_of(i)
                members = {
                    "jpg": jpeg(i),
                    "txt": caption_of(i).encode(),
                    "json": json.dumps(meta).encode(),
                }
                for extension, payload in members.items():
                    info = tarfile.TarInfo(f"{key}.{extension}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return root


SHARDS = "shards/{00000..00002}.tar"


def datamodule(data: Path, train: str = "train.jsonl", **kwargs) -> ImageTextDataModule:
    kwargs = {"image_size": 32, "batch_size": 4, "max_objects": 4, **kwargs}
    dm = ImageTextDataModule(str(data / train), **kwargs)
    dm.setup("fit")
    return dm


def indices(loader) -> list[list[int]]:
    return [batch["index"].tolist() for batch in loader]


def expected_frequency_order() -> list[str]:
    counts = Counter(c for i in range(N) for c in concepts_of(i))
    return sorted(counts, key=lambda name: (-counts[name], name))


# ------------------------------------------------------------------- manifest batches
def test_manifest_batches(data):
    dm = datamodule(data)
    batch = next(iter(dm.train_dataloader()))
    assert sorted(batch) == ["caption", "concepts", "image", "index"]
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["concepts"].shape == (4, 4) and batch["concepts"].dtype == torch.long
    assert batch["index"].dtype == torch.long
    for row, index, caption in zip(
        batch["concepts"], batch["index"], batch["caption"], strict=True
    ):
        names = concepts_of(int(index))
        assert caption == caption_of(int(index))
        assert row[: len(names)].tolist() == [dm.concept_names.index(n) for n in names]
        assert (row[len(names) :] == -1).all()


def test_vocabulary_by_descending_frequency_then_name(data):
    dm = datamodule(data)
    assert dm.concept_names == expected_frequency_order()
    assert dm.num_concepts == len(NAMES)
    counts = Counter(c for i in range(N) for c in concepts_of(i))
    assert dm.concept_frequencies.dtype == torch.long
    assert dm.concept_frequencies.tolist() == [counts[n] for n in dm.concept_names]


def test_csv_manifest_reads_like_jsonl(data):
    from_jsonl, from_csv = datamodule(data), datamodule(data, "train.csv")
    assert from_csv.concept_names == from_jsonl.concept_names
    assert torch.equal(from_csv.concept_frequencies, from_jsonl.concept_frequencies)
    for i in (0, 1, 3, 6):
        a, b = from_jsonl.train_set[i], from_csv.train_set[i]
        assert a["caption"] == b["caption"] and torch.equal(a["concepts"], b["concepts"])
        assert a["image"].shape == b["image"].shape


@pytest.mark.parametrize("as_file", [False, True])
def test_given_vocabulary_fixes_ids(data, tmp_path, as_file):
    vocabulary = ["zebra", *reversed(NAMES)]  # "zebra" never occurs
    if as_file:
        (tmp_path / "vocab.txt").write_text("\n".join(vocabulary) + "\n")
    dm = datamodule(data, concept_vocabulary=str(tmp_path / "vocab.txt") if as_file else vocabulary)
    assert dm.concept_names == vocabulary and dm.num_concepts == 7
    assert dm.concept_frequencies[0] == 0
    assert concepts_of(1) == ["ball", "ball"]
    assert dm.train_set[1]["concepts"].tolist() == [vocabulary.index("ball")] * 2 + [-1, -1]


def test_unknown_name_in_vocabulary_is_an_error(data):
    with pytest.raises(ValueError, match=r"line 1 of .*unknown concept 'dog'.*of 2 names"):
        datamodule(data, concept_vocabulary=["cat", "ball"])


def test_integer_ids_and_empty_concepts(tmp_path, data):
    rows = [
        {"image": str(data / "images" / f"{i:03d}.jpg"), "caption": "x", "concepts": ids}
        for i, ids in enumerate([[2, 2], [], [0], [5]])
    ]
    (tmp_path / "ids.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    dm = datamodule(tmp_path, "ids.jsonl")
    assert dm.num_concepts == 6 and dm.concept_names == ["0", "1", "2", "3", "4", "5"]
    assert dm.concept_frequencies.tolist() == [1, 0, 2, 0, 0, 1]
    assert dm.train_set[1]["concepts"].tolist() == [-1, -1, -1, -1]


def test_mixing_names_and_ids_is_an_error(tmp_path, data):
    rows = [
        {"image": str(data / "images" / "000.jpg"), "caption": "x", "concepts": c}
        for c in (["dog"], [3])
    ]
    (tmp_path / "mixed.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ValueError, match="mix names and integer ids"):
        datamodule(tmp_path, "mixed.jsonl")


# --------------------------------------------------------------------- iid and CABS
def test_iid_covers_every_sample_once_per_epoch(data):
    loader = datamodule(data).train_dataloader()
    seen = [i for batch in indices(loader) for i in batch]
    assert sorted(seen) == list(range(N)) and seen != list(range(N))


def test_cabs_batches_are_the_samplers(data):
    dm = datamodule(data, sampling="cabs", filter_ratio=0.5, cabs_cap=2)
    loader = dm.train_dataloader()
    assert isinstance(loader.batch_sampler, ConceptAwareBatchSampler)
    reference = ConceptAwareBatchSampler(
        [[dm.concept_names.index(n) for n in concepts_of(i)] for i in range(N)],
        batch_size=4,
        filter_ratio=0.5,
        cap=2,
        num_concepts=dm.num_concepts,
    )
    got = indices(loader)
    assert got == list(reference) and len(got) == 3
    assert all(len(batch) == 4 for batch in got)


@pytest.mark.parametrize("train", ["train.jsonl", SHARDS])
def test_cabs_decodes_only_the_chosen_images(data, monkeypatch, train):
    decoded = []
    original = sample_decoding.decode_image
    monkeypatch.setattr(sample_decoding, "decode_image", lambda s: decoded.append(s) or original(s))
    dm = datamodule(data, train, sampling="cabs", filter_ratio=0.75, cabs_variant="fm")
    got = indices(dm.train_dataloader())  # 24 candidates -> 1 or 2 batches of 4 kept
    assert len(got) >= 1 and all(len(batch) == 4 for batch in got)
    assert len(decoded) == 4 * len(got) < N


# ------------------------------------------------------------------------ tar shards
def test_shards_iid(data):
    dm = datamodule(data, SHARDS)
    assert dm.concept_names == expected_frequency_order()
    loader = dm.train_dataloader()
    batches = list(loader)
    assert sorted(batches[0]) == ["caption", "concepts", "image", "index"]
    assert batches[0]["image"].shape == (4, 3, 32, 32)
    seen = [i for b in batches for i in b["index"].tolist()]
    assert sorted(seen) == list(range(N))
    for batch in batches:
        for row, index, caption in zip(
            batch["concepts"], batch["index"], batch["caption"], strict=True
        ):
            names = concepts_of(int(index))
            assert caption == caption_of(int(index))
            assert row.tolist() == [dm.concept_names.index(n) for n in names] + [-1] * (
                4 - len(names)
            )
    # the next pass is the next epoch (its own shard order), with the same samples
    second = [i for batch in indices(loader) for i in batch]
    reader = loader.dataset.source
    assert reader.epoch == 1 and sorted(second) == list(range(N))
    assert [i // 8 for i in second[::8]] == reader.shard_order(1)


def test_shard_order_changes_with_the_epoch(data):
    reader = ImageTextShards(["a", "b", "c", "d", "e"], [1] * 5, shuffle=True)
    orders = {tuple(reader.shard_order(epoch)) for epoch in range(6)}
    assert len(orders) > 1
    dataset = DecodingStream(reader, lambda image: image, None)
    dataset.set_epoch(3)
    assert reader.epoch == 3


def test_shards_cabs_matches_the_stream(data):
    dm = datamodule(data, SHARDS, sampling="cabs", filter_ratio=0.5)
    got = indices(dm.train_dataloader())
    reader = ImageTextShards(
        dm.train_paths, [8, 8, 8], dm._train.concepts, shuffle=True, equalize=True
    )
    stream = ConceptAwareStream(reader, 4, 0.5, num_concepts=dm.num_concepts)
    expected = [s["index"] for s in stream]
    assert got == [expected[i : i + 4] for i in range(0, len(expected), 4)]
    assert len(got) == 3 and all(len(batch) == 4 for batch in got)


def test_shards_split_across_ranks_and_equalized(data):
    paths = [str(p) for p in sorted((data / "shards").glob("*.tar"))]
    concepts = [[0]] * 24
    per_rank = [
        [
            s["index"]
            for s in ImageTextShards(
                paths, [8, 8, 8], concepts, equalize=True, num_replicas=2, rank=rank
            )
        ]
        for rank in (0, 1)
    ]
    assert len(per_rank[0]) == len(per_rank[1]) == 8  # rank 0 has 2 shards, cut to 8 samples
    assert not set(per_rank[0]) & set(per_rank[1])
    with pytest.raises(ValueError, match="3 shards cannot feed 4 ranks x 1 workers"):
        next(iter(ImageTextShards(paths, [8, 8, 8], equalize=True, num_replicas=4, rank=0)))


def test_shards_take_rank_from_the_trainer(data):
    dm = datamodule(data, SHARDS, sampling="cabs", filter_ratio=0.5)
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1)
    with pytest.warns(UserWarning, match="3 training shards are not a multiple of 2 ranks x 1"):
        loader = dm.train_dataloader()
    reader = loader.dataset.source.source
    assert (reader.num_replicas, reader.rank) == (2, 1)
    got = indices(loader)
    assert len(got) == 1 and {i // 8 for i in got[0]} == {reader.shard_order(0)[1]}


def test_shards_too_small_for_a_super_batch(data):
    dm = datamodule(data, SHARDS, sampling="cabs", filter_ratio=0.75, batch_size=4)
    dm.trainer = SimpleNamespace(world_size=3, global_rank=0)  # 8 samples per rank < 16
    with pytest.raises(ValueError, match=r"3 ranks x 1 workers reads only 8 .* super-batch \(16\)"):
        dm.train_dataloader()


def test_shards_split_across_workers(data):
    dm = datamodule(data, "shards/{00000..00001}.tar", num_workers=2, batch_size=8)
    loader = dm.train_dataloader()
    seen = sorted(i for batch in indices(loader) for i in batch)
    assert seen == list(range(16))


@pytest.mark.parametrize(("sampling", "num_workers"), [("iid", 0), ("cabs", 0), ("cabs", 2)])
def test_shards_resume_mid_epoch(data, sampling, num_workers):
    kwargs = {"sampling": sampling, "filter_ratio": 0.5, "batch_size": 2}
    kwargs["num_workers"] = num_workers
    shards = "shards/{00000..00001}.tar" if num_workers else SHARDS
    loader = datamodule(data, shards, **kwargs).train_dataloader()
    it = iter(loader)
    [next(it) for _ in range(3)]
    state = loader.state_dict()
    rest = [batch["index"].tolist() for batch in it]
    next_epoch = indices(loader)
    resumed = datamodule(data, shards, **kwargs).train_dataloader()
    resumed.load_state_dict(state)
    assert indices(resumed) == rest and len(rest) > 0
    assert indices(resumed) == next_epoch


# ------------------------------------------------------------------------ validation
@pytest.mark.parametrize("val", ["val.jsonl", "shards/00001.tar"])
def test_val_loader_yields_retrieval_pairs(data, val):
    dm = ImageTextDataModule(
        str(data / "train.jsonl"), val=str(data / val), image_size=32, batch_size=4
    )
    dm.setup("validate")
    loader = dm.val_dataloader()
    assert isinstance(loader, DataLoader)
    batches = list(loader)
    assert sorted(batches[0]) == ["caption", "image", "index"]
    first = 0 if val == "val.jsonl" else 8
    assert batches[0]["index"].tolist() == [0, 1, 2, 3]
    assert batches[0]["caption"] == [caption_of(first + i) for i in range(4)]
    assert dm.test_dataloader() is not None


def test_no_val_gives_no_loader(data):
    assert datamodule(data).val_dataloader() == []


def test_model_name_sets_image_size(data):
    dm = ImageTextDataModule(str(data / "train.jsonl"), model_name="ViT-Micro-P8-32")
    assert dm.image_size == 32


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"train": "missing.jsonl"}, r"`train`=.*missing.jsonl.* does not exist"),
        ({"train": "train.parquet"}, r"`train`=.*unknown extension.*JSONL"),
        ({"train": "train.txt"}, r"`train`: the shard list file .*train.txt.* does not exist"),
        ({"train": "shards/*.tar.gz"}, r"matches no file"),
        ({"train": "shards/{00000..00005}.tar"}, r"shard .*00003.tar.* does not exist"),
        ({"val": "nope.csv"}, r"`val`=.*does not exist"),
        ({"sampling": "random"}, r"`sampling` must be one of \('iid', 'cabs'\), got 'random'"),
        ({"filter_ratio": 1.0}, r"`filter_ratio` must be a finite number in \[0, 1\), got 1.0"),
        ({"cabs_variant": "xx"}, r"`cabs_variant` must be one of"),
        ({"cabs_cap": 0}, r"`cabs_cap` must be a positive integer"),
        ({"batch_size": 0}, r"`batch_size` must be a positive integer, got 0"),
        ({"num_workers": -1}, r"`num_workers`"),
        ({"model_name": "ViT-Nope"}, r"`model_name`='ViT-Nope' is not an open_clip config"),
        ({"concept_vocabulary": "no_vocab.txt"}, r"`concept_vocabulary`=.* not an existing file"),
        ({"concept_vocabulary": ["a", "a"]}, r"lists \['a'\] more than once"),
        ({"cabs_targets": [0.5, 0.6]}, r"must sum to 1"),
        ({"mean": [0.5]}, r"`mean` must be 3"),
    ],
)
def test_bad_arguments_raise_at_construction(data, kwargs, match):
    kwargs = {"train": "train.jsonl", **kwargs}
    for key in ("train", "val"):
        if key in kwargs:
            kwargs[key] = str(data / kwargs[key])
    with pytest.raises(ValueError, match=match):
        ImageTextDataModule(**kwargs)


@pytest.mark.parametrize(
    ("rows", "kwargs", "match"),
    [
        ([{"image": "images/000.jpg"}], {}, r"line 1 of .* needs a string 'caption'"),
        ([{"caption": "x"}], {}, r"needs a string 'image'"),
        (["[1, 2]"], {}, r"line 1 of .* is not a JSON object"),
        (
            [{"image": "images/000.jpg", "caption": "x", "concepts": {"a": 1}}],
            {},
            r"`concepts` must be a list",
        ),
        (
            [{"image": "images/000.jpg", "caption": "x", "concepts": ["a"] * 5}],
            {},
            r"line 1 of .* has 5 concepts, more than `max_objects`=4",
        ),
        (
            [{"image": "images/000.jpg", "caption": "x"}] * 8,
            {"sampling": "cabs"},
            r"`sampling`='cabs' needs concept annotations",
        ),
        ([{"image": "images/nope.jpg", "caption": "x"}], {}, r"names the image .*nope.jpg"),
        (
            [{"image": "images/000.jpg", "caption": "x", "concepts": ["a"]}],
            {"cabs_targets": [0.5, 0.5]},
            r"`cabs_targets` must hold one entry per concept of the vocabulary \(1\), got 2",
        ),
    ],
)
def test_bad_data_raises_at_setup(data, rows, kwargs, match):
    path = data / "bad.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows))
    dm = ImageTextDataModule(str(path), image_size=32, max_objects=4, **kwargs)
    with pytest.raises(ValueError, match=match):
        dm.setup("fit")


def test_csv_without_caption_column(tmp_path):
    (tmp_path / "bad.csv").write_text("image,text\na.jpg,hello\n")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['caption'\]"):
        ImageTextDataModule(str(tmp_path / "bad.csv")).setup("fit")


def test_shard_sample_without_image(tmp_path):
    with tarfile.open(tmp_path / "0.tar", "w") as tar:
        info = tarfile.TarInfo("k0.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(ValueError, match=r"Sample 'k0' of shard .* has no image member"):
        ImageTextDataModule(str(tmp_path / "0.tar")).setup("fit")


# -------------------------------------------------------------------------- training
def test_fast_dev_run_with_clip(data):
    from lightning_plugins.modules import CLIP

    dm = ImageTextDataModule(
        str(data / "train.jsonl"),
        val=str(data / "val.jsonl"),
        model_name="ViT-Micro-P8-32",
        batch_size=4,
        sampling="cabs",
        filter_ratio=0.5,
        max_objects=4,
    )
    trainer = pl.Trainer(
        fast_dev_run=True,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(CLIP(model_name="ViT-Micro-P8-32"), datamodule=dm)
    assert trainer.global_step == 1
    assert any(key.startswith("val/") for key in trainer.callback_metrics)


class RecordIndices(pl.Callback):
    """Writes the `index` of every training batch of this rank to `<folder>/<rank>.json`."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.seen: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append(batch["index"].tolist())

    def on_train_end(self, trainer, pl_module) -> None:
        (Path(self.folder) / f"{trainer.global_rank}.json").write_text(json.dumps(self.seen))


@pytest.mark.ddp
@pytest.mark.slow
def test_cabs_under_ddp_spawn(data, tmp_path):
    """Lightning hands the CABS batch sampler a DistributedSampler: disjoint, equal batches."""
    from lightning_plugins.modules import CLIP

    dm = ImageTextDataModule(
        str(data / "train.jsonl"),
        image_size=32,
        batch_size=4,
        sampling="cabs",
        filter_ratio=0.5,
        max_objects=4,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[RecordIndices(str(tmp_path))],
    )
    trainer.fit(CLIP(model_name="ViT-Micro-P8-32"), dm)
    seen = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    assert len(seen[0]) == len(seen[1]) >= 1  # equal numbers of whole CABS batches
    assert all(len(batch) == 4 for rank in seen for batch in rank)
    flat = [{i for batch in rank for i in batch} for rank in seen]
    assert not flat[0] & flat[1]
    dm.setup("fit")
    for rank in (0, 1):
        reference = ConceptAwareBatchSampler(
            dm._train.concepts, 4, 0.5, num_concepts=dm.num_concepts, num_replicas=2, rank=rank
        )
        assert seen[rank] == list(reference)


def test_configurable_from_lightning_cli(data, tmp_path, monkeypatch):
    import sys

    from lightning_plugins.cli import main

    monkeypatch.setattr(sys, "argv", ["lightning-plugins"])
    config = {
        "model": {"class_path": "CLIP", "init_args": {"model_name": "ViT-Micro-P8-32"}},
        "data": {
            "class_path": "ImageTextDataModule",
            "init_args": {
                "train": str(data / SHARDS),
                "val": str(data / "val.jsonl"),
                "model_name": "ViT-Micro-P8-32",
                "batch_size": 4,
                "sampling": "cabs",
                "filter_ratio": 0.5,
                "cabs_targets": None,
                "concept_vocabulary": NAMES,
                "max_objects": 4,
            },
        },
        "trainer": {"fast_dev_run": True, "default_root_dir": str(tmp_path), "logger": False},
    }
    (tmp_path / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    cli = main(["fit", "--config", str(tmp_path / "config.yaml")])
    assert isinstance(cli.datamodule, ImageTextDataModule)
    assert cli.datamodule.concept_names == NAMES and cli.trainer.global_step == 1
