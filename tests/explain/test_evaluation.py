"""evaluate end to end on a small synthetic cache with a planted explainer, checked against a direct
computation from the definitions (docs/PROTOCOL.md), plus the explaining pass without annotations
and a method added to the registry.

The planted explainer returns channels 0..E-1 of its input plus a tiny increasing bias. Those
channels are constant maps holding a one-hot code of one ground-truth word of the image, and
every method multiplies a constant block by a positive scalar (or by 0 for activation masking
when no cell exceeds T_u), so each pair's ranked words are known exactly: the planted word,
then the other vocabulary words from last to first (the bias order).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import lavise.explain.stream
import lavise.models.explainer
from lavise.data.masks import image_object_masks
from lavise.data.transforms import masks_to_crop
from lavise.explain.methods import REGISTRY
from stages.evaluate import Paths, run_evaluate
from tests.writers.annotations import boxes_object, category_row, image_row, write_annotation_tables
from tests.writers.cache import write_feature_cache
from tests.writers.glove import write_glove_store

N_IMAGES, CHANNELS, GRID, EMB = 10, 512, 7, 16
CROP, RESIZE = 224, 256
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "red",
    "car",
    "dog",
    "cat",
    "tree",
    "sky",
    "road",
]  # the bias ranks road, sky, ... next
CATEGORIES = [
    ("red car", ["red", "car"], "seen"),
    ("dog", ["dog"], "seen"),
    ("cat", ["cat", "red"], "unseen"),
    ("tree", ["tree"], "seen"),
    ("sky", ["sky"], "unseen"),
    ("road", ["road"], "seen"),
]
BIAS = 1e-4 * np.arange(1, EMB + 1)
EVALUATE = {
    "p": 6,
    "quantile": 0.95,
    "iou_threshold": 0.02,
    "top_s": [2, 5],
    "vocabulary": "glove",
    "presence_top_k": 2,
    "bootstrap": {"resamples": 50, "confidence": 0.9, "seed": 0},
    "filters": list(range(16, 28)),
    "image_masking_filters": [16],
    "word_weighting": "activation",
    "heatmap_filters": [16, 400],
    "batch_size": 7,
    "device": "cpu",
}
BACKBONE = {"name": "resnet18", "weights": "none", "layer": "layer4", "num_classes": None}
TRANSFORM = {"resize": RESIZE, "crop": CROP}
METHODS = tuple(REGISTRY)  # the registered methods, in their order
MAP_METHODS = tuple(name for name, method in REGISTRY.items() if not method.needs_cnn)


class PlantedExplainer(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :EMB] + torch.as_tensor(BIAS, dtype=x.dtype)


def _paths(root: Path, out: Path, features: Path | None = None) -> Paths:
    return Paths(
        features=root / "features" if features is None else features,
        annotations=root / "annotations",
        explainer=root / "explainer",
        glove=root / "glove",
        wordnet=root / "wordnet",
        raw=root / "raw" / "vg",
        metrics=out / "metrics" / "recall.json",
        results=out / "results",
        summary=out / "metrics" / "summary.json",
        target_metrics=out / "metrics" / "target.json",
    )


def _run(root: Path, out: Path, settings: dict | None = None, features: Path | None = None) -> dict:
    """The stage on the fixture with the planted explainer and chunks of three images."""
    patch = pytest.MonkeyPatch()
    patch.setattr(
        lavise.models.explainer,
        "load_explainer",
        lambda d, device: (PlantedExplainer().eval(), {"in_dim": CHANNELS, "emb_dim": EMB}),
    )
    patch.setattr(lavise.explain.stream, "IMAGE_CHUNK_BYTES", 3 * CHANNELS * GRID * GRID * 4)
    try:
        return run_evaluate(_paths(root, out, features), BACKBONE, TRANSFORM, settings or EVALUATE)
    finally:
        patch.undo()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("evaluate")
    rng = np.random.default_rng(0)
    write_glove_store(root / "glove", WORDS, np.eye(EMB, dtype=np.float32))
    images, objects, planted = [], [], []
    raw_images = root / "raw" / "vg" / "images"
    raw_images.mkdir(parents=True)
    for i in range(N_IMAGES):
        image_id = 100 + i
        height, width = int(rng.integers(240, 320)), int(rng.integers(240, 320))
        images.append(image_row(image_id, width=width, height=height, split="val", path=f"images/{image_id}.png"))
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(raw_images / f"{image_id}.png")
        chosen = rng.choice(len(CATEGORIES), size=3, replace=False)
        for c in chosen:
            w, h = rng.uniform(60, 200), rng.uniform(60, 200)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            objects.append(boxes_object(len(objects), image_id, CATEGORIES[c][0], [x, y, w, h], area=w * h))
        planted.append(WORDS.index(CATEGORIES[chosen[0]][1][0]))
    categories = [
        category_row(name, tokens, role=role, n_train_images=50, n_train_instances=60)
        for name, tokens, role in CATEGORIES
    ]
    write_annotation_tables(root / "annotations", images=images, objects=objects, categories=categories)
    maps = np.maximum(rng.normal(-0.5, 1.0, size=(N_IMAGES, CHANNELS, GRID, GRID)), 0)
    maps[:, :EMB] = 0.0
    maps[np.arange(N_IMAGES), planted] = 1.0
    maps[3, 20] = 0.0  # filter 20 never fires on image 3
    write_feature_cache(
        root / "features",
        val_maps=maps.astype(np.float16),
        val_images={"row": np.arange(N_IMAGES), "image_id": np.arange(100, 100 + N_IMAGES)},
    )
    return {
        "root": root,
        "planted": planted,
        "objects": pq.read_table(root / "annotations" / "objects.parquet").to_pandas(),
        "images": pd.DataFrame(images),
    }


def _bilinear(small: np.ndarray, size: int) -> np.ndarray:
    """align_corners=False bilinear upsampling written out with NumPy (independent of torch)."""

    def axis(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(size) + 0.5) * n_in / size - 0.5, 0)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    y0, y1, ly = axis(small.shape[0])
    x0, x1, lx = axis(small.shape[1])
    top = small[y0][:, x0] * (1 - lx) + small[y0][:, x1] * lx
    bottom = small[y1][:, x0] * (1 - lx) + small[y1][:, x1] * lx
    return top * (1 - ly[:, None]) + bottom * ly[:, None]


def _crop_masks(cache: dict) -> list[tuple[list[str], np.ndarray]]:
    """Per val image (map row order): its categories and their crop-resolution masks."""
    objects, masks = cache["objects"], []
    for _, info in cache["images"].iterrows():
        subset = objects[objects["image_id"] == info["image_id"]]
        full = torch.from_numpy(image_object_masks(subset, int(info["height"]), int(info["width"])))
        masks.append((list(subset["category"]), (masks_to_crop(full, RESIZE, CROP) >= 0.5).numpy()))
    return masks


def _truth(image_masks: tuple[list[str], np.ndarray], region: np.ndarray) -> dict[str, set[str]]:
    """Ground-truth tokens of one (filter, image) pair: categories with IoU > the threshold."""
    tokens_of = {c[0]: set(c[1]) for c in CATEGORIES}
    seen_of = {c[0]: c[2] == "seen" for c in CATEGORIES}
    seen_words = {token for c in CATEGORIES if c[2] == "seen" for token in c[1]}
    truth: dict[str, set[str]] = {"all": set(), "seen": set(), "unseen": set()}
    for name, mask in zip(*image_masks):
        either = (region | mask).sum()
        if either and (region & mask).sum() / either > EVALUATE["iou_threshold"]:
            truth["all"] |= tokens_of[name]
            if seen_of[name]:
                truth["seen"] |= tokens_of[name]
            else:  # novel words only: "red" of the unseen "cat" was a training class
                truth["unseen"] |= tokens_of[name] - seen_words
    return truth


def _direct(cache: dict, filters: list[int]) -> dict:
    """Recall of every method and of NetDissect computed pair by pair from the definitions."""
    maps = np.load(cache["root"] / "features" / "val_maps.npy").astype(np.float64)
    tokens_of = {c[0]: set(c[1]) for c in CATEGORIES}
    masks = _crop_masks(cache)
    results: dict = {m: {"all": {}, "seen": {}, "unseen": {}} for m in MAP_METHODS}
    results["netdissect"] = {"all": {}, "seen": {}, "unseen": {}}
    results["netdissect_in_sample"] = {"all": {}}
    results["labels"] = {}
    label_folds: dict[int, list[set[str]]] = {}  # each filter's label tokens learned on each half
    for u in filters:
        values = maps[:, u].ravel()
        threshold = np.float32(np.quantile(values, EVALUATE["quantile"]))
        maxima = maps[:, u].max(axis=(1, 2))
        order = sorted((r for r in range(N_IMAGES) if maxima[r] > 0), key=lambda r: (-maxima[r], r))[: EVALUATE["p"]]
        regions = [_bilinear(maps[r, u], CROP) > threshold for r in range(N_IMAGES)]

        def label_of(rows: list[int], regions: list[np.ndarray] = regions) -> tuple[str, set[str]]:
            """NetDissect's label learned on ``rows``: highest dataset-wide IoU, tokens if any overlap."""
            inter = {c[0]: 0.0 for c in CATEGORIES}
            union = {c[0]: 0.0 for c in CATEGORIES}
            for r in rows:
                present = dict(zip(*masks[r]))
                for name in inter:
                    mask = present.get(name, np.zeros((CROP, CROP), dtype=bool))
                    inter[name] += (regions[r] & mask).sum()
                    union[name] += (regions[r] | mask).sum()
            label = max(inter, key=lambda c: inter[c] / union[c] if union[c] else 0.0)
            return (label, tokens_of[label]) if inter[label] > 0 else (None, set())

        results["labels"][u] = label_of(list(range(N_IMAGES)))[0]
        fold_tokens = [label_of([r for r in range(N_IMAGES) if r % 2 == fold])[1] for fold in (0, 1)]
        label_folds[u] = fold_tokens
        for r in order:
            label_tokens = fold_tokens[1 - r % 2]  # learned on the half without image r
            in_sample_truth = _truth(masks[r], regions[r])["all"]
            if in_sample_truth:
                tokens = tokens_of.get(results["labels"][u], set())
                results["netdissect_in_sample"]["all"].setdefault(1, []).append(
                    len(tokens & in_sample_truth) / len(in_sample_truth)
                )
            truth = _truth(masks[r], regions[r])
            planted = cache["planted"][r]
            others = [WORDS[j] for j in range(EMB - 1, -1, -1)]
            for method in [m for m in results if m not in ("labels", "netdissect_in_sample")]:
                fires = method != "activation_masking" or (maps[r, u] > threshold).any()
                ranked = [WORDS[planted]] + [w for w in others if w != WORDS[planted]] if fires else others
                for split, gt in truth.items():
                    if not gt:
                        continue
                    for s in (1, *EVALUATE["top_s"]):
                        words = label_tokens if method == "netdissect" else set(ranked[:s])
                        results[method][split].setdefault(s, []).append(len(words & gt) / len(gt))
    results["fold_tokens"] = label_folds
    return results


