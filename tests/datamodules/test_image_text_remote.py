"""ImageTextDataModule over shards served by HTTP (127.0.0.1), pipe: and local files:
streamed i.i.d. and CABS, indexed CABS (wids), 2-process DDP and mid-epoch resume."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_plugins.datamodules import ImageTextDataModule, image_text, sample_decoding
from lightning_plugins.datamodules.image_text_shards import ImageTextShards
from lightning_plugins.datamodules.shard_index import write_shard_index
from lightning_plugins.sampling import ConceptAwareBatchSampler
from lightning_plugins.sampling.concept_aware_stream import ConceptAwareStream
from tests.datamodules.test_image_text import N, caption_of, concepts_of, write_data
from tests.helpers import free_port, join_lightning, run_ddp, serve_folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("image_text"))


NAMES = [f"{shard:05d}.tar" for shard in range(4)]


@pytest.fixture(scope="module")
def folder(data, tmp_path_factory) -> Path:
    """Four shards of 8 samples: the three of `data` and a fourth, and their index."""
    root = tmp_path_factory.mktemp("remote")
    for name in NAMES[:3]:
        shutil.copy(data / "shards" / name, root / name)
    shutil.copy(data / "shards" / NAMES[0], root / NAMES[3])  # same samples, other place
    write_shard_index(str(root / "{00000..00003}.tar"), str(root / "index.json"))
    return root


@pytest.fixture(scope="module")
def base(folder):
    with serve_folder(folder) as url:
        yield url


def caption(index: int) -> str:
    return caption_of(index % N)


def train(kind: str, folder: Path, base: str) -> str | list[str]:
    return {
        "local": str(folder / "{00000..00003}.tar"),
        "http": f"{base}/{{00000..00003}}.tar",
        "pipe": [f"pipe:cat {folder / name}" for name in NAMES],
        "index": f"{base}/index.json",
    }[kind]


def module(source, tmp_path=None, **kwargs) -> ImageTextDataModule:
    settings = {"image_size": 16, "batch_size": 4, "max_objects": 4, "filter_ratio": 0.5}
    if kwargs.get("shard_access") == "indexed":
        settings["cache_dir"] = str(tmp_path)
    dm = ImageTextDataModule(source, **settings, **kwargs)
    dm.setup("fit")
    return dm


def batches(loader) -> list[list[int]]:
    return [batch["index"].tolist() for batch in loader]


@pytest.mark.parametrize("kind", ["local", "http", "pipe", "index"])
def test_streamed_iid_reads_every_sample_once_with_its_caption(folder, base, kind):
    dm = module(train(kind, folder, base))
    assert dm.concept_names[0] == "dog" and sum(dm._train.sizes) == 4 * 8
    seen = []
    for batch in dm.train_dataloader():
        seen += batch["index"].tolist()
        assert batch["caption"] == [caption(i) for i in batch["index"].tolist()]
    assert sorted(seen) == list(range(32))


@pytest.mark.parametrize("kind", ["local", "http", "index"])
def test_streamed_cabs_is_the_stream_over_the_reader(folder, base, kind, monkeypatch):
    decoded = []
    original = sample_decoding.decode_image
    monkeypatch.setattr(sample_decoding, "decode_image", lambda s: decoded.append(s) or original(s))
    dm = module(train(kind, folder, base), sampling="cabs")
    got = batches(dm.train_dataloader())
    reader = ImageTextShards(
        [str(folder / n) for n in NAMES], [8] * 4, dm._train.concepts, shuffle=True, equalize=True
    )
    expected = [s["index"] for s in ConceptAwareStream(reader, 4, 0.5, num_concepts=6)]
    assert got == [expected[i : i + 4] for i in range(0, len(expected), 4)] and len(got) == 4
    assert len(decoded) == 16  # only the chosen half of the 32 candidates


@pytest.mark.parametrize("kind", ["local", "http", "pipe", "index"])
def test_indexed_cabs_is_the_batch_sampler(folder, base, kind, tmp_path, monkeypatch):
    decoded = []
    original = sample_decoding.decode_image
    monkeypatch.setattr(sample_decoding, "decode_image", lambda s: decoded.append(s) or original(s))
    dm = module(train(kind, folder, base), tmp_path, sampling="cabs", shard_access="indexed")
    loader = dm.train_dataloader()
    reference = ConceptAwareBatchSampler(dm._train.concepts, 4, 0.5, num_concepts=6)
    assert batches(loader) == list(reference) and len(decoded) == 16
    batch = next(iter(loader))
    assert batch["caption"] == [caption(i) for i in batch["index"].tolist()]
    ids, offsets = dm._train.concepts
    for row, index in zip(batch["concepts"], batch["index"].tolist(), strict=True):
        own = ids[offsets[index] : offsets[index + 1]].tolist()
        assert row.tolist() == own + [-1] * (4 - len(own))


def test_indexed_iid_and_workers(folder, base, tmp_path):
    dm = module(train("http", folder, base), tmp_path, shard_access="indexed", num_workers=2)
    seen = sorted(i for batch in batches(dm.train_dataloader()) for i in batch)
    assert seen == list(range(32))


def test_index_concepts_key_must_match(folder):
    with pytest.raises(ValueError, match=r"holds concepts under 'concepts', but `concepts_key`"):
        module(str(folder / "index.json"), concepts_key="objects")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"shard_access": "random"}, ValueError, r"`shard_access`"),
        ({"cache_dir": 3}, TypeError, r"`cache_dir` must be a folder path or None, got 3"),
    ],
)
def test_bad_shard_arguments(folder, kwargs, error, message):
    with pytest.raises(error, match=message):
        ImageTextDataModule(str(folder / "00000.tar"), **kwargs)


def test_indexed_refuses_manifests_and_compressed_shards(data, tmp_path):
    with pytest.raises(ValueError, match=r"`train`=.*is a manifest"):
        ImageTextDataModule(str(data / "train.jsonl"), shard_access="indexed")
    (tmp_path / "a.tar.gz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"memory-maps the shards, which '.*a.tar.gz'"):
        ImageTextDataModule(str(tmp_path / "a.tar.gz"), shard_access="indexed")


# ------------------------------------------------------------------ Lightning: DDP, resume
class Recorder(pl.LightningModule):
    """Records the `index` of every training batch; one weight, so that DDP has a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["index"].tolist())
        return (self.weight * batch["image"].mean() - self.weight.square()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(root, data_kwargs, devices=1, max_steps=-1, max_epochs=1, ckpt_path=None, save_every=0):
    pl.seed_everything(0, verbose=False)
    recorder = Recorder()
    callbacks = [ModelCheckpoint(root, every_n_train_steps=save_every, save_top_k=-1)]
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_steps=max_steps,
        max_epochs=max_epochs,
        limit_val_batches=0,
        logger=False,
        callbacks=callbacks if save_every else [],
        enable_checkpointing=bool(save_every),
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(recorder, ImageTextDataModule(**data_kwargs), ckpt_path=ckpt_path)
    return recorder.seen, float(recorder.weight)


def _fit_rank(rank: int, world_size: int, port: int, root: str, data_kwargs: dict) -> list:
    join_lightning(rank, world_size, port)
    return fit(root, data_kwargs, devices=world_size)[0]


SETTINGS = {"image_size": 16, "max_objects": 4, "batch_size": 2, "filter_ratio": 0.5}


@pytest.mark.ddp
@pytest.mark.parametrize(
    ("sampling", "access"), [("iid", "stream"), ("cabs", "stream"), ("cabs", "indexed")]
)
def test_two_ddp_ranks_get_equal_batch_counts_and_disjoint_samples(
    folder, base, tmp_path, sampling, access
):
    # streamed: 3 shards over 2 ranks: rank 0 reads 2 shards, cut to rank 1's 8 samples
    shards = "{00000..00002}.tar" if access == "stream" else "{00000..00003}.tar"
    data_kwargs = {
        "train": f"{base}/{shards}",
        "sampling": sampling,
        "shard_access": access,
        "cache_dir": str(tmp_path / "cache"),
        **SETTINGS,
    }
    seen = run_ddp(_fit_rank, free_port(), str(tmp_path), data_kwargs)
    assert len(seen[0]) == len(seen[1]) >= 2
    assert all(len(batch) == 2 for rank in seen for batch in rank)
    flat = [[i for batch in rank for i in batch] for rank in seen]
    assert not set(flat[0]) & set(flat[1]) and all(len(set(f)) == len(f) for f in flat)
    if access == "indexed":
        dm = ImageTextDataModule(**data_kwargs)
        dm.setup("fit")
        for rank in (0, 1):
            reference = ConceptAwareBatchSampler(
                dm._train.concepts, 2, 0.5, num_concepts=6, num_replicas=2, rank=rank
            )
            assert seen[rank] == list(reference)


@pytest.fixture(
    scope="module",
    params=[
        ("iid", "stream", 0),
        ("cabs", "stream", 0),
        ("cabs", "stream", 2),
        ("cabs", "indexed", 0),
    ],
)
def uninterrupted(request, folder, base, tmp_path_factory):
    """7 steps over 2 epochs that save every 3, over HTTP; the batches and the weight."""
    sampling, access, num_workers = request.param
    root = tmp_path_factory.mktemp(f"{sampling}_{access}")
    data_kwargs = {
        "train": f"{base}/{{00000..00001}}.tar",
        "sampling": sampling,
        "shard_access": access,
        "num_workers": num_workers,
        "cache_dir": str(root / "cache"),
        **SETTINGS,
    }
    seen, weight = fit(root, data_kwargs, max_steps=7, max_epochs=-1, save_every=3)
    return data_kwargs, root, seen, weight


@pytest.mark.parametrize("checkpoint", ["epoch=0-step=3.ckpt", "epoch=0-step=6.ckpt"])
def test_kill_and_resume_mid_epoch_continues_exactly(uninterrupted, tmp_path, checkpoint):
    data_kwargs, root, seen, weight = uninterrupted
    path = root / checkpoint
    if not path.exists():  # CABS: 4 batches per epoch, so step 6 is in epoch 1
        path = root / checkpoint.replace("epoch=0", "epoch=1")
    step = int(checkpoint.split("step=")[1].split(".")[0])
    resumed, resumed_weight = fit(tmp_path, data_kwargs, max_steps=7, max_epochs=-1, ckpt_path=path)
    assert resumed == seen[step:] and resumed_weight == weight


@pytest.fixture(scope="module")
def uneven(data, tmp_path_factory) -> list[str]:
    """Shards of 8, 8, 8 and 5 samples."""
    root = tmp_path_factory.mktemp("uneven")
    with (
        tarfile.open(data / "shards" / NAMES[0]) as source,
        tarfile.open(root / "s.tar", "w") as out,
    ):
        for member in source.getmembers()[:15]:  # 5 samples of 3 members
            out.addfile(member, source.extractfile(member))
    return [str(data / "shards" / name) for name in NAMES[:3]] + [str(root / "s.tar")]


@pytest.mark.parametrize(
    ("sampling", "num_workers", "drop_last", "world"),
    [("iid", 0, True, 1), ("iid", 2, False, 1), ("iid", 0, False, 2), ("cabs", 2, True, 1)],
)
def test_streamed_loader_length_is_exact_every_epoch(
    uneven, sampling, num_workers, drop_last, world
):
    dm = ImageTextDataModule(
        uneven,
        **{**SETTINGS, "batch_size": 3},
        sampling=sampling,
        num_workers=num_workers,
        drop_last=drop_last,
    )
    for rank in range(world):
        dm.trainer = SimpleNamespace(world_size=world, global_rank=rank)
        loader = dm.train_dataloader()
        counts = [len(batches(loader)) for _ in range(3)]  # three epochs, three shard orders
        assert counts == [len(loader)] * 3 and len(loader) > 0


def test_stream_reads_concepts_from_the_json_with_a_counts_only_index(
    folder, base, tmp_path, monkeypatch
):
    """A wids index without concepts and a vocabulary: setup reads no shard; the stream
    reads each sample's concepts from its .json, and CABS picks what it picks with them."""
    description = json.loads((folder / "index.json").read_text())
    for entry in description["shardlist"]:
        del entry["concepts"]
    del description["concepts_key"]
    (folder / "counts.json").write_text(json.dumps(description))
    monkeypatch.setattr(image_text, "scan_shards", None)  # setup must not scan
    vocabulary = ["dog", "cat", "ball", "tree", "car", "boat"]
    dm = module(f"{base}/counts.json", sampling="cabs", concept_vocabulary=vocabulary)
    assert dm.concept_frequencies is None and dm.num_concepts == 6
    got = batches(dm.train_dataloader())
    known = module(str(folder / "index.json"), sampling="cabs", concept_vocabulary=vocabulary)
    assert got == batches(known.train_dataloader()) and len(got) == 4
    for batch in dm.train_dataloader():
        for row, index in zip(batch["concepts"], batch["index"].tolist(), strict=True):
            names = concepts_of(index % N)
            assert row.tolist() == [vocabulary.index(n) for n in names] + [-1] * (4 - len(names))


def test_stream_names_a_sample_whose_concept_is_not_in_the_vocabulary(folder, monkeypatch):
    description = json.loads((folder / "index.json").read_text())
    for entry in description["shardlist"]:
        del entry["concepts"]
    del description["concepts_key"]
    (folder / "counts_only.json").write_text(json.dumps(description))
    dm = module(str(folder / "counts_only.json"), concept_vocabulary=["dog", "cat"])
    with pytest.raises(ValueError, match=r"sample '\d+' of shard '.*\.tar': unknown concept"):
        batches(dm.train_dataloader())


@pytest.mark.parametrize(
    "kwargs", [{"concepts_key": "concepts"}, {"concepts_key": "c", "concepts": [[0]] * 8}]
)
def test_reading_concepts_while_streaming_needs_a_vocabulary_and_no_concepts(folder, kwargs):
    with pytest.raises(ValueError, match=r"give it with a `vocabulary` and without `concepts`"):
        ImageTextShards([str(folder / NAMES[0])], [8], vocabulary=None, **kwargs)
