"""Shard URLs, shard reading over HTTP / pipe: / file:, and shard index files."""

from __future__ import annotations

import http.server
import io
import json
import tarfile
import threading
from pathlib import Path

import pytest

from lightning_plugins.datamodules.data_source import resolve_source
from lightning_plugins.datamodules.shard_index import (
    main,
    read_shard_index,
    write_shard_index,
)
from lightning_plugins.datamodules.shard_samples import read_shard, sample_fields, scan_shards
from lightning_plugins.datamodules.shard_urls import expand_shards, open_url
from tests.datamodules.test_image_text import N, concepts_of, write_data
from tests.helpers import serve_folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("image_text"))


SHARD_NAMES = [f"{shard:05d}.tar" for shard in range(3)]


def reference_samples(path: Path) -> list[tuple[str, str, bytes]]:
    """(key, caption, image bytes) of every sample of a shard, read with tarfile."""
    with tarfile.open(path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    keys = sorted({name.split(".")[0] for name in members})
    return [(k, members[f"{k}.txt"].decode(), members[f"{k}.jpg"]) for k in keys]


# ------------------------------------------------------------------------- expanding
def test_expand_shards_patterns_lists_globs_and_list_files(data, tmp_path):
    folder = data / "shards"
    assert expand_shards(str(folder / "{00000..00002}.tar"), "train") == [
        str(folder / name) for name in SHARD_NAMES
    ]
    assert expand_shards(str(folder / "*.tar"), "train") == [
        str(folder / name) for name in SHARD_NAMES
    ]
    assert expand_shards([f"file:{folder}/00001.tar", "pipe:cat x"], "t") == [
        f"file:{folder}/00001.tar",
        "pipe:cat x",
    ]
    listing = tmp_path / "train.txt"
    listing.write_text(
        f"# my shards\n{folder}/00000.tar\n\nhttps://host/x/{{000..001}}.tar\npipe:cat a#b\n"
    )
    assert expand_shards(str(listing), "train") == [
        f"{folder}/00000.tar",
        "https://host/x/000.tar",
        "https://host/x/001.tar",
        "pipe:cat a#b",
    ]


def test_expand_shards_remote_patterns_are_not_checked():
    assert expand_shards("https://h/d/{a,b}-{8..10}.tar", "train") == [
        f"https://h/d/{x}-{i}.tar" for x in "ab" for i in (8, 9, 10)
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nope/{0..1}.tar", r"`train`=.*shard 'nope/0.tar' does not exist"),
        ("nope/*.tar", r"'nope/\*.tar' matches no file"),
        ("https://h/a.zip", r"'https://h/a.zip' has an unknown extension"),
        ([], r"must be a shard path or URL"),
        ([""], r"must be a shard path or URL"),
        ("missing.txt", r"the shard list file 'missing.txt' does not exist"),
    ],
)
def test_expand_shards_refuses_bad_values(value, message):
    with pytest.raises(ValueError, match=message):
        expand_shards(value, "train")


@pytest.mark.parametrize("value", [3, ["a.tar", 3], None])
def test_sources_of_a_wrong_type_are_type_errors(value):
    with pytest.raises(TypeError, match=r"`train`=.* must be"):
        resolve_source(value, "train")


def test_resolve_source_tells_manifests_indexes_and_shards(data):
    assert resolve_source(str(data / "train.jsonl"), "train")[0] == "manifest"
    assert resolve_source("https://h/index.json", "train") == ("index", ["https://h/index.json"])
    assert resolve_source("https://h/{0..1}.tar", "train")[0] == "shards"
    with pytest.raises(ValueError, match=r"shard index '.*nope.json' does not exist"):
        resolve_source(str(data / "nope.json"), "train")


# ------------------------------------------------------------------------- reading
@pytest.fixture(scope="module")
def served(data):
    with serve_folder(data / "shards") as base:
        yield base


@pytest.mark.parametrize("scheme", ["path", "file", "pipe", "http"])
def test_read_shard_matches_tarfile_over_every_scheme(data, served, scheme):
    path = data / "shards" / "00001.tar"
    url = {
        "path": str(path),
        "file": f"file://{path}",
        "pipe": f"pipe:cat {path}",
        "http": f"{served}/00001.tar",
    }[scheme]
    got = [(s["__key__"], *sample_fields(s)[:2]) for s in read_shard(url)]
    expected = [(key, image, caption) for key, caption, image in reference_samples(path)]
    assert got == expected and len(got) == 8
    assert all(s["__url__"] == url for s in read_shard(url))


