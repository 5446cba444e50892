"""Synthetic inputs of the training tests: a tiny feature cache (explainer) and a tiny labelled
image dataset (target CNN), written with the test writers of tests/writers. The fixtures that
write them once per module (``tiny_cache``, ``tiny_dataset``) are in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lavise.data.annotation_schema import NOT_IN_EMBEDDING
from lavise.data.annotation_tables import TOO_FEW_TRAIN_IMAGES
from tests.writers.annotations import boxes_object, category_row, image_row, write_annotation_tables
from tests.writers.cache import write_feature_cache
from tests.writers.glove import write_glove_store

IN_DIM = 16
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
# category → (tokens, role); "cat a" is multiword (two positive tokens).
CATEGORIES = {
    "cat a": (["alpha", "beta"], "seen"),
    "dog": (["gamma"], "seen"),
    "car": (["delta"], "seen"),
    "bird": (["epsilon"], "unseen"),
    "rare": (["zeta"], "dropped"),
}
DROP_REASONS = {"rare": TOO_FEW_TRAIN_IMAGES, "dropped thing": NOT_IN_EMBEDDING}
CLUSTER_OF = {"cat a": 0, "dog": 1, "car": 2, "bird": 3, "rare": 4}


def split_columns(split: str, counts: dict[str, int], rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Separable clusters: each category's vectors sit around its own well-separated centre.

    Returns the split's vectors [n, IN_DIM] and its objects table's columns."""
    centres = np.eye(5, IN_DIM) * 6.0 + 1.0
    categories = [c for c, n in counts.items() for _ in range(n)]
    order = rng.permutation(len(categories))
    categories = [categories[i] for i in order]
    vectors = np.stack([centres[CLUSTER_OF[c]] + rng.normal(0, 0.5, IN_DIM) for c in categories])
    object_ids = np.arange(len(categories), dtype=np.int64) + (0 if split == "train" else 10_000)
    objects = {
        "object_id": object_ids,
        "image_id": object_ids // 2,
        "category": categories,
        # Two train "dog" objects lie outside the crop: zero coverage, to be excluded.
        "coverage": np.where(
            (np.array(categories) == "dog") & (np.cumsum(np.array(categories) == "dog") <= 2) & (split == "train"),
            0.0,
            0.25,
        ).astype(np.float32),
    }
    return vectors, objects


def write_tiny_cache(root: Path) -> dict[str, Path]:
    """Feature cache, categories table and GloVe store of separable clusters under ``root``."""
    rng = np.random.default_rng(0)
    train_vectors, train_objects = split_columns(
        "train", {"cat a": 40, "dog": 40, "car": 40, "bird": 20, "rare": 3}, rng
    )
    val_vectors, val_objects = split_columns("val", {"cat a": 10, "dog": 10, "car": 10, "bird": 5}, rng)
    features = write_feature_cache(
        root / "features",
        train_vectors=train_vectors,
        train_objects=train_objects,
        val_vectors=val_vectors,
        val_objects=val_objects,
        meta={"backbone": "resnet18", "weights": "none", "layer": "layer4"},
    )
    annotations = write_annotation_tables(
        root / "annotations",
        images=[],
        objects=[],
        categories=[
            category_row(category, tokens, role=role, drop_reason=DROP_REASONS.get(category))
            for category, (tokens, role) in CATEGORIES.items()
        ],
    )
    glove = write_glove_store(
        root / "glove", WORDS + ["the", "of"], rng.normal(size=(len(WORDS) + 2, 8)).astype(np.float32)
    )
    return {"features": features, "annotations": annotations, "glove": glove}


TARGET_CATEGORIES = ["blue disc", "green bar", "red square"]
TARGET = {
    "init": "none",
    "epochs": 2,
    "batch_size": 4,
    "lr": 0.05,
    "weight_decay": 1e-4,
    "crop": 64,
    "seed": 3,
    "num_workers": 0,
    "device": "cpu",
    "nproc": 1,
}
BACKBONE = {"name": "resnet18", "weights": "target", "layer": "layer4", "num_classes": None}
TRANSFORM = {"resize": 73, "crop": 64}
WHOLE_IMAGE = (0.0, 0.0, 96.0, 80.0)  # x, y, w, h: the labels of an image are its objects' categories
# The params sections the `target` stage reads.
TARGET_PARAMS = {
    "dataset": "demo",
    "backbone": BACKBONE,
    "target": TARGET,
    "transform": TRANSFORM,
    "images": {"max_pixels": 100_000_000},
}


def _draw(rng: np.random.Generator, labels: set[str], size: tuple[int, int]) -> np.ndarray:
    height, width = size
    image = rng.integers(90, 140, size=(height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    if "red square" in labels:
        image[5:30, 5:30] = (220, 20, 20)
    if "green bar" in labels:
        image[:, width - 18 : width - 8] = (20, 200, 30)
    if "blue disc" in labels:
        image[(yy - height // 2) ** 2 + (xx - width // 2) ** 2 < 144] = (20, 40, 220)
    return image


def write_tiny_dataset(root: Path) -> Path:
    """data/annotations + data/raw/demo with 10 train (one corrupt, one not ok) and 5 val images."""
    image_dir = root / "raw" / "demo" / "images"
    image_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    image_rows, object_rows = [], []
    for image_id in range(15):
        split = "train" if image_id < 10 else "val"
        labels = {c for c in TARGET_CATEGORIES if rng.random() < 0.5} or {TARGET_CATEGORIES[image_id % 3]}
        path = f"images/{image_id:04d}.jpg"
        status = "missing" if image_id == 9 else "ok"
        if image_id == 8:
            (root / "raw" / "demo" / path).write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
        elif status == "ok":
            size = (80, 96) if image_id % 2 else (96, 80)
            Image.fromarray(_draw(rng, labels, size)).save(root / "raw" / "demo" / path, quality=95)
        image_rows.append(image_row(image_id, width=96, height=80, split=split, status=status, path=path))
        object_rows += [boxes_object(len(object_rows), image_id, c, WHOLE_IMAGE) for c in sorted(labels)]
    object_rows.append(boxes_object(len(object_rows), 0, "dropped thing", WHOLE_IMAGE))
    write_annotation_tables(
        root / "annotations",
        images=image_rows,
        objects=object_rows,
        categories=[category_row(c, role=r) for c, r in zip(TARGET_CATEGORIES, ["seen", "unseen", "seen"], strict=True)]
        + [category_row("dropped thing", role="dropped", drop_reason=DROP_REASONS["dropped thing"])],
    )
    return root
