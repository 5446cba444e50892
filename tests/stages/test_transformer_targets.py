"""The demo's stages at small scale (16 images, 3 epochs) on vision transformers and timm models.

features -> train -> evaluate (every registered method, NetDissect, heatmaps) run in-process on
randomly initialised torchvision ``vit_b_16`` and ``swin_t``, a timm ViT (with its own preset:
248 -> 224 bicubic, mean and std 0.5) and a timm CNN; the timm ViT's cached vectors are checked
against a naive forward per annotation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from lavise.data.images import read_image
from lavise.data.masks import image_object_masks
from lavise.data.transforms import mask_to_grid, masks_to_crop, preprocess
from lavise.explain.methods import REGISTRY
from lavise.features.cache import open_feature_cache
from lavise.features.extract import build_feature_cache
from lavise.models.extractor import build_feature_extractor
from lavise.models.token_grid import TOKENS
from stages.backbone_params import stage_preprocessing, validate_backbone
from stages.evaluate import Paths, run_evaluate
from stages.features import extraction_settings
from stages.params import validate_params
from stages.train import run_train
from tests.writers.annotations import boxes_object, category_row, image_row, write_annotation_tables
from tests.writers.glove import write_glove_store

pytestmark = pytest.mark.slow  # ViT-B/16 on the CPU: about half a minute for all four models
ROOT = Path(__file__).resolve().parents[2]
CATEGORIES = {"red square": "seen", "green bar": "seen", "blue disc": "unseen"}
SMALL = {"resize": 73, "crop": 64}
UNSET = {"resize": None, "crop": None}
# name, layer, transform, expected (layout, dropped tokens, channels, grid side, preset)
MODELS = {
    "vit_b_16": ("encoder.layers.encoder_layer_11", {}, (TOKENS, 1, 768, 14, "default")),
    "swin_t": ("features.5", SMALL, ("channels_last", 0, 384, 4, "default")),
    "timm/vit_tiny_patch16_224": (
        "blocks.11",
        UNSET,
        (TOKENS, 1, 192, 14, "timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k"),
    ),
    "timm/resnet10t": ("layer4", SMALL, ("channels_first", 0, 512, 2, "timm:resnet10t.c3_in1k")),
}


def _draw(rng: np.random.Generator, labels: list[str]) -> tuple[np.ndarray, dict[str, list[float]]]:
    """An 80 x 96 image with the labelled shapes and each shape's box (x, y, w, h)."""
    image = rng.integers(90, 140, size=(80, 96, 3), dtype=np.uint8)
    boxes = {}
    if "red square" in labels:
        image[5:35, 5:35] = (220, 20, 20)
        boxes["red square"] = [5.0, 5.0, 30.0, 30.0]
    if "green bar" in labels:
        image[:, 78:90] = (20, 200, 30)
        boxes["green bar"] = [78.0, 0.0, 12.0, 80.0]
    if "blue disc" in labels:
        yy, xx = np.mgrid[:80, :96]
        image[(yy - 50) ** 2 + (xx - 48) ** 2 < 196] = (20, 40, 220)
        boxes["blue disc"] = [34.0, 36.0, 28.0, 28.0]
    return image, boxes


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Annotation tables, images and a GloVe store of 16 images (10 train, 6 val)."""
    root = tmp_path_factory.mktemp("transformers")
    (root / "raw" / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = list(CATEGORIES)
    images, objects = [], []
    for image_id in range(16):
        labels = [name for name in names if rng.random() < 0.5] or [names[image_id % 3]]
        pixels, boxes = _draw(rng, labels)
        Image.fromarray(pixels).save(root / "raw" / "images" / f"{image_id}.png")
        split = "train" if image_id < 10 else "val"
        images.append(image_row(image_id, width=96, height=80, split=split, path=f"images/{image_id}.png"))
        for name, box in boxes.items():
            objects.append(boxes_object(len(objects), image_id, name, box))
    categories = [category_row(name, role=role, n_train_images=5) for name, role in CATEGORIES.items()]
    write_annotation_tables(root / "annotations", images=images, objects=objects, categories=categories)
    words = ["red", "square", "green", "bar", "blue", "disc", "the", "of"]
    write_glove_store(root / "glove", words, rng.normal(size=(len(words), 8)).astype(np.float32))
    return root


def _params(name: str) -> dict[str, Any]:
    layer, transform, _ = MODELS[name]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["backbone"].update(name=name, weights="none", layer=layer)
    params["transform"].update(transform)
    params["features"].update(batch_size=4, chunk_images=8, device="cpu")
    params["train"].update(epochs=3, batch_size=4, patience=3, device="cpu")
    params["evaluate"].update(
        p=3,
        quantile=0.9,
        top_s=[2, 5],
        filters={"every": 16},
        image_masking_filters=[0],
        heatmap_filters=[0],
        batch_size=16,
        device="cpu",
        vocabulary="glove",  # the fixture's GloVe store; glove_nouns would need WordNet too
    )
    validate_params(params, ROOT)
    validate_backbone(params, ROOT)
    return params


RUNS: dict[str, tuple[Path, dict[str, Any]]] = {}


def _run(name: str, dataset: Path) -> tuple[Path, dict[str, Any]]:
    """features -> train -> evaluate for model ``name`` (once per module); (output dir, metrics)."""
    if name in RUNS:
        return RUNS[name]
    params, out = _params(name), dataset / name.replace("/", "_")
    torch.manual_seed(0)
    build_feature_cache(
        dataset / "annotations", dataset / "raw", out / "features", extraction_settings(params, out), num_workers=0
    )
    run_train(
        out / "features",
        dataset / "annotations",
        dataset / "glove",
        out / "explainer",
        out / "train.json",
        out / "history.csv",
        params["train"],
    )
    paths = Paths(
        features=out / "features",
        annotations=dataset / "annotations",
        explainer=out / "explainer",
        glove=dataset / "glove",
        wordnet=dataset / "wordnet",
        raw=dataset / "raw",
        metrics=out / "recall.json",
        results=out / "results",
        summary=out / "summary.json",
        target_metrics=out / "target.json",
    )
    preprocessing = stage_preprocessing(params, "none")
    metrics = run_evaluate(paths, params["backbone"], preprocessing, params["evaluate"])
    RUNS[name] = (out, metrics)
    return RUNS[name]


@pytest.mark.parametrize("name", list(MODELS))
def test_every_stage_runs_on_the_model(name: str, dataset: Path) -> None:
    out, metrics = _run(name, dataset)
    layout, dropped, channels, side, preset = MODELS[name][2]
    cache = open_feature_cache(out / "features")
    assert cache.meta["layer_output"] == {"layout": layout, "dropped_tokens": dropped, "grid": [side, side]}
    assert cache.meta["transform"]["preset"] == preset
    assert isinstance(cache.val_maps, np.memmap) and cache.val_maps.shape == (6, channels, side, side)
    assert set(metrics) == {*REGISTRY, "netdissect"}
    for method, entry in metrics.items():
        assert entry["n_filters"] == (1 if REGISTRY.get(method) and REGISTRY[method].needs_cnn else channels // 16)
        for s in (1, 2, 5):
            assert 0.0 <= entry[f"recall@{s}"] <= 1.0
    assert (out / "results" / "heatmaps" / "filter_0000.png").is_file()


def test_cached_vectors_equal_a_naive_forward_per_annotation(dataset: Path) -> None:
    """The timm ViT: tokens with a class token dropped, its own preset (248 -> 224 bicubic, masks too)."""
    name = "timm/vit_tiny_patch16_224"
    out, _ = _run(name, dataset)
    params = _params(name)
    cache = open_feature_cache(out / "features")
    p = stage_preprocessing(params, "none")
    assert cache.meta["transform"] == p.record()
    extractor = build_feature_extractor(name, "none", params["backbone"]["layer"])
    images = pq.read_table(dataset / "annotations" / "images.parquet").to_pandas().set_index("image_id")
    objects = pq.read_table(dataset / "annotations" / "objects.parquet").to_pandas().set_index("object_id")
    grid = (cache.meta["height"], cache.meta["width"])
    for vectors, table in ((cache.train_vectors, cache.train_objects[:6]), (cache.val_vectors, cache.val_objects)):
        for row in table.itertuples():
            obj = objects.loc[[row.object_id]]
            pixels = read_image(dataset / "raw" / images.loc[row.image_id, "path"])
            with torch.inference_mode():
                maps = extractor(preprocess(pixels, p.resize, p.crop, p.interpolation, p.mean, p.std)[None])[0]
            mask = torch.from_numpy(image_object_masks(obj, 80, 96))
            weights = mask_to_grid(masks_to_crop(mask, p.resize, p.crop, p.interpolation), grid)[0]
            naive = torch.stack([(maps[c] * weights).mean() for c in range(maps.shape[0])])
            np.testing.assert_allclose(vectors[row.row].astype(np.float32), naive.numpy(), rtol=2e-2, atol=2e-3)
    first = int(cache.val_images["image_id"][0])
    pixels = read_image(dataset / "raw" / images.loc[first, "path"])
    with torch.inference_mode():
        maps = extractor(preprocess(pixels, p.resize, p.crop, p.interpolation, p.mean, p.std)[None])[0]
    np.testing.assert_allclose(cache.val_maps[0].astype(np.float32), maps.numpy(), rtol=2e-2, atol=2e-2)