def test_scan_reads_no_image_bytes_and_counts(data, served):
    urls = [f"{served}/{name}" for name in SHARD_NAMES]
    sizes, concepts, places = scan_shards(urls, "concepts")
    assert sizes == [8, 8, 8] and concepts == [concepts_of(i) for i in range(N)]
    assert places[9] == f"sample '000010009' of shard '{served}/00001.tar'"
    samples = list(read_shard(urls[0], images=False))
    assert all("jpg" not in s and s["__image__"] for s in samples)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("{served}/missing.tar", r"Cannot open shard '.*/missing.tar': HTTPError: HTTP Error 404"),
        ("http://127.0.0.1:9/x.tar", r"Cannot open shard 'http://127.0.0.1:9/x.tar': URLError"),
        ("pipe:exit 3", r"Shard 'pipe:exit 3': its command exited with status 3 before its"),
        ("pipe:cat {shard}; exit 3", r"'pipe:cat .*; exit 3': its command exited with status 3"),
        ("pipe:head -c 5000 {shard}", r"Shard 'pipe:head .*' is corrupt or truncated after"),
        ("{folder}/absent.tar", r"Cannot open shard '.*absent.tar': FileNotFoundError"),
    ],
)
def test_unreadable_shards_name_the_url(data, served, url, message):
    url = url.format(served=served, shard=data / "shards" / "00000.tar", folder=data)
    with pytest.raises(ValueError, match=message):
        list(read_shard(url))


def test_truncated_shard_over_http_names_the_shard_and_the_sample(data, tmp_path):
    whole = (data / "shards" / "00000.tar").read_bytes()
    with tarfile.open(data / "shards" / "00000.tar") as tar:
        members = tar.getmembers()
    (tmp_path / "cut.tar").write_bytes(whole[: members[6].offset])  # at a member boundary
    with (
        serve_folder(tmp_path) as base,
        pytest.raises(
            ValueError, match=r"Shard '.*/cut.tar' is truncated after sample '000000001'"
        ),
    ):
        list(read_shard(f"{base}/cut.tar"))


def test_open_url_reads_http(data, served):
    with open_url(f"{served}/00000.tar") as stream:
        assert stream.read() == (data / "shards" / "00000.tar").read_bytes()


# ------------------------------------------------------------------------- index files
def test_index_round_trip_with_relative_urls(data, tmp_path):
    output = data / "shards" / "index.json"
    written = write_shard_index(str(data / "shards" / "{00000..00002}.tar"), str(output))
    description = json.loads(output.read_text())
    assert description["wids_version"] == 1 and description["concepts_key"] == "concepts"
    assert [e["url"] for e in description["shardlist"]] == SHARD_NAMES
    assert [e["nsamples"] for e in description["shardlist"]] == [8, 8, 8]
    index = read_shard_index(str(output))
    assert index.urls == [str(data / "shards" / name) for name in SHARD_NAMES]
    assert index.sizes == written.sizes == [8, 8, 8]
    assert index.concepts == [concepts_of(i) for i in range(N)]
    output.unlink()


def test_index_read_over_http_resolves_urls_against_its_folder(data, tmp_path, capsys):
    for name in SHARD_NAMES:
        (tmp_path / name).write_bytes((data / "shards" / name).read_bytes())
    main([str(tmp_path / "{00000..00002}.tar"), "-o", str(tmp_path / "index.json")])
    assert "3 shards, 24 samples" in capsys.readouterr().out
    with serve_folder(tmp_path) as base:
        index = read_shard_index(f"{base}/index.json")
        assert index.urls == [f"{base}/{name}" for name in SHARD_NAMES]
        assert index.concepts[:3] == [concepts_of(i) for i in range(3)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{nope", r"cannot read the shard index"),
        ('{"shardlist": []}', r"is not a shard index: .*\"wids_version\": 1"),
        ('{"wids_version": 1, "shardlist": [{"url": "a.tar"}]}', r"shardlist\[0\] must hold"),
        (
            '{"wids_version": 1, "shardlist": [{"url": "a.tar", "nsamples": -1}]}',
            r"negative nsamples -1",
        ),
        (
            '{"wids_version": 1, "concepts_key": "c", '
            '"shardlist": [{"url": "a.tar", "nsamples": 2, "concepts": [[1]]}]}',
            r"must hold \"concepts\", a list of 2 concept lists .* got list of 1",
        ),
    ],
)
def test_bad_index_names_the_file(tmp_path, content, message):
    (tmp_path / "index.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        read_shard_index(str(tmp_path / "index.json"))


def test_index_without_concepts_is_a_wids_index(tmp_path):
    with tarfile.open(tmp_path / "0.tar", "w") as tar:
        for name, payload in [("k.png", b"x"), ("k.txt", b"caption")]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    index = write_shard_index([str(tmp_path / "0.tar")], str(tmp_path / "i.json"), None)
    assert index.concepts is None and index.sizes == [1]
    assert "concepts_key" not in json.loads((tmp_path / "i.json").read_text())


class _CutShort(http.server.BaseHTTPRequestHandler):
    """Announces the whole shard, sends half of it, and closes the connection."""

    payload = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload[: len(self.payload) // 2])
        self.close_connection = True

    def log_message(self, format, *args) -> None:
        """Log nothing."""


def test_http_response_cut_short_names_the_shard(data):
    handler = type(
        "Handler", (_CutShort,), {"payload": (data / "shards" / "00000.tar").read_bytes()}
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/0.tar"
    try:
        with pytest.raises(
            ValueError, match=r"Shard 'http://.*/0.tar' is corrupt or truncated after"
        ):
            list(read_shard(url))
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
