"""Test fixture writer for the annotation tables (images, objects, categories, rejected).

Rows go through the library's schemas (`lavise.data.annotation_schema`) and its table writer
(`lavise.data.annotation_tables.write_tables`), so a schema change reaches every fixture::

    from tests.writers.annotations import boxes_object, image_row, write_annotation_tables
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from lavise.data.annotation_schema import TABLE_SCHEMAS
from lavise.data.annotation_tables import write_tables

Row = dict[str, Any]


def image_row(
    image_id: int,
    *,
    width: int = 64,
    height: int = 48,
    split: str = "train",
    status: str = "ok",
    path: str | None = None,
) -> Row:
    """One ``images`` row; ``path`` defaults to ``images/<image_id>.jpg`` (VG's layout)."""
    return {
        "image_id": image_id,
        "path": f"images/{image_id}.jpg" if path is None else path,
        "width": width,
        "height": height,
        "split": split,
        "status": status,
    }


def boxes_object(
    object_id: int,
    image_id: int,
    category: str,
    boxes: Sequence[float],
    *,
    area: float | None = None,
    source_ids: Sequence[int] | None = None,
) -> Row:
    """One ``objects`` row of kind ``boxes`` (flat x, y, w, h list); ``area`` defaults to the sum of
    the boxes' w * h (exact for one box or disjoint ones), ``source_ids`` to ``[object_id]`` per box."""
    n_boxes = len(boxes) // 4
    return {
        "object_id": object_id,
        "image_id": image_id,
        "category": category,
        "kind": "boxes",
        "rle": None,
        "boxes": [float(v) for v in boxes],
        "area": float(sum(boxes[4 * k + 2] * boxes[4 * k + 3] for k in range(n_boxes))) if area is None else area,
        "n_instances": n_boxes,
        "source_ids": [object_id] * n_boxes if source_ids is None else list(source_ids),
    }


def rle_object(object_id: int, image_id: int, category: str, rle: str, area: float) -> Row:
    """One ``objects`` row of kind ``rle`` (a pycocotools compressed counts string), one instance."""
    return {
        "object_id": object_id,
        "image_id": image_id,
        "category": category,
        "kind": "rle",
        "rle": rle,
        "boxes": None,
        "area": float(area),
        "n_instances": 1,
        "source_ids": [object_id],
    }


def category_row(
    category: str,
    tokens: Sequence[str] | None = None,
    *,
    role: str = "seen",
    synset: str | None = None,
    n_train_images: int = 0,
    n_train_instances: int = 0,
    drop_reason: str | None = None,
) -> Row:
    """One ``categories`` row; ``tokens`` default to the name split on whitespace (COCO's rule)."""
    return {
        "category": category,
        "synset": synset,
        "tokens": category.split() if tokens is None else list(tokens),
        "n_train_images": n_train_images,
        "n_train_instances": n_train_instances,
        "role": role,
        "drop_reason": drop_reason,
    }


def write_annotation_tables(
    directory: Path,
    *,
    images: Sequence[Row],
    objects: Sequence[Row],
    categories: Sequence[Row] | None = None,
    rejected: Sequence[Row] | None = None,
) -> Path:
    """Write the tables given as rows into ``directory`` (``<name>.parquet``); return ``directory``.

    ``categories`` default to one ``seen`` row per distinct object category (sorted); the
    ``rejected`` table is written only when given.
    """
    if categories is None:
        categories = [category_row(name) for name in sorted({row["category"] for row in objects})]
    rows = {"images": images, "objects": objects, "categories": categories}
    if rejected is not None:
        rows["rejected"] = rejected
    tables = {
        name: pa.Table.from_pylist(list(table_rows), schema=TABLE_SCHEMAS[name]) for name, table_rows in rows.items()
    }
    write_tables(tables, Path(directory))
    return Path(directory)
