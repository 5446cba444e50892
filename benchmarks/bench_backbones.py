"""Images/s of the bare backbone up to its explained layer: vision transformers and timm models
beside ResNet-50 (issue 17).

Random weights (the speed does not depend on them), each model's own preset crop, batches of
``--batch-size`` normalised images, ``--batches`` timed after one warm-up batch. Also prints the
layer's map shape and the float16 cache bytes per evaluation image (the ``val_maps`` row).

    python -m benchmarks.bench_backbones --threads 2
    python -m benchmarks.bench_backbones --device cuda --batch-size 128 --batches 10
"""

from __future__ import annotations

import argparse
import time

import torch

from lavise.data.transforms import resolve_preprocessing
from lavise.models.extractor import build_feature_extractor
from lavise.models.presets import weights_preset

# name, layer, the weights whose preset gives the crop (the model is still built with random weights)
MODELS = [
    ("resnet50", "layer4", "IMAGENET1K_V2"),
    ("vit_b_16", "encoder.layers.encoder_layer_11", "IMAGENET1K_V1"),
    ("swin_t", "features.7", "IMAGENET1K_V1"),
    ("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", "blocks.11", "none"),
    ("timm/convnext_tiny.in12k_ft_in1k", "stages.3", "none"),
]


def images_per_second(
    name: str, layer: str, preset_weights: str, batch_size: int, batches: int, device: torch.device
) -> tuple[float, tuple[int, int, int], int]:
    """(images/s, map shape (d, h, w), crop) of the truncated model on random batches."""
    crop = resolve_preprocessing(weights_preset(name, preset_weights), {}).crop
    extractor = build_feature_extractor(name, "none", layer, crop=crop).to(device, memory_format=torch.channels_last)
    images = torch.randn(batch_size, 3, crop, crop, device=device).contiguous(memory_format=torch.channels_last)
    use_autocast = device.type == "cuda"
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
        maps = extractor(images)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        for _ in range(batches):
            extractor(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    return batch_size * batches / seconds, (int(maps.shape[1]), int(maps.shape[2]), int(maps.shape[3])), crop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="*", default=[m[0] for m in MODELS], help="a subset of the models below")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"{'model':50s} {'layer':32s} {'crop':>4s} {'maps':>14s} {'KB/img':>7s} {'images/s':>9s}")
    for name, layer, preset in MODELS:
        if name not in args.models:
            continue
        rate, shape, crop = images_per_second(name, layer, preset, args.batch_size, args.batches, device)
        kilobytes = shape[0] * shape[1] * shape[2] * 2 / 1000
        maps = "x".join(map(str, shape))
        print(f"{name:50s} {layer:32s} {crop:4d} {maps:>14s} {kilobytes:7.0f} {rate:9.1f}", flush=True)


if __name__ == "__main__":
    main()
