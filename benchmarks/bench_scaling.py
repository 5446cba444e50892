"""Scaling out the features stage: several torchrun processes, and the CNN's precision.

``--nproc 1 2`` runs the whole stage (``build_feature_cache``) on a generated set of COCO-sized
JPEGs as N torchrun processes (``python -m torch.distributed.run --standalone``) and prints
the all-process rate (images / the slowest rank's seconds), the per-process rate and the ratio
to one process. On CPU the N processes split ``--threads`` cores (``OMP_NUM_THREADS`` each);
on CUDA each takes one GPU, so ``--nproc 1 8`` gives the per-GPU and all-GPU rates.
``--precision fp32 bf16`` builds the cache at each precision in this process and prints its
images/s and the largest absolute and relative difference of the cached maps from the first
precision's. ``--recall A.json B.json`` prints recall@5 per method of two metrics/recall.json
(e.g. the demo at fp32 and at bf16: ``dvc exp run -S features.precision=bf16``) and their
difference.

    python -m benchmarks.bench_scaling --images 256 --threads 2 --nproc 1 2
    python -m benchmarks.bench_scaling --images 128 --threads 2 --precision fp32 bf16
    python -m benchmarks.bench_scaling --device cuda --images 8192 --workers 8 --batch-size 256 \\
        --nproc 1 8 --models resnet18 resnet50 --decode workers device --precision bf16
    python -m benchmarks.bench_scaling --recall metrics/recall.json /tmp/bf16/recall.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_features import generate_dataset, stage_settings
from lavise.devices import resolve_precision
from lavise.distributed import torchrun_command
from lavise.features.cache import open_feature_cache
from lavise.features.extract import ExtractionSettings, build_feature_cache
from lavise.options import DECODE_MODES, PRECISIONS

ARGS = ("layer", "batch_size", "resize", "crop", "device", "workers", "chunk_images", "seed")  # what a rank needs


def _arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--models", nargs="+", default=["resnet18"])
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="cores shared by the processes")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers per process")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--chunk-images", type=int, default=64)
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--decode", nargs="+", choices=DECODE_MODES, default=["workers"])
    parser.add_argument("--nproc", type=int, nargs="+", default=[], help="process counts to time")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["auto"])
    parser.add_argument("--recall", nargs=2, type=Path, metavar=("A", "B"), help="two recall.json to compare")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rank-run", type=Path, help=argparse.SUPPRESS)  # internal: one torchrun rank
    return parser


def _settings(args: argparse.Namespace, name: str, decode: str, precision: str) -> ExtractionSettings:
    settings = replace(stage_settings(name, args, decode), chunk_images=args.chunk_images)
    return replace(settings, precision=resolve_precision(precision, settings.device, "--precision"))


def _rank_run(job: Path) -> None:
    """One torchrun rank: build the cache of ``job``'s settings and write its timing beside it."""
    spec = json.loads(job.read_text())
    args = argparse.Namespace(**spec["args"])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    settings = _settings(args, spec["model"], spec["decode"], spec["precision"])
    result = build_feature_cache(
        Path(spec["annotations"]), Path(spec["raw"]), Path(spec["out"]), settings, num_workers=args.workers
    )
    rank = os.environ.get("RANK", "0")
    (job.parent / f"rank{rank}.json").write_text(
        json.dumps({"images": result["images_computed"], "seconds": result["seconds"]})
    )


