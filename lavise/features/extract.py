"""The extraction pass: one forward pass of the frozen CNN per image, written as a feature cache.

Training the explainer needs pool(F * M) per annotation and evaluation needs the full maps of
the validation images; computing them once here means no later stage decodes a JPEG or runs the
CNN again (FACT2023 re-ran the CNN per annotation per epoch: ~15 A100-hours per explainer).

Work split: DataLoader workers decode, crop and turn each image's masks into soft feature-grid
weights; the main process only normalises, runs the model (channels_last, inference_mode,
autocast at ``settings.precision``) and pools with one einsum. With ``decode="device"`` (the modes:
``lavise.options.DECODE_MODES``) workers only read the bytes of the JPEGs nvJPEG can take
(``device_decodable_size``) and the main process decodes them batched on the model's device,
where 16 CPU cores cannot keep up with a GPU's ResNet-18; files outside that set are still
decoded by the workers. Results go through the cache writer (:mod:`lavise.features.cache`) in
chunks of ``chunk_images`` images; a killed run resumes from the first missing chunk, and
batches never straddle chunks, so every batch of a resumed run is computed exactly as before.
A chunk is reused only if its images' files still have the digests the workers computed from
the bytes they read (a file replaced after a kill, even by one of the same size, is recomputed).

Several processes (torchrun, :mod:`lavise.distributed`): rank 0 prepares and checks the chunks,
each rank computes the pending chunks whose index it owns (``rank_share``), and after a barrier
rank 0 assembles the cache, so the bytes are those of one process and a killed run resumes the
same way.

Before the pass: the geometry must fit in memory (a ``resize`` of 100000 would resize each image
to gigabytes; :func:`check_geometry_memory`) and the cache on the disk (the writer's
:func:`~lavise.features.cache.ensure_free_space`), so both end with one message, not an
allocator error or a full disk hours later.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lavise.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_STATUSES,
    OK,
    UNDECODABLE,
    UnreadableImage,
    decode_jpegs_on_device,
    device_decodable_size,
    header_refusal,
    read_image,
    read_image_bytes,
)
from lavise.data.masks import image_object_masks
from lavise.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    mask_to_grid,
    masks_to_crop,
    resized_size,
    to_model_input,
    transform_geometry,
)
from lavise.devices import AUTOCAST_DTYPES
from lavise.distributed import World, barrier, init_process_group, rank_device, rank_share
from lavise.features.cache import (
    DTYPE,
    FORMAT_VERSION,
    IMAGES_SCHEMA,
    META_FILE,
    OBJECTS_SCHEMA,
    VAL_IMAGES_SCHEMA,
    assemble_chunks,
    chunk_digests,
    chunk_paths,
    ensure_free_space,
    estimated_bytes,
    finish_cache,
    format_size,
    prepare_chunks,
    write_chunk,
)
from lavise.features.pooling import masked_pool
from lavise.io import file_digest
from lavise.models.extractor import build_feature_extractor, layer_output_shape
from lavise.models.memory import check_fits
from lavise.options import DECODE_MODES
from lavise.outputs import check_one_set

log = logging.getLogger(__name__)

POOLING = "mean over h'xw' of maps * mask_to_grid(masks_to_crop(mask))"


def image_digest(data: bytes | UnreadableImage) -> str:
    """What a chunk read of one image: the digest of its bytes, or the status of a file that gave none."""
    if isinstance(data, UnreadableImage):
        return f"unreadable:{data.status}"
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class ImageObjectsDataset(Dataset):
    """Per image: the uint8 crop (or, to decode on the device, the JPEG bytes) and the
    feature-grid weights of its objects (worker-side work).

    Object geometry (RLE strings, box lists) stays in an Arrow table, compact and shared
    copy-on-write with forked workers without Python refcount churn, and is sliced per image.
    A file that gives no image is an item with the status and message of ``read_image``
    (``max_pixels``: its pixel limit; a path resolving outside ``raw_dir`` is ``outside_root``).
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
        max_pixels: int = DEFAULT_MAX_PIXELS,
        interpolation: str = "bilinear",
    ) -> None:
        if decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
        self.decode = decode
        self.max_pixels = max_pixels
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
        self.interpolation = interpolation

    def __len__(self) -> int:
        return len(self.image_ids)

    def _failed(self, position: int, status: str, error: str, digest: str) -> dict[str, Any]:
        return {
            "position": position,
            "status": status,
            "error": error,
            "digest": digest,
            "image": None,
            "encoded": None,
            "grids": None,
        }

    def read_bytes(self, position: int) -> bytes | UnreadableImage:
        """The bytes of image ``position``'s file, read as ``__getitem__`` reads them (the resume
        check hashes the same bytes), or why there are none."""
        if self.statuses[position] != OK:
            return UnreadableImage(self.statuses[position], "status in annotations images.parquet")
        return read_image_bytes(self.raw_dir / self.paths[position], root=self.raw_dir)

    def digest(self, position: int) -> str:
        """:func:`image_digest` of the file as it is now."""
        return image_digest(self.read_bytes(position))

    def __getitem__(self, position: int) -> dict[str, Any]:
        path = self.raw_dir / self.paths[position]
        data = self.read_bytes(position)
        digest = image_digest(data)
        if isinstance(data, UnreadableImage):
            return self._failed(position, data.status, data.error, digest)
        height, width = int(self.heights[position]), int(self.widths[position])
        image, encoded = None, None
        size = device_decodable_size(data) if self.decode == "device" else None
        if size is not None and (refused := header_refusal(data, str(path), self.max_pixels)):
            return self._failed(position, refused.status, refused.error, digest)
        if size is None:
            image = read_image(path, data, max_pixels=self.max_pixels)
            if isinstance(image, UnreadableImage):
                return self._failed(position, image.status, image.error, digest)
            size = (int(image.shape[1]), int(image.shape[2]))
        else:
            encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if size != (height, width):
            return self._failed(
                position,
                UNDECODABLE,
                f"{path}: decoded {size[0]}x{size[1]} but annotated {height}x{width}; masks would not align",
                digest,
            )
        start, end = int(self.object_offsets[position]), int(self.object_offsets[position + 1])
        object_rows = self.objects.slice(start, end - start).to_pandas()
        masks = torch.from_numpy(image_object_masks(object_rows, height, width))
        grids = mask_to_grid(masks_to_crop(masks, self.resize, self.crop, self.interpolation), self.grid)
        return {
            "position": position,
            "status": OK,
            "error": None,
            "digest": digest,
            "label": str(path),
            "image": None if image is None else transform_geometry(image, self.resize, self.crop, self.interpolation),
            "encoded": encoded,
            "grids": grids,
        }


