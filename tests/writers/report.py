"""A tiny finished run, as the report reads it: metrics, history, result tables, heatmap sheets,
and one other stage's files. Written through the library's writers (write_json, write_parquet),
with the tables in the schema `evaluate` writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image

from lavise.explain.results import EXPLANATIONS_SCHEMA
from lavise.io import write_json, write_parquet

FILTERS = [0, 3, 7]
METHODS = ["filter_attention", "projection"]
SHEET_FILTERS = [3]


def recall_metrics(with_intervals: bool = True) -> dict[str, Any]:
    """recall.json with two methods and NetDissect; intervals and the second metric when asked."""
    blocks: dict[str, Any] = {}
    for offset, name in enumerate([*METHODS, "netdissect"]):
        block: dict[str, Any] = {f"recall@{s}": 0.1 * (offset + 1) + 0.01 * s for s in (1, 5, 10)}
        block.update(n_distinct_concepts=2 + offset, n_filters=3, n_filters_scored=3, n_pairs=12)
        block["seen"] = {"n_pairs": 8, "recall@5": 0.5 + offset / 10}
        block["unseen"] = {"n_pairs": 4, "recall@5": 0.0}
        if with_intervals:
            block.update(correlation=0.25 + offset / 10, auprc=0.4)
            block["interval"] = {
                "recall@5": {"low": 0.1111, "high": 0.2222},
                "seen.recall@5": {"low": 0.4444, "high": 0.5556},
                "correlation": {"low": 0.2, "high": 0.3},
            }
        blocks[name] = block
    return blocks


def explanations() -> pd.DataFrame:
    rows = []
    for f in FILTERS:
        for m, method in enumerate(METHODS):
            words = [f"car{f}", "wheel", "<b>road</b>"] if m == 0 else ["dog", f"cat{f}"]
            rows.append(
                {
                    "filter": f,
                    "method": method,
                    "explanation": " ".join(words),
                    "words": words,
                    "word_counts": list(range(len(words), 0, -1)),
                    "top_image_ids": [10 + f, 20 + f],
                    "netdissect_label": "car.n.01" if f else None,
                    "netdissect_iou": 0.05 * (f + 1),
                    "threshold": 1.5 + f,
                }
            )
    return pd.DataFrame(rows)[EXPLANATIONS_SCHEMA.names]


def filter_scores() -> pd.DataFrame:
    rows = []
    for f in FILTERS:
        for m, method in enumerate([*METHODS, "netdissect"]):
            recall = float("nan") if (f, method) == (0, "projection") else 0.1 * m + 0.01 * f
            rows.append(
                {"filter": f, "method": method, "threshold": 1.5 + f, "n_images": 2, "n_pairs": 2, "recall@5": recall}
            )
    return pd.DataFrame(rows)


def sheet(path: Path, seed: int) -> None:
    """A PNG with varied pixels (so a screenshot of it is not blank)."""
    pixels = np.random.default_rng(seed).integers(0, 255, (60, 90, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_run(root: Path, with_intervals: bool = True) -> Path:
    """The run under ``root`` in the layout of dvc.yaml; returns ``root``."""
    write_json(root / "metrics" / "recall.json", recall_metrics(with_intervals))
    write_json(root / "metrics" / "train.json", {"best_epoch": 2, "holdout_top1": 0.5})
    write_json(root / "metrics" / "target.json", {"val_map": 0.9})
    write_json(root / "metrics" / "annotations.json", {"after": {"images": 6}})
    (root / "plots").mkdir(parents=True, exist_ok=True)
    (root / "plots" / "train_history.csv").write_text(
        "epoch,train_loss,holdout_loss,holdout_top1,holdout_top5\n1,3.0,3.2,0.2,0.5\n2,2.0,2.5,0.4,0.8\n"
    )
    table = pa.Table.from_pandas(explanations(), schema=EXPLANATIONS_SCHEMA, preserve_index=False)
    write_parquet(root / "results" / "explanations.parquet", table)
    write_parquet(root / "results" / "filters.parquet", filter_scores())
    for f in SHEET_FILTERS:
        sheet(root / "results" / "heatmaps" / f"filter_{f:04d}.png", f)
    write_json(root / "metrics" / "probe.json", {"n_images": 4, "per_filter": {"mean": 0.5}})
    write_parquet(
        root / "results" / "probe" / "explanations.parquet", pd.DataFrame({"filter": [1, 2], "words": ["a", "b"]})
    )
    sheet(root / "results" / "probe" / "heatmaps" / "filter_0001.png", 11)
    return root
