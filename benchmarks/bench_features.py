"""Throughput of the features stage on this machine: is it bound by decoding or by the model?

Prints images/s of (a) decode + transform + masks alone: in one process (the per-image worker
work) and through the stage's DataLoader with all workers, for each decode mode; (b) the bare
backbone on pre-decoded batches; (c) the whole stage; then the ratio of (c) to its bound, for
each model, on a generated set of COCO-sized JPEGs with boxes.
Targets (issue 4): on CPU (c) >= 90% of the serial bound 1/(1/a + 1/b), a in one process,
because workers overlap decoding with the forward pass; on a GPU (c) >= 80% of min(a with all
workers, b). ``--decode device`` decodes the JPEGs batched on the device (nvJPEG on CUDA).
``--memory N1 N2 ...`` instead runs the whole stage on datasets of N1, N2, ... images, each in a
fresh process, and prints the main process's peak memory: it should not grow with N (the
writer streams chunks; only the per-object index tables grow, by bytes per object).

    python -m benchmarks.bench_features --images 300 --threads 2 --workers 2
    python -m benchmarks.bench_features --memory 300 1200 --models resnet18
    python -m benchmarks.bench_features --device cuda --images 4000 --workers 16 --batch-size 256 \\
        --decode workers device
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader

from benchmarks.memory import PeakMemory
from lavise.data.annotation_schema import OBJECTS_SCHEMA
from lavise.data.transforms import to_model_input
from lavise.features.extract import (
    ExtractionSettings,
    ImageObjectsDataset,
    batch_images_on_device,
    build_feature_cache,
    collate_images,
    prepare_tables,
)
from lavise.features.pooling import masked_pool
from lavise.models.extractor import build_feature_extractor
from lavise.options import DECODE_MODES

OBJECT_COLUMNS = ("object_id", "image_id", "category", "kind", "rle", "boxes")  # what features reads


def generate_dataset(root: Path, n_images: int, seed: int) -> tuple[Path, Path]:
    """COCO/VG-sized JPEGs (about 640x480, both orientations) with 3 boxes each."""
    rng = np.random.default_rng(seed)
    raw, annotations = root / "raw", root / "annotations"
    raw.mkdir(parents=True)
    annotations.mkdir(parents=True)
    image_rows, object_rows = [], []
    for image_id in range(n_images):
        width, height = (640, 480) if image_id % 4 else (480, 640)
        coarse = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
        detail = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
        pixels = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR)) + detail
        Image.fromarray(pixels).save(raw / f"{image_id:06d}.jpg", quality=90)
        image_rows.append(
            {
                "image_id": image_id,
                "path": f"{image_id:06d}.jpg",
                "width": width,
                "height": height,
                "split": "val" if image_id % 2 else "train",
                "status": "ok",
            }
        )
        for k in range(3):
            x, y = float(rng.integers(0, width // 2)), float(rng.integers(0, height // 2))
            object_rows.append(
                {
                    "object_id": len(object_rows),
                    "image_id": image_id,
                    "category": f"c{k}",
                    "kind": "boxes",
                    "rle": None,
                    "boxes": [x, y, width / 3, height / 3],
                }
            )
    pq.write_table(pa.Table.from_pylist(image_rows), annotations / "images.parquet")
    objects = pa.Table.from_pylist(
        object_rows,
        schema=pa.schema(
            [OBJECTS_SCHEMA.field(name) for name in ("object_id", "image_id", "category", "kind", "rle", "boxes")]
        ),
    )
    pq.write_table(objects, annotations / "objects.parquet")
    return raw, annotations


def _dataset(
    raw: Path, annotations: Path, resize: int, crop: int, grid: tuple[int, int], decode: str = "workers"
) -> ImageObjectsDataset:
    inputs = prepare_tables(annotations)
    return ImageObjectsDataset(
        inputs.images, inputs.objects, inputs.object_offsets, raw, resize, crop, grid, decode=decode
    )


def stage_settings(name: str, args: argparse.Namespace, decode: str) -> ExtractionSettings:
    """The whole stage's settings for model ``name`` with random weights at ``args.layer``."""
    return ExtractionSettings(
        model=name,
        weights="none",
        layer=args.layer,
        num_classes=None,
        resize=args.resize,
        crop=args.crop,
        batch_size=args.batch_size,
        chunk_images=256,
        device=torch.device(args.device),
        decode=decode,
    )


def decode_rate(raw: Path, annotations: Path, resize: int, crop: int, grid: tuple[int, int]) -> float:
    """(a), one process: the per-image worker work of ``decode=workers``."""
    dataset = _dataset(raw, annotations, resize, crop, grid)
    for position in range(min(8, len(dataset))):  # warm-up: first-call allocations, lazy imports
        dataset[position]
    started = time.perf_counter()
    for position in range(len(dataset)):
        dataset[position]
    return len(dataset) / (time.perf_counter() - started)


