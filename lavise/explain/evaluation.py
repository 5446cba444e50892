"""Explain every filter of the cached layer with every method and score it with recall@s.

One sequential pass over the memory-mapped evaluation maps does everything that needs a map:
NetDissect's dataset-wide overlap sums (all filters × all images), the ground truth G of each
(filter, top image) pair, and the explainer outputs of every method for those pairs. Memory is
bounded by a chunk of images plus per-pair state (filters × p), never by the dataset size. The
words nearest to each explainer output are then found over the vocabulary in chunks.

Conventions not fixed by the paper (see ../shared/LAVISE.md §3-4):
* recall@1 is reported beside the paper's s ∈ top_s to compare with NetDissect's one label;
* a filter's explanation counts each image's top ``min(top_s)`` words (the reference code's
  ``--s 5``) and keeps the ``explanation_size`` most frequent (its ``--num-output 10``); with
  ``word_weighting: activation`` each image adds ``max(1, int(max activation))`` votes (the
  reference repeats ``int(weight)`` times, which gives 0 votes below 1; we keep at least one so
  no top image is silently ignored); ties go to the word seen first in activation order;
* the seen/unseen split (VG) scores each pair against the tokens of its seen categories, then
  against its *novel* tokens: tokens of its unseen categories that are no seen category's token.
  A word the explainer was trained on (``light`` of a seen light.n.02 and of an unseen
  traffic_light.n.01) is not a discovery, so it counts as seen only;
* NetDissect is scored out of sample by 2-fold cross-fitting: the evaluation images are split
  by map row parity, each filter is labelled on each half, and a pair is scored with the label
  learned on the other half (a label picked on the very masks it is scored against would be
  scored in sample). The label reported per filter, and its distinct-concept count, come from
  all images; ``in_sample`` records the in-sample recall@1 for comparison;
* ``n_filters`` counts the filters evaluated with a method, ``n_filters_scored`` those with at
  least one pair whose ground truth is non-empty (the per-filter distribution is over these).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from lavise.data.embeddings import WordEmbeddings
from lavise.data.images import UndecodableImageError, decode_image
from lavise.data.masks import image_object_masks
from lavise.data.transforms import masks_to_crop, preprocess, transform_geometry
from lavise.devices import resolve_device
from lavise.explain.heatmaps import HeatmapTile, write_sheet
from lavise.explain.methods import FEATURE_METHODS, METHODS, feature_method, mask_images, pool
from lavise.io import atomic_path, read_json, write_json, write_parquet
from lavise.metrics.recall import (
    NetDissectAccumulator,
    activation_regions,
    filter_thresholds,
    iou_from_counts,
    label_recall,
    nearest_words,
    per_filter_means,
    recall_at,
    region_overlaps,
    summarise_recall,
    top_images,
    upsample_maps,
)
from lavise.models.explainer import load_explainer

log = logging.getLogger(__name__)

NETDISSECT = "netdissect"
NETDISSECT_FOLDS = 2  # cross-fitting: a pair is scored with the label of the other half of the images
IMAGE_CHUNK_BYTES = 64 << 20  # float32 maps of one chunk of evaluation images
CNN_BATCH = 16  # masked images per CNN forward (activation memory of a full backbone)
EXPLANATION_SIZE = 10  # words kept per filter explanation (reference code --num-output)
DECIMALS = 6


@dataclass
class Categories:
    """Kept categories and the token space recall is computed in."""

    names: list[str]
    seen: np.ndarray  # bool [C]
    tokens: list[str]  # token id -> word
    incidence: np.ndarray  # bool [C, T]: category c has token t

    @property
    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    @property
    def has_unseen(self) -> bool:
        return bool((~self.seen).any())

    @property
    def novel_tokens(self) -> np.ndarray:
        """bool [T]: tokens of no seen category, the words the explainer never had as a class."""
        return ~self.incidence[self.seen].any(axis=0)


@dataclass
class Vocabulary:
    """The words searched for explanations, their unit vectors, and each word's category token."""

    words: np.ndarray
    vectors: torch.Tensor
    token_of_word: np.ndarray  # int64 [V]: token id or -1


def resolve_filters(selection: str | Sequence[int] | dict[str, int], n_channels: int, key: str) -> np.ndarray:
    """``all``, ``{every: k}`` (filters 0, k, 2k, ...) or a list of filter indices, checked
    against the layer's channel count."""
    if selection == "all":
        return np.arange(n_channels, dtype=np.int64)
    if isinstance(selection, dict):
        return np.arange(0, n_channels, int(selection["every"]), dtype=np.int64)
    filters = np.asarray(list(selection), dtype=np.int64)
    bad = filters[(filters < 0) | (filters >= n_channels)]
    if len(bad):
        raise ValueError(f"evaluate.{key}: filter(s) {bad.tolist()} outside the layer's 0..{n_channels - 1}")
    if len(np.unique(filters)) != len(filters):
        raise ValueError(f"evaluate.{key}: duplicate filter indices in {filters.tolist()}")
    return np.sort(filters)


