"""The feature cache: one forward pass of the frozen CNN per image, stored for all later stages.

Training the explainer needs pool(F * M) per annotation and evaluation needs the full maps of
the validation images; computing them once here means no later stage decodes a JPEG or runs the
CNN again (FACT2023 re-ran the CNN per annotation per epoch: ~15 A100-hours per explainer).

Work split: DataLoader workers decode, crop and turn each image's masks into soft feature-grid
weights; the main process only normalises, runs the model (channels_last, inference_mode,
autocast on CUDA) and pools with one einsum. With ``decode="device"`` workers only read the
bytes of the JPEGs nvJPEG can take (``device_decodable_size``) and the main process decodes them
batched on the model's device, where 16 CPU cores cannot keep up with a GPU's ResNet-18; files
outside that set are still decoded by the workers. Results are written in chunks of ``chunk_images``
images under ``out_dir/.chunks``; a killed run resumes from the first missing chunk, and the
final arrays are assembled by streaming the chunks, so peak memory is one chunk and a resumed
cache is byte-identical to an uninterrupted one (batches never straddle chunks, so every batch is
recomputed exactly as before).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lavise.data.images import (
    UndecodableImageError,
    decode_bytes,
    decode_jpegs_on_device,
    device_decodable_size,
)
from lavise.data.masks import image_object_masks
from lavise.data.transforms import mask_to_grid, masks_to_crop, normalize, transform_geometry
from lavise.devices import resolve_device
from lavise.io import atomic_dir, atomic_path, file_digest, read_json, write_json
from lavise.models.backbones import build_feature_extractor, layer_output_shape

log = logging.getLogger(__name__)

CHUNKS_DIR = ".chunks"
FORMAT_VERSION = 2
DECODE_MODES = ("workers", "device")
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


@dataclass(frozen=True)
class FeatureCache:
    """A finished cache: arrays memory-mapped read-only, index tables in memory."""

    directory: Path
    meta: dict[str, Any]
    images: pd.DataFrame
    train_vectors: np.ndarray
    train_objects: pd.DataFrame
    val_vectors: np.ndarray
    val_objects: pd.DataFrame
    val_maps: np.ndarray
    val_images: pd.DataFrame


def open_feature_cache(directory: str | Path) -> FeatureCache:
    """Open ``data/features``; the arrays stay on disk (``mmap_mode='r'``)."""
    directory = Path(directory)
    if not (directory / "meta.json").is_file():
        raise FileNotFoundError(f"{directory}/meta.json not found: run the features stage first")
    tables = {name: pq.read_table(directory / f"{name}.parquet").to_pandas() for name in TABLE_SCHEMAS}
    arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r") for name in ARRAY_NAMES}
    return FeatureCache(directory=directory, meta=read_json(directory / "meta.json"), **tables, **arrays)


class ImageObjectsDataset(Dataset):
    """Per image: the uint8 crop (or, to decode on the device, the JPEG bytes) and the
    feature-grid weights of its objects (worker-side work).

    Object geometry (RLE strings, box lists) stays in an Arrow table, compact and shared
    copy-on-write with forked workers without Python refcount churn, and is sliced per image.
    """

    def __init__(
        self,
        images: pa.Table,
        objects: pa.Table,
        object_offsets: np.ndarray,
        raw_dir: Path,
        resize: int,
        crop: int,
        grid: tuple[int, int],
        decode: str = "workers",
    ) -> None:
        if decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
        self.decode = decode
        self.image_ids = images.column("image_id").to_numpy()
        self.paths = images.column("path").to_pylist()
        self.heights = images.column("height").to_numpy()
        self.widths = images.column("width").to_numpy()
        self.statuses = images.column("status").to_pylist()
        self.objects = objects.select(["kind", "rle", "boxes"])
        self.object_offsets = object_offsets
        self.raw_dir = raw_dir
        self.resize = resize
        self.crop = crop
        self.grid = grid

    def __len__(self) -> int:
        return len(self.image_ids)

    def _failed(self, position: int, status: str, error: str) -> dict[str, Any]:
        return {"position": position, "status": status, "error": error, "image": None, "encoded": None, "grids": None}

    def __getitem__(self, position: int) -> dict[str, Any]:
        if self.statuses[position] != "ok":
            return self._failed(position, self.statuses[position], "status in annotations images.parquet")
        path = self.raw_dir / self.paths[position]
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return self._failed(position, "missing", f"{path}: file not found")
        height, width = int(self.heights[position]), int(self.widths[position])
        image, encoded = None, None
        size = device_decodable_size(data) if self.decode == "device" else None
        if size is None:
            try:
                image = decode_bytes(data, str(path))
            except UndecodableImageError as error:
                return self._failed(position, "undecodable", str(error))
            size = (int(image.shape[1]), int(image.shape[2]))
        else:
            encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if size != (height, width):
            return self._failed(
                position,
                "undecodable",
                f"{path}: decoded {size[0]}x{size[1]} but annotated {height}x{width}; masks would not align",
            )
        start, end = int(self.object_offsets[position]), int(self.object_offsets[position + 1])
        object_rows = self.objects.slice(start, end - start).to_pandas()
        masks = torch.from_numpy(image_object_masks(object_rows, height, width))
        grids = mask_to_grid(masks_to_crop(masks, self.resize, self.crop), self.grid)
        return {
            "position": position,
            "status": "ok",
            "error": None,
            "label": str(path),
            "image": None if image is None else transform_geometry(image, self.resize, self.crop),
            "encoded": encoded,
            "grids": grids,
        }


def collate_images(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the decoded crops; pad per-image object grids to ``[B, K, h', w']`` for one einsum.

    ``images`` holds the crops decoded by the workers, ``crop_rows`` their rows among the ok
    images; ``encoded``/``encoded_rows``/``labels`` the JPEG bytes left to decode on the device.
    """
    ok = [item for item in items if item["status"] == "ok"]
    max_objects = max((item["grids"].shape[0] for item in ok), default=0)
    crops = [item["image"] for item in ok if item["image"] is not None]
    if ok:
        grid_shape = ok[0]["grids"].shape[1:]
        grids = torch.zeros((len(ok), max_objects, *grid_shape), dtype=torch.float32)
        for index, item in enumerate(ok):
            grids[index, : item["grids"].shape[0]] = item["grids"]
    else:
        grids = torch.zeros((0, 0, 1, 1), dtype=torch.float32)
    return {
        "positions": [item["position"] for item in items],
        "statuses": [item["status"] for item in items],
        "errors": [item["error"] for item in items],
        "ok_positions": [item["position"] for item in ok],
        "images": torch.stack(crops) if crops else torch.zeros((0, 3, 1, 1), dtype=torch.uint8),
        "crop_rows": [row for row, item in enumerate(ok) if item["image"] is not None],
        "encoded": [item["encoded"] for item in ok if item["encoded"] is not None],
        "encoded_rows": [row for row, item in enumerate(ok) if item["encoded"] is not None],
        "labels": [item["label"] for item in ok if item["encoded"] is not None],
        "grids": grids,
    }


