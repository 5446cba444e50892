"""`relevance` stage: which filters each class relies on (constrained lasso, Oramas et al. ICLR
2019), validated by ablation against random filters, on the target CNN and on a randomly
initialised control, explained with evaluate's words.

Steps: the labels of the training and validation images (the dataset's categories, or the
model's own top-1 predictions); the layer's whole-image pooled responses of the training images
(one pass over their pixels: the cache has only object vectors for them); the lasso path per class
(lavise/relevance/lasso.py); the ablation test on the validation maps of the feature cache, run
from the layer onward (lavise/relevance/ablation.py); the same for the control network, whose
maps come from its own pass; the class table, the sheets, the plots and the metrics.
Reads `dataset`, `backbone`, `transform`, `images` and `relevance` from params.yaml.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from torch import nn
from torchvision.models import get_model_weights

from lavise.data.transforms import Preprocessing
from lavise.devices import resolve_device
from lavise.features.cache import FeatureCache, open_feature_cache
from lavise.io import atomic_dir, json_float, read_json, write_json
from lavise.models.backbones import build_model, seeded_model
from lavise.models.checkpoints import resolve_weights
from lavise.models.head import head_from_layer
from lavise.relevance.ablation import AblationSetup, ablated_scores, ablation_row, class_rows, single_filter_harm
from lavise.relevance.classes import class_table, read_filter_words, sheet_name, write_class_sheet
from lavise.relevance.lasso import constrained_lasso, design_moments
from lavise.relevance.responses import layer_responses
from lavise.report.figures import line_chart
from lavise.training.target_data import MultiLabelData, load_multilabel_data
from stages.backbone_params import stage_preprocessing, validate_backbone
from stages.cli import run_stage, start_stage

log = logging.getLogger("stages.relevance")


@dataclass(frozen=True)
class Labels:
    """Class names ``[C]``, train/val labels ``[n, C]`` / ``[N, C]``, how they were made, and the
    scored classes (bool ``[C]``: at least one positive training image)."""

    classes: list[str]
    train: np.ndarray
    val: np.ndarray
    kind: str
    scored: np.ndarray


@dataclass(frozen=True)
class Network:
    """One network's lasso inputs and ablation setup: train responses ``[n, d]``, the setup."""

    name: str
    train_responses: np.ndarray
    setup: AblationSetup


def one_hot(logits: np.ndarray) -> np.ndarray:
    """Top-1 of ``logits`` ``[n, C]`` as float32 one-hot ``[n, C]``."""
    labels = np.zeros(logits.shape, dtype=np.float32)
    labels[np.arange(len(logits)), logits.argmax(axis=1)] = 1.0
    return labels


def label_kind(params: dict[str, Any]) -> str:
    """`relevance.labels` with ``auto`` resolved: the categories for a `target` CNN, else top-1."""
    kind = params["relevance"]["labels"]
    if kind == "auto":
        return "categories" if params["backbone"]["weights"] == "target" else "predictions"
    return kind


def category_classes(data: MultiLabelData, n_outputs: int, target_model: Path, weights: str) -> list[str]:
    """The dataset's categories as the model's classes; ValueError unless they are its outputs."""
    config = target_model / "config.json"
    if weights == "target" and config.is_file() and read_json(config).get("categories") != data.categories:
        raise ValueError(f"{config}: the target CNN was trained on other categories than data/annotations has")
    if n_outputs != len(data.categories):
        raise ValueError(
            f"relevance.labels: categories needs a model with one output per category ({len(data.categories)}), "
            f"this one has {n_outputs}; use predictions (its own top-1) instead"
        )
    return list(data.categories)


def val_rows(cache_ids: np.ndarray, data: MultiLabelData, features: Path) -> np.ndarray:
    """Row of each cached validation image in ``data.val``; ValueError if one is not there."""
    position = {int(image_id): i for i, image_id in enumerate(data.val.image_ids)}
    missing = [int(i) for i in cache_ids if int(i) not in position]
    if missing:
        raise ValueError(f"{features}: validation image {missing[0]} is not a readable val image of data/annotations")
    if len(cache_ids) < len(position):
        log.warning("%d val images are not in the feature cache: not scored", len(position) - len(cache_ids))
    return np.array([position[int(i)] for i in cache_ids], dtype=np.int64)


