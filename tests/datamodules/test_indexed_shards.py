"""IndexedShards and ShardCache: random access to tar shards through wids, against tarfile."""

import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lightning_plugins.datamodules import sample_decoding, shard_cache
from lightning_plugins.datamodules.indexed_shards import IndexedShards
from lightning_plugins.datamodules.shard_cache import ShardCache
from lightning_plugins.sampling import ConceptAwareBatchSampler
from tests.helpers import serve_folder, write_shard

SIZES = [4, 3, 5]
N = sum(SIZES)


def png(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 5), (20 * i, 255 - 20 * i, i)).save(buffer, format="PNG")
    return buffer.getvalue()


def concepts_of(i: int) -> list[int]:
    return [i % 3] * (1 + i % 2) if i % 5 else []


def sample(i: int) -> tuple[str, dict[str, bytes]]:
    """Sample i: a PNG (upper-case .PNG for some), its caption in .txt or only in .json."""
    meta = {"caption": f"photo {i}", "concepts": concepts_of(i)}
    members = {"PNG" if i % 4 == 3 else "png": png(i), "json": json.dumps(meta).encode()}
    if i % 3:
        members["txt"] = f"photo {i}".encode()
    return f"k{i:03d}", members


@pytest.fixture
def data(tmp_path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    start = 0
    for shard, size in enumerate(SIZES):
        write_shard(folder / f"{shard}.tar", [sample(i) for i in range(start, start + size)])
        start += size
    return folder


def reference(paths: list[Path]) -> list[tuple[str, str, torch.Tensor]]:
    """(key, caption, pixels) of every sample, read with Python's tarfile."""
    rows = []
    for path in paths:
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(path) as tar:
            for info in tar.getmembers():
                key, extension = info.name.split(".", 1)
                members.setdefault(key, {})[extension.lower()] = tar.extractfile(info).read()
        for key, parts in members.items():
            caption = json.loads(parts["json"])["caption"]
            with Image.open(io.BytesIO(parts["png"])) as image:
                rows.append((key, caption, to_tensor(image.convert("RGB"))))
    return rows


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy())


def dataset(shards: list[str], cache: Path, **kwargs) -> IndexedShards:
    kwargs = {"concepts": [concepts_of(i) for i in range(N)], "max_objects": 3, **kwargs}
    return IndexedShards(shards, SIZES, transform=to_tensor, cache_dir=str(cache), **kwargs)


def local_shards(data: Path) -> list[Path]:
    return [data / f"{shard}.tar" for shard in range(len(SIZES))]


def check_all(ds: IndexedShards, expected: list[tuple[str, str, torch.Tensor]]) -> None:
    assert len(ds) == N
    for index in [7, 0, 11, 3, 4, 1, 10, 2, 5, 9, 6, 8]:  # jumps across shards
        got = ds[index]
        _, caption, pixels = expected[index]
        assert sorted(got) == ["caption", "concepts", "image", "index"]
        assert got["caption"] == caption
        assert torch.equal(got["image"], pixels)
        assert got["index"].dtype == torch.long and int(got["index"]) == index
        ids = concepts_of(index)
        assert got["concepts"].tolist() == ids + [-1] * (3 - len(ids))
        assert ds.concept_ids(index) == ids


# -------------------------------------------------------------------- every index
@pytest.mark.parametrize("form", ["path", "relative", "file:"])
def test_every_index_of_local_shards(data, tmp_path, monkeypatch, form):
    monkeypatch.chdir(data.parent)
    paths = local_shards(data)
    urls = {
        "path": [str(p) for p in paths],
        "relative": [os.path.relpath(p) for p in paths],
        "file:": [f"file:{p}" for p in paths],
    }[form]
    check_all(dataset(urls, tmp_path / "cache"), reference(paths))