def _batch_images_on_device(
    batch: dict[str, Any], device: torch.device, resize: int, crop: int
) -> tuple[dict[str, Any], torch.Tensor]:
    """The batch's uint8 crops ``[n_ok, 3, crop, crop]`` on ``device``, decoding any JPEG bytes there.

    Images that fail to decode become "undecodable" in the returned batch, and their rows leave
    ``ok_positions`` and ``grids``, exactly as if a worker had failed them.
    """
    if not batch["encoded"]:
        return batch, batch["images"].to(device, non_blocking=True)
    images = torch.empty((len(batch["ok_positions"]), 3, crop, crop), dtype=torch.uint8, device=device)
    if batch["crop_rows"]:
        images[batch["crop_rows"]] = batch["images"].to(device, non_blocking=True)
    decoded = decode_jpegs_on_device(batch["encoded"], batch["labels"], device)
    keep = torch.ones(len(batch["ok_positions"]), dtype=torch.bool)
    statuses, errors = list(batch["statuses"]), list(batch["errors"])
    for row, result in zip(batch["encoded_rows"], decoded):
        if isinstance(result, UndecodableImageError):
            keep[row] = False
            index = batch["positions"].index(batch["ok_positions"][row])
            statuses[index], errors[index] = "undecodable", str(result)
        else:
            images[row] = transform_geometry(result, resize, crop)
    if keep.all():
        return batch, images
    kept = keep.nonzero().flatten().tolist()
    batch = {
        **batch,
        "statuses": statuses,
        "errors": errors,
        "ok_positions": [batch["ok_positions"][row] for row in kept],
        "grids": batch["grids"][keep],
    }
    return batch, images[keep.to(device)]


