"""The saliency metrics: per method the mean of each score over (image, class) with a cluster
bootstrap interval (clusters = images, as an image's classes share its pixels), seconds per
image, the same scores on the random-weights model, the Gaussian control, and the agreement
matrix. Without ground truth (a model whose classes are not the dataset's) the mask scores are
absent and the metrics say so."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lavise.io import json_float
from lavise.metrics.bootstrap import bootstrap_mean
from lavise.saliency.run import CONTROL, RANDOM, TRAINED, Pass

TRUTH_SCORES = {"pointing_game": "pointing_hit", "energy": "energy", "top_region_iou": "top_region_iou"}
NO_TRUTH = "none: the model's classes are not the dataset's categories; its top-1 class is explained"


@dataclass(frozen=True)
class Bootstrap:
    """Resamples, confidence level and seed of every interval."""

    n_resamples: int
    confidence: float
    seed: int


def interval(rows: pd.DataFrame, column: str, bootstrap: Bootstrap) -> dict[str, float | None]:
    """Mean and interval of ``column`` over ``rows``, resampling images."""
    values = rows[column].to_numpy(np.float64)
    found = bootstrap_mean(
        values,
        clusters=rows["image_id"].to_numpy(),
        n_resamples=bootstrap.n_resamples,
        confidence=bootstrap.confidence,
        seed=bootstrap.seed,
    )
    return {key: json_float(value) for key, value in found.as_dict().items()}


def truth_entry(rows: pd.DataFrame, bootstrap: Bootstrap) -> dict[str, Any]:
    """Pointing game, energy and top-region IoU of one (model, method)'s rows."""
    return {name: interval(rows, column, bootstrap) for name, column in TRUTH_SCORES.items()}


def method_entry(name: str, rows: pd.DataFrame, result: Pass, bootstrap: Bootstrap, truth: bool) -> dict[str, Any]:
    """One method's metrics: scores on the trained model, ROAD, random control (its seconds per image
    are not a metric: they differ on every run, and metrics/ must reproduce byte for byte)."""
    trained = rows[(rows["model"] == TRAINED) & (rows["method"] == name)]
    entry: dict[str, Any] = truth_entry(trained, bootstrap) if truth else {}
    entry["road"] = interval(trained[trained["road"].notna()], "road", bootstrap)
    if truth:
        entry["random_weights"] = truth_entry(rows[(rows["model"] == RANDOM) & (rows["method"] == name)], bootstrap)
    return entry


def agreement(rows: pd.DataFrame, methods: Sequence[str], bootstrap: Bootstrap) -> dict[str, dict[str, Any]]:
    """``matrix[a][b]``: mean and interval of the top-q IoU of methods a and b over (image, class)."""
    trained = rows[rows["model"] == TRAINED]
    return {
        a: {b: interval(trained[trained["method"] == a], f"agreement_{b}", bootstrap) for b in methods} for a in methods
    }


def saliency_metrics(
    result: Pass, methods: Sequence[str], truth: bool, bootstrap: Bootstrap, top_q: float
) -> dict[str, Any]:
    """The metrics JSON of one pass."""
    rows = pd.DataFrame(result.rows)
    if not len(rows):
        raise ValueError(f"no (image, class) to explain: every chosen image was skipped ({result.skipped})")
    pairs = int(len(rows[rows["model"] == TRAINED]) // len(methods))
    metrics: dict[str, Any] = {
        "ground_truth": "masks of the image's categories" if truth else NO_TRUTH,
        "images": result.images,
        "images_skipped": dict(sorted(result.skipped.items())),
        "pairs": pairs,
        "road_pairs": int(rows[rows["model"] == TRAINED]["road"].notna().sum() // len(methods)),
    }
    metrics["methods"] = {name: method_entry(name, rows, result, bootstrap, truth) for name in methods}
    if truth:
        metrics[CONTROL] = truth_entry(rows[rows["model"] == CONTROL], bootstrap)
    metrics["agreement_top_q"] = top_q
    metrics["agreement"] = agreement(rows, methods, bootstrap)
    return metrics