def collate_images(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the decoded crops; pad per-image object grids to ``[B, K, h', w']`` for one einsum.

    ``images`` holds the crops decoded by the workers, ``crop_rows`` their rows among the ok
    images; ``encoded``/``encoded_rows``/``labels`` the JPEG bytes left to decode on the device.
    """
    ok = [item for item in items if item["status"] == OK]
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
        "digests": [item["digest"] for item in items],
        "ok_positions": [item["position"] for item in ok],
        "images": torch.stack(crops) if crops else torch.zeros((0, 3, 1, 1), dtype=torch.uint8),
        "crop_rows": [row for row, item in enumerate(ok) if item["image"] is not None],
        "encoded": [item["encoded"] for item in ok if item["encoded"] is not None],
        "encoded_rows": [row for row, item in enumerate(ok) if item["encoded"] is not None],
        "labels": [item["label"] for item in ok if item["encoded"] is not None],
        "grids": grids,
    }


def batch_images_on_device(
    batch: dict[str, Any],
    device: torch.device,
    resize: int,
    crop: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    interpolation: str = "bilinear",
) -> tuple[dict[str, Any], torch.Tensor]:
    """The batch's uint8 crops ``[n_ok, 3, crop, crop]`` on ``device``, decoding any JPEG bytes there.

    Images that fail to decode become ``undecodable`` in the returned batch, with the message
    ``read_image`` gives the file, and their rows leave ``ok_positions`` and ``grids``, exactly as
    if a worker had failed them.
    """
    if not batch["encoded"]:
        return batch, batch["images"].to(device, non_blocking=True)
    images = torch.empty((len(batch["ok_positions"]), 3, crop, crop), dtype=torch.uint8, device=device)
    if batch["crop_rows"]:
        images[batch["crop_rows"]] = batch["images"].to(device, non_blocking=True)
    decoded = decode_jpegs_on_device(batch["encoded"], batch["labels"], device, max_pixels)
    keep = torch.ones(len(batch["ok_positions"]), dtype=torch.bool)
    statuses, errors = list(batch["statuses"]), list(batch["errors"])
    for row, result in zip(batch["encoded_rows"], decoded):
        if isinstance(result, UnreadableImage):
            keep[row] = False
            index = batch["positions"].index(batch["ok_positions"][row])
            statuses[index], errors[index] = result.status, result.error
        else:
            images[row] = transform_geometry(result, resize, crop, interpolation)
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


def forward_batches(
    loader: DataLoader,
    extractor: nn.Module,
    device: torch.device,
    resize: int,
    crop: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    precision: str = "fp32",
    normalization: tuple[tuple[float, ...], tuple[float, ...], str] = (IMAGENET_MEAN, IMAGENET_STD, "bilinear"),
) -> Iterator[tuple[dict[str, Any], np.ndarray | None, np.ndarray | None]]:
    """Yield (batch, pooled object vectors [B, K, d], maps [B, d, h', w']) as float16 numpy;
    the model runs under autocast at ``precision`` (a key of AUTOCAST_DTYPES; fp32: none).

    ``normalization``: (mean, std, interpolation) of the model's preprocessing."""
    mean, std, interpolation = normalization
    autocast_dtype = AUTOCAST_DTYPES[precision]
    use_autocast = autocast_dtype is not None
    for batch in loader:
        if not batch["ok_positions"]:
            yield batch, None, None
            continue
        batch, images = batch_images_on_device(batch, device, resize, crop, max_pixels, interpolation)
        if not batch["ok_positions"]:
            yield batch, None, None
            continue
        images = to_model_input(images, device, mean, std)
        with torch.inference_mode(), torch.autocast(device.type, dtype=autocast_dtype, enabled=use_autocast):
            maps = extractor(images)
        maps = maps.float()
        pooled = masked_pool(batch["grids"].to(device, non_blocking=True), maps)
        yield batch, pooled.half().cpu().numpy(), maps.half().contiguous().cpu().numpy()


# --------------------------------------------------------------------------------------------
# Inputs and chunks


@dataclass(frozen=True)
class AnnotationInputs:
    """Images sorted by id; their objects sorted by (image, object), image i's at
    ``objects[object_offsets[i]:object_offsets[i + 1]]``; objects without a listed image."""

    images: pa.Table
    objects: pa.Table
    object_offsets: np.ndarray  # int64 [n_images + 1]
    orphan_objects: int


def prepare_tables(annotations_dir: Path) -> AnnotationInputs:
    """Read images.parquet and objects.parquet into the order the chunks are computed in.

    Objects whose image is not in images.parquet cannot be placed: they are counted and logged.
    Both tables must come from one annotations run (:func:`lavise.outputs.check_one_set`).
    """
    check_one_set(annotations_dir, ("images", "objects"), "annotations")
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
    return AnnotationInputs(images, objects, object_offsets, orphans)


@dataclass(frozen=True)
class ExtractionSettings:
    """Everything besides the inputs' content that changes the cache's bytes.

    ``weights``: a torchvision weights name, ``none`` or a checkpoint path (``target`` already
    resolved); ``layer``: a module name of ``model``; ``decode``: one of DECODE_MODES;
    ``max_pixels``: the pixel limit of an image's header (a larger image is ``too_large``);
    ``precision``: the autocast of the CNN, fp32 | bf16 | fp16 (``lavise.devices.resolve_precision``).
    """

    model: str
    weights: str
    layer: str
    num_classes: int | None
    resize: int
    crop: int
    batch_size: int
    chunk_images: int
    device: torch.device
    decode: str
    max_pixels: int = DEFAULT_MAX_PIXELS
    precision: str = "fp32"
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    preset: str = "default"

    def transform_record(self) -> dict[str, Any]:
        """The preprocessing, as meta.json and the fingerprint record it (:meth:`Preprocessing.record`)."""
        return Preprocessing(self.resize, self.crop, self.interpolation, self.mean, self.std, self.preset).record()


def _fingerprint(annotations_dir: Path, settings: ExtractionSettings) -> dict[str, Any]:
    """Everything that changes a chunk's bytes: a mismatch means stale chunks are discarded."""
    weights_file = Path(settings.weights)
    return {
        "format": FORMAT_VERSION,
        "backbone": {
            "name": settings.model,
            "weights": settings.weights,
            "layer": settings.layer,
            "num_classes": settings.num_classes,
        },
        "weights_sha256": file_digest(weights_file, "sha256") if weights_file.is_file() else None,
        "transform": settings.transform_record(),
        "batch_size": settings.batch_size,
        "chunk_images": settings.chunk_images,
        "device": settings.device.type,
        "decode": settings.decode,
        "max_pixels": settings.max_pixels,
        "precision": settings.precision,
        "torch": torch.__version__,
        "annotations_sha256": {
            name: file_digest(annotations_dir / name, "sha256") for name in ("images.parquet", "objects.parquet")
        },
    }


def chunk_batches(pending: list[int], n_images: int, chunk_images: int, batch_size: int) -> list[list[int]]:
    """Batches of positions that never straddle a chunk, so a resumed run recomputes identically."""
    batches = []
    for chunk in pending:
        positions = list(range(chunk * chunk_images, min((chunk + 1) * chunk_images, n_images)))
        batches.extend(positions[i : i + batch_size] for i in range(0, len(positions), batch_size))
    return batches


def _loader(
    dataset: ImageObjectsDataset, batches: list[list[int]], num_workers: int, device: torch.device
) -> DataLoader:
    """The DataLoader over ``batches``; forked workers share the Arrow tables copy-on-write."""
    use_fork = num_workers > 0 and "fork" in multiprocessing.get_all_start_methods()
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=collate_images,
        pin_memory=device.type == "cuda",
        multiprocessing_context="fork" if use_fork else None,
        prefetch_factor=4 if num_workers > 0 else None,
    )


