"""`target` stage: train the target CNN on the reference dataset (see lavise/training/target.py).

Runs only when `backbone.weights` is `target`; otherwise it records that nothing was trained.
Steps: read the labelled images, build the classifier from `target.init`, train, then write the
checkpoint with its config and the metrics. Reads the `target` section (and the backbone name,
the dataset and the `features` geometry `transform`), never `features.*`. With `target.nproc` > 1
the stage re-runs itself as that many torchrun processes training one DistributedDataParallel
model; rank 0 alone writes the checkpoint and the metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lavise.data.transforms import DEFAULT_PREPROCESSING, IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from lavise.devices import resolve_device
from lavise.distributed import current_world
from lavise.io import atomic_dir, json_float, write_json
from lavise.models.checkpoints import save_checkpoint
from lavise.models.classifier import build_classifier
from lavise.outputs import check_one_set
from lavise.training.target import LOSS_DESCRIPTION, OPTIMIZER_DESCRIPTION, TrainingResult, train_target_model
from lavise.training.target_data import MultiLabelData, load_multilabel_data
from stages.backbone_params import stage_preprocessing, validate_backbone
from stages.cli import run_stage, start_stage
from stages.launch import torchrun_launcher

log = logging.getLogger("stages.target")

TRAINING_KEYS = ("init", "epochs", "batch_size", "lr", "weight_decay", "crop", "seed")


def write_not_trained(out_dir: Path, metrics_path: Path, backbone_weights: str) -> dict[str, Any]:
    """The skip path: the backbone names its own weights, so nothing is trained."""
    log.info("target: backbone.weights is %r, nothing to train", backbone_weights)
    Path(metrics_path).unlink(missing_ok=True)  # written last: without it the set is unfinished
    with atomic_dir(out_dir) as tmp:
        write_json(
            tmp / "config.json",
            {
                "trained": False,
                "reason": f"backbone.weights is {backbone_weights!r}, not 'target': "
                "features loads those weights directly",
            },
        )
    write_json(metrics_path, {"trained": False})
    return {"trained": False}


def load_data(annotations_dir: Path, image_root: Path, max_pixels: int) -> MultiLabelData:
    """The labelled train/val images, read with the pixel limit inside ``image_root``; left-out
    images and objects are warned about."""
    check_one_set(annotations_dir, ("categories", "images", "objects"), "annotations")
    data = load_multilabel_data(annotations_dir, image_root, max_pixels)
    for key, value in data.counts.items():
        if value and ("not_ok" in key or "unlabelled" in key):
            log.warning("target: %s = %d", key, value)
    return data


def target_preprocessing(params: Mapping[str, Any]) -> Preprocessing:
    """The `features` preprocessing of the trained checkpoint (no preset: the `transform` values on
    the default), refused unless its interpolation and normalisation are the ones the training
    recipe uses (lavise/training/target.py: bilinear, ImageNet statistics)."""
    preprocessing = stage_preprocessing(params, "target")
    fixed = ("interpolation", "mean", "std")
    if any(getattr(preprocessing, key) != getattr(DEFAULT_PREPROCESSING, key) for key in fixed):
        raise ValueError(
            "backbone.weights is 'target', which trains with bilinear resizing and ImageNet statistics: leave "
            "transform.interpolation, transform.mean and transform.std null (or set them to those values)"
        )
    return preprocessing


def train(
    data: MultiLabelData,
    architecture: str,
    target: Mapping[str, Any],
    transform: Preprocessing,
    device: torch.device,
) -> TrainingResult:
    """Build the classifier from `target.init` and train it with the `target` settings."""
    log.info("target: %s from %s", architecture, target["init"])
    model = build_classifier(architecture, len(data.categories), target["init"], target["seed"], what="target.init")
    return train_target_model(
        data,
        model,
        epochs=target["epochs"],
        batch_size=target["batch_size"],
        lr=target["lr"],
        weight_decay=target["weight_decay"],
        crop=target["crop"],
        seed=target["seed"],
        eval_resize=transform.resize,
        eval_crop=transform.crop,
        num_workers=target["num_workers"],
        device=device,
    )


def checkpoint_config(
    architecture: str, data: MultiLabelData, target: Mapping[str, Any], result: TrainingResult
) -> dict[str, Any]:
    """config.json next to the checkpoint: the classes, how they were trained, the per-epoch scores."""
    return {
        "trained": True,
        "architecture": architecture,
        "num_classes": len(data.categories),
        "categories": data.categories,
        **{key: target[key] for key in TRAINING_KEYS},
        "optimizer": OPTIMIZER_DESCRIPTION,
        "loss": LOSS_DESCRIPTION,
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "val_map_per_epoch": [json_float(v) for v in result.val_map_per_epoch],
        "train_loss_per_epoch": [json_float(v) for v in result.train_loss_per_epoch],
        "val_map": json_float(result.val_map_per_epoch[-1]),
        "val_map_at_transform": json_float(result.val_map_at_transform),
        "images": data.counts,
        "skipped_unreadable": result.skipped_unreadable,
        "cached_in_memory": result.cached,
    }


def target_metrics(result: TrainingResult, epochs: int) -> dict[str, Any]:
    """metrics/target.json: the last epoch's scores (wall-clock times go to the log, not to
    DVC-tracked files: a rerun must reproduce them byte for byte)."""
    return {
        "trained": True,
        "val_map": json_float(result.val_map_per_epoch[-1]),
        "val_map_at_transform": json_float(result.val_map_at_transform),
        "train_loss": json_float(result.train_loss_per_epoch[-1]),
        "epochs": epochs,
        "skipped_unreadable": sum(result.skipped_unreadable.values()),
    }


def run_target(
    annotations_dir: Path, raw_dir: Path, out_dir: Path, metrics_path: Path, params: Mapping[str, Any]
) -> dict[str, Any]:
    """The stage with the validated ``params``: writes ``out_dir/model.safetensors`` +
    ``out_dir/config.json`` and ``metrics_path``; returns the metrics plus the training seconds."""
    backbone, target = params["backbone"], params["target"]
    is_main = current_world().is_main  # under torchrun only rank 0 writes
    if backbone["weights"] != "target":
        return write_not_trained(out_dir, metrics_path, backbone["weights"]) if is_main else {"trained": False}
    if target["batch_size"] % target["nproc"]:
        raise ValueError(
            f"target.batch_size {target['batch_size']} is the global batch: it must divide among "
            f"target.nproc = {target['nproc']} processes"
        )
    preprocessing = target_preprocessing(params)
    device = resolve_device(target["device"], "target.device")
    data = load_data(Path(annotations_dir), Path(raw_dir) / params["dataset"], params["images"]["max_pixels"])
    result = train(data, backbone["name"], target, preprocessing, device)
    if not is_main:
        return {**target_metrics(result, target["epochs"]), "written": False}
    Path(metrics_path).unlink(missing_ok=True)  # written last: without it the set is unfinished
    with atomic_dir(out_dir) as tmp:
        save_checkpoint(result.state_dict, tmp / "model.safetensors")
        write_json(tmp / "config.json", checkpoint_config(backbone["name"], data, target, result))
    metrics = target_metrics(result, target["epochs"])
    log.info("target: trained in %.1f s (%.1f CPU-s in the main process)", result.seconds, result.cpu_seconds)
    write_json(metrics_path, metrics)
    return {**metrics, "seconds": round(result.seconds, 2)}


def main() -> None:
    args, params = start_stage(
        __doc__,
        checks=(validate_backbone,),
        outputs=("out", "metrics"),
        launch=torchrun_launcher("target", "stages.target"),
        annotations="data/annotations",
        raw="data/raw",
        out="models/target",
        metrics="metrics/target.json",
    )
    run_target(args.annotations, args.raw, args.out, args.metrics, params)


if __name__ == "__main__":
    run_stage(main)
