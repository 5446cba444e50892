"""The probe image set: a folder or a CSV listing of unlabelled images, as an annotations-shaped index.

Why an index: the probe's maps must come from the very extraction pass of `features`
(:func:`lavise.features.extract.build_feature_cache`: same backbone, layer, transform, chunked
resumable cache and image statuses). That pass reads ``images.parquet`` and ``objects.parquet``;
the probe index is those two tables with every image in the ``val`` split (so its full maps are
kept) and no objects, plus a ``group`` column. Each file gets its status from
:func:`lavise.data.images.check_image_files`, exactly as the annotations stage gives reference
images theirs, and its size from its header, so the counts of unusable files are those
`features` would report for the same files.

Listing rules: a folder is read recursively (every regular file; hidden ones too: whatever is not
an image is counted ``undecodable``), sorted by path; with ``groups: subfolders`` each file's
group is its first-level subfolder. A CSV names a path column (relative to the root, or absolute
inside it) and optionally a group column. Bad listings stop with one message: a missing or empty
folder, a missing column, an empty cell, a listed file that does not exist, a path listed twice,
a group with fewer than ``MIN_GROUP_IMAGES`` files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lavise.data.annotation_schema import IMAGES_SCHEMA, OBJECTS_SCHEMA
from lavise.data.images import DEFAULT_MAX_PIXELS, OK, check_image_files, declared_file_size
from lavise.io import atomic_dir, write_parquet
from lavise.options import PROBE_GROUPINGS
from lavise.outputs import check_one_set, output_set_id, with_set_id

MIN_GROUP_IMAGES = 2  # a share of qualified images needs at least two images to compare
PROBE_IMAGES_SCHEMA = pa.schema([*IMAGES_SCHEMA, ("group", pa.string())])
EXAMPLES = 3  # paths quoted in a message


@dataclass(frozen=True)
class ProbeSource:
    """Where the probe images are: ``listing`` (a folder, or a ``.csv`` file), ``root`` (the folder
    their paths are relative to), ``groups`` (one of PROBE_GROUPINGS) and the CSV's column names."""

    listing: Path
    root: Path
    groups: str
    path_column: str = "path"
    group_column: str = "group"


def _quoted(paths: list[str]) -> str:
    return ", ".join(paths[:EXAMPLES]) + (", ..." if len(paths) > EXAMPLES else "")


def list_folder(folder: Path, subfolders: bool) -> pd.DataFrame:
    """``path`` (relative, POSIX) and ``group`` of every file under ``folder``, sorted by path."""
    if not folder.is_dir():
        raise FileNotFoundError(f"probe folder {folder} not found (or not a folder)")
    paths = sorted(
        Path(base, name).relative_to(folder).as_posix()
        for base, _, names in os.walk(folder, followlinks=True)
        for name in names
    )
    if not paths:
        raise ValueError(f"probe folder {folder} holds no files")
    groups = [path.split("/")[0] if "/" in path else None for path in paths] if subfolders else [None] * len(paths)
    loose = [path for path, group in zip(paths, groups) if subfolders and group is None]
    if loose:
        raise ValueError(
            f"probe folder {folder}: {len(loose)} file(s) lie outside any group subfolder ({_quoted(loose)}); "
            "move them into a subfolder, or do not take the groups from subfolders"
        )
    return pd.DataFrame({"path": paths, "group": groups})


def _csv_paths(table: pd.DataFrame, source: ProbeSource) -> list[str]:
    """The CSV's paths relative to the root; absolute ones must lie inside it."""
    root = source.root.resolve()
    paths = []
    for value in table[source.path_column]:
        path = Path(value)
        if path.is_absolute():
            inside = path.resolve().is_relative_to(root)
            path = path.resolve().relative_to(root) if inside else path
        paths.append(path.as_posix())
    return paths


