"""The cache format: the writer's chunks assembled, and the reader's checks, each error naming the file."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lavise.features.cache import (
    TABLE_SCHEMAS,
    allocate_file,
    assemble_chunks,
    ensure_free_space,
    finish_cache,
    open_feature_cache,
    prepare_chunks,
    remove_stale_cache_temps,
    write_chunk,
)
from lavise.io import InsufficientSpaceError
from stages.cli import run_stage
from tests.writers.cache import write_feature_cache, write_feature_cache_in_chunks

CHANNELS, GRID = 3, (2, 2)


def _small_cache(directory: Path) -> Path:
    rng = np.random.default_rng(0)
    return write_feature_cache(
        directory,
        train_vectors=rng.normal(size=(4, CHANNELS)),
        train_objects={"object_id": [5, 6, 7, 8], "image_id": [1, 1, 2, 2], "category": ["a", "b", "a", "c"]},
        val_vectors=rng.normal(size=(2, CHANNELS)),
        val_objects={"object_id": [9, 10], "image_id": [3, 4], "category": ["a", "b"], "coverage": [0.5, 0.0]},
        val_maps=rng.normal(size=(2, CHANNELS, *GRID)),
        val_images={"row": [0, 1], "image_id": [3, 4]},
        meta={"layer": "layer4"},
    )


def test_written_cache_reads_back_memory_mapped_read_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train, val = rng.normal(size=(4, CHANNELS)), rng.normal(size=(2, CHANNELS))
    maps = rng.normal(size=(2, CHANNELS, *GRID))
    cache = open_feature_cache(_small_cache(tmp_path / "features"))
    assert sorted(p.name for p in cache.directory.iterdir()) == sorted(
        ["meta.json", *(f"{name}.parquet" for name in TABLE_SCHEMAS), "train_vectors.npy", "val_vectors.npy"]
        + ["val_maps.npy"]
    )
    for array, expected in ((cache.train_vectors, train), (cache.val_vectors, val), (cache.val_maps, maps)):
        assert isinstance(array, np.memmap) and array.dtype == np.float16 and not array.flags.writeable
        np.testing.assert_array_equal(array, expected.astype(np.float16))
    assert cache.meta == {"channels": 3, "height": 2, "width": 2, "dtype": "float16", "layer": "layer4"}
    assert list(cache.train_objects["row"]) == [0, 1, 2, 3] and list(cache.train_objects["coverage"]) == [1.0] * 4
    assert list(cache.val_objects["coverage"]) == [0.5, 0.0]
    assert list(cache.val_images["image_id"]) == [3, 4]
    assert cache.table("images").to_pydict() == {
        "image_id": [1, 2, 3, 4],
        "split": ["train", "train", "val", "val"],
        "status": ["ok"] * 4,
        "error": [None] * 4,
    }
    for name, schema in TABLE_SCHEMAS.items():
        assert pq.read_schema(cache.directory / f"{name}.parquet").remove_metadata() == schema
    assert cache.table("train_objects", columns=["category"]).column("category").to_pylist() == ["a", "b", "a", "c"]


def test_writer_defaults_make_a_valid_empty_remainder(tmp_path: Path) -> None:
    cache = open_feature_cache(write_feature_cache(tmp_path / "features", val_maps=np.ones((3, 5, 4, 6))))
    assert cache.train_vectors.shape == (0, 5) and cache.val_vectors.shape == (0, 5)
    assert (cache.meta["channels"], cache.meta["height"], cache.meta["width"]) == (5, 4, 6)
    assert list(cache.val_images["row"]) == [0, 1, 2] and list(cache.images["split"]) == ["val"] * 3
    cache = open_feature_cache(write_feature_cache(tmp_path / "vectors", train_vectors=np.ones((2, 7))))
    assert cache.val_maps.shape == (0, 7, 1, 1) and list(cache.train_objects["object_id"]) == [0, 1]


def test_writer_in_chunks_concatenates_the_chunks_with_rows_shifted(tmp_path: Path) -> None:
    """Chunk i: i + 1 train vectors equal to i, object ids 10 i.., its image i; one val vector in chunk 0."""

    def chunk(index: int) -> dict[str, object]:
        n = index + 1
        parts: dict[str, object] = {
            "train_vectors": np.full((n, 2), index),
            "train_objects": {"object_id": np.arange(n) + 10 * index, "image_id": [index] * n, "category": ["x"] * n},
        }
        if index == 0:
            parts.update(
                val_vectors=np.ones((1, 2)), val_objects={"object_id": [99], "image_id": [7], "category": ["y"]}
            )
        return parts

    directory = write_feature_cache_in_chunks(tmp_path / "features", 3, chunk, channels=2, meta={"layer": "layer4"})
    cache = open_feature_cache(directory)
    np.testing.assert_array_equal(cache.train_vectors[:, 0], [0, 1, 1, 2, 2, 2])
    assert list(cache.train_objects["row"]) == [0, 1, 2, 3, 4, 5]
    assert list(cache.train_objects["object_id"]) == [0, 10, 11, 20, 21, 22]
    assert list(cache.val_objects["row"]) == [0] and list(cache.val_objects["category"]) == ["y"]
    assert cache.val_maps.shape == (0, 2, 1, 1)
    assert list(cache.images["image_id"]) == [0, 7, 1, 2]  # chunk by chunk, each chunk's sorted
    assert list(cache.images["split"]) == ["train", "val", "train", "train"]
    assert cache.meta == {"channels": 2, "height": 1, "width": 1, "dtype": "float16", "layer": "layer4"}
    assert not (directory / ".chunks").exists()


def _chunk(rows: int, maps: int, image_ids: list[int]) -> tuple[dict[str, np.ndarray], dict[str, pa.Table]]:
    """One chunk: ``rows`` train vectors (all equal to ``rows``), ``maps`` val maps (equal to ``maps``)."""
    arrays = {
        "train_vectors": np.full((rows, 2), rows, np.float16),
        "val_vectors": np.zeros((0, 2), np.float16),
        "val_maps": np.full((maps, 2, 1, 1), maps, np.float16),
    }
    objects = {
        "row": np.arange(rows),
        "object_id": np.arange(rows) + 10 * rows,
        "image_id": [image_ids[0]] * rows,
        "category": ["x"] * rows,
        "coverage": np.ones(rows, np.float32),
    }
    n = len(image_ids)
    columns = {
        "images": {"image_id": image_ids, "split": ["train"] * n, "status": ["ok"] * n, "error": [None] * n},
        "train_objects": objects,
        "val_objects": {name: values[:0] for name, values in objects.items()},
        "val_images": {"row": np.arange(maps), "image_id": [image_ids[-1]] * maps},
    }
    return arrays, {name: pa.table(columns[name], schema=schema) for name, schema in TABLE_SCHEMAS.items()}


def test_chunks_are_assembled_with_rows_shifted_and_resumed_only_with_the_same_fingerprint(tmp_path: Path) -> None:
    out = tmp_path / "features"
    chunk_dirs, pending = prepare_chunks(out, {"run": 1}, 2)
    assert pending == [0, 1] and [p.name for p in chunk_dirs] == ["chunk_000000", "chunk_000001"]
    write_chunk(chunk_dirs[0], *_chunk(2, 1, [1, 2]), {"objects_outside_crop": 1})
    assert prepare_chunks(out, {"run": 1}, 2)[1] == [1]  # a resumed run keeps the written chunk
    assert prepare_chunks(out, {"run": 2}, 2)[1] == [0, 1]  # other settings: discarded
    write_chunk(chunk_dirs[0], *_chunk(2, 1, [1, 2]), {"objects_outside_crop": 1})
    write_chunk(chunk_dirs[1], *_chunk(3, 2, [3]), {"objects_outside_crop": 2})
    totals = assemble_chunks(chunk_dirs, out)
    assert totals == {"objects_outside_crop": 3, "train_vectors": 5, "val_vectors": 0, "val_maps": 3}
    finish_cache(out, {"channels": 2, "height": 1, "width": 1})
    assert not (out / ".chunks").exists()
    cache = open_feature_cache(out)
    assert list(cache.train_objects["row"]) == [0, 1, 2, 3, 4]
    assert list(cache.train_objects["object_id"]) == [20, 21, 30, 31, 32]
    assert list(cache.val_images["row"]) == [0, 1, 2] and list(cache.val_images["image_id"]) == [2, 3, 3]
    np.testing.assert_array_equal(cache.train_vectors[:, 0], [2, 2, 3, 3, 3])
    np.testing.assert_array_equal(cache.val_maps[:, 0, 0, 0], [1, 2, 2])
    assert list(cache.images["image_id"]) == [1, 2, 3]


def test_no_meta_means_the_stage_has_not_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="meta.json not found: run the features stage first"):
        open_feature_cache(tmp_path)


@pytest.mark.parametrize("missing", ["val_maps.npy", "train_vectors.npy", "images.parquet", "val_objects.parquet"])
def test_a_missing_file_is_named(tmp_path: Path, missing: str) -> None:
    directory = _small_cache(tmp_path / "features")
    (directory / missing).unlink()
    with pytest.raises(ValueError, match=rf"features/{missing} not found: not a complete feature cache"):
        open_feature_cache(directory)


def test_a_table_without_its_columns_is_named(tmp_path: Path) -> None:
    directory = _small_cache(tmp_path / "features")
    pq.write_table(pa.table({"row": [0, 1]}), directory / "val_images.parquet")
    with pytest.raises(ValueError, match=r"val_images.parquet: missing columns \['image_id'\]"):
        open_feature_cache(directory)


def test_maps_that_are_not_4d(tmp_path: Path) -> None:
    directory = _small_cache(tmp_path / "features")
    np.save(directory / "val_maps.npy", np.zeros((2, 3, 4), np.float16))
    with pytest.raises(ValueError, match=r"val_maps.npy: expected \[N, d, h, w\], got shape \(2, 3, 4\)"):
        open_feature_cache(directory)
    np.save(directory / "val_maps.npy", np.zeros((2, 3, 2, 2), np.float16))
    np.save(directory / "train_vectors.npy", np.zeros((4, 3, 1), np.float16))
    with pytest.raises(ValueError, match=r"train_vectors.npy: expected \[n, d\], got shape \(4, 3, 1\)"):
        open_feature_cache(directory)


def test_row_tables_must_index_their_arrays(tmp_path: Path) -> None:
    directory = _small_cache(tmp_path / "features")
    np.save(directory / "val_maps.npy", np.zeros((3, 3, 2, 2), np.float16))
    with pytest.raises(ValueError, match=r"val_images.parquet \(2 rows\) does not index val_maps.npy \(3 maps\)"):
        open_feature_cache(directory)
    np.save(directory / "val_maps.npy", np.zeros((2, 3, 2, 2), np.float16))
    pq.write_table(
        pa.table({"row": [1, 0], "image_id": [3, 4]}, schema=TABLE_SCHEMAS["val_images"]),
        directory / "val_images.parquet",
    )
    with pytest.raises(ValueError, match=r"val_images.parquet \(2 rows\) does not index val_maps.npy"):
        open_feature_cache(directory)
    np.save(directory / "val_vectors.npy", np.zeros((5, 3), np.float16))
    with pytest.raises(
        ValueError, match=r"val_objects.parquet \(2 rows\) does not index val_vectors.npy \(5 vectors\)"
    ):
        open_feature_cache(directory)


def test_meta_shape_must_be_the_maps_shape(tmp_path: Path) -> None:
    directory = _small_cache(tmp_path / "features")
    meta = json.loads((directory / "meta.json").read_text())
    (directory / "meta.json").write_text(json.dumps({**meta, "height": 14}))
    with pytest.raises(ValueError, match=r"meta.json declares \(channels, height, width\) \(3, 14, 2\) but val_maps"):
        open_feature_cache(directory)
    (directory / "meta.json").write_text(json.dumps(meta))
    np.save(directory / "train_vectors.npy", np.zeros((4, 5), np.float16))
    with pytest.raises(ValueError, match=r"meta.json channels=3 but train_vectors.npy has 5 columns"):
        open_feature_cache(directory)


# --------------------------------------------------------------------------------------------
# A full disk (issue 13, item 3): the writer allocates its files up front, so the memory-mapped
# arrays cannot fault (SIGBUS) later; ENOSPC is one OSError naming the output; no temp is left.


def _two_chunks(out: Path) -> list[Path]:
    chunk_dirs, _ = prepare_chunks(out, {"run": 1}, 2)
    write_chunk(chunk_dirs[0], *_chunk(2, 1, [1, 2]), {"objects_outside_crop": 0})
    write_chunk(chunk_dirs[1], *_chunk(3, 2, [3]), {"objects_outside_crop": 0})
    return chunk_dirs


def _temps(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob(".*") if p.name.endswith((".tmp", ".old")))


def _no_space(*args: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_assembling_is_one_error_naming_the_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "features"
    chunk_dirs = _two_chunks(out)
    monkeypatch.setattr(os, "posix_fallocate", _no_space)
    with pytest.raises(OSError) as raised:
        assemble_chunks(chunk_dirs, out)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(out / "train_vectors.npy")
    assert _temps(out) == [] and not (out / "train_vectors.npy").exists()
    assert all(chunk.is_dir() for chunk in chunk_dirs)  # kept: the run resumes once there is space
    monkeypatch.delenv("LAVISE_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_stage(lambda: assemble_chunks(chunk_dirs, out))
    assert exit_info.value.code == 1
    target = out / "train_vectors.npy"
    line = f"error: no space left on the device writing {target}; free some space and run the stage again"
    assert capsys.readouterr().err.splitlines() == [line]


def test_arrays_are_allocated_before_they_are_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every block of an array file exists before the first write into its memory map (a sparse
    file would fault with SIGBUS on a full disk); where the filesystem cannot fallocate, zeros
    are written instead, with the same result."""
    allocated: dict[str, int] = {}
    real_fallocate = os.posix_fallocate

    def record(fd: int, offset: int, length: int) -> None:
        allocated[Path(os.readlink(f"/proc/self/fd/{fd}")).name.split(".")[1]] = offset + length
        real_fallocate(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", record)
    out = tmp_path / "features"
    assemble_chunks(_two_chunks(out), out)
    assert sorted(allocated) == ["train_vectors", "val_maps"]  # val_vectors holds no rows
    for name in allocated:
        assert allocated[name] == (out / f"{name}.npy").stat().st_size

    def unsupported(*args: object) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    fallback = tmp_path / "fallback"
    assemble_chunks(_two_chunks(fallback), fallback)
    for name in ("train_vectors", "val_vectors", "val_maps"):
        assert (fallback / f"{name}.npy").read_bytes() == (out / f"{name}.npy").read_bytes()
    sparse = tmp_path / "sparse.bin"
    sparse.write_bytes(b"header")
    os.truncate(sparse, 4 << 20)
    allocate_file(sparse, 6, 4 << 20)
    assert sparse.stat().st_blocks * 512 >= 4 << 20 and sparse.read_bytes() == b"header" + bytes((4 << 20) - 6)


def test_a_full_disk_writing_a_table_or_a_chunk_is_one_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "features"
    chunk_dirs = _two_chunks(out)

    def arrow_full(self: object, table: pa.Table, *args: object) -> None:
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", arrow_full)
    with pytest.raises(OSError) as raised:
        assemble_chunks(chunk_dirs, out)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(out / "images.parquet")
    assert _temps(out) == []
    monkeypatch.undo()
    monkeypatch.setattr(np, "save", _no_space)
    with pytest.raises(OSError) as raised:
        write_chunk(out / ".chunks" / "chunk_000002", *_chunk(1, 1, [4]), {"objects_outside_crop": 0})
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(out / ".chunks" / "chunk_000002")
    assert _temps(out) == [] and not (out / ".chunks" / "chunk_000002").exists()


def test_free_space_is_checked_against_what_is_still_to_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "features"
    out.mkdir()
    (out / "val_maps.npy").write_bytes(b"\0" * 3_000_000)  # a previous cache: held until replaced
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=10**12, used=0, free=1_500_000))
    with pytest.raises(InsufficientSpaceError) as raised:
        ensure_free_space(out, chunks_bytes=2_000_000, cache_bytes=2_500_000)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(out)
    assert str(raised.value) == (
        f"features needs 7.5 MB in {out}, 1.5 MB free (2.0 MB for the chunks still to compute, 2.5 MB for the "
        "cache, 3.0 MB until the previous cache there is replaced); free some space or write the cache to a "
        "larger disk"
    )
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=10**12, used=0, free=7_500_000))
    ensure_free_space(out, chunks_bytes=2_000_000, cache_bytes=2_500_000)


def test_stale_temps_of_a_killed_writer_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "features"
    chunk_dirs = _two_chunks(out)
    (out / ".val_maps.npy.k3j4h5.tmp").write_bytes(b"\0" * 8_000_000)  # a killed assembly
    (out / ".chunks" / ".chunk_000002.x8y9.tmp").mkdir()  # a killed chunk write
    (out / ".chunks" / ".chunk_000002.x8y9.tmp" / "val_maps.npy").write_bytes(b"\0" * 100)
    (out / ".chunks" / ".chunk_000001.old").mkdir()  # a killed chunk replacement
    (out / "notes.txt").write_text("not the writer's: kept")
    assert len(_temps(out)) == 3
    remove_stale_cache_temps(out)
    assert _temps(out) == [] and (out / "notes.txt").exists()
    assert all(chunk.is_dir() for chunk in chunk_dirs)
