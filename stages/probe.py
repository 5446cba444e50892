"""`probe` stage: explain every filter on the unlabelled probe set with the explainer trained on the reference dataset.

Reads the probe cache and index (`probe_features`), the explainer (`train`) and GloVe; computes T_u
and the top images over the probe set and the words of every method (lavise/probe/explain.py);
writes results/probe/explanations.{parquet,csv} (one row per filter), results/probe/heatmaps/ and,
last, metrics/probe.json (images read, unusable files by status, filters explained, distinct
concepts per method). No recall: the probe set has no ground truth. Reads `backbone`,
`transform`, `images` and `probe` from params.yaml.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from lavise.data.embeddings import WordEmbeddings
from lavise.data.images import IMAGE_STATUSES, read_image
from lavise.data.vocabulary import load_vocabulary
from lavise.devices import resolve_device
from lavise.explain.explaining import CnnSource, cnn_inputs
from lavise.explain.filters import resolve_filters
from lavise.explain.heatmaps import write_heatmaps
from lavise.io import atomic_dir, atomic_path, write_json, write_parquet
from lavise.models.checkpoints import resolve_weights
from lavise.models.explainer import load_checked_explainer
from lavise.probe.explain import (
    NO_RECALL,
    ProbeExplanations,
    ProbeSettings,
    distinct_concepts,
    explain_probe,
    explanation_table,
)
from lavise.probe.inputs import ProbeInputs, open_probe
from stages.backbone_params import stage_preprocessing, validate_backbone
from stages.cli import run_stage, start_stage

log = logging.getLogger("stages.probe")


def masking_filters(inputs: ProbeInputs, section: Mapping[str, Any]) -> np.ndarray:
    """bool ``[F]``: the probe filters `probe.image_masking_filters` names (checked, as is
    `probe.heatmap_filters`, against the layer before any work)."""
    n_channels = inputs.cache.val_maps.shape[1]
    masking = resolve_filters(section["image_masking_filters"], n_channels, "probe.image_masking_filters")
    if section["heatmap_filters"]:
        resolve_filters(section["heatmap_filters"], n_channels, "probe.heatmap_filters")
    return np.isin(inputs.filters, masking)


def probe_metrics(inputs: ProbeInputs, result: ProbeExplanations) -> dict[str, Any]:
    """metrics/probe.json: files by status, files listed and usable per group, filters explained and
    distinct concepts per method."""
    statuses = inputs.cache.images["status"].tolist()
    listed, usable = inputs.images["group"].dropna(), inputs.rows["group"].dropna()
    per_group = {
        str(group): {"listed": int(count), "usable": int((usable == group).sum())}
        for group, count in listed.value_counts().sort_index().items()
    }
    return {
        "images": {"listed": len(statuses), **{status: statuses.count(status) for status in IMAGE_STATUSES}},
        "groups": per_group,
        "filters_explained": len(result.filters),
        "methods": distinct_concepts(result),
        "recall": NO_RECALL,
    }


def write_probe_outputs(
    results: Path,
    metrics: Path,
    inputs: ProbeInputs,
    result: ProbeExplanations,
    section: Mapping[str, Any],
    geometry: tuple[int, int, str],
    max_pixels: int,
) -> None:
    """The tables, the heatmap sheets (one directory, replaced whole), then the metrics, last."""
    metrics.unlink(missing_ok=True)
    table = explanation_table(result, inputs.rows["image_id"].to_numpy(), inputs.rows["path"].to_numpy())
    write_parquet(results / "explanations.parquet", pa.Table.from_pandas(table, preserve_index=False))
    word_columns = [column for column in table.columns if column.endswith("_words")]
    flat = table.drop(columns=word_columns).assign(
        top_image_ids=[" ".join(map(str, ids)) for ids in table["top_image_ids"]],
        top_image_paths=[" ".join(paths) for paths in table["top_image_paths"]],
    )
    with atomic_path(results / "explanations.csv") as tmp:
        flat.to_csv(tmp, index=False)
    words = {
        int(f): {m: found.get(pos, ([], []))[0] for m, found in result.words.items()}
        for pos, f in enumerate(result.filters)
    }
    paths = inputs.rows["path"].to_numpy()
    with atomic_dir(results / "heatmaps") as staging:
        write_heatmaps(
            staging,
            section["heatmap_filters"],
            result.filters,
            result.thresholds,
            result.top_rows,
            inputs.cache.val_maps,
            inputs.rows["image_id"].to_numpy(),
            lambda row: inputs.root / str(paths[row]),
            words,
            geometry,
            functools.partial(read_image, max_pixels=max_pixels, root=inputs.root),
        )
    write_json(metrics, probe_metrics(inputs, result))


def main() -> None:
    args, params = start_stage(
        __doc__,
        checks=(validate_backbone,),
        outputs=("metrics", "results"),
        features="data/probe_features",
        index="data/probe_index",
        explainer="models/explainer",
        glove="data/raw/glove",
        wordnet="data/raw/wordnet",
        target_model="models/target",
        metrics="metrics/probe.json",
        results="results/probe",
    )
    section = params["probe"]
    device = resolve_device(section["device"], "probe.device")
    preprocessing = stage_preprocessing(params, params["backbone"]["weights"])
    geometry = (preprocessing.resize, preprocessing.crop, preprocessing.interpolation)
    inputs = open_probe(args.features, args.index, Path(section["root"]), section["filters"], "probe.filters")
    vocabulary = load_vocabulary(WordEmbeddings.load(args.glove), section["vocabulary"], [], args.wordnet)
    explainer = load_checked_explainer(
        args.explainer, device, inputs.cache.val_maps.shape[1], vocabulary.vectors.shape[1]
    )
    backbone = params["backbone"]
    weights = resolve_weights(backbone["weights"], args.target_model, "backbone.weights")
    paths = inputs.rows["path"].to_numpy()
    cnn = cnn_inputs(
        CnnSource(backbone["name"], str(weights), backbone["layer"], backbone.get("num_classes"), "backbone.weights"),
        preprocessing,
        lambda row: inputs.root / str(paths[row]),
        masking_filters(inputs, section),
        device,
        params["images"]["max_pixels"],
        inputs.root,
    )
    settings = ProbeSettings(
        int(section["p"]),
        float(section["quantile"]),
        int(section["words_per_image"]),
        section["word_weighting"],
        int(section["batch_size"]),
    )
    vectors = (vocabulary.words, vocabulary.vectors.to(device))
    result = explain_probe(inputs.cache.val_maps, explainer, vectors, inputs.filters, settings, device, cnn)
    write_probe_outputs(args.results, args.metrics, inputs, result, section, geometry, params["images"]["max_pixels"])
    log.info("probe: %d filters explained on %d images", len(result.filters), inputs.cache.val_maps.shape[0])


if __name__ == "__main__":
    run_stage(main)