def lasso_and_ablation(network: Network, labels: Labels, mus: list[float], relevance: dict[str, Any]) -> dict[str, Any]:
    """The selection at every µ and its ablation table: the study's rows and the per-class rows."""
    train = labels.train * labels.scored  # a skipped class is all zeros: its path is the point 0
    weights = constrained_lasso(design_moments(network.train_responses, train, relevance["scaling"]), mus)
    weights[:, ~labels.scored] = 0.0
    setup, seed, repeats = network.setup, relevance["seed"], relevance["repeats"]
    original = setup.ap([])
    harm = single_filter_harm(setup, original) if relevance["single_filter_reference"] else None
    table, classes = [], []
    d = network.train_responses.shape[1]
    for m, mu in enumerate(mus):
        row = ablation_row(setup, (weights[m] != 0).any(axis=0), original, repeats, seed, m, harm)
        table.append({"mu": mu, "d": d, "fraction_dropped": row["dropped"] / d, **row})
        for item in class_rows(setup, weights[m], original, repeats, seed, m):
            classes.append({"mu": mu, "class": labels.classes[item.pop("class_index")], **item})
        log.info(
            "%s µ=%g: %d/%d dropped, mAP %.3f -> selected %.3f, random %.3f ± %.3f",
            network.name, mu, row["dropped"], d, row["original_map"], row["selected_map"], row["random_map"],
            row["random_sd"],
        )  # fmt: skip
    return {"weights": weights, "table": table, "classes": classes, "original_ap": original}


def class_names(params: dict[str, Any], n_outputs: int) -> list[str]:
    """Names of a model's outputs for `predictions` labels: its torchvision weights' categories
    when it has them, else ``class_<i>``."""
    name, weights = params["backbone"]["name"], params["backbone"]["weights"]
    try:
        categories = get_model_weights(name)[weights.split(".")[-1]].meta.get("categories")
    except (KeyError, ValueError):
        categories = None
    if categories is not None and len(categories) == n_outputs:
        return [str(c) for c in categories]
    return [f"class_{i}" for i in range(n_outputs)]


def checked_head(model: nn.Module, layer: str) -> nn.Module:
    """The network from ``layer`` onward; a model or layer it cannot be built for names the key."""
    try:
        return head_from_layer(model, layer)
    except ValueError as error:
        raise ValueError(f"backbone.layer / backbone.weights: {error}") from None


def make_labels(params: dict[str, Any], data: MultiLabelData, train_logits: np.ndarray, train_ok: np.ndarray,
                val_scores: np.ndarray, rows: np.ndarray, target_model: Path) -> Labels:  # fmt: skip
    """The labels of the kind `relevance.labels` asks for; classes without a positive training
    image are reported and left unscored."""
    kind = label_kind(params)
    n_outputs = train_logits.shape[1]
    if kind == "categories":
        classes = category_classes(data, n_outputs, target_model, params["backbone"]["weights"])
        train, val = data.train.labels[train_ok], data.val.labels[rows]
    else:
        classes, train, val = class_names(params, n_outputs), one_hot(train_logits), one_hot(val_scores)
    scored = train.sum(axis=0) > 0
    skipped = [classes[c] for c in np.flatnonzero(~scored)]
    if skipped:
        log.warning("%d classes have no positive training image and are skipped: %s", len(skipped), skipped[:10])
    if not scored.any():
        raise ValueError("no class has a positive training image: nothing to select filters for")
    return Labels(classes, train.astype(np.float32), val.astype(np.float32), kind, scored)


def check_cache(meta: dict[str, Any], params: dict[str, Any], features: Path) -> None:
    """The cache must hold the maps of this backbone's layer at this transform."""
    backbone = params["backbone"]
    if (
        meta.get("backbone") != backbone["name"]
        or meta.get("layer") != backbone["layer"]
        or meta.get("transform") != preprocessing(params).record()
    ):
        raise ValueError(
            f"{features}/meta.json holds {meta.get('backbone')} {meta.get('layer')} {meta.get('transform')}, "
            "not the backbone and transform of params.yaml: run the features stage (dvc repro features)"
        )


