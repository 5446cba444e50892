"""`features` stage: one forward pass of the frozen CNN per image, cached (lavise/features/extract.py).

Reads `dataset`, `backbone`, `transform` and `features` from params.yaml; writes data/features in
the format of lavise/features/cache.py. The preprocessing is the weights' preset with the
`transform` values that are set on top (stages/backbone_params.py), recorded in meta.json. With
`features.nproc` > 1 the stage re-runs itself as that many torchrun processes
(lavise/distributed.py); the cache's bytes are the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lavise.devices import resolve_device, resolve_precision
from lavise.features.extract import ExtractionSettings, build_feature_cache
from lavise.models.checkpoints import resolve_weights
from stages.backbone_params import stage_preprocessing, validate_backbone
from stages.cli import run_stage, start_stage
from stages.launch import torchrun_launcher


def extraction_settings(params: dict[str, Any], target_model: Path) -> ExtractionSettings:
    """The params that change the cache's bytes, with `backbone.weights: target` resolved to the
    `target` stage's checkpoint, `features.device` to a device and `features.precision` to the
    autocast that runs there."""
    backbone, features = params["backbone"], params["features"]
    preprocessing = stage_preprocessing(params, backbone["weights"])
    device = resolve_device(features["device"], "features.device")
    return ExtractionSettings(
        model=backbone["name"],
        weights=resolve_weights(backbone["weights"], target_model, "backbone.weights"),
        layer=backbone["layer"],
        num_classes=backbone["num_classes"],
        resize=preprocessing.resize,
        crop=preprocessing.crop,
        batch_size=features["batch_size"],
        chunk_images=features["chunk_images"],
        device=device,
        decode=features["decode"],
        max_pixels=params["images"]["max_pixels"],
        precision=resolve_precision(features["precision"], device, "features.precision"),
        interpolation=preprocessing.interpolation,
        mean=preprocessing.mean,
        std=preprocessing.std,
        preset=preprocessing.preset,
    )


def main() -> None:
    args, params = start_stage(
        __doc__,
        checks=(validate_backbone,),
        outputs=("out",),
        launch=torchrun_launcher("features", "stages.features"),
        annotations="data/annotations",
        raw="data/raw",
        target_model="models/target",
        out="data/features",
    )
    build_cache(params, args.annotations, args.raw / params["dataset"], args.out, args.target_model)


def build_cache(params: dict[str, Any], annotations: Path, images_root: Path, out: Path, target_model: Path) -> None:
    """The feature cache of the images listed in ``annotations`` (files under ``images_root``) with
    the params' backbone, preprocessing and `features` settings; shared with `probe_features`."""
    build_feature_cache(
        annotations,
        images_root,
        out,
        extraction_settings(params, target_model),
        num_workers=params["features"]["num_workers"],
        resize_what="transform.resize",
        weights_what="backbone.weights",
    )


if __name__ == "__main__":
    run_stage(main)
