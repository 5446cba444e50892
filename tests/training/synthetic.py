"""Synthetic inputs of the training tests: a tiny feature cache (explainer) and a tiny labelled
image dataset (target CNN). The fixtures that write them once per module are in conftest.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

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
CLUSTER_OF = {"cat a": 0, "dog": 1, "car": 2, "bird": 3, "rare": 4}


def write_split(directory: Path, split: str, counts: dict[str, int], rng: np.random.Generator) -> None:
    """Separable clusters: each category's vectors sit around its own well-separated centre."""
    centres = np.eye(5, IN_DIM) * 6.0 + 1.0
    categories = [c for c, n in counts.items() for _ in range(n)]
    order = rng.permutation(len(categories))
    categories = [categories[i] for i in order]
    vectors = np.stack([centres[CLUSTER_OF[c]] + rng.normal(0, 0.5, IN_DIM) for c in categories])
    np.save(directory / f"{split}_vectors.npy", vectors.astype(np.float16))
    n = len(categories)
    pq.write_table(
        pa.table(
            {
                "row": np.arange(n, dtype=np.int64),
                "object_id": np.arange(n, dtype=np.int64) + (0 if split == "train" else 10_000),
                "image_id": np.arange(n, dtype=np.int64) // 2,
                "category": categories,
                # Two train "dog" objects lie outside the crop: zero coverage, to be excluded.
                "coverage": np.where(
                    (np.array(categories) == "dog")
                    & (np.cumsum(np.array(categories) == "dog") <= 2)
                    & (split == "train"),
                    0.0,
                    0.25,
                ).astype(np.float32),
            }
        ),
        directory / f"{split}_objects.parquet",
    )


def write_tiny_cache(root: Path) -> dict[str, Path]:
    """Feature cache, categories table and GloVe store of separable clusters under ``root``."""
    rng = np.random.default_rng(0)
    features, annotations, glove = root / "features", root / "annotations", root / "glove"
    for d in (features, annotations, glove):
        d.mkdir()
    write_split(features, "train", {"cat a": 40, "dog": 40, "car": 40, "bird": 20, "rare": 3}, rng)
    write_split(features, "val", {"cat a": 10, "dog": 10, "car": 10, "bird": 5}, rng)
    (features / "meta.json").write_text(
        json.dumps({"backbone": "resnet18", "weights": "none", "layer": "layer4", "channels": IN_DIM})
    )
    pq.write_table(
        pa.table(
            {
                "category": list(CATEGORIES),
                "tokens": [t for t, _ in CATEGORIES.values()],
                "role": [r for _, r in CATEGORIES.values()],
            }
        ),
        annotations / "categories.parquet",
    )
    vectors = rng.normal(size=(len(WORDS) + 2, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    np.save(glove / "vectors.npy", vectors)
    pq.write_table(pa.table({"word": WORDS + ["the", "of"]}), glove / "vocab.parquet")
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
}
BACKBONE = {"name": "resnet18", "weights": "target", "layer": "layer4", "num_classes": None}
TRANSFORM = {"resize": 73, "crop": 64}
# The params sections the `target` stage reads.
TARGET_PARAMS = {"dataset": "demo", "backbone": BACKBONE, "target": TARGET, "transform": TRANSFORM}


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
        image_rows.append(
            {"image_id": image_id, "path": path, "width": 96, "height": 80, "split": split, "status": status}
        )
        object_rows += [{"image_id": image_id, "category": c} for c in sorted(labels)]
    object_rows.append({"image_id": 0, "category": "dropped thing"})
    annotations = root / "annotations"
    annotations.mkdir()
    pq.write_table(pa.Table.from_pylist(image_rows), annotations / "images.parquet")
    pq.write_table(pa.Table.from_pylist(object_rows), annotations / "objects.parquet")
    pq.write_table(
        pa.Table.from_pylist(
            [{"category": c, "role": r} for c, r in zip(TARGET_CATEGORIES, ["seen", "unseen", "seen"], strict=True)]
            + [{"category": "dropped thing", "role": "dropped"}]
        ),
        annotations / "categories.parquet",
    )
    return root
