"""`evaluate` stage: explain every filter of the cached layer with every method, score each with recall@s.

Steps: open the feature cache, choose the filters, read the annotations, the vocabulary and the
explainer; thresholds T_u and top images (lavise/features/thresholds.py); one pass over the maps
(lavise/explain/stream.py) that explains every (filter, top image) pair with every registered
method (lavise/explain/explaining.py) and computes each pair's ground truth and NetDissect's
sums (lavise/metrics/ground_truth.py); the nearest words (lavise/explain/words.py); recall, the
presence correlation and AUPRC, and their bootstrap intervals per method and NetDissect
(lavise/metrics/); then the tables, the metrics, the headline summary and the heatmaps.
Reads `dataset`, `backbone`, `transform`, `images` and `evaluate` from params.yaml.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from lavise.data.embeddings import WordEmbeddings
from lavise.data.images import DEFAULT_MAX_PIXELS, read_image
from lavise.data.transforms import Preprocessing, resolve_preprocessing
from lavise.data.vocabulary import Categories, Vocabulary, load_categories, load_vocabulary
from lavise.devices import resolve_device
from lavise.explain.explaining import CnnInputs, CnnSource, ExplainingConsumer, MethodOutputs, cnn_inputs
from lavise.explain.filters import filters_label, resolve_filters
from lavise.explain.heatmaps import write_heatmaps
from lavise.explain.results import ResultRows, write_tables
from lavise.explain.stream import stream_maps
from lavise.explain.words import filter_explanations, image_weights, method_words
from lavise.features.cache import FeatureCache, open_feature_cache
from lavise.features.thresholds import TopImagePairs, filter_thresholds, top_images
from lavise.io import atomic_dir, write_json
from lavise.metrics.ground_truth import GroundTruthConsumer, ObjectMasks
from lavise.metrics.intervals import BootstrapSettings, Figure, figure_intervals
from lavise.metrics.netdissect import NETDISSECT, NetDissectResult, fold_label_tokens, netdissect_metrics, other_fold
from lavise.metrics.presence import (
    PresenceScores,
    image_tokens,
    named_tokens,
    presence,
    presence_entry,
    presence_scores,
)
from lavise.metrics.recall import TruthTokens, truth_tokens, word_recall_metrics
from lavise.metrics.summary import headline
from lavise.models.checkpoints import resolve_weights
from lavise.models.explainer import load_checked_explainer
from lavise.outputs import check_one_set
from stages.backbone_params import stage_preprocessing, validate_backbone
from stages.cli import run_stage, start_stage

log = logging.getLogger("stages.evaluate")

OBJECT_COLUMNS = ["object_id", "image_id", "category", "kind", "rle", "boxes"]
ANNOTATION_TABLES = ("images", "objects", "categories")


@dataclass(frozen=True)
class Paths:
    """The stage's inputs and outputs; ``raw`` is the reference dataset's raw directory
    (``data/raw/<dataset>``): image paths in images.parquet are relative to it."""

    features: Path
    annotations: Path
    explainer: Path
    glove: Path
    wordnet: Path
    raw: Path
    metrics: Path
    results: Path
    summary: Path
    target_metrics: Path


@dataclass(frozen=True)
class Annotations:
    """The evaluation images (indexed by ``image_id``), the kept categories and every object."""

    images: pd.DataFrame
    categories: Categories
    objects: pd.DataFrame


@dataclass(frozen=True)
class Inputs:
    """Everything read before the pass: the cache, each map row's image id ``[N]``, the annotations,
    the vocabulary, the explainer, the evaluated filters ``[F]`` and ``cnn_filters`` bool ``[F]``
    (the filters the methods that re-run the CNN are run on)."""

    cache: FeatureCache
    image_ids: np.ndarray
    annotations: Annotations
    vocabulary: Vocabulary
    explainer: torch.nn.Module
    filters: np.ndarray
    cnn_filters: np.ndarray


@dataclass(frozen=True)
class Selection:
    """The thresholds ``[F]``, per-image maxima ``[N, F]`` and top images ``[F, p]`` of the
    evaluated filters, and the (filter, top image) pairs they give."""

    thresholds: np.ndarray
    image_max: np.ndarray
    top_rows: np.ndarray
    pairs: TopImagePairs


@dataclass(frozen=True)
class Scoring:
    """What every method is scored with: ``weights`` (votes of each pair's image) and ``no_region``
    (the pair's map never exceeds T_u) are ``[P]``; ``vectors`` the vocabulary on the device;
    ``contains`` bool ``[N, T]`` the tokens of each evaluation image's objects."""

    inputs: Inputs
    selection: Selection
    truth: TruthTokens
    vectors: torch.Tensor
    s_values: list[int]
    explain_words: int
    weights: np.ndarray
    no_region: np.ndarray
    contains: np.ndarray
    presence_top_k: int
    bootstrap: BootstrapSettings


def open_cache(directory: Path) -> FeatureCache:
    """The feature cache (its format checked by ``open_feature_cache``), which must hold evaluation maps."""
    cache = open_feature_cache(directory)
    if cache.val_maps.shape[0] == 0:
        raise ValueError("no evaluation images in the feature cache")
    return cache


def choose_filters(settings: Mapping[str, Any], n_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """`evaluate.filters` ``[F]``, and which of them `evaluate.image_masking_filters` also names;
    `evaluate.heatmap_filters` is checked against the layer here too, before any work."""
    filters = resolve_filters(settings["filters"], n_channels, "evaluate.filters")
    masking = resolve_filters(settings["image_masking_filters"], n_channels, "evaluate.image_masking_filters")
    if settings["heatmap_filters"]:
        resolve_filters(settings["heatmap_filters"], n_channels, "evaluate.heatmap_filters")
    return filters, np.isin(filters, masking)


def load_annotations(directory: Path, image_ids: np.ndarray) -> Annotations:
    """images, categories and objects tables, of one annotations run; every evaluation image must be
    in the images table."""
    check_one_set(directory, ANNOTATION_TABLES, "annotations")
    images = pq.read_table(directory / "images.parquet").to_pandas().set_index("image_id")
    missing = np.setdiff1d(image_ids, images.index.to_numpy())
    if len(missing):
        raise ValueError(f"{len(missing)} evaluation image(s) absent from the annotations, e.g. {missing[:5].tolist()}")
    categories = load_categories(pq.read_table(directory / "categories.parquet").to_pandas())
    objects = pq.read_table(directory / "objects.parquet", columns=OBJECT_COLUMNS).to_pandas()
    return Annotations(images, categories, objects)


def load_inputs(paths: Paths, settings: Mapping[str, Any], device: torch.device) -> Inputs:
    """Read and check everything the pass needs, failing before any work on a bad input."""
    cache = open_cache(paths.features)
    image_ids = cache.val_images["image_id"].to_numpy(np.int64)
    n_channels = cache.val_maps.shape[1]
    filters, cnn_filters = choose_filters(settings, n_channels)
    annotations = load_annotations(paths.annotations, image_ids)
    embeddings = WordEmbeddings.load(paths.glove)
    vocabulary = load_vocabulary(embeddings, settings["vocabulary"], annotations.categories.tokens, paths.wordnet)
    explainer = load_checked_explainer(paths.explainer, device, n_channels, vocabulary.vectors.shape[1])
    return Inputs(cache, image_ids, annotations, vocabulary, explainer, filters, cnn_filters)


def select_pairs(inputs: Inputs, settings: Mapping[str, Any]) -> Selection:
    """T_u and the top-p images of every evaluated filter (one pass over the maps), and their pairs."""
    maps = inputs.cache.val_maps
    log.info("thresholds for %d filters over %d images", len(inputs.filters), maps.shape[0])
    thresholds, image_max = filter_thresholds(maps, float(settings["quantile"]), inputs.filters)
    top_rows = top_images(image_max, int(settings["p"]))
    pairs = TopImagePairs(top_rows)
    log.info("%d (filter, image) pairs", len(pairs))
    return Selection(thresholds, image_max, top_rows, pairs)


def explain_and_find_truth(
    inputs: Inputs,
    selection: Selection,
    settings: Mapping[str, Any],
    cnn: CnnInputs | None,
    geometry: tuple[int, int, str],
    device: torch.device,
) -> tuple[dict[str, MethodOutputs], GroundTruthConsumer]:
    """The one pass over the maps: explainer outputs of every method, ground truth, NetDissect's sums."""
    maps, annotations = inputs.cache.val_maps, inputs.annotations
    masks = ObjectMasks(
        annotations.objects, annotations.images, inputs.image_ids, annotations.categories.index, *geometry
    )
    explaining = ExplainingConsumer(
        inputs.explainer,
        selection.pairs,
        inputs.filters,
        selection.thresholds,
        maps.shape,
        batch_size=int(settings["batch_size"]),
        device=device,
        cnn=cnn,
    )
    ground_truth = GroundTruthConsumer(
        selection.pairs,
        inputs.filters,
        selection.thresholds,
        selection.image_max,
        masks,
        n_channels=maps.shape[1],
        n_categories=len(annotations.categories.names),
        iou_threshold=float(settings["iou_threshold"]),
        crop=geometry[1],
        device=device,
    )
    stream_maps(maps, [explaining, ground_truth], device)
    return explaining.outputs, ground_truth


def score_method(outputs: MethodOutputs, scoring: Scoring, rows: ResultRows) -> dict[str, Any]:
    """One method: the words of its pairs, recall@s, its explanation per filter; returns its metrics entry."""
    inputs, pairs, method = scoring.inputs, scoring.selection.pairs, outputs.method
    ids = method_words(outputs, pairs, scoring.vectors, max(scoring.s_values), scoring.no_region)
    log.info("words for %s: %d pairs", method.name, len(outputs.pairs))
    positions = np.flatnonzero(inputs.cnn_filters) if method.needs_cnn else np.arange(len(inputs.filters))
    pair_filter = pairs.filter_pos[outputs.pairs]
    tokens = inputs.vocabulary.token_of_word[ids]
    entry, figures = word_recall_metrics(
        tokens, scoring.truth[outputs.pairs], pair_filter, len(positions), scoring.s_values
    )
    if method.needs_cnn:
        entry["filters"] = filters_label(inputs.filters, inputs.cnn_filters, inputs.cache.val_maps.shape[1])
    explanations = filter_explanations(
        ids[:, : scoring.explain_words], scoring.weights[outputs.pairs], pairs, outputs.pairs, len(inputs.filters)
    )
    entry["n_distinct_concepts"] = len({words[0] for words, _ in explanations.values() if words})
    named = named_tokens(
        explanations, positions, inputs.vocabulary.token_of_word, scoring.presence_top_k, scoring.contains.shape[1]
    )
    scores = presence_scores(scoring.selection.image_max[:, positions], presence(scoring.contains, named))
    add_presence(entry, scoring, {k: (v, pairs.row[outputs.pairs]) for k, v in figures.items()}, scores)
    per_s = {s: figures[f"recall@{s}"] for s in scoring.s_values}
    rows.add_scores(method.name, positions, per_s, pair_filter, presence_columns(scores))
    rows.add_explanations(method.name, positions, explanations)
    return entry


def add_presence(
    entry: dict[str, Any], scoring: Scoring, pair_figures: Mapping[str, Figure], scores: PresenceScores
) -> None:
    """The presence figures and the ``interval`` of every figure into a metrics ``entry``: recall
    figures (values per pair, clustered by image) and the presence means (values per filter)."""
    entry.update(presence_entry(scores))
    figures = {**pair_figures, "correlation": (scores.correlation, None), "auprc": (scores.auprc, None)}
    entry["interval"] = figure_intervals(figures, scoring.bootstrap)


def presence_columns(scores: PresenceScores) -> dict[str, np.ndarray]:
    """The per-filter presence scores as filters.parquet columns."""
    return {"correlation": scores.correlation, "auprc": scores.auprc}


def score(
    inputs: Inputs,
    selection: Selection,
    outputs: dict[str, MethodOutputs],
    ground_truth: GroundTruthConsumer,
    settings: Mapping[str, Any],
    device: torch.device,
) -> tuple[dict[str, Any], ResultRows, NetDissectResult]:
    """Every method in registry order, then NetDissect: the metrics and the rows of both tables."""
    pairs, categories = selection.pairs, inputs.annotations.categories
    max_activation = selection.image_max[pairs.row, pairs.filter_pos]
    scoring = Scoring(
        inputs=inputs,
        selection=selection,
        truth=truth_tokens(ground_truth.truth, categories),
        vectors=inputs.vocabulary.vectors.to(device),
        s_values=s_values(settings),
        explain_words=min(int(s) for s in settings["top_s"]),
        weights=image_weights(max_activation, settings["word_weighting"]),
        no_region=max_activation <= selection.thresholds[pairs.filter_pos],
        contains=image_tokens(inputs.annotations.objects, inputs.image_ids, categories.index, categories.incidence),
        presence_top_k=int(settings["presence_top_k"]),
        bootstrap=BootstrapSettings(**settings["bootstrap"]),
    )
    rows = ResultRows(inputs.filters, selection.thresholds, pairs.filter_pos, inputs.vocabulary.words)
    metrics = {name: score_method(out, scoring, rows) for name, out in outputs.items()}
    netdissect = netdissect_metrics(
        ground_truth.folds,
        pairs.row,
        pairs.filter_pos,
        len(inputs.filters),
        categories,
        scoring.truth,
        scoring.s_values,
    )
    label_presence = presence(
        scoring.contains,
        fold_label_tokens(ground_truth.folds, categories),
        other_fold(np.arange(len(inputs.image_ids))),
    )
    scores = presence_scores(selection.image_max, label_presence)
    add_presence(netdissect.entry, scoring, {k: (v, pairs.row) for k, v in netdissect.figures.items()}, scores)
    metrics[NETDISSECT] = netdissect.entry
    positions = np.arange(len(inputs.filters))
    rows.add_scores(NETDISSECT, positions, netdissect.per_s, pairs.filter_pos, presence_columns(scores))
    return metrics, rows, netdissect


def s_values(settings: Mapping[str, Any]) -> list[int]:
    """The s of recall@s: `evaluate.top_s` and 1 (to compare with NetDissect's one label)."""
    return sorted({1, *(int(s) for s in settings["top_s"])})


def write_outputs(
    paths: Paths,
    inputs: Inputs,
    selection: Selection,
    results: tuple[dict[str, Any], ResultRows, NetDissectResult],
    settings: Mapping[str, Any],
    geometry: tuple[int, int, str],
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> None:
    """explanations.{parquet,csv}, filters.parquet, one heatmap per requested filter, then the
    metrics and their headline summary.

    All or nothing: the old metrics (both files) go first, the heatmaps are replaced as one directory, and the
    metrics are written last, so an interrupted run leaves no metrics file beside a partial set
    (DVC then reports the stage as one to run again).
    """
    metrics, rows, netdissect = results
    image_ids, names = inputs.image_ids, inputs.annotations.categories.names
    top_image_ids = [image_ids[top[top >= 0]].tolist() for top in selection.top_rows]
    labels = [names[label] if label >= 0 else None for label in netdissect.labels]
    paths.metrics.unlink(missing_ok=True)
    paths.summary.unlink(missing_ok=True)
    write_tables(paths.results, rows, top_image_ids, labels, netdissect.label_iou, s_values(settings))
    with atomic_dir(paths.results / "heatmaps") as staging:
        write_sheets(staging, paths, inputs, selection, rows, settings, geometry, max_pixels)
    write_json(paths.metrics, metrics)
    write_json(paths.summary, headline(metrics, min(int(s) for s in settings["top_s"]), read_target_metrics(paths)))


def read_target_metrics(paths: Paths) -> dict[str, Any] | None:
    """metrics/target.json (for the summary's target mAP), or None when the file is absent."""
    if not paths.target_metrics.is_file():
        return None
    try:
        return json.loads(paths.target_metrics.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{paths.target_metrics}: not JSON ({error})") from None


def write_sheets(
    out_dir: Path,
    paths: Paths,
    inputs: Inputs,
    selection: Selection,
    rows: ResultRows,
    settings: Mapping[str, Any],
    geometry: tuple[int, int, str],
    max_pixels: int,
) -> None:
    """One heatmap sheet per requested (and evaluated) filter into ``out_dir``; images are read with
    the pixel limit, inside the dataset's folder."""
    write_heatmaps(
        out_dir,
        settings["heatmap_filters"],
        inputs.filters,
        selection.thresholds,
        selection.top_rows,
        inputs.cache.val_maps,
        inputs.image_ids,
        lambda row: image_file(paths, inputs, row),
        rows.words_by_filter(),
        geometry,
        functools.partial(read_image, max_pixels=max_pixels, root=paths.raw),
    )


def image_file(paths: Paths, inputs: Inputs, row: int) -> Path:
    """The image file of map row ``row``."""
    return paths.raw / str(inputs.annotations.images.loc[int(inputs.image_ids[row]), "path"])


def run_evaluate(
    paths: Paths,
    backbone: Mapping[str, Any],
    transform: Preprocessing | Mapping[str, Any],
    settings: Mapping[str, Any],
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> dict[str, Any]:
    """The stage with the `evaluate` params section ``settings``; ``backbone["weights"]`` must be
    resolved already (it is only used to re-run the CNN); ``transform``: the features stage's
    preprocessing (masks, heatmaps and image masking follow it), or `transform` values on the
    default preset. Returns the metrics."""
    device = resolve_device(settings["device"], "evaluate.device")
    preprocessing = transform if isinstance(transform, Preprocessing) else resolve_preprocessing(None, transform)
    geometry = (preprocessing.resize, preprocessing.crop, preprocessing.interpolation)
    inputs = load_inputs(paths, settings, device)
    selection = select_pairs(inputs, settings)
    cnn = cnn_inputs(
        CnnSource(
            backbone["name"],
            str(backbone["weights"]),
            backbone["layer"],
            backbone.get("num_classes"),
            "backbone.weights",
        ),
        preprocessing,
        lambda row: image_file(paths, inputs, row),
        inputs.cnn_filters,
        device,
        max_pixels,
        paths.raw,
    )
    outputs, ground_truth = explain_and_find_truth(inputs, selection, settings, cnn, geometry, device)
    results = score(inputs, selection, outputs, ground_truth, settings, device)
    write_outputs(paths, inputs, selection, results, settings, geometry, max_pixels)
    metrics, steps = results[0], s_values(settings)
    log.info("recall@%s per method: %s", steps, {m: [metrics[m].get(f"recall@{s}") for s in steps] for m in metrics})
    return metrics


def main() -> None:
    args, params = start_stage(
        __doc__,
        checks=(validate_backbone,),
        outputs=("metrics", "results"),
        features="data/features",
        annotations="data/annotations",
        explainer="models/explainer",
        glove="data/raw/glove",
        wordnet="data/raw/wordnet",
        raw="data/raw",
        target_model="models/target",
        metrics="metrics/recall.json",
        results="results",
        summary="metrics/summary.json",
        target_metrics="metrics/target.json",
    )
    backbone = params["backbone"]
    weights = resolve_weights(backbone["weights"], args.target_model, "backbone.weights")
    paths = Paths(
        features=args.features,
        annotations=args.annotations,
        explainer=args.explainer,
        glove=args.glove,
        wordnet=args.wordnet,
        raw=args.raw / params["dataset"],
        metrics=args.metrics,
        results=args.results,
        summary=args.summary,
        target_metrics=args.target_metrics,
    )
    max_pixels = params["images"]["max_pixels"]
    preprocessing = stage_preprocessing(params, backbone["weights"])
    run_evaluate(paths, {**backbone, "weights": weights}, preprocessing, params["evaluate"], max_pixels)


if __name__ == "__main__":
    run_stage(main)
