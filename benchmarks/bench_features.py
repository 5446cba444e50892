"""Throughput of the features stage on this machine: is it bound by decoding or by the model?

Prints images/s of (a) decode + transform + masks alone (one process, the per-image worker
work), (b) the bare backbone on pre-decoded batches, (c) the whole stage, and the ratio of (c)
to the serial bound 1/(1/a + 1/b), for each model, on a generated set of JPEGs with boxes.
Target on CPU: >= 90% of the serial bound (workers overlap decoding with the forward pass).

    python -m benchmarks.bench_features --images 300 --threads 2 --workers 2
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from lavise.backbones import build_feature_extractor
from lavise.feature_cache import ImageObjectsDataset, _prepare_tables, build_feature_cache, collate_images
from lavise.images import normalize


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
        image_rows.append({"image_id": image_id, "path": f"{image_id:06d}.jpg", "width": width,
                           "height": height, "split": "val" if image_id % 2 else "train", "status": "ok"})
        for k in range(3):
            x, y = float(rng.integers(0, width // 2)), float(rng.integers(0, height // 2))
            object_rows.append({"object_id": len(object_rows), "image_id": image_id, "category": f"c{k}",
                                "kind": "boxes", "rle": None, "boxes": [x, y, width / 3, height / 3]})
    pq.write_table(pa.Table.from_pylist(image_rows), annotations / "images.parquet")
    objects = pa.Table.from_pylist(object_rows, schema=pa.schema([
        ("object_id", pa.int64()), ("image_id", pa.int64()), ("category", pa.string()),
        ("kind", pa.string()), ("rle", pa.string()), ("boxes", pa.list_(pa.float32())),
    ]))
    pq.write_table(objects, annotations / "objects.parquet")
    return raw, annotations


def decode_rate(raw: Path, annotations: Path, resize: int, crop: int, grid: tuple[int, int]) -> float:
    """(a): the per-image worker work in one process."""
    images, objects, offsets, _ = _prepare_tables(annotations)
    dataset = ImageObjectsDataset(images, objects, offsets, raw, resize, crop, grid)
    started = time.perf_counter()
    for position in range(len(dataset)):
        dataset[position]
    return len(dataset) / (time.perf_counter() - started)


def backbone_rate(name: str, layer: str, raw: Path, annotations: Path, resize: int, crop: int,
                  batch_size: int, grid: tuple[int, int]) -> float:
    """(b): normalise + forward + pooling on batches already decoded and in memory."""
    images, objects, offsets, _ = _prepare_tables(annotations)
    dataset = ImageObjectsDataset(images, objects, offsets, raw, resize, crop, grid)
    batches = [collate_images([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
               for start in range(0, len(dataset), batch_size)]
    extractor = build_feature_extractor(name, "none", layer).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        extractor(normalize(batches[0]["images"].float() / 255).contiguous(memory_format=torch.channels_last))
    started = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            x = normalize(batch["images"].float().div_(255)).contiguous(memory_format=torch.channels_last)
            maps = extractor(x).float()
            torch.einsum("bkhw,bdhw->bkd", batch["grids"], maps)
    return len(dataset) / (time.perf_counter() - started)


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
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    grid = (args.crop // 32, args.crop // 32)
    with tempfile.TemporaryDirectory(prefix="bench_features_") as tmp:
        raw, annotations = generate_dataset(Path(tmp), args.images, args.seed)
        a = decode_rate(raw, annotations, args.resize, args.crop, grid)
        print(f"(a) decode+transform+masks, 1 process: {a:8.1f} images/s")
        for name in args.models:
            b = backbone_rate(name, args.layer, raw, annotations, args.resize, args.crop, args.batch_size, grid)
            result = build_feature_cache(
                annotations, raw, Path(tmp) / f"features_{name}",
                backbone={"name": name, "weights": "none", "layer": args.layer, "num_classes": None},
                transform={"resize": args.resize, "crop": args.crop}, batch_size=args.batch_size,
                num_workers=args.workers, device="cpu", chunk_images=256,
            )
            c = result["images_computed"] / result["seconds"]
            bound = 1.0 / (1.0 / a + 1.0 / b)
            print(f"{name} {args.layer}: (b) backbone {b:8.1f} images/s | (c) stage {c:8.1f} images/s | "
                  f"serial bound {bound:8.1f} | c/bound {c / bound:6.1%}")


if __name__ == "__main__":
    main()
