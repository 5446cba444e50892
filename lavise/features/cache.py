"""The feature cache format: its files, its one writer and its one reader.

A cache directory (``data/features``, described in docs/ARCHITECTURE.md) holds:

- ``meta.json``: backbone, weights, layer, ``channels`` d, ``height`` h', ``width`` w', transform
  sizes, decode mode, counts, dtype;
- ``images.parquet``: ``image_id``, ``split``, ``status`` (ok | missing | undecodable), ``error``;
- ``train_vectors.npy`` ``[n, d]`` float16 (pool(F * M) per train object) indexed by
  ``train_objects.parquet`` (``row``, ``object_id``, ``image_id``, ``category``, ``coverage``);
- ``val_vectors.npy`` / ``val_objects.parquet``: the same for validation objects;
- ``val_maps.npy`` ``[n_val_images, d, h', w']`` float16 indexed by ``val_images.parquet``
  (``row``, ``image_id``).

Writer: results are written in chunks under ``<cache>/.chunks`` (each chunk atomically, the unit
a killed run resumes from, with the digests of the image files it read), then streamed into the
final files, so peak memory is one chunk and a resumed cache is byte-identical to an
uninterrupted one. A full disk must not end in SIGBUS from a write into a memory map: the
writer checks the free space against what is left to write (:func:`ensure_free_space`),
allocates every array file in full before mapping it, reports ENOSPC as one OSError naming the
file, and removes the temporaries a killed writer left (:func:`remove_stale_cache_temps`). Reader:
:func:`open_feature_cache` memory-maps the arrays read-only and checks that the files agree with
each other, so a consumer never indexes a map with a row of another table.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lavise.io import InsufficientSpaceError, atomic_dir, atomic_path, read_json, write_json

log = logging.getLogger(__name__)

META_FILE = "meta.json"
CHUNKS_DIR = ".chunks"
FINGERPRINT_FILE = "fingerprint.json"
FORMAT_VERSION = 2
DTYPE = np.float16
IMAGES_SCHEMA = pa.schema(
    [("image_id", pa.int64()), ("split", pa.string()), ("status", pa.string()), ("error", pa.string())]
)
OBJECTS_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("object_id", pa.int64()),
        ("image_id", pa.int64()),
        ("category", pa.string()),
        ("coverage", pa.float32()),
    ]
)
VAL_IMAGES_SCHEMA = pa.schema([("row", pa.int64()), ("image_id", pa.int64())])
ARRAY_NAMES = ("train_vectors", "val_vectors", "val_maps")
TABLE_SCHEMAS = {
    "images": IMAGES_SCHEMA,
    "train_objects": OBJECTS_SCHEMA,
    "val_objects": OBJECTS_SCHEMA,
    "val_images": VAL_IMAGES_SCHEMA,
}
ROW_TABLES = {"train_objects": "train_vectors", "val_objects": "val_vectors", "val_images": "val_maps"}
ARRAY_NDIM = {"train_vectors": 2, "val_vectors": 2, "val_maps": 4}
ARRAY_LAYOUT = {"train_vectors": "[n, d]", "val_vectors": "[n, d]", "val_maps": "[N, d, h, w]"}
CACHE_FILES = (*(f"{name}.npy" for name in ARRAY_NAMES), *(f"{name}.parquet" for name in TABLE_SCHEMAS), META_FILE)
DIGESTS_FILE = "digests.json"
# Space estimate of the tables (the arrays' sizes are exact): generous per-row sizes of the
# uncompressed columns (an error message included) and a per-file allowance for headers/footers.
OBJECT_ROW_BYTES = 64
IMAGE_ROW_BYTES = 256
FILE_OVERHEAD_BYTES = 8192
FILES_PER_CHUNK = 9


# --------------------------------------------------------------------------------------------
# Reader


@dataclass(frozen=True)
class FeatureCache:
    """A finished, checked cache: arrays memory-mapped read-only, tables read on first use."""

    directory: Path
    meta: dict[str, Any]
    train_vectors: np.ndarray  # [n_train_objects, d]
    val_vectors: np.ndarray  # [n_val_objects, d]
    val_maps: np.ndarray  # [n_val_images, d, h', w']

    def table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        """Table ``name`` (a key of TABLE_SCHEMAS) as Arrow, optionally only some ``columns``."""
        return pq.read_table(self.directory / f"{name}.parquet", columns=columns)

    @cached_property
    def images(self) -> pd.DataFrame:
        return self.table("images").to_pandas()

    @cached_property
    def train_objects(self) -> pd.DataFrame:
        return self.table("train_objects").to_pandas()

    @cached_property
    def val_objects(self) -> pd.DataFrame:
        return self.table("val_objects").to_pandas()

    @cached_property
    def val_images(self) -> pd.DataFrame:
        return self.table("val_images").to_pandas()


def _check_files(directory: Path) -> None:
    """Every array and table of the format exists, and each table has its schema's columns."""
    for name in ARRAY_NAMES:
        if not (directory / f"{name}.npy").is_file():
            raise ValueError(f"{directory / f'{name}.npy'} not found: not a complete feature cache")
    for name, schema in TABLE_SCHEMAS.items():
        path = directory / f"{name}.parquet"
        if not path.is_file():
            raise ValueError(f"{path} not found: not a complete feature cache")
        missing = [column for column in schema.names if column not in pq.read_schema(path).names]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}")