@pytest.fixture(scope="module")
def evaluated(cache) -> dict:
    return _run(cache["root"], cache["root"])


def test_recall_matches_direct_computation(cache, evaluated) -> None:
    direct = _direct(cache, EVALUATE["filters"])
    assert direct["original_image"]["all"][1], "the synthetic cache must give scored pairs"
    labels = direct.pop("labels")
    direct.pop("fold_tokens")
    in_sample = direct.pop("netdissect_in_sample")["all"][1]
    assert evaluated["netdissect"]["in_sample"]["recall@1"] == pytest.approx(np.mean(in_sample), abs=2e-6)
    assert evaluated["netdissect"]["in_sample"]["recall@1"] != evaluated["netdissect"]["recall@1"]
    assert evaluated["netdissect"]["n_distinct_concepts"] == len({c for c in labels.values() if c is not None})
    for method, splits in direct.items():
        for s, values in splits["all"].items():
            assert evaluated[method][f"recall@{s}"] == pytest.approx(np.mean(values), abs=2e-6), (method, s)
        assert evaluated[method]["n_pairs"] == len(splits["all"][1])
        for split in ("seen", "unseen"):
            for s, values in splits[split].items():
                assert evaluated[method][split][f"recall@{s}"] == pytest.approx(np.mean(values), abs=2e-6)
    recalls = [evaluated["filter_attention"][f"recall@{s}"] for s in (1, 2, 5)]
    assert 0 < recalls[0] < recalls[1] < recalls[2] < 1