def _time_nproc(args: argparse.Namespace, root: Path, data: tuple[Path, Path], spec: dict, nproc: int) -> dict:
    """Run the stage as ``nproc`` torchrun processes; (all-process rate, per-process rates)."""
    job_dir = root / f"job_{spec['model']}_{spec['decode']}_{nproc}"
    job_dir.mkdir()
    raw, annotations = data
    job = {**spec, "raw": str(raw), "annotations": str(annotations), "out": str(job_dir / "features")}
    (job_dir / "job.json").write_text(json.dumps({**job, "args": {k: v for k, v in vars(args).items() if k in ARGS}}))
    threads = max(1, args.threads // nproc)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    command = torchrun_command(nproc, ["-m", "benchmarks.bench_scaling", "--rank-run", str(job_dir / "job.json")])
    subprocess.run(command, env=env, check=True, capture_output=True)
    ranks = [json.loads((job_dir / f"rank{rank}.json").read_text()) for rank in range(nproc)]
    total = sum(rank["images"] for rank in ranks)
    return {
        "rate": total / max(rank["seconds"] for rank in ranks),
        "per_process": [rank["images"] / rank["seconds"] for rank in ranks],
        "threads": threads,
    }


def scaling(args: argparse.Namespace, root: Path) -> None:
    """images/s of the stage at each ``--nproc``, with the ratio to the first count."""
    data = generate_dataset(root / "scaling", args.images, args.seed)
    for name in args.models:
        for decode in args.decode:
            spec = {"model": name, "decode": decode, "precision": args.precision[0]}
            first = None
            for nproc in args.nproc:
                timed = _time_nproc(args, root, data, spec, nproc)
                first = first or timed["rate"]
                per_process = ", ".join(f"{rate:.1f}" for rate in timed["per_process"])
                print(
                    f"{name} {args.layer} decode={decode} {args.device} nproc={nproc} ({timed['threads']} threads "
                    f"each): {timed['rate']:8.1f} images/s all processes | per process {per_process} | "
                    f"x{timed['rate'] / first:.2f} of nproc={args.nproc[0]}"
                )


def _map_differences(reference: np.ndarray, other: np.ndarray) -> tuple[float, float, float]:
    """(max |a - b|, that over max |a|, max elementwise |a - b| / |a| where |a| > 1% of max |a|)."""
    difference = np.abs(other - reference)
    largest = float(np.abs(reference).max()) or 1.0
    large = np.abs(reference) > 0.01 * largest
    elementwise = float((difference[large] / np.abs(reference[large])).max()) if large.any() else 0.0
    return float(difference.max()), float(difference.max()) / largest, elementwise


def precision(args: argparse.Namespace, root: Path) -> None:
    """images/s and the cached maps' differences at each ``--precision`` (one process)."""
    raw, annotations = generate_dataset(root / "precision", args.images, args.seed)
    torch.set_num_threads(args.threads)
    for name in args.models:
        reference = None
        for choice in args.precision:
            settings = _settings(args, name, args.decode[0], choice)
            out = root / f"features_{name}_{choice}"
            result = build_feature_cache(annotations, raw, out, settings, num_workers=args.workers)
            maps = np.asarray(open_feature_cache(out).val_maps, dtype=np.float32)
            rate = result["images_computed"] / result["seconds"]
            line = f"{name} {args.layer} {settings.precision} on {args.device}: {rate:8.1f} images/s"
            if reference is None:
                reference = maps
            else:
                absolute, relative, elementwise = _map_differences(reference, maps)
                line += (
                    f" | maps vs {args.precision[0]}: max abs diff {absolute:.4g} ({relative:.2%} of the largest "
                    f"activation), max elementwise rel diff {elementwise:.2%} (activations > 1% of the largest)"
                )
            print(line)


def recall_difference(a: Path, b: Path) -> None:
    """recall@5 per method in two recall.json files and B - A."""
    first, second = json.loads(a.read_text()), json.loads(b.read_text())
    for method in first:
        if isinstance(first[method], dict) and "recall@5" in first[method]:
            x, y = first[method]["recall@5"], second[method]["recall@5"]
            print(f"{method:20s} recall@5 {x:.4f} -> {y:.4f} ({y - x:+.4f})")


def main() -> None:
    args = _arguments().parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.rank_run:
        _rank_run(args.rank_run)
        return
    if args.recall:
        recall_difference(*args.recall)
        return
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
        if args.nproc:
            scaling(args, Path(tmp))
        if len(args.precision) > 1:
            precision(args, Path(tmp))


if __name__ == "__main__":
    main()