def trained_network(
    params: dict[str, Any], args: Any, data: MultiLabelData, device: torch.device
) -> tuple[Labels, Network, FeatureCache, np.ndarray, np.ndarray]:
    """The model under study: its labels, its lasso inputs and ablation on the cached maps, the cache,
    the cache rows' positions in ``data.val`` and which training images were readable."""
    backbone, relevance = params["backbone"], params["relevance"]
    weights = resolve_weights(backbone["weights"], args.target_model, "backbone.weights")
    model = build_model(backbone["name"], weights, num_classes=backbone["num_classes"], what="backbone.weights")
    head = checked_head(model, backbone["layer"]).to(device)
    cache = open_feature_cache(args.features)
    check_cache(cache.meta, params, args.features)
    rows = val_rows(cache.val_images["image_id"].to_numpy(), data, args.features)
    train = layer_responses(
        model, backbone["layer"], data.train.files, data.train.read, preprocessing(params),
        batch_size=relevance["batch_size"], num_workers=relevance["num_workers"], device=device,
        description="relevance: trained network, train images",
    )  # fmt: skip
    val_scores = ablated_scores(head, cache.val_maps, [], relevance["batch_size"], device)
    labels = make_labels(params, data, train.logits, train.ok, val_scores, rows, args.target_model)
    setup = AblationSetup(head, cache.val_maps, labels.val, labels.scored, relevance["batch_size"], device)
    return labels, Network("trained", train.pooled, setup), cache, rows, train.ok


def control_network(params: dict[str, Any], data: MultiLabelData, rows: np.ndarray, labels: Labels,
                    train_ok: np.ndarray, n_outputs: int, device: torch.device) -> Network:  # fmt: skip
    """The randomly initialised control (same architecture and outputs, seed `relevance.seed`),
    scored against the same labels; its maps come from its own pass over the images."""
    backbone, relevance = params["backbone"], params["relevance"]
    model = seeded_model(backbone["name"], relevance["seed"], n_outputs).eval()
    head = checked_head(model, backbone["layer"]).to(device)
    kwargs = {"batch_size": relevance["batch_size"], "num_workers": relevance["num_workers"], "device": device}
    files = [data.train.files[i] for i in np.flatnonzero(train_ok)]
    train = layer_responses(model, backbone["layer"], files, data.train.read, preprocessing(params),
                            description="relevance: random network, train images", **kwargs)  # fmt: skip
    val = layer_responses(model, backbone["layer"], [data.val.files[i] for i in rows], data.val.read,
                          preprocessing(params), keep_maps=True, description="relevance: random network, val images",
                          **kwargs)  # fmt: skip
    if not (train.ok.all() and val.ok.all()):
        raise ValueError("an image became unreadable between the two passes: run the stage again")
    setup = AblationSetup(head, val.maps, labels.val, labels.scored, relevance["batch_size"], device)
    return Network("random", train.pooled, setup)


def preprocessing(params: dict[str, Any]) -> Preprocessing:
    """The images' preprocessing, as `features` ran it (the weights' preset under `transform`)."""
    return stage_preprocessing(params, params["backbone"]["weights"])


def geometry(params: dict[str, Any]) -> tuple[int, int, str]:
    """(resize, crop, interpolation) of the images, for the sheets."""
    p = preprocessing(params)
    return p.resize, p.crop, p.interpolation


TABLE_KEYS = ("mu", "d", "dropped", "fraction_dropped", "original_map", "selected_map", "random_map", "random_sd")
REFERENCE_KEY = "harmful_map"  # with `relevance.single_filter_reference`


def table_keys(row: dict[str, Any]) -> tuple[str, ...]:
    """The columns of one row of the study's table: TABLE_KEYS, and the reference when computed."""
    return TABLE_KEYS + ((REFERENCE_KEY,) if REFERENCE_KEY in row else ())


def network_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """The study's table per µ and, per class, its selected count and AP drops (selected, random)."""
    table = [{key: json_float(float(row[key])) for key in table_keys(row)} for row in result["table"]]
    classes: dict[str, list[dict[str, Any]]] = {}
    for row in result["classes"]:
        classes.setdefault(row["class"], []).append(
            {
                "mu": row["mu"],
                "selected": row["selected"],
                "ap_drop_selected": json_float(row["ap_drop_selected"]),
                "ap_drop_random": json_float(row["ap_drop_random"]),
            }
        )
    return {"table": table, "classes": classes}


def write_plot(path: Path, network: str, table: list[dict[str, Any]], repeats: int) -> None:
    """mAP against filters dropped, selected vs random (band: ± one sd over the repeats) and, when
    computed, the individually most harmful filters."""
    x = [row["dropped"] for row in table]
    random_label = f"random filters ablated (mean of {repeats})"
    mean = np.array([row["random_map"] for row in table])
    sd = np.array([row["random_sd"] for row in table])
    lines = {
        "original": [row["original_map"] for row in table],
        "selected filters ablated": [row["selected_map"] for row in table],
        random_label: mean.tolist(),
    }
    if REFERENCE_KEY in table[0]:
        lines["individually most harmful filters ablated"] = [row[REFERENCE_KEY] for row in table]
    line_chart(
        path,
        x,
        lines,
        xlabel=f"filters dropped (of {table[0]['d']})",
        ylabel="mAP on the validation images",
        title=f"Ablation of the lasso's filters: {network} network",
        bands={random_label: ((mean - sd).tolist(), (mean + sd).tolist())},
    )