def _pearson(x: list[float], y: list[float]) -> float:
    """Pearson's r written out term by term; NaN when either variable is constant."""
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / (sxx * syy) ** 0.5 if sxx > 0 and syy > 0 else float("nan")


def test_presence_scores_match_direct_computation(cache, evaluated) -> None:
    """Per filter: presence of a named token in each image (by all its objects), its Pearson r
    with the filter's maximum activation and scikit-learn's average precision, then the means."""
    from sklearn.metrics import average_precision_score

    root, k = cache["root"], EVALUATE["presence_top_k"]
    maps = np.load(root / "features" / "val_maps.npy").astype(np.float32)
    tokens_of = {c[0]: set(c[1]) for c in CATEGORIES}
    objects = cache["objects"]
    contains = [
        set().union(*[tokens_of[c] for c in objects[objects["image_id"] == 100 + r]["category"]])
        for r in range(N_IMAGES)
    ]
    category_tokens = set().union(*tokens_of.values())
    explanations = pq.read_table(root / "results" / "explanations.parquet").to_pandas()
    filters = pq.read_table(root / "results" / "filters.parquet").to_pandas().set_index(["method", "filter"])
    fold_tokens = _direct(cache, EVALUATE["filters"])["fold_tokens"]
    for method in (*MAP_METHODS, "netdissect"):
        correlations, auprcs = [], []
        for u in EVALUATE["filters"]:
            if method == "netdissect":
                named = [fold_tokens[u][1 - r % 2] for r in range(N_IMAGES)]  # the label of the other half
            else:
                row = explanations[(explanations["filter"] == u) & (explanations["method"] == method)].iloc[0]
                named = [set(row["words"][:k]) & category_tokens] * N_IMAGES
            present = [float(bool(contains[r] & named[r])) for r in range(N_IMAGES)]
            activation = [float(maps[r, u].max()) for r in range(N_IMAGES)]
            r_value = _pearson(activation, present)
            ap = float("nan") if np.isnan(r_value) else average_precision_score(present, activation)
            assert filters.loc[(method, u), "correlation"] == pytest.approx(r_value, abs=1e-6, nan_ok=True)
            assert filters.loc[(method, u), "auprc"] == pytest.approx(ap, abs=1e-6, nan_ok=True)
            if not np.isnan(r_value):
                correlations.append(r_value)
                auprcs.append(ap)
        entry = evaluated[method]
        assert correlations, f"{method}: the synthetic cache must give defined presence scores"
        assert entry["correlation"] == pytest.approx(np.mean(correlations), abs=2e-6)
        assert entry["auprc"] == pytest.approx(np.mean(auprcs), abs=2e-6)
        assert entry["presence"]["n_filters_defined"] == len(correlations)
        assert entry["presence"]["n_filters_undefined"] == len(EVALUATE["filters"]) - len(correlations)
        for key in ("correlation", "auprc", "recall@1", "recall@5", "seen.recall@2", "unseen.recall@5"):
            figure = entry[key.split(".")[0]][key.split(".")[1]] if "." in key else entry[key]
            bounds = entry["interval"][key]
            assert bounds["low"] - 1e-6 <= figure <= bounds["high"] + 1e-6, (method, key)