def _load_arrays(directory: Path) -> dict[str, np.ndarray]:
    """The arrays memory-mapped read-only, each with the number of axes of its layout."""
    arrays = {}
    for name in ARRAY_NAMES:
        path = directory / f"{name}.npy"
        array = np.load(path, mmap_mode="r")
        if array.ndim != ARRAY_NDIM[name]:
            raise ValueError(f"{path}: expected {ARRAY_LAYOUT[name]}, got shape {array.shape}")
        arrays[name] = array
    return arrays


def _check_shapes(directory: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """meta.json's (channels, height, width) are val_maps' and every vector has d columns."""
    maps = arrays["val_maps"]
    declared = tuple(meta.get(key) for key in ("channels", "height", "width"))
    if declared != tuple(maps.shape[1:]):
        raise ValueError(
            f"{directory}: meta.json declares (channels, height, width) {declared} "
            f"but val_maps.npy has {maps.shape[1:]}"
        )
    for name in ("train_vectors", "val_vectors"):
        if arrays[name].shape[1] != maps.shape[1]:
            raise ValueError(
                f"{directory}: meta.json channels={meta['channels']} but {name}.npy has {arrays[name].shape[1]} columns"
            )


def _check_row_index(directory: Path, table: str, array_name: str, array: np.ndarray) -> None:
    """``table``'s ``row`` column is 0..n-1 with n the array's rows: row i describes array[i]."""
    rows = pq.read_table(directory / f"{table}.parquet", columns=["row"]).column("row").to_numpy()
    if len(rows) != array.shape[0] or not np.array_equal(rows, np.arange(len(rows))):
        unit = "maps" if array_name == "val_maps" else "vectors"
        raise ValueError(
            f"{directory}: {table}.parquet ({len(rows)} rows) does not index {array_name}.npy ({array.shape[0]} {unit})"
        )


def open_feature_cache(directory: str | Path) -> FeatureCache:
    """Open and check a cache (``data/features``); the arrays stay on disk (``mmap_mode='r'``).

    FileNotFoundError when there is no meta.json (the features stage has not run); ValueError
    naming the file when a file is missing or disagrees with the others.
    """
    directory = Path(directory)
    if not (directory / META_FILE).is_file():
        raise FileNotFoundError(f"{directory}/{META_FILE} not found: run the features stage first")
    _check_files(directory)
    arrays = _load_arrays(directory)
    for table, array_name in ROW_TABLES.items():
        _check_row_index(directory, table, array_name, arrays[array_name])
    meta = read_json(directory / META_FILE)
    _check_shapes(directory, meta, arrays)
    return FeatureCache(directory=directory, meta=meta, **arrays)


# --------------------------------------------------------------------------------------------
# Writer


def format_size(n_bytes: float) -> str:
    """``n_bytes`` for a message: GB from 0.1 GB, MB below."""
    return f"{n_bytes / 1e9:.1f} GB" if n_bytes >= 1e8 else f"{n_bytes / 1e6:.1f} MB"


def estimated_bytes(
    n_images: Any, n_train_objects: Any, n_val_objects: Any, n_val_images: Any, map_shape: tuple[int, int, int]
) -> Any:
    """Bytes of a cache, or of one chunk, with these counts (numbers or numpy arrays of them):
    the arrays exactly (float16), the tables by a generous per-row estimate."""
    channels, height, width = map_shape
    item = np.dtype(DTYPE).itemsize
    arrays = (n_train_objects + n_val_objects) * channels * item + n_val_images * channels * height * width * item
    tables = (n_train_objects + n_val_objects) * OBJECT_ROW_BYTES + n_images * IMAGE_ROW_BYTES
    return arrays + tables + FILES_PER_CHUNK * FILE_OVERHEAD_BYTES


def ensure_free_space(out_dir: Path, *, chunks_bytes: int, cache_bytes: int) -> None:
    """Refuse (:class:`InsufficientSpaceError`) before the pass unless ``out_dir``'s disk can hold
    the chunks still to write, the assembled cache beside them, and the previous cache's files,
    which are freed only as each is replaced (a failed run must leave them as they were)."""
    previous = sum((out_dir / name).stat().st_size for name in CACHE_FILES if (out_dir / name).is_file())
    needed = chunks_bytes + cache_bytes + previous
    free = shutil.disk_usage(out_dir).free
    if needed > free:
        parts = (
            f"{format_size(chunks_bytes)} for the chunks still to compute, {format_size(cache_bytes)} for the cache, "
            f"{format_size(previous)} until the previous cache there is replaced"
        )
        raise InsufficientSpaceError(
            f"features needs {format_size(needed)} in {out_dir}, {format_size(free)} free ({parts}); "
            "free some space or write the cache to a larger disk",
            out_dir,
        )


def remove_stale_cache_temps(out_dir: Path) -> None:
    """Remove the temporaries a killed writer left in ``out_dir``: hidden ``.<file>.*.tmp`` of the
    cache's files and the chunks' ``.chunk_*.tmp``/``.old`` directories. A kill -9 (or a SIGBUS)
    skips every cleanup, and one stale 8 MB map filled the disk for the next run. The writer
    owns ``out_dir`` (as it does to discard stale chunks), so no live writer's temp is touched."""
    stale = [path for name in CACHE_FILES for path in out_dir.glob(f".{name}.*.tmp")]
    chunks_root = out_dir / CHUNKS_DIR
    stale += [*chunks_root.glob(".*.tmp"), *chunks_root.glob(".chunk_*.old")]
    for path in stale:
        log.warning("removing %s, left by a writer that was killed", path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def _disk_full_names(path: Path) -> Iterator[None]:
    """Turn any ENOSPC while writing ``path`` (from Python, NumPy or Arrow, which name no file,
    or not the final one) into one OSError(ENOSPC) naming ``path``."""
    try:
        yield
    except OSError as error:
        if error.errno != errno.ENOSPC or isinstance(error, InsufficientSpaceError):
            raise
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from error


def allocate_file(path: Path, start: int, end: int) -> None:
    """Give ``path`` all its blocks from ``start`` to ``end`` now (it is that long already,
    sparse), so that writes through a memory map cannot fault later: on a full disk a sparse file
    ends the process with SIGBUS; ENOSPC is raised here instead. Where the filesystem has no
    fallocate, zeros are written over the range (the content it has anyway)."""
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), start, end - start)
            return
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS):
                raise
        except AttributeError:  # no posix_fallocate on this platform
            pass
        zeros = bytes(1 << 20)
        f.seek(start)
        for position in range(start, end, len(zeros)):
            f.write(zeros[: min(len(zeros), end - position)])
        f.flush()
        os.fsync(f.fileno())