def test_every_index_over_http_downloads_each_shard_once(data, tmp_path, monkeypatch):
    opened = []
    original = shard_cache.open_url
    monkeypatch.setattr(shard_cache, "open_url", lambda url: opened.append(url) or original(url))
    expected = reference(local_shards(data))
    with serve_folder(data) as base:
        urls = [f"{base}/{shard}.tar" for shard in range(len(SIZES))]
        check_all(dataset(urls, tmp_path / "cache"), expected)
        assert sorted(opened) == urls
        cached = sorted(os.listdir(tmp_path / "cache"))
        assert sorted(name.split("-", 1)[1] for name in cached) == ["0.tar", "1.tar", "2.tar"]
        assert not any(os.path.islink(tmp_path / "cache" / name) for name in cached)
    # the server is gone: a second dataset reads the downloaded files
    check_all(dataset(urls, tmp_path / "cache"), expected)
    assert sorted(opened) == urls


def test_every_index_over_a_pipe(data, tmp_path):
    urls = [f"pipe:cat {path}" for path in local_shards(data)]
    check_all(dataset(urls, tmp_path / "cache"), reference(local_shards(data)))
    assert all(name.endswith("-pipe.tar") for name in os.listdir(tmp_path / "cache"))


def test_without_concepts_and_with_csr_concepts(data, tmp_path):
    urls = [str(p) for p in local_shards(data)]
    plain = IndexedShards(urls, SIZES, transform=to_tensor, cache_dir=str(tmp_path / "c"))
    assert sorted(plain[5]) == ["caption", "image", "index"]
    ids = torch.tensor([c for i in range(N) for c in concepts_of(i)])
    offsets = torch.tensor([0] + [len(concepts_of(i)) for i in range(N)]).cumsum(0)
    csr = dataset(urls, tmp_path / "c", concepts=(ids, offsets))
    assert [csr.concept_ids(i) for i in range(N)] == [concepts_of(i) for i in range(N)]


# ------------------------------------------------------------------ data loading
def test_dataloader_with_two_workers(data, tmp_path):
    ds = dataset([str(p) for p in local_shards(data)], tmp_path / "cache")
    ds[0]  # a reader built here is not the workers' (nor pickled into them)
    assert pickle.loads(pickle.dumps(ds))._dataset is None
    order = torch.randperm(N, generator=torch.Generator().manual_seed(0)).tolist()
    loader = DataLoader(ds, batch_size=3, sampler=order, num_workers=2)
    batches = list(loader)
    expected = reference(local_shards(data))
    assert [i for b in batches for i in b["index"].tolist()] == order
    for batch in batches:
        for index, caption, image in zip(
            batch["index"].tolist(), batch["caption"], batch["image"], strict=True
        ):
            assert caption == expected[index][1]
            assert torch.equal(image, expected[index][2])


def test_concept_aware_batches_decode_only_the_chosen_samples(data, tmp_path, monkeypatch):
    decoded = []
    original = sample_decoding.decode_image
    monkeypatch.setattr(sample_decoding, "decode_image", lambda s: decoded.append(s) or original(s))
    concepts = [concepts_of(i) for i in range(N)]
    ds = dataset([str(p) for p in local_shards(data)], tmp_path / "cache")
    arguments = {"batch_size": 4, "filter_ratio": 0.5, "num_concepts": 3, "seed": 3}
    loader = DataLoader(ds, batch_sampler=ConceptAwareBatchSampler(concepts, **arguments))
    got = [batch["index"].tolist() for batch in loader]
    assert got == list(ConceptAwareBatchSampler(concepts, **arguments))
    assert len(got) >= 1 and len(decoded) == 4 * len(got) < N


# ------------------------------------------------------------------------- cache
def test_local_shards_are_linked_not_copied(data, tmp_path):
    before = sorted(os.listdir(data))
    ds = dataset([str(p) for p in local_shards(data)], tmp_path / "cache")
    for index in range(N):
        ds[index]
    assert sorted(os.listdir(data)) == before  # no lock or cache file in the data folder
    cached = sorted(os.listdir(tmp_path / "cache"))
    assert len(cached) == 3
    for name in cached:
        link = tmp_path / "cache" / name
        assert os.path.islink(link)
        assert os.readlink(link) == str(data / name.split("-", 1)[1])


def test_shard_cache_names_and_default_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WIDS_CACHE", str(tmp_path / "env"))
    assert ShardCache().cache_dir == str(tmp_path / "env")
    monkeypatch.delenv("WIDS_CACHE")
    assert ShardCache().cache_dir.endswith("lightning_plugins_shards")
    with pytest.raises(TypeError, match=r"`cache_dir` must be a folder path or None, got 3"):
        ShardCache(3)


