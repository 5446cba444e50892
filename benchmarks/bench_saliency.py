"""Images per second of each saliency method on a ResNet-18 at 224 px (random weights, random
images, so no dataset or download is needed), one class per image as the demo averages ~1.5.

Prints, per method, images/s and seconds/image with the settings of params.yaml's `saliency`
section (the demo's: Score-CAM on its top 64 channels, Ablation-CAM on every channel through the
head, LIME 50 samples; ``--published`` uses every channel and LIME's 1000 samples, the study's
setting), plus ROAD's seconds per map (all methods' maps of one image scored together, as the
stage does).

    TQDM_DISABLE=1 python -m benchmarks.bench_saliency [--images 4] [--classes 1] [--device cpu] [--published]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
import torchvision
import yaml

from lavise.data.transforms import normalize_uint8
from lavise.saliency.faithfulness import road_scores
from lavise.saliency.methods import REGISTRY, Explainee
from lavise.saliency.models import head_or_none
from stages.saliency import settings_of

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--classes", type=int, default=1, help="classes explained per image")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--published", action="store_true", help="all channels, 1000 LIME samples")
    args = parser.parse_args()
    settings, _, _ = settings_of(yaml.safe_load((ROOT / "params.yaml").read_text())["saliency"])
    if args.published:
        settings = dataclasses.replace(settings, scorecam_channels=None, ablationcam_channels=None, lime_samples=1000)
    device = torch.device(args.device)
    model = torchvision.models.resnet18(num_classes=13).eval().to(device)
    explainee = Explainee(model, model.layer4, torch.sigmoid, head_or_none(model, "layer4"))
    generator = torch.Generator().manual_seed(0)
    crops = torch.randint(0, 256, (args.images, 3, 224, 224), dtype=torch.uint8, generator=generator)
    classes = list(range(args.classes))
    print(f"{args.images} images x {args.classes} class(es), {device}, torch threads {torch.get_num_threads()}")
    maps = {}
    for name, method in REGISTRY.items():
        started = time.perf_counter()
        for crop in crops:
            maps[name] = method.explain(explainee, normalize_uint8(crop), crop, classes, settings)
        seconds = (time.perf_counter() - started) / args.images
        print(f"{name:12s} {1 / seconds:8.3f} images/s  {seconds:8.3f} s/image")
    started = time.perf_counter()
    road_scores(model, normalize_uint8(crops[-1]), maps, classes, [50], seed=0)
    print(f"{'road [50]':12s} {(time.perf_counter() - started) / (len(classes) * len(maps)):8.3f} s/map")


if __name__ == "__main__":
    main()