def load_categories(categories: pd.DataFrame) -> Categories:
    """Kept (non-dropped) categories with their tokens; the token space is their union."""
    kept = categories[categories["role"] != "dropped"].reset_index(drop=True)
    token_ids: dict[str, int] = {}
    pairs: list[tuple[int, int]] = []
    for c, tokens in enumerate(kept["tokens"]):
        if tokens is None or len(tokens) == 0:
            raise ValueError(f"category {kept['category'][c]!r} has no tokens")
        for token in tokens:
            pairs.append((c, token_ids.setdefault(str(token), len(token_ids))))
    incidence = np.zeros((len(kept), len(token_ids)), dtype=bool)
    if pairs:
        rows, cols = np.asarray(pairs).T
        incidence[rows, cols] = True
    return Categories(
        names=kept["category"].astype(str).tolist(),
        seen=(kept["role"] == "seen").to_numpy(),
        tokens=list(token_ids),
        incidence=incidence,
    )


def load_vocabulary(embeddings: WordEmbeddings, vocabulary: str, tokens: Sequence[str]) -> Vocabulary:
    """The whole GloVe vocabulary (``glove``) or the words of a one-per-line list file."""
    if vocabulary == "glove":
        words = np.asarray(embeddings.words)
        vectors = np.asarray(embeddings.vectors, dtype=np.float32)
    else:
        listed = [line.strip() for line in Path(vocabulary).read_text().splitlines() if line.strip()]
        unique = list(dict.fromkeys(listed))
        if len(unique) < len(listed):
            log.warning("vocabulary %s: %d duplicate word(s) ignored", vocabulary, len(listed) - len(unique))
        try:
            rows = embeddings.index_of(unique)
        except KeyError as error:
            raise ValueError(f"vocabulary file {vocabulary}: {error.args[0]}") from error
        words = np.asarray(unique, dtype=object)
        vectors = np.asarray(embeddings.vectors[rows], dtype=np.float32)
    if len(words) == 0:
        raise ValueError(f"vocabulary {vocabulary!r} is empty")
    position = pd.Index(words).get_indexer(list(tokens))
    token_of_word = np.full(len(words), -1, dtype=np.int64)
    token_of_word[position[position >= 0]] = np.flatnonzero(position >= 0)
    missing = [t for t, p in zip(tokens, position) if p < 0]
    if missing:
        log.warning("%d category token(s) not in the vocabulary can never be recalled: %s", len(missing), missing[:20])
    return Vocabulary(
        words=words, vectors=torch.from_numpy(np.array(vectors, dtype=np.float32)), token_of_word=token_of_word
    )


def tokens_of_categories(truth: np.ndarray, incidence: np.ndarray) -> np.ndarray:
    """Ground truth as tokens: ``bool [P, T]``, the union of the tokens of each pair's categories.

    Sparse expansion (pairs have a handful of categories), not a dense [P, C] × [C, T] product.
    """
    out = np.zeros((truth.shape[0], incidence.shape[1]), dtype=bool)
    pair_ids, category_ids = np.nonzero(truth)
    token_owner, token_ids = np.nonzero(incidence)
    per_category = np.bincount(token_owner, minlength=incidence.shape[0])
    starts = np.concatenate([[0], np.cumsum(per_category)[:-1]])
    counts = per_category[category_ids]
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    out[np.repeat(pair_ids, counts), token_ids[np.repeat(starts[category_ids], counts) + offsets]] = True
    return out


def _image_masks(objects: pd.DataFrame, height: int, width: int, resize: int, crop: int) -> torch.Tensor:
    """Crop-resolution binary masks ``[n, crop, crop]`` (soft >= 0.5) of one image's objects."""
    if len(objects) == 0:
        return torch.zeros((0, crop, crop), dtype=torch.bool)
    full = torch.from_numpy(image_object_masks(objects, height, width))
    return masks_to_crop(full, resize, crop) >= 0.5


class _PairSet:
    """(filter, top image) pairs sorted by image row, so they stream with the maps."""

    def __init__(self, top_rows: np.ndarray) -> None:
        filter_pos, rank = np.nonzero(top_rows >= 0)
        rows = top_rows[filter_pos, rank]
        order = np.lexsort((rank, filter_pos, rows))
        self.filter_pos = filter_pos[order]
        self.rank = rank[order]
        self.row = rows[order]

    def __len__(self) -> int:
        return len(self.row)

    def of_rows(self, start: int, stop: int) -> slice:
        lo, hi = np.searchsorted(self.row, [start, stop])
        return slice(int(lo), int(hi))


