"""Exact T_u at scale: one pass over a float16 map cache larger than the working-memory budget.

Writes a random ``[N, d, h, w]`` float16 cache (default 4000 × 1024 × 14 × 14 = 1.6 GB, the
shape of a ResNet-50 layer3 cache over 4000 images) in a temporary directory, then times
``filter_thresholds`` for every filter and prints: seconds, how many times the image axis was
read (1 = a single sequential pass), the thresholds' agreement with ``np.quantile`` on a sample
of filters, and the peak anonymous memory the call added (the cache's own mapped pages are page
cache, not counted).

    python -m benchmarks.bench_thresholds [--images 4000] [--channels 1024] [--grid 14] [--budget-mib 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.memory import PeakMemory
from lavise.features.thresholds import filter_thresholds


class CountingMaps:
    """Array-like over the memory-mapped cache that counts reads of image rows."""

    def __init__(self, maps: np.ndarray) -> None:
        self.maps, self.shape, self.dtype, self.ndim = maps, maps.shape, maps.dtype, maps.ndim
        self.rows_read = 0

    def __getitem__(self, index: object) -> np.ndarray:
        rows = index[0] if isinstance(index, tuple) else index
        self.rows_read += len(range(*rows.indices(self.shape[0]))) if isinstance(rows, slice) else 1
        return self.maps[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--channels", type=int, default=1024)
    parser.add_argument("--grid", type=int, default=14)
    parser.add_argument("--budget-mib", type=int, default=256)
    parser.add_argument("--quantile", type=float, default=0.995)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shape = (args.images, args.channels, args.grid, args.grid)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench_thresholds_") as tmp:
        path = Path(tmp) / "val_maps.npy"
        maps = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
        for start in range(0, args.images, 256):
            stop = min(start + 256, args.images)
            maps[start:stop] = rng.standard_normal((stop - start, *shape[1:]), dtype=np.float32).clip(min=0)
        maps.flush()
        del maps
        counting = CountingMaps(np.load(path, mmap_mode="r"))
        started = time.perf_counter()
        with PeakMemory() as peak:
            before = peak.peak["RssAnon"]
            thresholds, _ = filter_thresholds(
                counting,
                args.quantile,
                np.arange(args.channels),
                memory_bytes=args.budget_mib << 20,
                scratch_dir=tmp,
            )
        seconds = time.perf_counter() - started
        sample = np.linspace(0, args.channels - 1, 8).astype(int)
        reference = [np.quantile(counting.maps[:, u].astype(np.float32), args.quantile) for u in sample]
        exact = bool(np.all(thresholds[sample] == np.float32(reference)))
    size_gb = np.prod(shape) * 2 / 1e9
    print(f"cache {shape} float16 = {size_gb:.2f} GB, budget {args.budget_mib} MiB")
    print(
        f"filter_thresholds: {seconds:.1f} s, image axis read {counting.rows_read / args.images:.2f} times, "
        f"equal to np.quantile on 8 filters: {exact}"
    )
    print(f"peak RssAnon added: {(peak.peak['RssAnon'] - before) / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