def verify_chunks(
    dataset: ImageObjectsDataset, chunk_dirs: list[Path], pending: list[int], chunk_images: int, num_workers: int
) -> list[int]:
    """``pending`` plus every written chunk whose images' files no longer have the digests it was
    written with (or that has none): those are discarded, to be computed again. Re-reading the
    files is cheap next to the CNN; threads overlap the reads (hashing releases the GIL)."""
    to_write = set(pending)
    done = [index for index in range(len(chunk_dirs)) if index not in to_write]
    stale = []
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        for index in done:
            positions = range(index * chunk_images, min((index + 1) * chunk_images, len(dataset)))
            current = list(pool.map(dataset.digest, positions))
            written = chunk_digests(chunk_dirs[index])
            if written != current:
                changed = [p for p, (a, b) in enumerate(zip(written or [], current)) if a != b][:1]
                where = f" (e.g. {dataset.raw_dir / dataset.paths[positions[changed[0]]]})" if changed else ""
                log.warning("features: %s read files that changed since%s; recomputing it", chunk_dirs[index], where)
                shutil.rmtree(chunk_dirs[index])
                stale.append(index)
    return sorted([*pending, *stale])


def space_needed(
    inputs: AnnotationInputs, map_shape: tuple[int, int, int], chunk_images: int, pending: list[int]
) -> tuple[int, int]:
    """(bytes of the chunks still to write, bytes of the assembled cache), as if every image were
    ok (an upper bound: unusable images add nothing but their row in images.parquet)."""
    n_objects = np.diff(inputs.object_offsets)
    is_val = np.asarray(inputs.images.column("split").to_pylist()) == "val"
    chunk = np.arange(len(n_objects)) // chunk_images
    n_chunks = int(chunk[-1]) + 1 if len(chunk) else 0
    per_chunk = estimated_bytes(
        np.bincount(chunk, minlength=n_chunks),
        np.bincount(chunk, weights=n_objects * ~is_val, minlength=n_chunks),
        np.bincount(chunk, weights=n_objects * is_val, minlength=n_chunks),
        np.bincount(chunk, weights=is_val, minlength=n_chunks),
        map_shape,
    )
    cache = estimated_bytes(
        len(n_objects), int((n_objects * ~is_val).sum()), int((n_objects * is_val).sum()), int(is_val.sum()), map_shape
    )
    return int(per_chunk[pending].sum()), int(cache)


