"""`train` stage: the LaViSE explainer from the feature cache (see lavise/training/explainer.py).

Steps: check the `train` settings, read the cache's train split and the class tokens, hold out
`train.holdout_fraction` of the training images (seeded by `train.seed`), train on the rest with
the epoch chosen on the hold-out, then write the explainer (weights + config), the per-epoch
history, its learning curves (PNG) and the metrics. The val split, which `evaluate` scores, is not read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lavise.devices import resolve_device
from lavise.features.cache import open_feature_cache
from lavise.io import write_json
from lavise.models.explainer import save_explainer
from lavise.outputs import check_one_set
from lavise.report.curves import write_learning_curves
from lavise.training.explainer import ExplainerFit, check_settings, train_explainer, write_history
from lavise.training.explainer_data import Classes, Split, load_class_vectors, load_classes, load_split, split_holdout
from stages.cli import run_stage, start_stage

log = logging.getLogger("stages.train")


@dataclass(frozen=True)
class Inputs:
    """Everything read from disk: the cache's meta.json, the classes, their embeddings, and the
    train split's samples divided into those trained on and those held out to choose the epoch."""

    meta: dict[str, Any]
    classes: Classes
    class_vectors: torch.Tensor  # [n_classes, emb_dim], L2-normalised
    train: Split
    holdout: Split


def load_inputs(
    features_dir: Path, annotations_dir: Path, embeddings_dir: Path, holdout_fraction: float, seed: int
) -> Inputs:
    """Open and check the cache once, read the classes, their GloVe vectors and the train split,
    and hold out a seeded slice of its images (enough left on both sides is checked there)."""
    check_one_set(Path(annotations_dir), ("images", "objects", "categories"), "annotations")
    cache = open_feature_cache(features_dir)
    classes = load_classes(Path(annotations_dir))
    class_vectors = load_class_vectors(Path(embeddings_dir), classes.tokens)
    train = load_split(cache, "train", classes)
    fit, holdout = split_holdout(train, holdout_fraction, seed, what="train.holdout_fraction")
    return Inputs(cache.meta, classes, class_vectors, fit, holdout)


def explainer_config(
    inputs: Inputs, fit: ExplainerFit, settings: Mapping[str, Any], embeddings_dir: Path, device: torch.device
) -> dict[str, Any]:
    """config.json next to the weights: what the explainer predicts, from what, trained how."""
    keys = ("margin", "optimizer", "lr", "lr_patience", "batch_size", "epochs", "holdout_fraction", "patience", "seed")
    return {
        "classes": inputs.classes.tokens,
        "seen_categories": inputs.classes.seen_categories,
        "embedding_dim": int(inputs.class_vectors.shape[1]),
        "embeddings_dir": str(embeddings_dir),
        "backbone": inputs.meta.get("backbone"),
        "weights": inputs.meta.get("weights"),
        "layer": inputs.meta.get("layer"),
        **{key: settings[key] for key in keys},
        "device": device.type,
        "best_epoch": fit.best["epoch"],
    }


def train_metrics(inputs: Inputs, fit: ExplainerFit, epochs: int, device: torch.device) -> dict[str, Any]:
    """metrics/train.json: the best epoch's hold-out scores, the last epoch's, and what was trained
    on and held out (objects and images)."""
    best, history = fit.best, fit.history
    return {
        "best_epoch": best["epoch"],
        "best_holdout_loss": best["holdout_loss"],
        "holdout_top1": best["holdout_top1"],
        "holdout_top5": best["holdout_top5"],
        "last_holdout_top1": history[-1]["holdout_top1"],
        "last_holdout_top5": history[-1]["holdout_top5"],
        "n_train": int(inputs.train.rows.size),
        "n_holdout": int(inputs.holdout.rows.size),
        "n_train_images": int(np.unique(inputs.train.image_ids).size),
        "n_holdout_images": int(np.unique(inputs.holdout.image_ids).size),
        "n_excluded_train": inputs.train.n_excluded,
        "n_classes": len(inputs.classes.tokens),
        "epochs_run": len(history),
        "stopped_early": len(history) < epochs,
        "device": device.type,
    }


def run_train(
    features_dir: Path,
    annotations_dir: Path,
    embeddings_dir: Path,
    out_dir: Path,
    metrics_path: Path,
    history_path: Path,
    settings: Mapping[str, Any],
    charts_dir: Path | None = None,
) -> dict[str, Any]:
    """The stage with the `train` params section ``settings``; returns the metrics plus the
    wall-clock seconds (which go to the log, not to the DVC metric: a rerun must reproduce it
    byte for byte). The learning-curve PNGs go to ``charts_dir`` (default: next to the history)."""
    started = time.perf_counter()
    check_settings(settings["optimizer"], settings["batch_size"], settings["epochs"], settings["patience"])
    device = resolve_device(settings["device"], "train.device")
    inputs = load_inputs(features_dir, annotations_dir, embeddings_dir, settings["holdout_fraction"], settings["seed"])
    fit = train_explainer(
        inputs.train,
        inputs.holdout,
        inputs.class_vectors,
        inputs.classes.positives,
        hidden_dim=settings["hidden_dim"],
        dropout=settings["dropout"],
        margin=settings["margin"],
        optimizer=settings["optimizer"],
        lr=settings["lr"],
        lr_patience=settings["lr_patience"],
        batch_size=settings["batch_size"],
        epochs=settings["epochs"],
        patience=settings["patience"],
        seed=settings["seed"],
        device=device,
        hidden_what="train.hidden_dim",
    )
    Path(metrics_path).unlink(missing_ok=True)  # written last: without it the set is unfinished
    save_explainer(fit.model, explainer_config(inputs, fit, settings, embeddings_dir, device), out_dir)
    write_history(Path(history_path), fit.history)
    columns = {column: [row[column] for row in fit.history] for column in fit.history[0]}
    write_learning_curves(Path(charts_dir or Path(history_path).parent), columns)
    metrics = train_metrics(inputs, fit, settings["epochs"], device)
    seconds = round(time.perf_counter() - started, 3)
    log.info("train: %d epochs in %.1f s", len(fit.history), seconds)
    write_json(Path(metrics_path), metrics)
    return {**metrics, "seconds": seconds}


def main() -> None:
    args, params = start_stage(
        __doc__,
        outputs=("out", "metrics", "history"),
        features="data/features",
        annotations="data/annotations",
        glove="data/raw/glove",
        out="models/explainer",
        metrics="metrics/train.json",
        history="plots/train_history.csv",
        charts="plots",
    )
    run_train(
        args.features, args.annotations, args.glove, args.out, args.metrics, args.history, params["train"], args.charts
    )


if __name__ == "__main__":
    run_stage(main)
