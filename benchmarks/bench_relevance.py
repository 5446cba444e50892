"""Benchmark of the relevance stage's work at COCO scale, on synthetic responses: seconds and peak memory.

Synthetic inputs shaped like COCO 2017 on ResNet-18 ``layer4``: 118,287 training images × 512
pooled responses (float32, in memory as the stage holds them) with 80 labels, each planted on a
few filters, and 5,000 validation maps 512 × 7 × 7 (float16, memory-mapped from a temporary file
as the feature cache is). Times the three parts of the stage that grow with the data — the
moments XᵀX, XᵀL; the lasso path of every class at every µ; the ablation test (the union per µ
against ``repeats`` random draws, and every class against its own random draws) through a
ResNet-18 head (global average pool + linear) — and prints seconds and peak anonymous RSS. The
CNN passes over the pixels are `features`' cost and are not repeated here.

    python -m benchmarks.bench_relevance [--train 118287] [--val 5000] [--mu 0.05 0.2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.memory import PeakMemory
from lavise.relevance.ablation import AblationSetup, ablation_row, class_rows
from lavise.relevance.lasso import constrained_lasso, design_moments


def synthetic(n: int, d: int, classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pooled responses ``[n, d]`` (rectified Gaussians) and labels ``[n, C]`` planted on 3 filters each."""
    responses = np.maximum(rng.standard_normal((n, d), dtype=np.float32), 0)
    planted = rng.choice(d, size=(classes, 3))
    score = responses[:, planted].sum(axis=2) + 0.5 * rng.standard_normal((n, classes), dtype=np.float32)
    return responses, (score > np.quantile(score, 0.95, axis=0)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=int, default=118_287)
    parser.add_argument("--val", type=int, default=5_000)
    parser.add_argument("--filters", type=int, default=512)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--mu", type=float, nargs="+", default=[0.05, 0.2])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x, labels = synthetic(args.train, args.filters, args.classes, rng)
    val_pooled, val_labels = synthetic(args.val, args.filters, args.classes, rng)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(args.filters, args.classes)).eval()
    with tempfile.TemporaryDirectory() as tmp, PeakMemory() as peak:
        maps = np.lib.format.open_memmap(Path(tmp) / "val_maps.npy", "w+", np.float16, (args.val, args.filters, 7, 7))
        for start in range(0, args.val, 500):  # the maps around the pooled values: pool(maps) = val_pooled
            maps[start : start + 500] = val_pooled[start : start + 500, :, None, None]
        maps.flush()
        times = {}
        start = time.perf_counter()
        moments = design_moments(x, labels, "standardised")
        times["moments"] = time.perf_counter() - start
        start = time.perf_counter()
        weights = constrained_lasso(moments, args.mu)
        times["lasso paths"] = time.perf_counter() - start
        setup = AblationSetup(head, maps, val_labels, np.ones(args.classes, bool), 256, torch.device("cpu"))
        start = time.perf_counter()
        original = setup.ap([])
        for m in range(len(args.mu)):
            row = ablation_row(setup, (weights[m] != 0).any(axis=0), original, args.repeats, 0, m)
            print(f"µ={args.mu[m]}: {row['dropped']}/{args.filters} dropped")
        times["ablation (union)"] = time.perf_counter() - start
        start = time.perf_counter()
        for m in range(len(args.mu)):
            class_rows(setup, weights[m], original, args.repeats, 0, m)
        times["ablation (per class)"] = time.perf_counter() - start
    for name, seconds in times.items():
        print(f"{name}: {seconds:.1f} s")
    print(f"total: {sum(times.values()):.1f} s; peak anonymous RSS {peak.peak.get('RssAnon', 0) / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