def prepare_chunks(out_dir: Path, fingerprint: dict[str, Any], n_chunks: int) -> tuple[list[Path], list[int]]:
    """The chunk directories of a cache and the indices of those still to write.

    ``fingerprint`` is everything besides the images' bytes that changes a chunk's bytes; chunks
    left by a run with another fingerprint are discarded, those of a killed run with the same one
    are kept (the resume: the caller still checks each kept chunk's image digests). A killed
    writer's temporaries are removed first.
    """
    remove_stale_cache_temps(out_dir)
    chunks_root = out_dir / CHUNKS_DIR
    fingerprint_path = chunks_root / FINGERPRINT_FILE
    if chunks_root.exists() and (not fingerprint_path.is_file() or read_json(fingerprint_path) != fingerprint):
        log.warning("discarding chunks in %s: written with other settings or inputs", chunks_root)
        shutil.rmtree(chunks_root)
    write_json(fingerprint_path, fingerprint)
    return chunk_paths(out_dir, n_chunks)


def chunk_paths(out_dir: Path, n_chunks: int) -> tuple[list[Path], list[int]]:
    """The chunk directories of a cache and the indices of those not written yet (what every
    rank of a multi-process run reads once rank 0 has prepared the chunks)."""
    chunk_dirs = [out_dir / CHUNKS_DIR / f"chunk_{index:06d}" for index in range(n_chunks)]
    pending = [index for index, chunk_dir in enumerate(chunk_dirs) if not chunk_dir.is_dir()]
    return chunk_dirs, pending


