"""Throughput of the probe's extraction beside the features stage's, on the same images and machine.

Issue 14's target: the probe set's images/s (listing the folder, checking every file, writing the
index, then the shared extraction pass) within 10% of the `features` stage's on the same images
(its pass over annotated images: the file checks ran earlier, in `annotations`). Both runs use
the same generated COCO-sized JPEGs (:func:`benchmarks.bench_features.generate_dataset`), model
(random weights), layer, batch size and workers; they alternate ``--repeats`` times and the
medians are compared, so a machine shared with other jobs affects both alike.

    python -m benchmarks.bench_probe --images 200 --threads 2 --workers 2
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_features import generate_dataset
from lavise.features.extract import ExtractionSettings, build_feature_cache
from lavise.probe.listing import ProbeSource, list_probe, probe_images, write_probe_index


def settings(args: argparse.Namespace) -> ExtractionSettings:
    return ExtractionSettings(
        model=args.model,
        weights="none",
        layer=args.layer,
        num_classes=None,
        resize=256,
        crop=224,
        batch_size=args.batch_size,
        chunk_images=256,
        device=torch.device(args.device),
        decode="workers",
    )


def features_rate(raw: Path, annotations: Path, out: Path, args: argparse.Namespace) -> float:
    """images/s of the features pass over the annotated images."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    result = build_feature_cache(annotations, raw, out, settings(args), num_workers=args.workers)
    return result["images_computed"] / (time.perf_counter() - started)


def probe_rate(raw: Path, work: Path, args: argparse.Namespace) -> float:
    """images/s of the probe: listing and checking the folder, the index, the same pass."""
    out, index = work / "probe_features", work / "probe_index"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    source = ProbeSource(raw, raw, "none")
    images = probe_images(list_probe(source), raw)
    write_probe_index(images, index, source)
    result = build_feature_cache(index, raw, out, settings(args), num_workers=args.workers)
    return result["images_computed"] / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-probe-") as tmp:
        work = Path(tmp)
        raw, annotations = generate_dataset(work / "data", args.images, seed=0)
        features, probe = [], []
        for _ in range(args.repeats):
            features.append(features_rate(raw, annotations, work / "features", args))
            probe.append(probe_rate(raw, work, args))
    f, p = float(np.median(features)), float(np.median(probe))
    print(f"features: {f:.1f} images/s (runs: {', '.join(f'{r:.1f}' for r in features)})")
    print(f"probe:    {p:.1f} images/s (runs: {', '.join(f'{r:.1f}' for r in probe)})")
    print(f"probe / features = {p / f:.3f} (target >= 0.90)")


if __name__ == "__main__":
    main()
