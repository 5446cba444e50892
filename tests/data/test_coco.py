"""COCO: the 92 tokens of the 80 official names, crowd handling, instance merging, rejections."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

import stages.annotations as stage
from lavise.data.annotation_tables import finish_tables
from lavise.data.coco import category_tokens, parse_coco
from lavise.data.masks import object_mask
from lavise.data.splits import split_categories

COCO_NAMES = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
]
VOCABULARY = {"dog", "cat", "traffic", "light"}
# pycocotools' decoder trips NumPy 2's copy-keyword DeprecationWarning; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_official_80_names_give_92_distinct_tokens() -> None:
    assert len(COCO_NAMES) == len(set(COCO_NAMES)) == 80
    tokens = category_tokens(COCO_NAMES)
    assert len({token for words in tokens.values() for token in words}) == 92
    assert tokens["traffic light"] == ["traffic", "light"] and tokens["dog"] == ["dog"]


def _square(x: int, y: int, size: int) -> list[list[float]]:
    return [[x, y, x + size, y, x + size, y + size, x, y + size]]


def _crowd_rle(height: int, width: int) -> dict:
    """Uncompressed RLE (column-major run lengths) covering rows 0-1 of column 0 only."""
    return {"size": [height, width], "counts": [0, 2, height * width - 2]}


def _write_coco(raw: Path) -> Path:
    categories = [
        {"id": 18, "name": "dog"},
        {"id": 17, "name": "cat"},
        {"id": 10, "name": "traffic light"},
        {"id": 90, "name": "toothbrush"},
    ]
    train = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 20, "height": 10},
            {"id": 2, "file_name": "b.jpg", "width": 20, "height": 10},
        ],
        "categories": categories,
        "annotations": [
            {"id": 100, "image_id": 1, "category_id": 18, "segmentation": _square(0, 0, 4), "iscrowd": 0},
            {"id": 101, "image_id": 1, "category_id": 18, "segmentation": _square(2, 2, 4), "iscrowd": 0},
            {"id": 102, "image_id": 1, "category_id": 17, "segmentation": _crowd_rle(10, 20), "iscrowd": 1},
            {"id": 103, "image_id": 7, "category_id": 18, "segmentation": _square(0, 0, 2), "iscrowd": 0},
            {"id": 104, "image_id": 1, "category_id": 55, "segmentation": _square(0, 0, 2), "iscrowd": 0},
            {"id": 105, "image_id": 1, "category_id": 10, "segmentation": [[1, 2]], "iscrowd": 0},
            {"id": 106, "image_id": 1, "category_id": 90, "segmentation": _square(5, 5, 2), "iscrowd": 0},
        ],
    }
    val = {
        "images": [{"id": 3, "file_name": "c.jpg", "width": 8, "height": 8}],
        "categories": categories,
        "annotations": [{"id": 200, "image_id": 3, "category_id": 10, "segmentation": _square(1, 1, 3), "iscrowd": 0}],
    }
    (raw / "annotations").mkdir(parents=True)
    (raw / "annotations" / "instances_train2017.json").write_text(json.dumps(train))
    (raw / "annotations" / "instances_val2017.json").write_text(json.dumps(val))
    return raw


def test_instances_merge_into_one_union_rle(tmp_path: Path) -> None:
    parsed = parse_coco(_write_coco(tmp_path / "coco"), VOCABULARY, crowd="include")
    objects = parsed.objects.to_pandas().set_index(["image_id", "category"])
    dog = objects.loc[(1, "dog")]
    assert dog["n_instances"] == 2 and dog["source_ids"].tolist() == [100, 101]
    expected = np.zeros((10, 20), dtype=bool)
    for x, y in [(0, 0), (2, 2)]:
        polygon = mask_utils.frPyObjects(_square(x, y, 4), 10, 20)
        expected |= mask_utils.decode(mask_utils.merge(polygon)).astype(bool)
    mask = object_mask("rle", dog["rle"], None, 10, 20)
    np.testing.assert_array_equal(mask, expected)
    assert dog["area"] == expected.sum()
    crowd = objects.loc[(1, "cat")]
    assert crowd["source_ids"].tolist() == [102] and crowd["area"] == 2
    assert object_mask("rle", crowd["rle"], None, 10, 20)[:2, 0].all()
    assert dict(zip(parsed.images["image_id"], parsed.images["path"])) == {
        1: "train2017/a.jpg",
        2: "train2017/b.jpg",
        3: "val2017/c.jpg",
    }
    rejected = dict(zip(parsed.rejected["source_id"], parsed.rejected["reason"]))
    assert rejected == {103: "unknown_image", 104: "unknown_category", 105: "invalid_polygon"}
    categories = parsed.categories.set_index("category")
    assert categories.loc["toothbrush", "drop_reason"] == "not_in_embedding"
    assert categories.loc["traffic light", "tokens"] == ["traffic", "light"]


@pytest.mark.parametrize("crowd", ["include", "exclude"])
def test_crowd_modes_and_all_records_accounted(tmp_path: Path, crowd: str) -> None:
    raw = _write_coco(tmp_path / "coco")
    parsed = parse_coco(raw, VOCABULARY, crowd=crowd)
    tables, stats = finish_tables(parsed, raw, min_images=None, val_fraction=None, seen_fraction=None, seed=0)
    reasons = stats["dropped"]["records_by_reason"]
    expected = {"unknown_image": 1, "unknown_category": 1, "invalid_polygon": 1, "not_in_embedding": 1}
    if crowd == "exclude":
        expected["crowd"] = 1
    assert reasons == expected
    objects = tables["objects"].to_pandas()
    assert ("cat" in set(objects["category"])) == (crowd == "include")
    in_objects = sorted(int(i) for ids in objects["source_ids"] for i in ids)
    assert sorted(in_objects + tables["rejected"]["source_id"].to_pylist()) == [100, 101, 102, 103, 104, 105, 106, 200]
    images = tables["images"].to_pandas()
    assert dict(zip(images["image_id"], images["split"])) == {1: "train", 3: "val"}  # image 2 has no object
    assert stats["dropped"]["images_without_objects"] == 1
    roles = dict(zip(tables["categories"]["category"].to_pylist(), tables["categories"]["role"].to_pylist()))
    assert roles["toothbrush"] == "dropped" and roles["dog"] == "seen" and roles["traffic light"] == "seen"
    categories = tables["categories"].to_pandas().set_index("category")
    assert categories.loc["dog", "n_train_images"] == 1 and categories.loc["dog", "n_train_instances"] == 2
    assert categories.loc["traffic light", "n_train_images"] == 0  # only in val: kept, COCO has no filter


def test_unknown_crowd_mode_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="crowd"):
        parse_coco(_write_coco(tmp_path / "coco"), VOCABULARY, crowd="maybe")


@pytest.mark.parametrize("split_coco_categories", [False, True])
def test_stage_keeps_the_official_split_and_splits_categories_only_when_asked(
    tmp_path: Path, split_coco_categories: bool
) -> None:
    raw = _write_coco(tmp_path / "coco")
    parsed = parse_coco(raw, VOCABULARY, crowd="include")
    section = {  # the `annotations` params section
        "min_images": 100,
        "coco_crowd": "include",
        "val_fraction": 0.5,
        "seen_fraction": 0.5,
        "split_coco_categories": split_coco_categories,
        "seed": 4,
    }
    tables, _ = stage.finish("coco", parsed, raw, section, max_pixels=100_000_000)
    images = tables["images"].to_pandas()
    assert dict(zip(images["image_id"], images["split"])) == {1: "train", 3: "val"}  # no re-split, no min_images
    roles = dict(zip(tables["categories"]["category"].to_pylist(), tables["categories"]["role"].to_pylist()))
    kept = ["cat", "dog", "traffic light"]
    expected = split_categories(kept, 0.5, 4).tolist() if split_coco_categories else ["seen"] * 3
    assert [roles[name] for name in kept] == expected and roles["toothbrush"] == "dropped"