def _write_chunk(
    chunk_dir: Path, arrays: dict[str, np.ndarray], tables: dict[str, pa.Table], counts: dict[str, int]
) -> None:
    """Write one chunk atomically: it exists complete or not at all (the resume unit)."""
    with atomic_dir(chunk_dir) as tmp:
        (tmp / "counts.json").write_text(json.dumps(counts, sort_keys=True))
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        for name, table in tables.items():
            pq.write_table(table, tmp / f"{name}.parquet")


@dataclass
class _ChunkBuffer:
    """Results of one chunk in image order, bounded by ``chunk_images``."""

    image_ids: list[int]
    splits: list[str]
    statuses: list[str | None]
    errors: list[str | None]
    vectors: list[np.ndarray | None]
    maps: list[np.ndarray | None]
    coverages: list[np.ndarray | None]
    objects_outside_crop: int = 0


def _chunk_tables(
    buffer: _ChunkBuffer,
    objects: pa.Table,
    object_offsets: np.ndarray,
    start: int,
    channels: int,
    map_shape: tuple[int, int, int],
) -> tuple[dict[str, np.ndarray], dict[str, pa.Table]]:
    """Turn a chunk's per-image results into its arrays and index tables (rows local to the chunk)."""
    parts: dict[str, list[np.ndarray]] = {"train_vectors": [], "val_vectors": [], "val_maps": []}
    object_rows: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    coverages: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    val_image_ids: list[int] = []
    for index, (image_id, split, status) in enumerate(zip(buffer.image_ids, buffer.splits, buffer.statuses)):
        if status != "ok":
            continue
        position = start + index
        first, last = int(object_offsets[position]), int(object_offsets[position + 1])
        parts[f"{split}_vectors"].append(buffer.vectors[index])
        object_rows[split].append(np.arange(first, last))
        coverages[split].append(buffer.coverages[index])
        if split == "val":
            parts["val_maps"].append(buffer.maps[index][None])
            val_image_ids.append(image_id)
    arrays = {
        "train_vectors": _concat(parts["train_vectors"], (0, channels)),
        "val_vectors": _concat(parts["val_vectors"], (0, channels)),
        "val_maps": _concat(parts["val_maps"], (0, *map_shape)),
    }
    tables = {
        "images": pa.table(
            {"image_id": buffer.image_ids, "split": buffer.splits, "status": buffer.statuses, "error": buffer.errors},
            schema=IMAGES_SCHEMA,
        ),
        "val_images": pa.table(
            {"row": np.arange(len(val_image_ids), dtype=np.int64), "image_id": val_image_ids},
            schema=VAL_IMAGES_SCHEMA,
        ),
    }
    for split in ("train", "val"):
        rows = np.concatenate(object_rows[split]) if object_rows[split] else np.zeros(0, np.int64)
        coverage = np.concatenate(coverages[split]) if coverages[split] else np.zeros(0, np.float32)
        picked = objects.take(pa.array(rows, type=pa.int64()))
        tables[f"{split}_objects"] = pa.table(
            {
                "row": np.arange(len(rows), dtype=np.int64),
                "object_id": picked.column("object_id"),
                "image_id": picked.column("image_id"),
                "category": picked.column("category"),
                "coverage": coverage.astype(np.float32),
            },
            schema=OBJECTS_SCHEMA,
        )
    return arrays, tables


def _concat(parts: list[np.ndarray], empty_shape: tuple[int, ...]) -> np.ndarray:
    return np.concatenate(parts).astype(np.float16) if parts else np.zeros(empty_shape, np.float16)


