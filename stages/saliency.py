"""`saliency` stage: per-image saliency maps of the target CNN's classes, scored against the masks.

Steps: check the model, layer and methods (before any image is read); load the trained model and
its random-weights control (lavise/saliency/models.py); for each chosen evaluation image, explain
its ground-truth classes with every method on both models, score them against the category
masks, against each other and with ROAD (lavise/saliency/run.py); then the intervals
(lavise/saliency/summary.py), the per-(image, class) table and the sheets.
Reads `images`, `dataset`, `backbone`, `transform` and `saliency` from params.yaml.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from lavise.data.images import DEFAULT_MAX_PIXELS, UnreadableImage, read_image
from lavise.data.masks import image_object_masks
from lavise.data.transforms import IMAGENET_MEAN, IMAGENET_STD, masks_to_crop
from lavise.devices import resolve_device
from lavise.io import atomic_dir, write_json, write_parquet
from lavise.models.backbones import skeleton
from lavise.models.checkpoints import resolve_weights
from lavise.outputs import check_one_set
from lavise.saliency.methods import MethodSettings
from lavise.saliency.models import cam_layer, load_models
from lavise.saliency.run import ImageSource, ScoreSettings, run_saliency
from lavise.saliency.sheets import write_case_sheet
from lavise.saliency.summary import Bootstrap, saliency_metrics
from stages.backbone_params import stage_preprocessing, validate_backbone
from stages.cli import run_stage, start_stage
from stages.params import fail

log = logging.getLogger("stages.saliency")

EVALUATION_SPLIT = "val"  # the images every stage scores on


@dataclass(frozen=True)
class Paths:
    """Inputs and outputs; ``raw`` is ``data/raw/<dataset>`` (image paths are relative to it)."""

    annotations: Path
    raw: Path
    metrics: Path
    results: Path


def layer_of(params: Mapping[str, Any]) -> str:
    """`saliency.layer`, or `backbone.layer` when null."""
    return params["saliency"]["layer"] or params["backbone"]["layer"]


def validate_saliency(params: Mapping[str, Any], root: Path) -> None:
    """The CAM layer must be a module before the classifier head (checked on the weightless skeleton)."""
    try:
        cam_layer(skeleton(params["backbone"]["name"]), layer_of(params))
    except ValueError as error:
        key = "saliency.layer" if params["saliency"]["layer"] else "backbone.layer"
        fail(key, layer_of(params), f"a module of {params['backbone']['name']} before its classifier head ({error})")


def evaluation_images(annotations: Path, count: int | str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The chosen evaluation images (first ``count`` by image id, or ``all``) and their objects."""
    check_one_set(annotations, ("images", "objects", "categories"), "annotations")
    images = pq.read_table(annotations / "images.parquet").to_pandas()
    images = images[images["split"] == EVALUATION_SPLIT].sort_values("image_id")
    if count != "all":
        images = images.head(int(count))
    if images.empty:
        raise ValueError(f"no evaluation images in {annotations / 'images.parquet'}")
    columns = ["image_id", "category", "kind", "rle", "boxes"]
    objects = pq.read_table(annotations / "objects.parquet", columns=columns).to_pandas()
    return images.set_index("image_id"), objects[objects["image_id"].isin(images["image_id"])]


def image_source(
    paths: Paths, images: pd.DataFrame, objects: pd.DataFrame, geometry: tuple[int, int], max_pixels: int
) -> ImageSource:
    """image id -> (decoded image or why not, {category: union of its objects' masks at the crop})."""
    groups = objects.groupby("image_id").indices

    def source(image_id: int) -> tuple[torch.Tensor | UnreadableImage, dict[str, np.ndarray]]:
        info = images.loc[image_id]
        image = read_image(paths.raw / str(info["path"]), max_pixels=max_pixels, root=paths.raw)
        subset = objects.iloc[groups.get(image_id, np.zeros(0, dtype=np.int64))]
        if subset.empty:
            return image, {}
        full = image_object_masks(subset, int(info["height"]), int(info["width"]))  # [n, H, W]
        masks = (masks_to_crop(torch.from_numpy(full), *geometry) >= 0.5).numpy()  # [n, S, S], binarised as evaluate's
        union: dict[str, np.ndarray] = {}
        for category, mask in zip(subset["category"], masks):
            union[category] = union.get(category, np.zeros_like(mask)) | mask
        return image, union

    return source