def test_summary_holds_the_headline_figures(cache, evaluated) -> None:
    summary = json.loads((cache["root"] / "metrics" / "summary.json").read_text())["headline"]
    assert set(summary) == {*METHODS, "netdissect"}  # no target.json: no target mAP
    for method, figures in summary.items():
        assert figures == {
            "recall@2": evaluated[method]["recall@2"],
            "recall@2_low": evaluated[method]["interval"]["recall@2"]["low"],
            "recall@2_high": evaluated[method]["interval"]["recall@2"]["high"],
            "correlation": evaluated[method]["correlation"],
            "auprc": evaluated[method]["auprc"],
        }


def test_image_masking_matches_direct_computation(cache, evaluated) -> None:
    """Mask each top image's normalised pixels outside the upsampled region, re-run the same
    (seeded, random) ResNet-18 to layer4, pool, explain, rank the words: recall from that."""
    from lavise.data.images import decode_image
    from lavise.data.transforms import preprocess
    from lavise.models.extractor import build_feature_extractor

    (u,) = EVALUATE["image_masking_filters"]
    maps = np.load(cache["root"] / "features" / "val_maps.npy").astype(np.float32)
    threshold = np.float32(np.quantile(maps[:, u].astype(np.float64).ravel(), EVALUATE["quantile"]))
    maxima = maps[:, u].max(axis=(1, 2))
    order = sorted((r for r in range(N_IMAGES) if maxima[r] > 0), key=lambda r: (-maxima[r], r))[: EVALUATE["p"]]
    extractor = build_feature_extractor("resnet18", "none", "layer4")
    masks = _crop_masks(cache)
    scores: dict[str, dict[int, list[float]]] = {"all": {}, "seen": {}, "unseen": {}}
    for r in order:
        region = _bilinear(maps[r, u], CROP) > threshold
        info = cache["images"].iloc[r]
        image = preprocess(decode_image(cache["root"] / "raw" / "vg" / info["path"]), RESIZE, CROP)
        with torch.inference_mode():
            output = PlantedExplainer()(extractor((image * torch.from_numpy(region))[None]).mean(dim=(2, 3)))
        ranked = [WORDS[j] for j in np.argsort(-output[0].numpy(), kind="stable")]  # vocabulary = unit vectors
        for split, gt in _truth(masks[r], region).items():
            for s in (1, *EVALUATE["top_s"]):
                if gt:
                    scores[split].setdefault(s, []).append(len(set(ranked[:s]) & gt) / len(gt))
    assert scores["all"], "the synthetic cache must give scored image-masking pairs"
    assert evaluated["image_masking"]["n_pairs"] == len(scores["all"][1])
    for s, values in scores["all"].items():
        assert evaluated["image_masking"][f"recall@{s}"] == pytest.approx(np.mean(values), abs=2e-6), s
    for split in ("seen", "unseen"):
        for s, values in scores[split].items():
            assert evaluated["image_masking"][split][f"recall@{s}"] == pytest.approx(np.mean(values), abs=2e-6)