def _assemble(chunk_dirs: list[Path], out_dir: Path) -> dict[str, int]:
    """Stream the chunks into the final files; memory stays at one chunk's array at a time."""
    totals: dict[str, int] = {"objects_outside_crop": 0}
    for chunk in chunk_dirs:
        totals["objects_outside_crop"] += json.loads((chunk / "counts.json").read_text())["objects_outside_crop"]
    for name in ARRAY_NAMES:
        headers = [np.load(chunk / f"{name}.npy", mmap_mode="r") for chunk in chunk_dirs]
        total = sum(part.shape[0] for part in headers)
        totals[name] = total
        with atomic_path(out_dir / f"{name}.npy") as tmp:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(total, *headers[0].shape[1:]))
            offset = 0
            for part in headers:
                array[offset : offset + part.shape[0]] = part
                offset += part.shape[0]
            array.flush()
            del array
        del headers
    for name, schema in TABLE_SCHEMAS.items():
        row_source = ROW_TABLES.get(name)
        with atomic_path(out_dir / f"{name}.parquet") as tmp:
            with pq.ParquetWriter(tmp, schema) as writer:
                offset = 0
                for chunk in chunk_dirs:
                    table = pq.read_table(chunk / f"{name}.parquet", schema=schema)
                    if row_source is not None:
                        rows = pa.array(table.column("row").to_numpy() + offset, type=pa.int64())
                        table = table.set_column(0, "row", rows)
                        offset += table.num_rows
                    writer.write_table(table)
    return totals


def _prepare_tables(annotations_dir: Path) -> tuple[pa.Table, pa.Table, np.ndarray, int]:
    """Images sorted by id, objects sorted by (image, object) with per-image offsets.

    Objects whose image is not in images.parquet cannot be placed: they are counted and logged.
    """
    images = pq.read_table(
        annotations_dir / "images.parquet", columns=["image_id", "path", "width", "height", "split", "status"]
    )
    images = images.sort_by([("image_id", "ascending")])
    image_ids = images.column("image_id").to_numpy()
    if len(np.unique(image_ids)) != len(image_ids):
        raise ValueError(f"{annotations_dir}/images.parquet has duplicate image_id values")
    bad_splits = set(images.column("split").to_pylist()) - {"train", "val"}
    if bad_splits:
        raise ValueError(f"{annotations_dir}/images.parquet: unknown split values {sorted(bad_splits)}")
    objects = pq.read_table(
        annotations_dir / "objects.parquet",
        columns=["object_id", "image_id", "category", "kind", "rle", "boxes"],
    )
    objects = objects.sort_by([("image_id", "ascending"), ("object_id", "ascending")])
    object_images = objects.column("image_id").to_numpy()
    known = np.isin(object_images, image_ids)
    orphans = int((~known).sum())
    if orphans:
        log.warning("%d objects reference image ids absent from images.parquet; skipped", orphans)
        objects = objects.filter(pa.array(known))
        object_images = object_images[known]
    offsets = np.searchsorted(object_images, image_ids, side="left")
    object_offsets = np.append(offsets, len(object_images)).astype(np.int64)
    return images, objects, object_offsets, orphans


def _fingerprint(
    annotations_dir: Path,
    backbone: dict[str, Any],
    transform: dict[str, Any],
    batch_size: int,
    chunk_images: int,
    device: torch.device,
    decode: str,
) -> dict[str, Any]:
    """Everything that changes a chunk's bytes: a mismatch means stale chunks are discarded."""
    weights = str(backbone["weights"])
    weights_file = Path(weights)
    return {
        "format": FORMAT_VERSION,
        "backbone": {key: backbone.get(key) for key in ("name", "weights", "layer", "num_classes")},
        "weights_sha256": file_digest(weights_file, "sha256") if weights_file.is_file() else None,
        "transform": {"resize": transform["resize"], "crop": transform["crop"]},
        "batch_size": batch_size,
        "chunk_images": chunk_images,
        "device": device.type,
        "decode": decode,
        "torch": torch.__version__,
        "annotations_sha256": {
            name: file_digest(annotations_dir / name, "sha256") for name in ("images.parquet", "objects.parquet")
        },
    }


def _chunk_batches(pending: list[int], n_images: int, chunk_images: int, batch_size: int) -> list[list[int]]:
    """Batches of positions that never straddle a chunk, so a resumed run recomputes identically."""
    batches = []
    for chunk in pending:
        positions = list(range(chunk * chunk_images, min((chunk + 1) * chunk_images, n_images)))
        batches.extend(positions[i : i + batch_size] for i in range(0, len(positions), batch_size))
    return batches


