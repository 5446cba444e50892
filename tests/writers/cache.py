"""Test fixture writer: a valid feature cache from given arrays and tables.

Written through the library's own writer (one chunk, then assembled), so a test's cache is in the
format the features stage writes and `lavise.features.cache.open_feature_cache` accepts. Give
only what a test needs; the rest is filled in consistently (empty arrays, a ``row`` column, ...):

    from tests.writers.cache import write_feature_cache
    write_feature_cache(tmp_path / "features", val_maps=maps, meta={"layer": "layer4"})

A cache larger than memory (a benchmark's) is written chunk by chunk with
:func:`write_feature_cache_in_chunks`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


def _chunk_content(
    d: int, grid: tuple[int, int], parts: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, pa.Table]]:
    """One chunk's arrays (float16) and tables from the given ``parts``, the rest filled in."""
    empty = {"train_vectors": (0, d), "val_vectors": (0, d), "val_maps": (0, d, *grid)}
    arrays = {
        name: np.zeros(empty[name], DTYPE) if parts.get(name) is None else np.asarray(parts[name]).astype(DTYPE)
        for name in ("train_vectors", "val_vectors", "val_maps")
    }
    n_maps = len(arrays["val_maps"])
    columns = {
        "train_objects": _objects(parts.get("train_objects"), len(arrays["train_vectors"])),
        "val_objects": _objects(parts.get("val_objects"), len(arrays["val_vectors"])),
        "val_images": _as_columns(parts["val_images"])
        if parts.get("val_images") is not None
        else {"row": np.arange(n_maps, dtype=np.int64), "image_id": np.arange(n_maps, dtype=np.int64)},
    }
    columns["images"] = _images(columns) if parts.get("images") is None else _as_columns(parts["images"])
    return arrays, {name: pa.table(columns[name], schema=schema) for name, schema in TABLE_SCHEMAS.items()}


def write_feature_cache_in_chunks(
    directory: Path,
    n_chunks: int,
    chunk: Callable[[int], Mapping[str, Any]],
    *,
    channels: int,
    grid: tuple[int, int] = (1, 1),
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write a cache of ``n_chunks`` chunks, ``chunk(i)`` giving chunk i's parts (the keyword
    arguments of :func:`write_feature_cache` but meta, channels and grid; ``row`` local to the
    chunk), one chunk in memory at a time: a cache larger than memory, as the features stage
    writes it. Each chunk's ``images`` default to the images its tables name, so keep an image's
    objects in one chunk or give ``images``. Returns ``directory``."""
    directory = Path(directory)
    chunk_dirs, _ = prepare_chunks(directory, {"writer": "tests.writers.cache"}, n_chunks)
    for index, chunk_dir in enumerate(chunk_dirs):
        write_chunk(chunk_dir, *_chunk_content(channels, grid, chunk(index)), {"objects_outside_crop": 0})
    assemble_chunks(chunk_dirs, directory)
    shape = {"channels": channels, "height": grid[0], "width": grid[1], "dtype": "float16"}
    finish_cache(directory, {**shape, **(meta or {})})
    return directory


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
    tables = {"train_objects": train_objects, "val_objects": val_objects, "val_images": val_images, "images": images}
    parts = {**given, **tables}
    grid = tuple(np.shape(val_maps)[2:]) if val_maps is not None else grid
    return write_feature_cache_in_chunks(
        directory, 1, lambda _: parts, channels=_channels(given, channels), grid=grid, meta=meta
    )
