"""The annotation tables' schemas and the fixture writer that other areas' tests use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from lavise.data.annotation_schema import (
    IMAGES_SCHEMA,
    OBJECTS_SCHEMA,
    PARSED_OBJECTS_SCHEMA,
    TABLE_SCHEMAS,
    rejected_frame,
)
from lavise.data.masks import image_object_masks
from tests.writers.annotations import (
    boxes_object,
    category_row,
    image_row,
    rle_object,
    write_annotation_tables,
)


def test_parsed_objects_schema_is_the_objects_schema_without_ids() -> None:
    assert PARSED_OBJECTS_SCHEMA.names == OBJECTS_SCHEMA.names[1:]
    assert list(TABLE_SCHEMAS) == ["images", "objects", "categories", "rejected"]


def test_rejected_frame_broadcasts_one_reason() -> None:
    frame = rejected_frame([3, 4], [1, 1], "crowd")
    assert frame.to_dict("list") == {"source_id": [3, 4], "image_id": [1, 1], "reason": ["crowd", "crowd"]}
    assert frame["source_id"].dtype == np.int64 and frame["image_id"].dtype == np.int64


def test_writer_round_trip_in_the_library_schemas(tmp_path: Path) -> None:
    objects = [
        boxes_object(0, 7, "dog", [1, 2, 3, 4]),
        boxes_object(1, 7, "cat", [0, 0, 2, 2, 5, 5, 1, 1], source_ids=[10, 11]),
        rle_object(2, 8, "dog", "52", area=2.0),  # counts "52": 5 zeros, 2 ones
    ]
    out = write_annotation_tables(
        tmp_path / "annotations",
        images=[image_row(7, width=10, height=8), image_row(8, width=1, height=7, split="val", path="val/8.jpg")],
        objects=objects,
    )
    assert sorted(p.name for p in out.iterdir()) == ["categories.parquet", "images.parquet", "objects.parquet"]
    for name in ("images", "objects", "categories"):
        assert pq.read_schema(out / f"{name}.parquet").equals(TABLE_SCHEMAS[name]), name
    images = pq.read_table(out / "images.parquet").to_pylist()
    assert images[1] == {"image_id": 8, "path": "val/8.jpg", "width": 1, "height": 7, "split": "val", "status": "ok"}
    assert pq.read_table(out / "images.parquet").schema.equals(IMAGES_SCHEMA)
    table = pq.read_table(out / "objects.parquet").to_pandas()
    assert table["area"].tolist() == [12.0, 5.0, 2.0]  # 3x4; 2x2 + 1x1
    assert table["n_instances"].tolist() == [1, 2, 1] and table["source_ids"][1].tolist() == [10, 11]
    masks = image_object_masks(table[table["image_id"] == 7], 8, 10)
    assert masks.sum(axis=(1, 2)).tolist() == [12, 5]  # the default area is the boxes' pixels here
    assert image_object_masks(table[table["image_id"] == 8], 7, 1).sum() == 2
    categories = pq.read_table(out / "categories.parquet").to_pylist()
    assert [(c["category"], c["tokens"], c["role"]) for c in categories] == [
        ("cat", ["cat"], "seen"),
        ("dog", ["dog"], "seen"),
    ]


def test_writer_takes_explicit_categories_and_rejected(tmp_path: Path) -> None:
    out = write_annotation_tables(
        tmp_path,
        images=[image_row(1)],
        objects=[boxes_object(0, 1, "traffic light", [0, 0, 1, 1])],
        categories=[category_row("traffic light", role="unseen", n_train_images=3)],
        rejected=[{"source_id": 5, "image_id": 1, "reason": "crowd"}],
    )
    category = pq.read_table(out / "categories.parquet").to_pylist()[0]
    assert category["tokens"] == ["traffic", "light"] and category["role"] == "unseen"
    assert category["n_train_images"] == 3 and category["drop_reason"] is None
    assert pq.read_table(out / "rejected.parquet").to_pylist() == [{"source_id": 5, "image_id": 1, "reason": "crowd"}]