def _forward_batches(
    loader: DataLoader,
    extractor: torch.nn.Module,
    device: torch.device,
    grid_cells: int,
    resize: int,
    crop: int,
) -> Iterator[tuple[dict[str, Any], np.ndarray | None, np.ndarray | None]]:
    """Yield (batch, pooled object vectors [B, K, d], maps [B, d, h', w']) as float16 numpy."""
    use_autocast = device.type == "cuda"
    autocast_dtype = torch.float16 if use_autocast and not torch.cuda.is_bf16_supported() else torch.bfloat16
    for batch in loader:
        if not batch["ok_positions"]:
            yield batch, None, None
            continue
        batch, images = _batch_images_on_device(batch, device, resize, crop)
        if not batch["ok_positions"]:
            yield batch, None, None
            continue
        images = normalize(images.float().div_(255.0)).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(device.type, dtype=autocast_dtype, enabled=use_autocast):
            maps = extractor(images)
        maps = maps.float()
        grids = batch["grids"].to(device, non_blocking=True)
        pooled = torch.einsum("bkhw,bdhw->bkd", grids, maps) / grid_cells
        yield batch, pooled.half().cpu().numpy(), maps.half().contiguous().cpu().numpy()


def build_feature_cache(
    annotations_dir: Path,
    raw_dir: Path,
    out_dir: Path,
    *,
    backbone: dict[str, Any],
    transform: dict[str, Any],
    batch_size: int,
    num_workers: int,
    device: str,
    chunk_images: int,
    decode: str = "workers",
) -> dict[str, Any]:
    """Run the backbone once per image and write the data/features layout of ARCHITECTURE.md.

    ``backbone``: {name, weights, layer, num_classes} with ``weights`` already resolved to a
    torchvision name, ``none`` or a checkpoint path. ``decode``: "workers" (CPU, in the
    DataLoader workers) or "device" (JPEGs batched on ``device``: nvJPEG on CUDA). Returns
    meta.json's content plus timing.
    """
    annotations_dir, raw_dir, out_dir = Path(annotations_dir), Path(raw_dir), Path(out_dir)
    started = time.perf_counter()
    torch_device = resolve_device(device, "features.device")
    resize, crop = int(transform["resize"]), int(transform["crop"])
    extractor = build_feature_extractor(
        backbone["name"], str(backbone["weights"]), backbone["layer"], num_classes=backbone.get("num_classes")
    )
    extractor = extractor.to(torch_device, memory_format=torch.channels_last)
    channels, height, width = layer_output_shape(extractor, crop)
    images, objects, object_offsets, orphan_objects = _prepare_tables(annotations_dir)
    n_images = images.num_rows
    if n_images == 0:
        raise ValueError(f"{annotations_dir}/images.parquet lists no images")
    n_chunks = max(1, -(-n_images // chunk_images))

    chunks_root = out_dir / CHUNKS_DIR
    # Built before any chunk is touched: it also rejects an unknown ``decode``.
    dataset = ImageObjectsDataset(
        images, objects, object_offsets, raw_dir, resize, crop, (height, width), decode=decode
    )
    fingerprint = _fingerprint(annotations_dir, backbone, transform, batch_size, chunk_images, torch_device, decode)
    fingerprint_path = chunks_root / "fingerprint.json"
    if chunks_root.exists() and (not fingerprint_path.is_file() or read_json(fingerprint_path) != fingerprint):
        log.warning("discarding chunks in %s: written with other settings or inputs", chunks_root)
        shutil.rmtree(chunks_root)
    write_json(fingerprint_path, fingerprint)
    chunk_dirs = [chunks_root / f"chunk_{index:06d}" for index in range(n_chunks)]
    pending = [index for index, chunk_dir in enumerate(chunk_dirs) if not chunk_dir.is_dir()]
    log.info(
        "features: %s %s layer %s -> %dx%dx%d on %s; %d images in %d chunks, %d to compute",
        backbone["name"],
        backbone["weights"],
        backbone["layer"],
        channels,
        height,
        width,
        torch_device,
        n_images,
        n_chunks,
        len(pending),
    )

    batches = _chunk_batches(pending, n_images, chunk_images, batch_size)
    use_fork = num_workers > 0 and "fork" in multiprocessing.get_all_start_methods()
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=collate_images,
        pin_memory=torch_device.type == "cuda",
        multiprocessing_context="fork" if use_fork else None,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    splits = images.column("split").to_pylist()
    image_ids = images.column("image_id").to_pylist()
    buffers: dict[int, _ChunkBuffer] = {}
    computed = 0
    sent_to_device_decoder = 0
    with tqdm(total=sum(len(batch) for batch in batches), desc="features", unit="img") as progress:
        for batch, pooled, maps in _forward_batches(loader, extractor, torch_device, height * width, resize, crop):
            chunk = batch["positions"][0] // chunk_images
            start = chunk * chunk_images
            size = min(chunk_images, n_images - start)
            if chunk not in buffers:
                buffers[chunk] = _ChunkBuffer(
                    image_ids[start : start + size],
                    splits[start : start + size],
                    [None] * size,
                    [None] * size,
                    [None] * size,
                    [None] * size,
                    [None] * size,
                )
            buffer = buffers[chunk]
            for position, status, error in zip(batch["positions"], batch["statuses"], batch["errors"]):
                buffer.statuses[position - start] = status
                buffer.errors[position - start] = error
            coverage = batch["grids"].sum(dim=(2, 3))
            for row, position in enumerate(batch["ok_positions"]):
                n_objects = int(object_offsets[position + 1] - object_offsets[position])
                buffer.vectors[position - start] = pooled[row, :n_objects]
                buffer.coverages[position - start] = coverage[row, :n_objects].numpy() / (height * width)
                buffer.objects_outside_crop += int((coverage[row, :n_objects] == 0).sum())
                buffer.maps[position - start] = maps[row] if splits[position] == "val" else None
            sent_to_device_decoder += len(batch["encoded"])
            progress.update(len(batch["positions"]))
            computed += len(batch["positions"])
            if all(status is not None for status in buffer.statuses):
                arrays, tables = _chunk_tables(
                    buffer, objects, object_offsets, start, channels, (channels, height, width)
                )
                _write_chunk(chunk_dirs[chunk], arrays, tables, {"objects_outside_crop": buffer.objects_outside_crop})
                del buffers[chunk]
    if buffers:
        raise RuntimeError(f"chunks {sorted(buffers)} did not receive all their images")

    totals = _assemble(chunk_dirs, out_dir)
    statuses = pq.read_table(out_dir / "images.parquet", columns=["status"]).column("status").to_pylist()
    status_counts = {status: statuses.count(status) for status in ("ok", "missing", "undecodable")}
    placed_objects = totals["train_vectors"] + totals["val_vectors"]
    meta = {
        "backbone": backbone["name"],
        "weights": str(backbone["weights"]),
        "layer": backbone["layer"],
        "num_classes": backbone.get("num_classes"),
        "channels": channels,
        "height": height,
        "width": width,
        "transform": {"resize": resize, "crop": crop},
        "decode": decode,
        "pooling": "mean over h'xw' of maps * mask_to_grid(masks_to_crop(mask))",
        "dtype": "float16",
        "counts": {
            "images": n_images,
            **{f"images_{status}": count for status, count in status_counts.items()},
            "train_objects": totals["train_vectors"],
            "val_objects": totals["val_vectors"],
            "val_images": totals["val_maps"],
            "objects_of_unusable_images": objects.num_rows - placed_objects,
            "objects_without_image": orphan_objects,
            "objects_outside_crop": totals["objects_outside_crop"],
        },
    }
    write_json(out_dir / "meta.json", meta)
    shutil.rmtree(chunks_root)
    seconds = time.perf_counter() - started
    if totals["objects_outside_crop"]:
        log.warning(
            "features: %d objects lie entirely outside the centre crop; their vectors are zero",
            totals["objects_outside_crop"],
        )
    if status_counts["missing"] or status_counts["undecodable"]:
        log.warning(
            "features: %d missing and %d undecodable images recorded in images.parquet and skipped",
            status_counts["missing"],
            status_counts["undecodable"],
        )
    if decode == "device":
        log.info(
            "features: %d of %d images decoded on %s, the rest by the workers",
            sent_to_device_decoder,
            computed,
            torch_device,
        )
    log.info("features: %d images computed in %.1f s (%.1f images/s)", computed, seconds, computed / max(seconds, 1e-9))
    return {**meta, "seconds": seconds, "images_computed": computed}
