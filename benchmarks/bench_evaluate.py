"""Benchmark of the evaluate stage on a synthetic cache of the demo's size.

All filters of a ResNet-18 layer4 (512 × 7 × 7), ~200 evaluation images, a 400k-word 50d
vocabulary and a randomly initialised explainer; every method except image masking (which
re-runs the CNN and is limited by params). Prints filters/s, the time of the thresholds step
(``filter_thresholds``: one pass over the cache) and the peak RSS.

    python -m benchmarks.bench_evaluate [--images 200] [--filters 512] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import stages.evaluate
from lavise.models.explainer import Explainer, save_explainer
from stages.evaluate import Paths, run_evaluate
from tests.writers.annotations import boxes_object, category_row, image_row, write_annotation_tables
from tests.writers.cache import write_feature_cache
from tests.writers.glove import write_glove_store

CATEGORY_NAMES = [f"cat{i}" for i in range(60)]


def build_cache(root: Path, n_images: int, channels: int, vocab_size: int, emb_dim: int, seed: int) -> None:
    """Feature maps, boxes annotations, a random unit-vector vocabulary and a random explainer."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(vocab_size - len(CATEGORY_NAMES))] + CATEGORY_NAMES
    write_glove_store(root / "glove", words, rng.normal(size=(vocab_size, emb_dim)).astype(np.float32))
    roles = ["seen" if i % 10 < 7 else "unseen" for i in range(len(CATEGORY_NAMES))]
    images, objects = [], []
    for i in range(n_images):
        height, width = int(rng.integers(300, 500)), int(rng.integers(300, 500))
        images.append(image_row(i, width=width, height=height, split="val", path=f"images/{i}.jpg"))
        for c in rng.choice(len(CATEGORY_NAMES), size=int(rng.integers(2, 9)), replace=False):
            w, h = rng.uniform(30, width), rng.uniform(30, height)
            box = [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h]
            objects.append(boxes_object(len(objects), i, CATEGORY_NAMES[c], box))
    write_annotation_tables(
        root / "annotations",
        images=images,
        objects=objects,
        categories=[category_row(name, [name], role=role) for name, role in zip(CATEGORY_NAMES, roles)],
    )
    maps = np.maximum(rng.normal(-0.3, 1.0, size=(n_images, channels, 7, 7)), 0).astype(np.float16)
    write_feature_cache(root / "features", val_maps=maps)
    torch.manual_seed(seed)
    save_explainer(Explainer(channels, emb_dim).eval(), {"class_tokens": CATEGORY_NAMES}, root / "explainer")


def time_thresholds(timings: dict[str, float]) -> None:
    """Wrap the evaluate stage's ``filter_thresholds`` so its wall time lands in ``timings``."""
    inner = stages.evaluate.filter_thresholds

    def timed(*args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            timings["thresholds"] = time.perf_counter() - start

    stages.evaluate.filter_thresholds = timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--filters", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=400_000)
    parser.add_argument("--p", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    timings: dict[str, float] = {}
    time_thresholds(timings)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_cache(root, args.images, 512, args.vocab, 50, args.seed)
        evaluate = {
            "p": args.p,
            "quantile": 0.995,
            "iou_threshold": 0.04,
            "top_s": [5, 10, 20],
            "vocabulary": "glove",
            "filters": list(range(args.filters)),
            "image_masking_filters": [],
            "word_weighting": "activation",
            "heatmap_filters": [],
            "batch_size": 256,
            "device": "cpu",
        }
        start = time.perf_counter()
        paths = Paths(
            features=root / "features",
            annotations=root / "annotations",
            explainer=root / "explainer",
            glove=root / "glove",
            raw=root / "raw",
            metrics=root / "recall.json",
            results=root / "results",
        )
        backbone = {"name": "resnet18", "weights": "none", "layer": "layer4", "num_classes": None}
        metrics = run_evaluate(paths, backbone, {"resize": 256, "crop": 224}, evaluate)
        elapsed = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pairs = metrics["projection"]["n_pairs"]
    print(f"images={args.images} filters={args.filters} p={args.p} vocab={args.vocab} threads={args.threads}")
    print(f"elapsed {elapsed:.1f} s  ->  {args.filters / elapsed:.1f} filters/s  (scored pairs: {pairs})")
    cache_mib = args.images * 512 * 49 * 2 / 2**20
    print(f"thresholds {timings['thresholds']:.2f} s (one pass over the {cache_mib:.1f} MiB cache)")
    print(f"peak RSS {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