# ------------------------------------------------------------------------ errors
def truncate(path: Path) -> None:
    """Cut the tar after its last member (before the end-of-archive marker)."""
    with tarfile.open(path) as tar:
        last = tar.getmembers()[-1]
    end = last.offset_data + (last.size + 511) // 512 * 512
    os.truncate(path, end)


def test_truncated_shard(data, tmp_path):
    truncate(data / "1.tar")
    ds = dataset([str(p) for p in local_shards(data)], tmp_path / "cache")
    assert ds[0]["caption"] == "photo 0"  # other shards read
    with pytest.raises(ValueError, match=r"Cannot read sample 5: Shard '.*1\.tar' is truncated"):
        ds[5]


def test_truncated_download_is_deleted(data, tmp_path):
    truncate(data / "0.tar")
    cache = tmp_path / "cache"
    with serve_folder(data) as base:
        ds = dataset([f"{base}/{shard}.tar" for shard in range(3)], cache)
        with pytest.raises(ValueError, match=r"Shard 'http://.*/0\.tar' is truncated: it lacks"):
            ds[1]
        assert os.listdir(cache) == []  # a retry downloads again
        write_shard(data / "0.tar", [sample(i) for i in range(4)])
        assert ds[1]["caption"] == "photo 1"


def test_corrupt_shard(data, tmp_path):
    path = data / "2.tar"
    raw = bytearray(path.read_bytes())
    with tarfile.open(path) as tar:
        second = tar.getmembers()[1].offset
    raw[second : second + 512] = b"\xff" * 512  # the second member's header
    path.write_bytes(bytes(raw))
    ds = dataset([str(p) for p in local_shards(data)], tmp_path / "cache")
    with pytest.raises(ValueError, match=r"Shard '.*2\.tar' is corrupt: wids cannot index it"):
        ds[8]


def test_shard_with_another_size(data, tmp_path):
    urls = [str(p) for p in local_shards(data)]
    ds = IndexedShards(urls, [4, 4, 5], transform=to_tensor, cache_dir=str(tmp_path / "c"))
    assert ds[0]["caption"] == "photo 0"
    for _ in range(2):  # refused again: the shard is not kept open
        with pytest.raises(ValueError, match=r"'.*1\.tar' holds 3 samples, not the 4 counted"):
            ds[4]


def test_missing_remote_and_local_shards(data, tmp_path):
    with serve_folder(data) as base:
        ds = dataset([f"{base}/0.tar", f"{base}/missing.tar", f"{base}/2.tar"], tmp_path / "c")
        with pytest.raises(ValueError, match=r"Cannot read sample 4: Cannot open shard 'http.*404"):
            ds[4]
    ds = dataset([str(data / "0.tar"), str(data / "gone.tar"), str(data / "2.tar")], tmp_path)
    missing = r"Cannot read sample 6: Cannot open shard '(.*)gone\.tar': there is no file '\1gone"
    with pytest.raises(ValueError, match=missing):
        ds[6]


