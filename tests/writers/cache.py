"""Test fixture writer: a valid feature cache from given arrays and tables.

Written through the library's own writer (one chunk, then assembled), so a test's cache is in the
format the features stage writes and `lavise.features.cache.open_feature_cache` accepts. Give
only what a test needs; the rest is filled in consistently (empty arrays, a ``row`` column, ...):

    from tests.writers.cache import write_feature_cache
    write_feature_cache(tmp_path / "features", val_maps=maps, meta={"layer": "layer4"})
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from lavise.features.cache import (
    DTYPE,
    TABLE_SCHEMAS,
    assemble_chunks,
    finish_cache,
    prepare_chunks,
    write_chunk,
)

Columns = Mapping[str, Any] | pd.DataFrame


def _channels(arrays: dict[str, np.ndarray | None], channels: int | None) -> int:
    for array in arrays.values():
        if array is not None:
            return int(np.shape(array)[1])
    if channels is None:
        raise ValueError("give channels, or at least one of train_vectors, val_vectors, val_maps")
    return channels


def _as_columns(columns: Columns) -> dict[str, Any]:
    if isinstance(columns, pd.DataFrame):
        return {name: columns[name].to_numpy() for name in columns.columns}
    return dict(columns)


def _objects(columns: Columns | None, n_rows: int) -> dict[str, Any]:
    """An objects table: given columns, ``row`` 0..n-1 and coverage 1 unless given; without
    columns, one object per vector row (object and image id = row, category ``object``)."""
    if columns is None:
        ids = np.arange(n_rows, dtype=np.int64)
        columns = {"object_id": ids, "image_id": ids, "category": ["object"] * n_rows}
    data = _as_columns(columns)
    n = len(next(iter(data.values())))
    data.setdefault("row", np.arange(n, dtype=np.int64))
    data.setdefault("coverage", np.ones(n, dtype=np.float32))
    return data


def _images(tables: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every image the other tables name, status ok: split train for train objects, else val."""
    splits: dict[int, str] = {}
    for name, split in (("train_objects", "train"), ("val_objects", "val"), ("val_images", "val")):
        for image_id in tables[name]["image_id"]:
            splits[int(image_id)] = split
    ids = sorted(splits)
    return {"image_id": ids, "split": [splits[i] for i in ids], "status": ["ok"] * len(ids), "error": [None] * len(ids)}


def write_feature_cache(
    directory: Path,
    *,
    train_vectors: np.ndarray | None = None,
    train_objects: Columns | None = None,
    val_vectors: np.ndarray | None = None,
    val_objects: Columns | None = None,
    val_maps: np.ndarray | None = None,
    val_images: Columns | None = None,
    images: Columns | None = None,
    meta: Mapping[str, Any] | None = None,
    channels: int | None = None,
    grid: tuple[int, int] = (1, 1),
) -> Path:
    """Write the cache to ``directory`` and return it. Arrays are stored as float16; tables are
    columns (a mapping or a DataFrame) in the library's schemas; ``meta`` adds to or overrides
    the meta.json written (channels, height and width from the arrays, dtype)."""
    given = {"val_maps": val_maps, "train_vectors": train_vectors, "val_vectors": val_vectors}
    d = _channels(given, channels)
    grid = tuple(np.shape(val_maps)[2:]) if val_maps is not None else grid
    empty = {"train_vectors": (0, d), "val_vectors": (0, d), "val_maps": (0, d, *grid)}
    arrays = {
        name: np.zeros(empty[name], DTYPE) if given[name] is None else np.asarray(given[name]).astype(DTYPE)
        for name in ("train_vectors", "val_vectors", "val_maps")
    }
    n_maps = len(arrays["val_maps"])
    columns = {
        "train_objects": _objects(train_objects, len(arrays["train_vectors"])),
        "val_objects": _objects(val_objects, len(arrays["val_vectors"])),
        "val_images": _as_columns(val_images)
        if val_images is not None
        else {"row": np.arange(n_maps, dtype=np.int64), "image_id": np.arange(n_maps, dtype=np.int64)},
    }
    columns["images"] = _images(columns) if images is None else _as_columns(images)
    tables = {name: pa.table(columns[name], schema=schema) for name, schema in TABLE_SCHEMAS.items()}
    directory = Path(directory)
    chunk_dirs, _ = prepare_chunks(directory, {"writer": "tests.writers.cache"}, 1)
    write_chunk(chunk_dirs[0], arrays, tables, {"objects_outside_crop": 0})
    assemble_chunks(chunk_dirs, directory)
    finish_cache(directory, {"channels": d, "height": grid[0], "width": grid[1], "dtype": "float16", **(meta or {})})
    return directory