def test_metrics_file_and_tables(cache, evaluated) -> None:
    root = cache["root"]
    on_disk = json.loads((root / "metrics" / "recall.json").read_text())
    assert on_disk == json.loads(json.dumps(evaluated))
    assert set(on_disk) == {*METHODS, "netdissect"}
    assert on_disk["image_masking"]["n_filters"] == 1 and on_disk["image_masking"]["filters"] == "16"
    assert on_disk["projection"]["n_filters"] == len(EVALUATE["filters"])
    masking = on_disk["image_masking"]["recall@5"]
    assert masking is None or 0.0 <= masking <= 1.0
    explanations = pq.read_table(root / "results" / "explanations.parquet").to_pandas()
    assert len(explanations) == 4 * len(EVALUATE["filters"]) + 1
    row = explanations[(explanations["filter"] == 17) & (explanations["method"] == "original_image")].iloc[0]
    assert 1 <= len(row["top_image_ids"]) <= EVALUATE["p"]
    assert row["words"][0] in WORDS and row["threshold"] > 0
    assert pd.read_csv(root / "results" / "explanations.csv").shape[0] == len(explanations)
    for method in METHODS:
        first_words = {words[0] for words in explanations[explanations["method"] == method]["words"] if len(words)}
        assert on_disk[method]["n_distinct_concepts"] == len(first_words), method
    filters = pq.read_table(root / "results" / "filters.parquet").to_pandas()
    assert set(filters["method"]) == {*METHODS, "netdissect"}
    assert sorted(p.name for p in (root / "results" / "heatmaps").glob("*.png")) == ["filter_0016.png"]
    with Image.open(root / "results" / "heatmaps" / "filter_0016.png") as sheet:
        assert sheet.width == 5 * CROP  # 5 columns