def test_failing_and_compressing_pipes(data, tmp_path):
    ds = dataset(["pipe:cat /no/such/0.tar", "pipe:false", "pipe:true"], tmp_path / "c")
    with pytest.raises(ValueError, match=r"Cannot download shard 'pipe:cat /no/such/0.tar'"):
        ds[0]
    with pytest.raises(ValueError, match=r"Cannot download shard 'pipe:false'"):
        ds[5]
    with pytest.raises(ValueError, match=r"Shard 'pipe:true' is truncated"):  # empty output
        ds[11]
    urls = [f"pipe:gzip -c {path}" for path in local_shards(data)]
    with pytest.raises(ValueError, match=r"is gzip-compressed; indexed access memory-maps"):
        dataset(urls, tmp_path / "c")[0]
    assert os.listdir(tmp_path / "c") == []


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"txt": b"photo"}, r"Sample 'k001' of shard '.*bad\.tar' has no image member"),
        ({"png": png(1)}, r"Sample 'k001' of shard '.*bad\.tar' has no caption"),
        (
            {"jpg": b"not an image", "txt": b"photo"},
            r"Cannot decode the image of sample 'k001' \(index 1\) of shard '.*bad\.tar'",
        ),
    ],
)
def test_bad_samples(tmp_path, members, message):
    path = write_shard(tmp_path / "bad.tar", [sample(0), ("k001", members), sample(2)])
    ds = IndexedShards([str(path)], [3], transform=to_tensor, cache_dir=str(tmp_path / "c"))
    assert ds[2]["caption"] == "photo 2"
    with pytest.raises(ValueError, match=message):
        ds[1]


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        (
            [sample(0), ("k" * 98, sample(1)[1]), sample(2)],
            r"has the member name 'kkkk.*' of 100 bytes or more, which wids cuts to 100",
        ),
        ([sample(0), sample(1), sample(1)], r"holds the member 'k001\.png' twice"),
    ],
)
def test_member_names_that_wids_would_misread(tmp_path, samples, message):
    path = write_shard(tmp_path / "names.tar", samples)
    ds = IndexedShards([str(path)], [3], transform=to_tensor, cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match=rf"Shard '.*names\.tar' {message}.*\(reading sample 0\)"):
        ds[0]


def test_index_out_of_range(data, tmp_path):
    ds = dataset([str(p) for p in local_shards(data)], tmp_path / "cache")
    for index in [N, -1]:
        with pytest.raises(IndexError, match=rf"Index {index} is out of range for {N} samples"):
            ds[index]


def _build(data: Path, tmp_path: Path, **kwargs) -> IndexedShards:
    arguments = {
        "shards": [str(p) for p in local_shards(data)],
        "sizes": SIZES,
        "transform": to_tensor,
        "cache_dir": str(tmp_path / "cache"),
        **kwargs,
    }
    return IndexedShards(**arguments)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"shards": "a.tar"}, TypeError, r"`shards` must be a list of shard paths or URLs"),
        ({"shards": [], "sizes": []}, ValueError, r"`shards` must name at least one shard"),
        ({"sizes": [4, 3]}, ValueError, r"Got 3 shards but 2 sizes"),
        ({"sizes": [4, 3.0, 5]}, TypeError, r"`sizes\[1\]` must be an integer, got 3\.0"),
        ({"sizes": [4, -3, 5]}, ValueError, r"`sizes\[1\]` must be a non-negative integer"),
        ({"shards": ["a.tar", "b.tar.gz", "c.tar"]}, ValueError, r"`shards\[1\]`='b\.tar\.gz'"),
        (
            {"shards": ["a.tar", "https://h/b.TGZ?x=1", "c.tar"]},
            ValueError,
            r"indexed access memory-maps the shards; \.tar\.gz cannot be: unpack them or use "
            r"the streaming path",
        ),
        ({"concepts": [[0]] * (N - 1)}, ValueError, rf"`concepts` covers {N - 1} samples but "),
        ({"concepts": [[0.5]] * N}, TypeError, r"`concepts` must hold integer concept ids"),
        (
            {"concepts": [[0]] * 5 + [[1, 1, 1, 1]] + [[0]] * (N - 6), "max_objects": 3},
            ValueError,
            r"Sample 5 \(of shard '.*1\.tar'\) has 4 concepts, more than `max_objects`=3",
        ),
        ({"max_objects": 0}, ValueError, r"`max_objects` must be a positive integer, got 0"),
        ({"transform": "resize"}, TypeError, r"`transform` must be callable, got str"),
        ({"cache_dir": 3}, TypeError, r"`cache_dir` must be a folder path or None, got 3"),
        ({"lru_size": 0}, ValueError, r"`lru_size` must be a positive integer, got 0"),
        ({"lru_size": 2.0}, TypeError, r"`lru_size` must be an integer, got 2\.0"),
    ],
)
def test_bad_arguments(data, tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        _build(data, tmp_path, **kwargs)


def test_small_lru_reopens_shards(data, tmp_path):
    ds = _build(data, tmp_path, lru_size=1)
    expected = reference(local_shards(data))
    for index in [0, 5, 9, 1, 6]:
        assert ds[index]["caption"] == expected[index][1]
    assert len(ds._reader().cache) == 1