def write_sheets(folder: Path, labels: Labels, weights: np.ndarray, cache: Any, rows: np.ndarray,
                 data: MultiLabelData, words: Any, params: dict[str, Any]) -> None:  # fmt: skip
    """A sheet per scored class at the largest µ: its top filters' top validation images."""
    relevance, maps = params["relevance"], cache.val_maps
    image_max = np.concatenate(
        [np.asarray(maps[i : i + 256], dtype=np.float32).max(axis=(2, 3)) for i in range(0, len(maps), 256)]
    )  # [N, d]
    image_ids = cache.val_images["image_id"].to_numpy()
    for c in np.flatnonzero(labels.scored):
        write_class_sheet(
            folder / sheet_name(labels.classes[c]), labels.classes[c], weights[-1, c], maps, image_max,
            relevance["sheet_filters"], relevance["sheet_images"], words, lambda i: data.val.files[rows[i]],
            image_ids, geometry(params), data.val.read,
        )  # fmt: skip


def summary(labels: Labels, results: dict[str, Any], relevance: dict[str, Any], n_train: int, n_val: int) -> dict:
    """metrics/relevance.json: the settings that shape the table, the counts, each network's table."""
    return {
        "labels": labels.kind,
        "scaling": relevance["scaling"],
        "repeats": relevance["repeats"],
        "d": int(results["trained"]["weights"].shape[2]),
        "classes": len(labels.classes),
        "scored_classes": int(labels.scored.sum()),
        "skipped_classes": [labels.classes[c] for c in np.flatnonzero(~labels.scored)],
        "train_images": n_train,
        "val_images": n_val,
        **{name: network_metrics(result) for name, result in results.items()},
    }


def write_results(folder: Path, table: Any, results: dict[str, Any]) -> None:
    """classes.{parquet,csv}, ablation.csv (the study's table) and class_ablation.csv into ``folder``."""
    pq.write_table(table, folder / "classes.parquet")
    table.to_pandas().to_csv(folder / "classes.csv", index=False)
    study = [
        {"network": name, **{k: row[k] for k in table_keys(row)}}
        for name, res in results.items()
        for row in res["table"]
    ]
    pd.DataFrame(study).to_csv(folder / "ablation.csv", index=False)
    per_class = [{"network": name, **row} for name, res in results.items() for row in res["classes"]]
    pd.DataFrame(per_class).to_csv(folder / "class_ablation.csv", index=False)


def main() -> None:
    args, params = start_stage(
        __doc__,
        checks=(validate_backbone,),
        outputs=("results", "plots", "metrics"),
        features="data/features",
        annotations="data/annotations",
        raw="data/raw",
        target_model="models/target",
        explanations="results/explanations.parquet",
        results="results/relevance",
        plots="plots/relevance",
        metrics="metrics/relevance.json",
    )
    relevance = params["relevance"]
    mus = [float(mu) for mu in relevance["mu"]]
    device = resolve_device(relevance["device"], "relevance.device")
    if not args.explanations.is_file():
        raise FileNotFoundError(f"{args.explanations} not found: run the evaluate stage first")
    words = read_filter_words(pd.read_parquet(args.explanations))
    data = load_multilabel_data(args.annotations, args.raw / params["dataset"], params["images"]["max_pixels"])
    labels, trained, cache, rows, train_ok = trained_network(params, args, data, device)
    results = {"trained": lasso_and_ablation(trained, labels, mus, relevance)}
    if relevance["random_control"]:
        control = control_network(params, data, rows, labels, train_ok, labels.val.shape[1], device)
        results["random"] = lasso_and_ablation(control, labels, mus, relevance)
    weights = results["trained"]["weights"]
    table = class_table(
        labels.classes, mus, weights, labels.scored, labels.train.sum(axis=0), relevance["top_filters"], words
    )
    with atomic_dir(args.results) as tmp:
        write_results(tmp, table, results)
        (tmp / "sheets").mkdir()
        write_sheets(tmp / "sheets", labels, weights, cache, rows, data, words, params)
    with atomic_dir(args.plots) as tmp:
        for name, result in results.items():
            write_plot(tmp / f"ablation_{name}.png", name, result["table"], relevance["repeats"])
    write_json(args.metrics, summary(labels, results, relevance, len(trained.train_responses), len(rows)))


if __name__ == "__main__":
    run_stage(main)