def test_inconsistent_inputs_fail_clearly(cache, tmp_path) -> None:
    import shutil

    root = cache["root"]
    features = tmp_path / "features"
    shutil.copytree(root / "features", features)
    paths = _paths(root, tmp_path, features)
    with pytest.raises(ValueError, match=r"evaluate.filters: filter\(s\) \[600\] outside"):
        run_evaluate(paths, {}, TRANSFORM, {**EVALUATE, "filters": [600]})
    meta = (features / "meta.json").read_text()
    (features / "meta.json").write_text(json.dumps({**json.loads(meta), "height": 14, "width": 14}))
    with pytest.raises(ValueError, match="meta.json declares"):
        run_evaluate(paths, {}, TRANSFORM, EVALUATE)
    (features / "meta.json").write_text(meta)
    pq.write_table(
        pa.table({"row": np.arange(N_IMAGES), "image_id": np.arange(N_IMAGES) + 500}), features / "val_images.parquet"
    )
    with pytest.raises(ValueError, match="absent from the annotations"):
        run_evaluate(paths, {}, TRANSFORM, EVALUATE)
    assert not (tmp_path / "metrics" / "recall.json").exists()


def _pass_inputs(cache: dict) -> tuple:
    """What the explaining pass takes for the fixture: maps, pairs, filters, thresholds, CNN inputs
    (images loaded straight from their files: no annotation table involved)."""
    from lavise.data.images import decode_image
    from lavise.data.transforms import preprocess
    from lavise.explain.explaining import CnnInputs
    from lavise.features.cache import open_feature_cache
    from lavise.features.thresholds import TopImagePairs, filter_thresholds, top_images
    from lavise.models.extractor import build_feature_extractor

    maps = open_feature_cache(cache["root"] / "features").val_maps
    filters = np.asarray(EVALUATE["filters"], dtype=np.int64)
    thresholds, image_max = filter_thresholds(maps, EVALUATE["quantile"], filters)
    pairs = TopImagePairs(top_images(image_max, EVALUATE["p"]))
    files = sorted((cache["root"] / "raw" / "vg" / "images").glob("*.png"))
    cnn = CnnInputs(
        build_feature_extractor("resnet18", "none", "layer4"),
        np.isin(filters, EVALUATE["image_masking_filters"]),
        lambda row: preprocess(decode_image(files[row]), RESIZE, CROP),
    )
    return maps, pairs, filters, thresholds, image_max, cnn