def _explain_batch(explainer: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return explainer(features).float().cpu()


def explain_filters(
    maps: np.ndarray,
    thresholds: np.ndarray,
    image_max: np.ndarray,
    filters: np.ndarray,
    pairs: _PairSet,
    image_masks: Any,
    explainer: torch.nn.Module,
    *,
    iou_threshold: float,
    crop: int,
    batch_size: int,
    device: torch.device,
    n_categories: int,
    masking: dict[str, Any] | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, np.ndarray, list[NetDissectAccumulator]]:
    """The streaming pass: explainer outputs per method, ground truth, NetDissect sums per fold.

    ``image_masks(row) -> (bool masks [n, crop, crop], category ids [n])``. ``masking``, when
    given, holds ``extractor``, ``filters`` (bool over the evaluated filters) and ``image(row)``
    returning the normalised input image. Returns outputs per method (``[P, E]``; image masking
    only for its pairs, NaN rows elsewhere), per-image original outputs ``[N, E]``, the
    ground-truth categories ``bool [P, C]`` and the NetDissect accumulators of the two folds
    (map rows of even and odd index).
    """
    n_images, n_channels, height, width = maps.shape
    n_filters = len(filters)
    filters_t = torch.from_numpy(filters).to(device)
    thresholds_t = torch.from_numpy(thresholds).to(device)
    emb_dim = int(_explain_batch(explainer, torch.zeros(2, n_channels, device=device)).shape[1])
    outputs = {m: torch.full((len(pairs), emb_dim), math.nan) for m in FEATURE_METHODS + ("image_masking",)}
    original = torch.full((n_images, emb_dim), math.nan)
    truth = np.zeros((len(pairs), n_categories), dtype=bool)
    netdissect_folds = [NetDissectAccumulator(n_filters, n_categories) for _ in range(NETDISSECT_FOLDS)]
    chunk_rows = max(1, IMAGE_CHUNK_BYTES // (n_channels * height * width * 4))
    all_filters = n_filters == n_channels and bool(np.all(filters == np.arange(n_channels)))
    for start in tqdm(range(0, n_images, chunk_rows), desc="explain", unit="chunk"):
        stop = min(start + chunk_rows, n_images)
        block = torch.from_numpy(np.asarray(maps[start:stop], dtype=np.float32)).to(device)
        selected = block if all_filters else block[:, filters_t]
        chunk_pairs = pairs.of_rows(start, stop)
        for row in range(start, stop):
            masks, categories = image_masks(row)
            active = np.flatnonzero(image_max[row] >= thresholds)
            active_t = torch.from_numpy(active).to(device)
            regions = activation_regions(selected[row - start, active_t], thresholds_t[active_t], crop)
            r_area, m_area, inter = region_overlaps(regions, masks.to(device))
            netdissect_folds[row % NETDISSECT_FOLDS].add(
                active, r_area.cpu().numpy(), inter.cpu().numpy(), categories, m_area.cpu().numpy()
            )
            row_pairs = pairs.of_rows(row, row + 1)
            position = np.full(n_filters, -1, dtype=np.int64)
            position[active] = np.arange(len(active))
            pair_pos = position[pairs.filter_pos[row_pairs]]
            has_region = pair_pos >= 0
            if has_region.any() and len(categories):
                iou = iou_from_counts(r_area, m_area, inter).cpu().numpy()
                hit = iou[pair_pos[has_region]] > iou_threshold
                pair_ids = np.arange(row_pairs.start, row_pairs.stop)[has_region]
                hit_pairs, hit_objects = np.nonzero(hit)
                truth[pair_ids[hit_pairs], categories[hit_objects]] = True
        used = np.unique(pairs.row[chunk_pairs]) - start
        if len(used):
            used_t = torch.from_numpy(used).to(device)
            original[used + start] = _explain_batch(explainer, pool(block[used_t]))
        for batch_start in range(chunk_pairs.start, chunk_pairs.stop, batch_size):
            index = np.arange(batch_start, min(batch_start + batch_size, chunk_pairs.stop))
            local_rows = torch.from_numpy(pairs.row[index] - start).to(device)
            filter_pos = torch.from_numpy(pairs.filter_pos[index]).to(device)
            batch_maps = block[local_rows]
            batch_filters = filters_t[filter_pos]
            batch_thresholds = thresholds_t[filter_pos]
            for method in FEATURE_METHODS:
                features = feature_method(method, batch_maps, batch_filters, batch_thresholds)
                outputs[method][index] = _explain_batch(explainer, features)
        if masking is not None:
            _image_masking_chunk(masking, block, start, chunk_pairs, pairs, filters_t, thresholds_t, explainer, outputs)
    return outputs, original, truth, netdissect_folds


def label_token_sets(labels: np.ndarray, categories: Categories) -> np.ndarray:
    """bool ``[F, T]``: the tokens of each filter's label (none for an unlabelled filter)."""
    tokens = np.zeros((len(labels), len(categories.tokens)), dtype=bool)
    tokens[labels >= 0] = categories.incidence[labels[labels >= 0]]
    return tokens


def _image_masking_chunk(
    masking: dict[str, Any],
    block: torch.Tensor,
    start: int,
    chunk_pairs: slice,
    pairs: _PairSet,
    filters_t: torch.Tensor,
    thresholds_t: torch.Tensor,
    explainer: torch.nn.Module,
    outputs: dict[str, torch.Tensor],
) -> None:
    """Image masking for this chunk's pairs of the chosen filters: mask, re-run the CNN, explain."""
    index = np.arange(chunk_pairs.start, chunk_pairs.stop)
    index = index[masking["filters"][pairs.filter_pos[index]]]
    device = block.device
    cache: dict[int, torch.Tensor] = {}
    for batch_start in range(0, len(index), CNN_BATCH):
        batch = index[batch_start : batch_start + CNN_BATCH]
        images = []
        for row in pairs.row[batch]:
            if int(row) not in cache:
                cache[int(row)] = masking["image"](int(row))
            images.append(cache[int(row)])
        filter_pos = torch.from_numpy(pairs.filter_pos[batch]).to(device)
        rows = torch.from_numpy(pairs.row[batch] - start).to(device)
        filter_maps = block[rows, filters_t[filter_pos]]
        masked = mask_images(torch.stack(images).to(device), filter_maps, thresholds_t[filter_pos])
        with torch.inference_mode():
            new_maps = masking["extractor"](masked).float()
        outputs["image_masking"][batch] = _explain_batch(explainer, pool(new_maps))


def filter_explanation(word_ids: np.ndarray, weights: np.ndarray, size: int) -> tuple[list[int], list[int]]:
    """Most frequent words over a filter's images: ``word_ids [n_images, s]`` in activation order.

    Each image's words get that image's weight in votes; ties go to the word seen first.
    Returns (word ids, vote counts), best first, at most ``size``.
    """
    if word_ids.size == 0:
        return [], []
    flat = word_ids.reshape(-1)
    votes = np.repeat(weights, word_ids.shape[1])
    words, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    counts = np.bincount(inverse, weights=votes).round().astype(np.int64)
    order = np.lexsort((first, -counts))[:size]
    return words[order].tolist(), counts[order].tolist()


def image_weights(max_activation: np.ndarray, weighting: str) -> np.ndarray:
    """Votes per image: ``max(1, int(max activation))`` (reference) or 1 (``count``)."""
    if weighting == "activation":
        return np.maximum(1, max_activation.astype(np.float64).astype(np.int64))
    if weighting == "count":
        return np.ones(len(max_activation), dtype=np.int64)
    raise ValueError(f"unknown word_weighting {weighting!r}; expected activation | count")


def _rounded(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), DECIMALS)


def _method_metrics(per_s: dict[int, np.ndarray], pair_filter: np.ndarray, n_filters: int) -> dict[str, Any]:
    """recall@s means, counts and per-filter distributions for one method."""
    entry: dict[str, Any] = {"n_filters": int(n_filters), "per_filter": {}}
    for s, values in per_s.items():
        summary = summarise_recall(values, pair_filter)
        entry[f"recall@{s}"] = _rounded(summary["mean"])
        entry["n_pairs"] = summary["n_pairs"]
        entry["n_filters_scored"] = summary["n_filters"]
        distribution = summary["per_filter"]
        entry["per_filter"][f"recall@{s}"] = (
            None if distribution is None else {k: _rounded(v) for k, v in distribution.items()}
        )
    return entry


def _split_metrics(per_s: dict[int, np.ndarray]) -> dict[str, Any]:
    first = next(iter(per_s.values()))
    entry: dict[str, Any] = {"n_pairs": int((~np.isnan(first)).sum())}
    for s, values in per_s.items():
        scored = values[~np.isnan(values)]
        entry[f"recall@{s}"] = _rounded(float(scored.mean())) if len(scored) else None
    return entry


def evaluate_explanations(
    features_dir: Path,
    annotations_dir: Path,
    explainer_dir: Path,
    embeddings_dir: Path,
    raw_dir: Path,
    out_metrics: Path,
    results_dir: Path,
    *,
    backbone: dict[str, Any],
    transform: dict[str, Any],
    evaluate: dict[str, Any],
) -> dict[str, Any]:
    """Explain the layer's filters with every method, score them, write metrics and results.

    ``raw_dir`` is the reference dataset's raw directory (``data/raw/<dataset>``): image paths in
    images.parquet are relative to it. ``backbone["weights"]`` must already be resolved (``target`` ->
    the checkpoint path) by the stage; it is only used to re-run the CNN for image masking. Returns the metrics dict.
    """
    features_dir, annotations_dir, raw_dir = Path(features_dir), Path(annotations_dir), Path(raw_dir)
    results_dir = Path(results_dir)
    device = resolve_device(evaluate["device"], "evaluate.device")
    resize, crop = int(transform["resize"]), int(transform["crop"])

    maps = np.load(features_dir / "val_maps.npy", mmap_mode="r")
    if maps.ndim != 4:
        raise ValueError(f"{features_dir / 'val_maps.npy'}: expected [N, d, h, w], got shape {maps.shape}")
    val_images = pq.read_table(features_dir / "val_images.parquet").to_pandas()
    if len(val_images) != maps.shape[0] or not np.array_equal(val_images["row"].to_numpy(), np.arange(len(val_images))):
        raise ValueError(
            f"val_images.parquet ({len(val_images)} rows) does not index val_maps.npy ({maps.shape[0]} maps)"
        )
    if maps.shape[0] == 0:
        raise ValueError("no evaluation images in the feature cache")
    meta = read_json(features_dir / "meta.json")
    declared = tuple(meta.get(key) for key in ("channels", "height", "width"))
    if declared != tuple(maps.shape[1:]):
        raise ValueError(
            f"meta.json declares (channels, height, width) {declared} but val_maps.npy has {maps.shape[1:]}"
        )
    image_ids = val_images["image_id"].to_numpy(np.int64)
    n_channels = maps.shape[1]
    filters = resolve_filters(evaluate["filters"], n_channels, "filters")
    masking_filters = resolve_filters(evaluate["image_masking_filters"], n_channels, "image_masking_filters")
    masking_selected = np.isin(filters, masking_filters)

    images = pq.read_table(annotations_dir / "images.parquet").to_pandas().set_index("image_id")
    missing = np.setdiff1d(image_ids, images.index.to_numpy())
    if len(missing):
        raise ValueError(f"{len(missing)} evaluation image(s) absent from the annotations, e.g. {missing[:5].tolist()}")
    categories = load_categories(pq.read_table(annotations_dir / "categories.parquet").to_pandas())
    objects = pq.read_table(
        annotations_dir / "objects.parquet", columns=["object_id", "image_id", "category", "kind", "rle", "boxes"]
    ).to_pandas()
    category_index = categories.index
    objects["category_id"] = objects["category"].map(category_index)
    unknown = objects["category_id"].isna()
    if unknown.any():
        log.warning(
            "%d object(s) of %d unknown or dropped categories ignored (e.g. %s)",
            int(unknown.sum()),
            objects.loc[unknown, "category"].nunique(),
            objects.loc[unknown, "category"].iloc[0],
        )
    objects = objects[~unknown & objects["image_id"].isin(image_ids)].reset_index(drop=True)
    objects["category_id"] = objects["category_id"].astype(np.int64)
    groups = objects.groupby("image_id").indices

    def image_masks(row: int) -> tuple[torch.Tensor, np.ndarray]:
        image_id = int(image_ids[row])
        rows = groups.get(image_id, np.zeros(0, dtype=np.int64))
        info = images.loc[image_id]
        subset = objects.iloc[rows]
        masks = _image_masks(subset, int(info["height"]), int(info["width"]), resize, crop)
        return masks, subset["category_id"].to_numpy(np.int64)

    def image_path(row: int) -> Path:
        return raw_dir / str(images.loc[int(image_ids[row]), "path"])

    embeddings = WordEmbeddings.load(Path(embeddings_dir))
    vocabulary = load_vocabulary(embeddings, evaluate["vocabulary"], categories.tokens)
    explainer, explainer_config = load_explainer(explainer_dir, str(device))
    if int(explainer_config["in_dim"]) != n_channels:
        raise ValueError(f"explainer expects {explainer_config['in_dim']} channels, the maps have {n_channels}")
    if int(explainer_config["emb_dim"]) != vocabulary.vectors.shape[1]:
        raise ValueError(f"explainer emb_dim {explainer_config['emb_dim']} != GloVe dim {vocabulary.vectors.shape[1]}")

    log.info("thresholds for %d filters over %d images", len(filters), maps.shape[0])
    thresholds, image_max = filter_thresholds(maps, float(evaluate["quantile"]), filters)
    top_rows = top_images(image_max, int(evaluate["p"]))
    pairs = _PairSet(top_rows)
    log.info("%d (filter, image) pairs", len(pairs))

    masking = None
    if masking_selected.any():
        from lavise.models.backbones import build_feature_extractor

        extractor = build_feature_extractor(
            backbone["name"], str(backbone["weights"]), backbone["layer"], num_classes=backbone.get("num_classes")
        ).to(device)

        def masking_image(row: int) -> torch.Tensor:
            return preprocess(decode_image(image_path(row)), resize, crop)

        masking = {"extractor": extractor, "filters": masking_selected, "image": masking_image}

    outputs, original, truth, netdissect_folds = explain_filters(
        maps,
        thresholds,
        image_max,
        filters,
        pairs,
        image_masks,
        explainer,
        iou_threshold=float(evaluate["iou_threshold"]),
        crop=crop,
        batch_size=int(evaluate["batch_size"]),
        device=device,
        n_categories=len(categories.names),
        masking=masking,
    )

    s_values = sorted({1, *(int(s) for s in evaluate["top_s"])})
    n_words = max(s_values)
    vectors = vocabulary.vectors.to(device)
    word_ids: dict[str, np.ndarray] = {}
    method_pairs: dict[str, np.ndarray] = {}
    used_rows = np.unique(pairs.row)
    row_words = np.zeros((maps.shape[0], min(n_words, len(vocabulary.words))), dtype=np.int64)
    row_words[used_rows] = nearest_words(original[used_rows], vectors, n_words).numpy()
    word_ids["original_image"] = row_words[pairs.row]
    method_pairs["original_image"] = np.arange(len(pairs))
    empty_mask = image_max[pairs.row, pairs.filter_pos] <= thresholds[pairs.filter_pos]
    for method in FEATURE_METHODS + ("image_masking",):
        subset = (
            np.arange(len(pairs)) if method != "image_masking" else np.flatnonzero(masking_selected[pairs.filter_pos])
        )
        ids = np.zeros((len(subset), row_words.shape[1]), dtype=np.int64)
        search = subset
        if method == "activation_masking" and empty_mask.any():
            # F ⊙ 0 pools to the zero vector: one explainer output shared by all these pairs.
            ids[empty_mask] = nearest_words(outputs[method][np.flatnonzero(empty_mask)[:1]], vectors, n_words).numpy()
            search = np.flatnonzero(~empty_mask)
        if len(search):
            found = nearest_words(outputs[method][search], vectors, n_words).numpy()
            ids[np.searchsorted(subset, search)] = found
        word_ids[method], method_pairs[method] = ids, subset
        log.info("words for %s: %d pairs", method, len(subset))

    truth_tokens = tokens_of_categories(truth, categories.incidence)
    seen_tokens = tokens_of_categories(truth & categories.seen[None, :], categories.incidence)
    unseen_tokens = tokens_of_categories(truth & ~categories.seen[None, :], categories.incidence)
    unseen_tokens &= categories.novel_tokens[None, :]
    labels, label_iou = NetDissectAccumulator.merged(netdissect_folds).labels()
    fold_label_tokens = np.stack([label_token_sets(fold.labels()[0], categories) for fold in netdissect_folds])
    # Pair (u, i) is scored with u's label from the fold that does not contain image i.
    other_fold = (pairs.row % NETDISSECT_FOLDS + 1) % NETDISSECT_FOLDS
    pair_label_tokens = fold_label_tokens[other_fold, pairs.filter_pos]

    metrics: dict[str, Any] = {}
    filter_rows: list[dict[str, Any]] = []
    explanation_rows: list[dict[str, Any]] = []
    explain_words = min(int(s) for s in evaluate["top_s"])
    weights_all = image_weights(image_max[pairs.row, pairs.filter_pos], evaluate["word_weighting"])
    n_images = np.bincount(pairs.filter_pos, minlength=len(filters))
    for method in METHODS:
        subset = method_pairs[method]
        tokens = vocabulary.token_of_word[word_ids[method]]
        per_s = recall_at(tokens, truth_tokens[subset], s_values)
        n_eval = int(masking_selected.sum()) if method == "image_masking" else len(filters)
        entry = _method_metrics(per_s, pairs.filter_pos[subset], n_eval)
        if categories.has_unseen:
            entry["seen"] = _split_metrics(recall_at(tokens, seen_tokens[subset], s_values))
            entry["unseen"] = _split_metrics(recall_at(tokens, unseen_tokens[subset], s_values))
        if method == "image_masking":
            entry["filters"] = masking_filters_label(filters, masking_selected, n_channels)
        top_words = _explanations(word_ids[method][:, :explain_words], weights_all[subset], pairs, subset, len(filters))
        entry["n_distinct_concepts"] = len({words[0] for words, _ in top_words.values() if words})
        metrics[method] = entry
        means = {s: per_filter_means(v, pairs.filter_pos[subset], len(filters)) for s, v in per_s.items()}
        scored = np.bincount(pairs.filter_pos[subset][~np.isnan(per_s[s_values[0]])], minlength=len(filters))
        for pos in np.flatnonzero(masking_selected) if method == "image_masking" else range(len(filters)):
            filter_rows.append(
                _filter_row(filters[pos], method, thresholds[pos], n_images[pos], scored[pos], means, pos)
            )
            words, counts = top_words.get(pos, ([], []))
            explanation_rows.append(
                {
                    "filter": int(filters[pos]),
                    "method": method,
                    "words": [str(vocabulary.words[w]) for w in words],
                    "word_counts": counts,
                }
            )

    nd_per_pair = label_recall(pair_label_tokens, truth_tokens)
    nd_per_s = {s: nd_per_pair for s in s_values}
    entry = _method_metrics(nd_per_s, pairs.filter_pos, len(filters))
    if categories.has_unseen:
        entry["seen"] = _split_metrics({s: label_recall(pair_label_tokens, seen_tokens) for s in s_values})
        entry["unseen"] = _split_metrics({s: label_recall(pair_label_tokens, unseen_tokens) for s in s_values})
    in_sample = label_recall(label_token_sets(labels, categories)[pairs.filter_pos], truth_tokens)
    entry["in_sample"] = _split_metrics({1: in_sample})
    entry["n_distinct_concepts"] = int(len(np.unique(labels[labels >= 0])))
    metrics[NETDISSECT] = entry
    nd_means = {s: per_filter_means(nd_per_pair, pairs.filter_pos, len(filters)) for s in s_values}
    nd_scored = np.bincount(pairs.filter_pos[~np.isnan(nd_per_pair)], minlength=len(filters))
    for pos in range(len(filters)):
        filter_rows.append(
            _filter_row(filters[pos], NETDISSECT, thresholds[pos], n_images[pos], nd_scored[pos], nd_means, pos)
        )

    _write_tables(
        results_dir,
        explanation_rows,
        filter_rows,
        top_rows,
        image_ids,
        filters,
        thresholds,
        labels,
        label_iou,
        categories,
        s_values,
    )
    write_json(out_metrics, metrics)
    _write_heatmaps(
        results_dir / "heatmaps",
        evaluate["heatmap_filters"],
        filters,
        top_rows,
        maps,
        thresholds,
        image_ids,
        image_path,
        explanation_rows,
        resize,
        crop,
    )
    log.info(
        "recall@%s per method: %s", s_values, {m: [metrics[m].get(f"recall@{s}") for s in s_values] for m in metrics}
    )
    return metrics


def masking_filters_label(filters: np.ndarray, masking_selected: np.ndarray, n_channels: int) -> str:
    """The filters image masking was actually run on: ``all`` (every filter of the layer) or a list.

    Those are the evaluated filters that are also in ``image_masking_filters``, not the configured
    list itself (which may name filters outside ``evaluate.filters``).
    """
    masked = filters[masking_selected]
    return "all" if len(masked) == n_channels else ",".join(map(str, masked.tolist()))


def _explanations(
    words: np.ndarray, weights: np.ndarray, pairs: _PairSet, subset: np.ndarray, n_filters: int
) -> dict[int, tuple[list[int], list[int]]]:
    """Per filter position: explanation words and votes from its images in activation order."""
    owners = pairs.filter_pos[subset]
    order = np.lexsort((pairs.rank[subset], owners))
    bounds = np.searchsorted(owners[order], np.arange(n_filters + 1))
    result: dict[int, tuple[list[int], list[int]]] = {}
    for pos in range(n_filters):
        chosen = order[bounds[pos] : bounds[pos + 1]]
        if len(chosen):
            result[pos] = filter_explanation(words[chosen], weights[chosen], EXPLANATION_SIZE)
    return result


def _filter_row(
    filter_index: int,
    method: str,
    threshold: float,
    n_images: int,
    n_pairs: int,
    means: dict[int, np.ndarray],
    pos: int,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "filter": int(filter_index),
        "method": method,
        "threshold": float(threshold),
        "n_images": int(n_images),
        "n_pairs": int(n_pairs),
    }
    row.update({f"recall@{s}": float(values[pos]) for s, values in means.items()})
    return row


def _write_tables(
    results_dir: Path,
    explanation_rows: list[dict[str, Any]],
    filter_rows: list[dict[str, Any]],
    top_rows: np.ndarray,
    image_ids: np.ndarray,
    filters: np.ndarray,
    thresholds: np.ndarray,
    labels: np.ndarray,
    label_iou: np.ndarray,
    categories: Categories,
    s_values: Sequence[int],
) -> None:
    """explanations.{parquet,csv} (one row per filter and method) and filters.parquet."""
    position = {int(f): i for i, f in enumerate(filters)}
    table = pd.DataFrame(explanation_rows)
    pos = table["filter"].map(position).to_numpy()
    table["explanation"] = [
        " ".join(f"{w}:{c}" for w, c in zip(ws, cs)) for ws, cs in zip(table["words"], table["word_counts"])
    ]
    table["top_image_ids"] = [image_ids[r[r >= 0]].tolist() for r in top_rows[pos]]
    table["netdissect_label"] = [categories.names[labels[p]] if labels[p] >= 0 else None for p in pos]
    table["netdissect_iou"] = label_iou[pos]
    table["threshold"] = thresholds[pos].astype(np.float64)
    columns = [
        "filter",
        "method",
        "explanation",
        "words",
        "word_counts",
        "top_image_ids",
        "netdissect_label",
        "netdissect_iou",
        "threshold",
    ]
    table = table[columns]
    schema = pa.schema(
        [
            ("filter", pa.int64()),
            ("method", pa.string()),
            ("explanation", pa.string()),
            ("words", pa.list_(pa.string())),
            ("word_counts", pa.list_(pa.int64())),
            ("top_image_ids", pa.list_(pa.int64())),
            ("netdissect_label", pa.string()),
            ("netdissect_iou", pa.float64()),
            ("threshold", pa.float64()),
        ]
    )
    write_parquet(
        results_dir / "explanations.parquet", pa.Table.from_pandas(table, schema=schema, preserve_index=False)
    )
    flat = table.drop(columns=["words", "word_counts"]).assign(
        top_image_ids=[" ".join(map(str, ids)) for ids in table["top_image_ids"]]
    )
    with atomic_path(results_dir / "explanations.csv") as tmp:
        flat.to_csv(tmp, index=False)
    filters_table = pd.DataFrame(filter_rows)[
        ["filter", "method", "threshold", "n_images", "n_pairs", *[f"recall@{s}" for s in s_values]]
    ]
    write_parquet(results_dir / "filters.parquet", filters_table)


def _write_heatmaps(
    out_dir: Path,
    heatmap_filters: Sequence[int],
    filters: np.ndarray,
    top_rows: np.ndarray,
    maps: np.ndarray,
    thresholds: np.ndarray,
    image_ids: np.ndarray,
    image_path: Any,
    explanation_rows: list[dict[str, Any]],
    resize: int,
    crop: int,
) -> None:
    """One PNG per requested (and evaluated) filter: its top images with the overlay and words."""
    position = {int(f): i for i, f in enumerate(filters)}
    words = {(r["filter"], r["method"]): r["words"] for r in explanation_rows}
    skipped = [f for f in heatmap_filters if int(f) not in position]
    if skipped:
        log.warning("heatmap filter(s) %s are not among the evaluated filters: no heatmap", skipped)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("filter_*.png"):
        stale.unlink()
    for filter_index in heatmap_filters:
        if int(filter_index) not in position:
            continue
        pos = position[int(filter_index)]
        rows = top_rows[pos][top_rows[pos] >= 0]
        header = [f"filter {filter_index}  T={thresholds[pos]:.3f}  ({len(rows)} top images)"]
        header += [
            f"{m}: {' '.join(words.get((int(filter_index), m), []))}"
            for m in METHODS
            if (int(filter_index), m) in words
        ]
        if len(rows) == 0:
            log.warning("filter %d has no image with a positive activation: no heatmap", filter_index)
            continue
        filter_maps = torch.from_numpy(np.asarray(maps[rows, int(filter_index)], dtype=np.float32))
        upsampled = upsample_maps(filter_maps, crop).numpy()
        scale = max(float(upsampled.max()), 1e-12)
        tiles = []
        for k, row in enumerate(rows):
            try:
                image = transform_geometry(decode_image(image_path(int(row))), resize, crop)
            except (OSError, ValueError, UndecodableImageError) as error:
                log.warning(
                    "heatmap filter %d: image %d unreadable (%s), drawn grey", filter_index, image_ids[row], error
                )
                image = torch.full((3, crop, crop), 128, dtype=torch.uint8)
            tiles.append(
                HeatmapTile(
                    image=image.permute(1, 2, 0).numpy(),
                    heat=np.clip(upsampled[k] / scale, 0, 1),
                    region=upsampled[k] > thresholds[pos],
                    caption=f"image {image_ids[row]}",
                )
            )
        write_sheet(out_dir / f"filter_{int(filter_index):04d}.png", tiles, header)