def _worst_image_bytes(inputs: AnnotationInputs, resize: int, crop: int) -> tuple[float, tuple[int, int]]:
    """The most bytes a decoding process holds for one image: the image (3 channels) or its
    masks (one each) resized to shorter side ``resize`` as uint8, plus the masks' float crops;
    and that image's resized (height, width). From the annotated sizes of the ok images."""
    heights = inputs.images.column("height").to_numpy().astype(np.float64)
    widths = inputs.images.column("width").to_numpy().astype(np.float64)
    usable = (np.asarray(inputs.images.column("status").to_pylist()) == OK) & (heights > 0) & (widths > 0)
    if not usable.any():
        return 0.0, (0, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        longer = np.floor(resize * np.maximum(heights, widths) / np.minimum(heights, widths))
    n_objects = np.diff(inputs.object_offsets)
    per_image = np.where(usable, np.maximum(3, n_objects) * resize * longer + n_objects * crop * crop * 4.0, 0.0)
    worst = int(np.argmax(per_image))
    return float(per_image[worst]), resized_size(int(heights[worst]), int(widths[worst]), resize)


def check_geometry_memory(
    inputs: AnnotationInputs, settings: ExtractionSettings, num_workers: int, what: str = "resize"
) -> None:
    """ValueError unless the geometry fits in memory, checked from the annotated sizes before
    anything is allocated: each decoding process resizes one image at a time (the worst case of
    :func:`_worst_image_bytes`) and a batch's crops go to the model's device as uint8 and float.
    A lower bound (the model's activations come on top), so only hopeless settings are refused.
    ``what``: the label of ``resize`` in the message (e.g. its params key)."""
    image_bytes, (height, width) = _worst_image_bytes(inputs, settings.resize, settings.crop)
    processes = max(1, num_workers)
    crop, batch = settings.crop, settings.batch_size
    crops = batch * 3 * crop * crop * (1 + 4 + 4)  # uint8, normalised float, channels_last copy
    claim = (
        f"{what} {settings.resize} needs ~{format_size(processes * image_bytes + crops)} for a batch of {batch} "
        f"images ({format_size(image_bytes)} to resize an image to {height}x{width} with its masks, in each of "
        f"{processes} decoding processes; {format_size(crops)} for the batch's {crop}x{crop} crops)"
    )
    remedy = f"choose a smaller {what}, crop or batch size"
    on_cpu = settings.device.type == "cpu"
    check_fits(int(processes * image_bytes + (crops if on_cpu else 0)), torch.device("cpu"), claim, remedy)
    if not on_cpu:
        check_fits(crops, settings.device, claim, remedy)


# --------------------------------------------------------------------------------------------
# Per-chunk results


@dataclass
class _ChunkBuffer:
    """Results of one chunk in image order, bounded by ``chunk_images``."""

    start: int
    image_ids: list[int]
    splits: list[str]
    statuses: list[str | None]
    errors: list[str | None]
    digests: list[str | None]
    vectors: list[np.ndarray | None]
    maps: list[np.ndarray | None]
    coverages: list[np.ndarray | None]
    objects_outside_crop: int = 0

    @classmethod
    def empty(cls, start: int, image_ids: list[int], splits: list[str]) -> _ChunkBuffer:
        size = len(image_ids)
        return cls(start, image_ids, splits, *([None] * size for _ in range(6)))

    def complete(self) -> bool:
        return all(status is not None for status in self.statuses)


def _record_batch(
    buffer: _ChunkBuffer,
    batch: dict[str, Any],
    pooled: np.ndarray | None,
    maps: np.ndarray | None,
    object_offsets: np.ndarray,
    cells: int,
) -> None:
    """Store one batch's statuses, file digests and, per ok image, its object vectors, coverages
    (share of the ``cells`` grid cells each mask covers) and val maps."""
    start = buffer.start
    for position, status, error, digest in zip(
        batch["positions"], batch["statuses"], batch["errors"], batch["digests"]
    ):
        buffer.statuses[position - start] = status
        buffer.errors[position - start] = error
        buffer.digests[position - start] = digest
    coverage = batch["grids"].sum(dim=(2, 3))  # [B, K]
    for row, position in enumerate(batch["ok_positions"]):
        n_objects = int(object_offsets[position + 1] - object_offsets[position])
        buffer.vectors[position - start] = pooled[row, :n_objects]
        buffer.coverages[position - start] = coverage[row, :n_objects].numpy() / cells
        buffer.objects_outside_crop += int((coverage[row, :n_objects] == 0).sum())
        buffer.maps[position - start] = maps[row] if buffer.splits[position - start] == "val" else None


def _concat(parts: list[np.ndarray], empty_shape: tuple[int, ...]) -> np.ndarray:
    return np.concatenate(parts).astype(DTYPE) if parts else np.zeros(empty_shape, DTYPE)


def _object_table(objects: pa.Table, rows: list[np.ndarray], coverages: list[np.ndarray]) -> pa.Table:
    """The objects at ``rows`` of ``objects`` with their coverage; ``row`` local to the chunk."""
    picked_rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    coverage = np.concatenate(coverages) if coverages else np.zeros(0, np.float32)
    picked = objects.take(pa.array(picked_rows, type=pa.int64()))
    return pa.table(
        {
            "row": np.arange(len(picked_rows), dtype=np.int64),
            "object_id": picked.column("object_id"),
            "image_id": picked.column("image_id"),
            "category": picked.column("category"),
            "coverage": coverage.astype(np.float32),
        },
        schema=OBJECTS_SCHEMA,
    )


def _chunk_tables(
    buffer: _ChunkBuffer, inputs: AnnotationInputs, map_shape: tuple[int, int, int]
) -> tuple[dict[str, np.ndarray], dict[str, pa.Table]]:
    """Turn a chunk's per-image results into its arrays and index tables (rows local to the chunk)."""
    parts: dict[str, list[np.ndarray]] = {"train_vectors": [], "val_vectors": [], "val_maps": []}
    object_rows: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    coverages: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    val_image_ids: list[int] = []
    for index, (image_id, split, status) in enumerate(zip(buffer.image_ids, buffer.splits, buffer.statuses)):
        if status != OK:
            continue
        position = buffer.start + index
        first, last = int(inputs.object_offsets[position]), int(inputs.object_offsets[position + 1])
        parts[f"{split}_vectors"].append(buffer.vectors[index])
        object_rows[split].append(np.arange(first, last))
        coverages[split].append(buffer.coverages[index])
        if split == "val":
            parts["val_maps"].append(buffer.maps[index][None])
            val_image_ids.append(image_id)
    arrays = {
        "train_vectors": _concat(parts["train_vectors"], (0, map_shape[0])),
        "val_vectors": _concat(parts["val_vectors"], (0, map_shape[0])),
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
        tables[f"{split}_objects"] = _object_table(inputs.objects, object_rows[split], coverages[split])
    return arrays, tables


def _compute_chunks(
    loader: DataLoader,
    extractor: nn.Module,
    inputs: AnnotationInputs,
    chunk_dirs: list[Path],
    settings: ExtractionSettings,
    map_shape: tuple[int, int, int],
    total: int,
    description: str = "features",
) -> tuple[int, int]:
    """Run every pending batch and write each chunk once all its images are in.

    Returns (images computed, images sent to the device decoder).
    """
    n_images, size = inputs.images.num_rows, settings.chunk_images
    image_ids = inputs.images.column("image_id").to_pylist()
    splits = inputs.images.column("split").to_pylist()
    buffers: dict[int, _ChunkBuffer] = {}
    computed, sent_to_device_decoder = 0, 0
    normalization = (settings.mean, settings.std, settings.interpolation)
    batches = forward_batches(
        loader,
        extractor,
        settings.device,
        settings.resize,
        settings.crop,
        settings.max_pixels,
        settings.precision,
        normalization,
    )
    with tqdm(total=total, desc=description, unit="img") as progress:
        for batch, pooled, maps in batches:
            chunk = batch["positions"][0] // size
            start, end = chunk * size, min(chunk * size + size, n_images)
            if chunk not in buffers:
                buffers[chunk] = _ChunkBuffer.empty(start, image_ids[start:end], splits[start:end])
            buffer = buffers[chunk]
            _record_batch(buffer, batch, pooled, maps, inputs.object_offsets, map_shape[1] * map_shape[2])
            sent_to_device_decoder += len(batch["encoded"])
            progress.update(len(batch["positions"]))
            computed += len(batch["positions"])
            if buffer.complete():
                arrays, tables = _chunk_tables(buffer, inputs, map_shape)
                counts = {"objects_outside_crop": buffer.objects_outside_crop}
                write_chunk(chunk_dirs[chunk], arrays, tables, counts, buffer.digests)
                del buffers[chunk]
    if buffers:
        raise RuntimeError(f"chunks {sorted(buffers)} did not receive all their images")
    return computed, sent_to_device_decoder


# --------------------------------------------------------------------------------------------
# The pass


def _meta(
    settings: ExtractionSettings,
    map_shape: tuple[int, int, int],
    inputs: AnnotationInputs,
    totals: dict[str, int],
    out_dir: Path,
) -> dict[str, Any]:
    """meta.json's content: what was extracted and how, and the counts of images and objects."""
    statuses = pq.read_table(out_dir / "images.parquet", columns=["status"]).column("status").to_pylist()
    status_counts = {status: statuses.count(status) for status in IMAGE_STATUSES}
    placed_objects = totals["train_vectors"] + totals["val_vectors"]
    return {
        "backbone": settings.model,
        "weights": settings.weights,
        "layer": settings.layer,
        "num_classes": settings.num_classes,
        "channels": map_shape[0],
        "height": map_shape[1],
        "width": map_shape[2],
        "transform": settings.transform_record(),
        "decode": settings.decode,
        "max_pixels": settings.max_pixels,
        "precision": settings.precision,
        "pooling": POOLING,
        "dtype": "float16",
        "counts": {
            "images": inputs.images.num_rows,
            **{f"images_{status}": count for status, count in status_counts.items()},
            "train_objects": totals["train_vectors"],
            "val_objects": totals["val_vectors"],
            "val_images": totals["val_maps"],
            "objects_of_unusable_images": inputs.objects.num_rows - placed_objects,
            "objects_without_image": inputs.orphan_objects,
            "objects_outside_crop": totals["objects_outside_crop"],
        },
    }


def _log_summary(meta: dict[str, Any], settings: ExtractionSettings, computed: int, sent: int, seconds: float) -> None:
    counts = meta["counts"]
    if counts["objects_outside_crop"]:
        log.warning(
            "features: %d objects lie entirely outside the centre crop; their vectors are zero",
            counts["objects_outside_crop"],
        )
    unusable = {status: counts[f"images_{status}"] for status in IMAGE_STATUSES if counts[f"images_{status}"]}
    unusable.pop(OK, None)
    if unusable:
        log.warning(
            "features: %s images recorded in images.parquet and skipped",
            ", ".join(f"{count} {status}" for status, count in unusable.items()),
        )
    if settings.decode == "device":
        log.info("features: %d of %d images decoded on %s, the rest by the workers", sent, computed, settings.device)
    log.info("features: %d images computed in %.1f s (%.1f images/s)", computed, seconds, computed / max(seconds, 1e-9))


def _load_extractor(settings: ExtractionSettings, weights_what: str) -> tuple[nn.Module, tuple[int, int, int]]:
    """The truncated model on the device (channels_last) and its maps' shape (d, h', w')."""
    extractor = build_feature_extractor(
        settings.model,
        settings.weights,
        settings.layer,
        num_classes=settings.num_classes,
        what=weights_what,
        crop=settings.crop,
    )
    extractor = extractor.to(settings.device, memory_format=torch.channels_last)
    return extractor, layer_output_shape(extractor, settings.crop)


def _log_plan(
    settings: ExtractionSettings,
    map_shape: tuple[int, int, int],
    n_images: int,
    n_chunks: int,
    pending: int,
    world: World,
) -> None:
    log.info(
        "features: %s %s layer %s -> %dx%dx%d on %s at %s; %d images in %d chunks, %d to compute%s",
        settings.model,
        settings.weights,
        settings.layer,
        *map_shape,
        settings.device,
        settings.precision,
        n_images,
        n_chunks,
        pending,
        f" by rank {world.rank} of {world.world_size}" if world.world_size > 1 else "",
    )


def _pending_chunks(
    out_dir: Path,
    fingerprint: dict[str, Any],
    n_chunks: int,
    check: Callable[[list[Path], list[int]], list[int]],
    world: World,
) -> tuple[list[Path], list[int]]:
    """The chunk directories and the pending chunks this rank computes. Rank 0 alone discards
    stale chunks and temporaries and runs ``check(chunk_dirs, pending) -> pending`` (the digest
    and free-space checks); the other ranks wait for it, then read which chunks are missing."""
    if world.is_main:
        chunk_dirs, pending = prepare_chunks(out_dir, fingerprint, n_chunks)
        pending = check(chunk_dirs, pending)
    barrier()
    if not world.is_main:
        chunk_dirs, pending = chunk_paths(out_dir, n_chunks)
    return chunk_dirs, rank_share(pending, world)


def _prepare_pass(
    annotations_dir: Path,
    raw_dir: Path,
    out_dir: Path,
    settings: ExtractionSettings,
    num_workers: int,
    resize_what: str,
    weights_what: str,
    world: World,
) -> tuple[AnnotationInputs, nn.Module, tuple[int, int, int], ImageObjectsDataset, list[Path], list[int]]:
    """Everything checked before the first batch: the tables, the geometry's memory, the model,
    the chunks a resume keeps (same settings, same image bytes) and the free space for the rest."""
    inputs = prepare_tables(annotations_dir)
    if inputs.images.num_rows == 0:
        raise ValueError(f"{annotations_dir}/images.parquet lists no images")
    check_geometry_memory(inputs, settings, num_workers, resize_what)  # before the model's dummy pass
    extractor, map_shape = _load_extractor(settings, weights_what)
    # Built before any chunk is touched: it also rejects an unknown ``decode``.
    dataset = ImageObjectsDataset(
        inputs.images,
        inputs.objects,
        inputs.object_offsets,
        raw_dir,
        settings.resize,
        settings.crop,
        map_shape[1:],
        decode=settings.decode,
        max_pixels=settings.max_pixels,
        interpolation=settings.interpolation,
    )
    n_chunks = max(1, -(-inputs.images.num_rows // settings.chunk_images))

    def check(chunk_dirs: list[Path], pending: list[int]) -> list[int]:
        pending = verify_chunks(dataset, chunk_dirs, pending, settings.chunk_images, num_workers)
        chunks_bytes, cache_bytes = space_needed(inputs, map_shape, settings.chunk_images, pending)
        ensure_free_space(out_dir, chunks_bytes=chunks_bytes, cache_bytes=cache_bytes)
        return pending

    fingerprint = _fingerprint(annotations_dir, settings)
    chunk_dirs, pending = _pending_chunks(out_dir, fingerprint, n_chunks, check, world)
    _log_plan(settings, map_shape, inputs.images.num_rows, n_chunks, len(pending), world)
    return inputs, extractor, map_shape, dataset, chunk_dirs, pending


def build_feature_cache(
    annotations_dir: Path,
    raw_dir: Path,
    out_dir: Path,
    settings: ExtractionSettings,
    *,
    num_workers: int,
    resize_what: str = "resize",
    weights_what: str = "weights",
) -> dict[str, Any]:
    """Run the layer of ``settings`` once per image of ``annotations_dir`` and write the cache.

    ``raw_dir``: where images.parquet's paths are relative to. ``num_workers``: DataLoader
    workers (decoding; no effect on the bytes). ``resize_what``, ``weights_what``: how a message
    names ``settings.resize`` and ``settings.weights``. Returns meta.json's content plus timing;
    under torchrun every rank calls this, and ranks other than 0 return only their counts.
    """
    annotations_dir, raw_dir, out_dir = Path(annotations_dir), Path(raw_dir), Path(out_dir)
    started = time.perf_counter()
    world = init_process_group(settings.device)
    settings = replace(settings, device=rank_device(settings.device, world))
    inputs, extractor, map_shape, dataset, chunk_dirs, pending = _prepare_pass(
        annotations_dir, raw_dir, out_dir, settings, num_workers, resize_what, weights_what, world
    )
    batches = chunk_batches(pending, inputs.images.num_rows, settings.chunk_images, settings.batch_size)
    loader = _loader(dataset, batches, num_workers, settings.device)
    total = sum(len(batch) for batch in batches)
    description = f"features rank {world.rank}" if world.world_size > 1 else "features"
    computed, sent = _compute_chunks(loader, extractor, inputs, chunk_dirs, settings, map_shape, total, description)
    barrier()  # every rank's chunks are written
    if not world.is_main:
        return {"rank": world.rank, "seconds": time.perf_counter() - started, "images_computed": computed}
    (out_dir / META_FILE).unlink(missing_ok=True)  # the marker goes first: a killed assembly leaves no cache
    meta = _meta(settings, map_shape, inputs, assemble_chunks(chunk_dirs, out_dir), out_dir)
    meta["layer_output"] = extractor.layout  # how the layer's output became maps (tokens dropped)
    finish_cache(out_dir, meta)
    seconds = time.perf_counter() - started
    _log_summary(meta, settings, computed, sent, seconds)
    return {**meta, "seconds": seconds, "images_computed": computed}