def test_explaining_pass_needs_no_annotations(cache) -> None:
    """The pass with only the explaining consumer (no masks, no categories) gives exactly the
    explainer outputs of the full pass, which also feeds the ground-truth consumer."""
    from lavise.explain.explaining import ExplainingConsumer, explain_pairs
    from lavise.explain.stream import stream_maps
    from lavise.metrics.ground_truth import GroundTruthConsumer

    maps, pairs, filters, thresholds, image_max, cnn = _pass_inputs(cache)
    device, chunk = torch.device("cpu"), 4 * CHANNELS * GRID * GRID * 4  # 4 images per chunk
    alone = explain_pairs(
        maps, PlantedExplainer(), pairs, filters, thresholds, batch_size=7, device=device, cnn=cnn, chunk_bytes=chunk
    )
    explaining = ExplainingConsumer(
        PlantedExplainer(), pairs, filters, thresholds, maps.shape, batch_size=7, device=device, cnn=cnn
    )
    no_objects = (torch.zeros((0, CROP, CROP), dtype=torch.bool), np.zeros(0, dtype=np.int64))
    truth = GroundTruthConsumer(
        pairs,
        filters,
        thresholds,
        image_max,
        lambda row: no_objects,
        n_channels=CHANNELS,
        n_categories=len(CATEGORIES),
        iou_threshold=EVALUATE["iou_threshold"],
        crop=CROP,
        device=device,
    )
    stream_maps(maps, [explaining, truth], device, chunk)
    assert list(alone) == list(METHODS)
    for name, out in alone.items():
        full = explaining.outputs[name]
        assert np.array_equal(out.pairs, full.pairs), name
        torch.testing.assert_close(out.vectors, full.vectors, rtol=0, atol=0, equal_nan=True)
        explained = out.vectors[out.pairs] if out.method.per_filter else out.vectors[np.unique(pairs.row)]
        assert len(explained) and not torch.isnan(explained).any(), name
    masked = alone["image_masking"].pairs
    assert len(masked) and set(filters[pairs.filter_pos[masked]]) == {16}
    assert not truth.truth.any()  # no object: empty ground truth, the explanations are unaffected
    without_cnn = explain_pairs(maps, PlantedExplainer(), pairs, filters, thresholds, batch_size=7, device=device)
    assert len(without_cnn["image_masking"].pairs) == 0
    torch.testing.assert_close(without_cnn["projection"].vectors, alone["projection"].vectors, rtol=0, atol=0)


def test_registered_method_appears_in_every_output(cache, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One new registry entry, nothing else touched: it is explained, scored and in both tables.
    3 x projection ranks the words as projection does, so its recall is projection's."""
    from lavise.explain.methods import Method, projection

    tripled = Method("tripled_projection", lambda batch: 3 * projection(batch.maps, batch.filters))
    monkeypatch.setitem(REGISTRY, tripled.name, tripled)
    metrics = _run(cache["root"], tmp_path)
    assert set(metrics) == {*METHODS, tripled.name, "netdissect"}
    for key in ("recall@1", "recall@2", "recall@5", "n_pairs", "n_filters", "n_distinct_concepts"):
        assert metrics[tripled.name][key] == metrics["projection"][key], key
    assert metrics[tripled.name]["seen"] == metrics["projection"]["seen"]
    explanations = pq.read_table(tmp_path / "results" / "explanations.parquet").to_pandas()
    mine, theirs = (
        explanations[explanations["method"] == m].reset_index(drop=True) for m in (tripled.name, "projection")
    )
    assert len(mine) == len(EVALUATE["filters"])
    assert mine["words"].map(list).tolist() == theirs["words"].map(list).tolist()
    filters = pq.read_table(tmp_path / "results" / "filters.parquet").to_pandas()
    assert (filters["method"] == tripled.name).sum() == len(EVALUATE["filters"])
    assert (
        json.loads((tmp_path / "metrics" / "recall.json").read_text())[tripled.name]["recall@5"]
        == metrics["projection"]["recall@5"]
    )