def read_listing_csv(source: ProbeSource, use_groups: bool) -> pd.DataFrame:
    """``path`` and ``group`` of every row of the CSV ``source.listing``, checked (module docstring)."""
    name = source.listing
    if not name.is_file():
        raise FileNotFoundError(f"probe listing {name} not found")
    table = pd.read_csv(name, dtype=str, keep_default_na=False)
    columns = [source.path_column] + ([source.group_column] if use_groups else [])
    for column in columns:
        if column not in table.columns:
            raise ValueError(f"probe listing {name} has no column {column!r}; its columns: {list(table.columns)}")
    if table.empty:
        raise ValueError(f"probe listing {name} lists no images")
    for column in columns:
        empty = np.flatnonzero(table[column].str.strip() == "")
        if len(empty):
            raise ValueError(f"probe listing {name}: column {column!r} is empty on line {int(empty[0]) + 2}")
    paths = _csv_paths(table, source)
    repeated = sorted(set(pd.Series(paths)[pd.Series(paths).duplicated()]))
    if repeated:
        raise ValueError(f"probe listing {name}: {len(repeated)} path(s) listed more than once ({_quoted(repeated)})")
    unknown = [path for path in paths if not (source.root / path).exists()]
    if unknown:
        raise ValueError(
            f"probe listing {name}: {len(unknown)} listed path(s) do not exist under {source.root} ({_quoted(unknown)})"
        )
    groups = table[source.group_column].tolist() if use_groups else [None] * len(paths)
    return pd.DataFrame({"path": paths, "group": groups}).sort_values("path", ignore_index=True)


def list_probe(source: ProbeSource) -> pd.DataFrame:
    """The probe's files (``path``, ``group``): from the folder or the CSV, groups checked."""
    if source.groups not in PROBE_GROUPINGS:
        raise ValueError(f"unknown probe grouping {source.groups!r}; expected one of {PROBE_GROUPINGS}")
    if source.listing.suffix.lower() == ".csv":
        if source.groups == "subfolders":
            raise ValueError(f"probe listing {source.listing} is a CSV: its groups come from a column, not subfolders")
        listing = read_listing_csv(source, use_groups=source.groups == "column")
    else:
        if source.groups == "column":
            raise ValueError(f"probe source {source.listing} is a folder: groups from a column need a CSV listing")
        listing = list_folder(source.listing, subfolders=source.groups == "subfolders")
    if source.groups != "none":
        sizes = listing["group"].value_counts()
        small = sizes[sizes < MIN_GROUP_IMAGES]
        if len(small):
            raise ValueError(
                f"probe group {small.index[0]!r} has {int(small.iloc[0])} file(s); each group needs at least "
                f"{MIN_GROUP_IMAGES} to compare"
            )
    return listing


def probe_images(listing: pd.DataFrame, root: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> pd.DataFrame:
    """The index's images table: ids in path order, every image ``val``, status and header size."""
    status = check_image_files(root, listing["path"].tolist(), max_pixels)
    sizes = [declared_file_size(root / path) if state == OK else None for path, state in zip(listing["path"], status)]
    return pd.DataFrame(
        {
            "image_id": np.arange(len(listing), dtype=np.int64),
            "path": listing["path"].to_numpy(),
            "width": np.array([size[0] if size else 0 for size in sizes], dtype=np.int32),
            "height": np.array([size[1] if size else 0 for size in sizes], dtype=np.int32),
            "split": "val",
            "status": status,
            "group": listing["group"].to_numpy(),
        }
    )


def write_probe_index(images: pd.DataFrame, out_dir: Path, source: ProbeSource) -> str:
    """images.parquet and an empty objects.parquet in ``out_dir`` (replaced as one directory),
    one output set; returns its id."""
    table = pa.Table.from_pandas(images, schema=PROBE_IMAGES_SCHEMA, preserve_index=False)
    set_id = output_set_id("probe", str(source.groups), images.to_dict(orient="list"))
    with atomic_dir(out_dir) as staging:
        write_parquet(staging / "images.parquet", with_set_id(table, set_id))
        write_parquet(staging / "objects.parquet", with_set_id(OBJECTS_SCHEMA.empty_table(), set_id))
    return set_id


def read_probe_images(index_dir: Path) -> pd.DataFrame:
    """The probe index's images table (``image_id``, ``path``, ``group``, ``status``, ...), of one run."""
    check_one_set(index_dir, ("images", "objects"), "probe_features")
    return pq.read_table(index_dir / "images.parquet").to_pandas()