def write_chunk(
    chunk_dir: Path,
    arrays: dict[str, np.ndarray],
    tables: dict[str, pa.Table],
    counts: dict[str, int],
    digests: Sequence[str | None] = (),
) -> None:
    """Write one chunk atomically: it exists complete or not at all (the resume unit).

    ``arrays``/``tables``: every name of ARRAY_NAMES/TABLE_SCHEMAS, ``row`` local to the chunk.
    ``digests``: per image of the chunk, the digest of the file as it was read (see
    :func:`chunk_digests`), so that a resumed run can tell that the chunk's inputs changed.
    """
    with _disk_full_names(chunk_dir), atomic_dir(chunk_dir) as tmp:
        (tmp / "counts.json").write_text(json.dumps(counts, sort_keys=True))
        (tmp / DIGESTS_FILE).write_text(json.dumps(list(digests)))
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        for name, table in tables.items():
            pq.write_table(table, tmp / f"{name}.parquet")


def chunk_digests(chunk_dir: Path) -> list[str | None] | None:
    """The image digests a chunk was written with; None for a chunk without them (unverifiable)."""
    try:
        digests = json.loads((chunk_dir / DIGESTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return digests if isinstance(digests, list) else None


def _assemble_arrays(chunk_dirs: list[Path], out_dir: Path, totals: dict[str, int]) -> None:
    """Concatenate each array over the chunks into one float16 file, one chunk in memory at a time."""
    for name in ARRAY_NAMES:
        headers = [np.load(chunk / f"{name}.npy", mmap_mode="r") for chunk in chunk_dirs]
        total = sum(part.shape[0] for part in headers)
        totals[name] = total
        path = out_dir / f"{name}.npy"
        with _disk_full_names(path), atomic_path(path) as tmp:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=DTYPE, shape=(total, *headers[0].shape[1:]))
            if array.nbytes:
                allocate_file(tmp, array.offset, array.offset + array.nbytes)
            offset = 0
            for part in headers:
                array[offset : offset + part.shape[0]] = part
                offset += part.shape[0]
            array.flush()
            del array
        del headers


def _assemble_tables(chunk_dirs: list[Path], out_dir: Path) -> None:
    """Concatenate each table over the chunks, shifting ``row`` by the rows of earlier chunks."""
    for name, schema in TABLE_SCHEMAS.items():
        row_source = ROW_TABLES.get(name)
        path = out_dir / f"{name}.parquet"
        with _disk_full_names(path), atomic_path(path) as tmp:
            with pq.ParquetWriter(tmp, schema) as writer:
                offset = 0
                for chunk in chunk_dirs:
                    table = pq.read_table(chunk / f"{name}.parquet", schema=schema)
                    if row_source is not None:
                        rows = pa.array(table.column("row").to_numpy() + offset, type=pa.int64())
                        table = table.set_column(0, "row", rows)
                        offset += table.num_rows
                    writer.write_table(table)


def assemble_chunks(chunk_dirs: list[Path], out_dir: Path) -> dict[str, int]:
    """Stream the chunks into the final files; returns the rows of each array and the summed counts."""
    totals: dict[str, int] = {"objects_outside_crop": 0}
    for chunk in chunk_dirs:
        totals["objects_outside_crop"] += json.loads((chunk / "counts.json").read_text())["objects_outside_crop"]
    _assemble_arrays(chunk_dirs, out_dir, totals)
    _assemble_tables(chunk_dirs, out_dir)
    return totals


def finish_cache(out_dir: Path, meta: dict[str, Any]) -> None:
    """Write meta.json (last: a cache without it is unfinished) and remove the chunks."""
    with _disk_full_names(out_dir / META_FILE):
        write_json(out_dir / META_FILE, meta)
    shutil.rmtree(out_dir / CHUNKS_DIR)
