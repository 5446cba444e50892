"""The saliency pass: every chosen image, every method, the trained model and both controls.

Per image: the crop (``transform_geometry``, as everywhere), the classes to explain (the image's
ground-truth categories the model has as classes, whose mask survives the crop; or the predicted
top-1 class for a model without the dataset's classes), each method's maps on the trained and
the random-weights model, the Gaussian control, then the scores of every (image, class): ground
truth (pointing game, energy, top-region IoU), agreement between methods (top-q IoU) and ROAD.
One row per (image, class, model, method); memory is one image's maps at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lavise.data.images import UnreadableImage
from lavise.data.transforms import normalize_uint8, transform_geometry
from lavise.metrics.energy import energy_inside
from lavise.metrics.pointing_game import pointing_hit
from lavise.metrics.top_region_iou import agreement_matrix, top_region_iou
from lavise.saliency.controls import gaussian_map
from lavise.saliency.faithfulness import road_scores
from lavise.saliency.methods import REGISTRY, MethodSettings
from lavise.saliency.models import Models

log = logging.getLogger(__name__)

TRAINED, RANDOM, CONTROL = "trained", "random", "gaussian"  # the `model` column's values


@dataclass(frozen=True)
class ScoreSettings:
    """How maps are scored: pointing tolerance (px), agreement's q, Gaussian sigma (share of the
    crop), ROAD's percentiles, the seed of ROAD's noise, and how many of the explained images get
    ROAD (the first ones; None = all: two sparse solves per map make it the costliest score)."""

    tolerance: int
    top_q: float
    sigma: float
    road_percentiles: Sequence[int]
    seed: int
    road_images: int | None = None


@dataclass(frozen=True)
class Case:
    """One image to explain: uint8 crop and normalised input ``[3, S, S]``, classes ``[K]`` (model
    indices), their names, and their masks bool ``[K, S, S]`` (None without ground truth)."""

    image_id: int
    crop: torch.Tensor
    image: torch.Tensor
    classes: list[int]
    names: list[str]
    masks: np.ndarray | None


@dataclass
class Pass:
    """What the pass gathers: score rows, seconds per method (trained model), and the counts of
    images left out and why."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    images: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


# image_id -> (uint8 image [3, H, W] or why not, {category name: bool mask [S, S] at the crop})
ImageSource = Callable[[int], tuple["torch.Tensor | UnreadableImage", dict[str, np.ndarray]]]
SheetWriter = Callable[[Case, dict[str, np.ndarray]], None]


def make_case(
    image_id: int, source: ImageSource, models: Models, geometry: tuple[int, int], result: Pass
) -> Case | None:
    """The image's crop and classes; None (counted in ``result``) when there is nothing to explain."""
    image, masks = source(image_id)
    if isinstance(image, UnreadableImage):
        log.warning("saliency: %s, skipped", image)
        result.skip("unreadable")
        return None
    crop = transform_geometry(image, *geometry)
    normalised = normalize_uint8(crop)
    if models.categories is None:
        with torch.no_grad():
            logits = models.trained.model(normalised[None].to(models.trained.device))
        top = int(logits.argmax(dim=1)[0])
        return Case(image_id, crop, normalised, [top], [str(top)], None)
    index = {name: k for k, name in enumerate(models.categories)}
    names = [name for name in sorted(masks) if name in index and masks[name].any()]
    if not names:
        result.skip("no_ground_truth_class")
        return None
    stacked = np.stack([masks[name] for name in names])
    return Case(image_id, crop, normalised, [index[name] for name in names], names, stacked)


def explain_case(
    case: Case, models: Models, methods: Sequence[str], settings: MethodSettings, result: Pass
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each method's maps ``[K, S, S]`` on the trained model (timed) and, with ground truth, the random one."""
    trained, random = {}, {}
    for name in methods:
        explain = REGISTRY[name].explain
        start = time.perf_counter()
        trained[name] = explain(models.trained, case.image, case.crop, case.classes, settings)
        result.seconds[name] = result.seconds.get(name, 0.0) + time.perf_counter() - start
        if case.masks is not None:
            random[name] = explain(models.random, case.image, case.crop, case.classes, settings)
    return trained, random


def truth_scores(saliency: np.ndarray, mask: np.ndarray, tolerance: int) -> dict[str, Any]:
    """The three ground-truth scores of one map ``[S, S]`` against one mask ``[S, S]``."""
    return {
        "pointing_hit": pointing_hit(saliency, mask, tolerance),
        "energy": energy_inside(saliency, mask),
        "top_region_iou": top_region_iou(saliency, mask),
    }


def case_rows(
    case: Case,
    trained: dict[str, np.ndarray],
    random: dict[str, np.ndarray],
    models: Models,
    scores: ScoreSettings,
    with_road: bool = True,
) -> Iterable[dict[str, Any]]:
    """The rows of one image: per class, every method on the trained model (agreement, ROAD, NaN
    without ``with_road``, and, with ground truth, the mask scores), then the random model's and
    the Gaussian control's."""
    methods = list(trained)
    if with_road:
        seed = scores.seed + case.image_id
        road = road_scores(models.trained.model, case.image, trained, case.classes, scores.road_percentiles, seed)
    else:
        road = {name: np.full(len(case.classes), np.nan) for name in methods}
    gaussian = gaussian_map(case.crop.shape[-1], scores.sigma)
    for k, (label, name) in enumerate(zip(case.classes, case.names)):
        base = {"image_id": case.image_id, "category": name, "class_index": label}
        agreement = agreement_matrix(np.stack([trained[m][k] for m in methods]), scores.top_q)  # [M, M]
        mask = None if case.masks is None else case.masks[k]
        for i, method in enumerate(methods):
            row = {**base, "model": TRAINED, "method": method, "road": float(road[method][k])}
            row.update({f"agreement_{other}": float(agreement[i, j]) for j, other in enumerate(methods)})
            if mask is not None:
                row.update(truth_scores(trained[method][k], mask, scores.tolerance))
            yield row
        if mask is None:
            continue
        for method, maps in random.items():
            yield {**base, "model": RANDOM, "method": method, **truth_scores(maps[k], mask, scores.tolerance)}
        yield {**base, "model": CONTROL, "method": CONTROL, **truth_scores(gaussian, mask, scores.tolerance)}


def run_saliency(
    image_ids: Sequence[int],
    source: ImageSource,
    models: Models,
    geometry: tuple[int, int],
    methods: Sequence[str],
    settings: MethodSettings,
    scores: ScoreSettings,
    sheets: tuple[int, SheetWriter] | None = None,
) -> Pass:
    """The pass over ``image_ids``; ``sheets`` = (how many images, writer) draws the first ones."""
    result = Pass()
    for model in (models.trained.model, models.random.model):
        model.eval()
    for image_id in tqdm(image_ids, desc="saliency", unit="img"):
        case = make_case(int(image_id), source, models, geometry, result)
        if case is None:
            continue
        trained, random = explain_case(case, models, methods, settings, result)
        with_road = scores.road_images is None or result.images < scores.road_images
        result.rows.extend(case_rows(case, trained, random, models, scores, with_road))
        if sheets is not None and result.images < sheets[0]:
            sheets[1](case, trained)
        result.images += 1
    return result