def pipeline_rate(
    raw: Path,
    annotations: Path,
    resize: int,
    crop: int,
    grid: tuple[int, int],
    decode: str,
    workers: int,
    batch_size: int,
    device: torch.device,
) -> float:
    """(a), all workers: the stage's DataLoader and device-side decoding, without the model."""
    dataset = _dataset(raw, annotations, resize, crop, grid, decode)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_images,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    started = time.perf_counter()
    for batch in loader:
        batch_images_on_device(batch, device, resize, crop)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return len(dataset) / (time.perf_counter() - started)


def backbone_rate(
    name: str,
    layer: str,
    raw: Path,
    annotations: Path,
    resize: int,
    crop: int,
    batch_size: int,
    grid: tuple[int, int],
    device: torch.device,
) -> float:
    """(b): normalise + forward + pooling on batches already decoded and on the device."""
    dataset = _dataset(raw, annotations, resize, crop, grid)
    batches = [
        collate_images([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        for start in range(0, len(dataset), batch_size)
    ]
    batches = [(batch["images"].to(device), batch["grids"].to(device)) for batch in batches]
    extractor = build_feature_extractor(name, "none", layer).to(device, memory_format=torch.channels_last)
    use_autocast = device.type == "cuda"

    def run(images: torch.Tensor, grids: torch.Tensor) -> None:
        x = to_model_input(images, device)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
            maps = extractor(x).float()
        masked_pool(grids, maps)

    run(*batches[0])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for images, grids in batches:
        run(images, grids)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return len(dataset) / (time.perf_counter() - started)


def _stage_in_child(queue: multiprocessing.Queue, kwargs: dict) -> None:
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(kwargs.pop("threads"))
    with PeakMemory() as peak:
        result = build_feature_cache(**kwargs)
    queue.put({"peak": peak.peak, "images": result["images_computed"], "seconds": result["seconds"]})


def stage_peak_memory(root: Path, n_images: int, args: argparse.Namespace, name: str) -> dict:
    """The whole stage on ``n_images`` generated images in a fresh process: its peak memory."""
    raw, annotations = generate_dataset(root / f"memory_{n_images}", n_images, args.seed)
    kwargs = {
        "annotations_dir": annotations,
        "raw_dir": raw,
        "out_dir": root / f"memory_{n_images}" / "features",
        "settings": stage_settings(name, args, args.decode[0]),
        "num_workers": args.workers,
        "threads": args.threads,
    }
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_stage_in_child, args=(queue, kwargs))
    child.start()
    measured = queue.get()
    child.join()
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--decode", nargs="+", choices=DECODE_MODES, default=["workers"])
    parser.add_argument("--memory", type=int, nargs="+", metavar="N", help="peak memory at these dataset sizes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    grid = (args.crop // 32, args.crop // 32)
    common = (args.resize, args.crop, grid)
    if args.memory:
        with tempfile.TemporaryDirectory(prefix="bench_features_") as tmp:
            for name in args.models:
                for n_images in args.memory:
                    measured = stage_peak_memory(Path(tmp), n_images, args, name)
                    peak = measured["peak"]
                    print(
                        f"{name} {args.layer}, {n_images:6d} images ({measured['images'] / measured['seconds']:.1f} "
                        f"images/s): main process peak RssAnon {peak['RssAnon'] / 1024:7.1f} MiB, "
                        f"VmHWM {peak['VmHWM'] / 1024:7.1f} MiB"
                    )
        return
    with tempfile.TemporaryDirectory(prefix="bench_features_") as tmp:
        raw, annotations = generate_dataset(Path(tmp), args.images, args.seed)
        a_one = decode_rate(raw, annotations, *common)
        print(f"(a) decode=workers, 1 process: {a_one:8.1f} images/s")
        a_all = {}
        for decode in args.decode:
            a_all[decode] = pipeline_rate(raw, annotations, *common, decode, args.workers, args.batch_size, device)
            print(f"(a) decode={decode}, {args.workers} workers, {device.type}: {a_all[decode]:8.1f} images/s")
        for name in args.models:
            b = backbone_rate(name, args.layer, raw, annotations, *common[:2], args.batch_size, grid, device)
            print(f"{name} {args.layer}: (b) backbone on {device.type} {b:8.1f} images/s")
            for decode in args.decode:
                result = build_feature_cache(
                    annotations,
                    raw,
                    Path(tmp) / f"features_{name}_{decode}",
                    stage_settings(name, args, decode),
                    num_workers=args.workers,
                )
                c = result["images_computed"] / result["seconds"]
                if device.type == "cpu":
                    bound, rule = 1.0 / (1.0 / a_one + 1.0 / b), "serial bound 1/(1/a+1/b)"
                else:
                    bound, rule = min(a_all[decode], b), "min(a all workers, b)"
                print(
                    f"  decode={decode}: (c) stage {c:8.1f} images/s | {rule} {bound:8.1f} | c/bound {c / bound:6.1%}"
                )


if __name__ == "__main__":
    main()
