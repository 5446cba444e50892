"""Benchmarks for the `train` stage.

--mode cache     a random float16 cache the size of COCO's training annotations (860k x 512 by
                 default), one epoch in a fresh process: seconds per epoch and peak memory, split
                 into anonymous memory (what the process owns) and the file-backed mapping (page
                 cache, which the kernel can drop).
--mode fact2023  on the demo data, in one process: one epoch of our stage against one epoch of
                 FACT2023's per-annotation scheme (decode, transform, CNN to the layer, mask,
                 pool, explainer step for every annotation), and the ratio.

Run from the repository root: python -m benchmarks.bench_train --mode cache
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from benchmarks.memory import PeakMemory
from lavise.features.cache import open_feature_cache
from tests.writers.annotations import category_row, write_annotation_tables
from tests.writers.cache import write_feature_cache_in_chunks
from tests.writers.glove import write_glove_store

log = logging.getLogger("bench_train")


OBJECTS_PER_IMAGE = 7


def build_random_cache(
    root: Path,
    n_train: int,
    n_val: int,
    dim: int,
    n_categories: int,
    emb_dim: int,
    seed: int,
    chunk_rows: int = OBJECTS_PER_IMAGE * 8192,
) -> dict[str, Path]:
    """Write a random cache, its categories and GloVe store with the test writers, the cache chunk
    by chunk (memory flat in n_train; ``chunk_rows`` a multiple of OBJECTS_PER_IMAGE, so that no
    image straddles two chunks)."""
    rng = np.random.default_rng(seed)
    categories = [f"category{i:03d}" for i in range(n_categories)]
    words = [f"word{i:03d}" for i in range(n_categories)]
    first_val_image = -(-n_train // OBJECTS_PER_IMAGE)

    def split_part(split: str, n: int, index: int) -> dict[str, Any]:
        ids = np.arange(min(index * chunk_rows, n), min((index + 1) * chunk_rows, n), dtype=np.int64)
        vectors = np.abs(rng.standard_normal((ids.size, dim), dtype=np.float32))
        codes = rng.integers(0, n_categories, ids.size).astype(np.int32)
        objects = {
            "object_id": ids + (0 if split == "train" else n_train),
            "image_id": ids // OBJECTS_PER_IMAGE + (0 if split == "train" else first_val_image),
            "category": pa.DictionaryArray.from_arrays(codes, categories).cast(pa.string()),
            "coverage": np.full(ids.size, 0.25, dtype=np.float32),
        }
        return {f"{split}_vectors": vectors, f"{split}_objects": objects}

    def chunk(index: int) -> dict[str, Any]:
        return {**split_part("train", n_train, index), **split_part("val", n_val, index)}

    n_chunks = max(1, -(-max(n_train, n_val) // chunk_rows))
    meta = {"backbone": "random", "weights": "none", "layer": "layer4"}
    features = write_feature_cache_in_chunks(root / "features", n_chunks, chunk, channels=dim, meta=meta)
    annotations = write_annotation_tables(
        root / "annotations",
        images=[],
        objects=[],
        categories=[category_row(category, [word]) for category, word in zip(categories, words)],
    )
    glove = write_glove_store(root / "glove", words, rng.standard_normal((n_categories, emb_dim)).astype(np.float32))
    return {"features": features, "annotations": annotations, "glove": glove}


def train_settings(batch_size: int, device: str) -> dict[str, Any]:
    """A `train` params section for one epoch."""
    return dict(
        hidden_dim=None,
        dropout=0.1,
        margin=1.0,
        optimizer="dadapt_adam",
        lr=1.0,
        batch_size=batch_size,
        epochs=1,
        holdout_fraction=0.1,
        patience=1,
        lr_patience=10,
        seed=0,
        device=device,
    )


def one_epoch(paths: dict[str, Path], out: Path, batch_size: int, device: str) -> dict[str, Any]:
    """One epoch of the `train` stage (train pass + hold-out scoring + writing) on ``paths``."""
    from stages.train import run_train

    started = time.perf_counter()
    metrics = run_train(
        paths["features"],
        paths["annotations"],
        paths["glove"],
        out / "explainer",
        out / "train.json",
        out / "history.csv",
        train_settings(batch_size, device),
    )
    return {"seconds": time.perf_counter() - started, "metrics": metrics}


def _epoch_in_child(paths: dict[str, Path], out: Path, batch_size: int, device: str, threads: int, queue: Any) -> None:
    torch.set_num_threads(threads)
    with PeakMemory() as peak:
        result = one_epoch(paths, out, batch_size, device)
    result["peak_kib"] = peak.peak
    result["ru_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put(result)


def bench_cache(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        paths = build_random_cache(root, args.rows, args.val_rows, args.dim, args.categories, args.emb_dim, seed=0)
        size_mib = open_feature_cache(paths["features"]).train_vectors.nbytes / 2**20
        print(
            f"built cache {args.rows} x {args.dim} float16 ({size_mib:.0f} MiB) + val {args.val_rows} "
            f"in {time.perf_counter() - started:.1f} s"
        )
        context = multiprocessing.get_context("spawn")  # a fresh process: its peak RSS is the epoch's
        queue = context.Queue()
        child = context.Process(
            target=_epoch_in_child, args=(paths, root / "out", args.batch_size, args.device, args.threads, queue)
        )
        child.start()
        result = queue.get()
        child.join()
        peak = result["peak_kib"]
        print(
            f"one epoch ({result['metrics']['n_train']} train + {result['metrics']['n_holdout']} hold-out samples, "
            f"{result['metrics']['n_classes']} classes, batch {args.batch_size}, "
            f"{result['metrics']['device']}, {args.threads} threads): {result['seconds']:.1f} s"
        )
        print(f"peak RSS (getrusage ru_maxrss): {result['ru_maxrss_kib'] / 1024:.0f} MiB")
        print(f"peak RssAnon (process-owned memory, sampled): {peak.get('RssAnon', 0) / 1024:.0f} MiB")
        print(f"peak RssFile (page-cache-backed mapping, sampled): {peak.get('RssFile', 0) / 1024:.0f} MiB")


def bench_fact2023(args: argparse.Namespace) -> None:
    """Our stage's epoch against FACT2023's per-annotation epoch, same samples, same process."""
    import pandas as pd

    from lavise.data.images import decode_image
    from lavise.data.masks import image_object_masks
    from lavise.data.transforms import mask_to_grid, masks_to_crop, preprocess
    from lavise.features.pooling import pool as pool_features
    from lavise.models.explainer import Explainer, hinge_rank_loss
    from lavise.models.extractor import build_feature_extractor
    from lavise.training.explainer import make_optimizer
    from lavise.training.explainer_data import load_class_vectors, load_classes
    from stages.params import load_params

    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    paths = {"features": args.features, "annotations": args.annotations, "glove": args.glove}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        ours = one_epoch(paths, Path(tmp), args.batch_size, args.device)
    print(
        f"our stage, one epoch ({ours['metrics']['n_train']} train + {ours['metrics']['n_holdout']} hold-out "
        f"samples, includes loading, hold-out scoring and saving): {ours['seconds']:.2f} s"
    )

    cache = open_feature_cache(args.features)
    meta = cache.meta
    resize, crop = params["transform"]["resize"], params["transform"]["crop"]
    extractor = build_feature_extractor(meta["backbone"], args.weights, meta["layer"])
    classes = load_classes(args.annotations)
    class_vectors = load_class_vectors(args.glove, classes.tokens)
    seen_index = {c: i for i, c in enumerate(classes.seen_categories)}
    images = pd.read_parquet(args.annotations / "images.parquet").set_index("image_id")
    objects = pd.read_parquet(args.annotations / "objects.parquet")
    cached = cache.images  # the features stage's decode status
    decodable = set(cached.loc[cached["status"] == "ok", "image_id"])
    train_ids = set(images.index[images["split"] == "train"]) & decodable
    objects = objects[objects["image_id"].isin(train_ids) & objects["category"].isin(seen_index)]
    n_annotations = len(objects)
    order = np.random.default_rng(0).permutation(n_annotations)
    timed = order[: min(args.max_annotations, n_annotations)]
    model = Explainer(int(meta["channels"]), class_vectors.shape[1])
    optimizer, _ = make_optimizer("dadapt_adam", model.parameters(), 1.0)
    raw_dir = args.raw / params["dataset"]
    started = time.perf_counter()
    for start in range(0, len(timed), args.batch_size):
        batch = objects.iloc[timed[start : start + args.batch_size]]
        crops, grids = [], []
        for _, annotation in batch.iterrows():  # the per-annotation scheme this stage replaces
            image_info = images.loc[annotation["image_id"]]
            pixels = decode_image(raw_dir / image_info["path"])
            crops.append(preprocess(pixels, resize, crop))
            mask = image_object_masks(annotation.to_frame().T, pixels.shape[1], pixels.shape[2])
            grids.append(masks_to_crop(torch.from_numpy(mask), resize, crop))
        with torch.no_grad():
            maps = extractor(torch.stack(crops))
        cells = mask_to_grid(torch.cat(grids), tuple(maps.shape[-2:]))
        vectors = pool_features(maps * cells[:, None])
        positives = classes.positives[[seen_index[c] for c in batch["category"]]]
        model.train()
        loss = hinge_rank_loss(model(vectors), class_vectors, positives, 1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    elapsed = time.perf_counter() - started
    per_epoch = elapsed / len(timed) * n_annotations
    scope = "measured" if len(timed) == n_annotations else f"extrapolated from {len(timed)} annotations"
    print(
        f"FACT2023 per-annotation scheme, one epoch over {n_annotations} annotations "
        f"({scope}, train pass only): {per_epoch:.2f} s"
    )
    print(f"ratio (FACT2023 epoch / our epoch): {per_epoch / ours['seconds']:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("cache", "fact2023"), required=True)
    parser.add_argument("--rows", type=int, default=860_000, help="cache: train vectors")
    parser.add_argument(
        "--val-rows",
        type=int,
        default=37_000,
        help="cache: val vectors (COCO val2017; in the cache, not read by train)",
    )
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--categories", type=int, default=80)
    parser.add_argument("--emb-dim", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tmp", type=Path, default=None, help="where the temporary cache goes")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--features", type=Path, default=Path("data/features"))
    parser.add_argument("--annotations", type=Path, default=Path("data/annotations"))
    parser.add_argument("--glove", type=Path, default=Path("data/raw/glove"))
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument(
        "--weights", default="none", help="fact2023: backbone weights (timing does not depend on their values)"
    )
    parser.add_argument(
        "--max-annotations",
        type=int,
        default=2048,
        help="fact2023: annotations timed; the epoch is extrapolated beyond them",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.mode == "cache":
        bench_cache(args)
    else:
        bench_fact2023(args)


if __name__ == "__main__":
    main()