def settings_of(section: Mapping[str, Any]) -> tuple[MethodSettings, ScoreSettings, Bootstrap]:
    """The `saliency` section as the library's settings."""
    methods = MethodSettings(
        batch_size=int(section["batch_size"]),
        scorecam_channels=section["scorecam_channels"],
        ablationcam_channels=section["ablationcam_channels"],
        lime_samples=int(section["lime_samples"]),
        lime_features=int(section["lime_features"]),
        lime_hide_color=section["lime_hide_color"],
        seed=int(section["seed"]),
    )
    scores = ScoreSettings(
        tolerance=int(section["pointing_tolerance"]),
        top_q=float(section["top_q"]),
        sigma=float(section["gaussian_sigma"]),
        road_percentiles=list(section["road_percentiles"]),
        seed=int(section["seed"]),
        road_images=None if section["road_images"] == "all" else int(section["road_images"]),
    )
    bootstrap = Bootstrap(int(section["bootstrap_resamples"]), float(section["confidence"]), int(section["seed"]))
    return methods, scores, bootstrap


def run_saliency_stage(
    paths: Paths,
    backbone: Mapping[str, Any],
    layer: str,
    transform: Mapping[str, Any],
    section: Mapping[str, Any],
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> dict[str, Any]:
    """The stage with resolved ``backbone["weights"]`` and CAM ``layer``; returns the metrics."""
    device = resolve_device(section["device"], "saliency.device")
    geometry = (int(transform["resize"]), int(transform["crop"]))
    methods, scores, bootstrap = settings_of(section)
    models = load_models(
        backbone["name"],
        str(backbone["weights"]),
        layer,
        methods.seed,
        device,
        "backbone.weights",
        backbone.get("num_classes"),
    )
    images, objects = evaluation_images(paths.annotations, section["images"])
    log.info(
        "saliency: %d images, methods %s, ground truth: %s",
        len(images),
        section["methods"],
        models.categories is not None,
    )
    paths.metrics.unlink(missing_ok=True)
    with atomic_dir(paths.results / "sheets") as staging:
        result = run_saliency(
            images.index.to_numpy(),
            image_source(paths, images, objects, geometry, max_pixels),
            models,
            geometry,
            list(section["methods"]),
            methods,
            scores,
            (int(section["sheets"]), lambda case, maps: write_case_sheet(staging, case, maps)),
        )
        metrics = saliency_metrics(
            result, list(section["methods"]), models.categories is not None, bootstrap, scores.top_q
        )
        write_parquet(paths.results / "maps.parquet", pd.DataFrame(result.rows))
    write_json(paths.metrics, metrics)
    seconds = {m: round(result.seconds.get(m, 0.0) / max(result.images, 1), 4) for m in section["methods"]}
    write_json(paths.results / "timing.json", {"seconds_per_image": seconds})  # not a DVC output: it varies
    log.info("seconds per image: %s", seconds)
    return metrics


def main() -> None:
    args, params = start_stage(
        __doc__,
        checks=(validate_backbone, validate_saliency),
        outputs=("metrics", "results"),
        annotations="data/annotations",
        raw="data/raw",
        target_model="models/target",
        metrics="metrics/saliency.json",
        results="results/saliency",
    )
    backbone = params["backbone"]
    weights = resolve_weights(backbone["weights"], args.target_model, "backbone.weights")
    paths = Paths(args.annotations, args.raw / params["dataset"], args.metrics, args.results)
    run_saliency_stage(
        paths,
        {**backbone, "weights": weights},
        layer_of(params),
        saliency_geometry(params),
        params["saliency"],
        params["images"]["max_pixels"],
    )


def saliency_geometry(params: Mapping[str, Any]) -> dict[str, int]:
    """(resize, crop) of the model's preprocessing; the saliency adapters normalise with ImageNet's
    mean and std and resize bilinearly, so a preset asking for other values is refused here
    rather than explained with inputs the model never saw."""
    p = stage_preprocessing(params, params["backbone"]["weights"])
    if (p.mean, p.std, p.interpolation) != (IMAGENET_MEAN, IMAGENET_STD, "bilinear"):
        raise ValueError(
            f"saliency runs with ImageNet mean/std and bilinear resizing, but the preprocessing ({p.preset}) "
            f"asks for mean {p.mean}, std {p.std}, {p.interpolation}: set transform.mean, transform.std "
            "and transform.interpolation to the ImageNet defaults, or drop the saliency stage for this model"
        )
    return {"resize": p.resize, "crop": p.crop}


if __name__ == "__main__":
    run_stage(main)
