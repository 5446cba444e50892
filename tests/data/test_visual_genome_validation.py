"""Malformed Visual Genome input: repeated image entries, object ids, synset strings, structure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lavise.data.visual_genome import canonical_synsets, parse_visual_genome

VOCABULARY = {"car", "man", "dog"}


def _obj(object_id: Any, synset: str = "car.n.01", box: tuple[int, int, int, int] = (1, 1, 4, 4)) -> dict[str, Any]:
    x, y, w, h = box
    return {"object_id": object_id, "synsets": [synset], "names": ["x"], "x": x, "y": y, "w": w, "h": h}


def _write(raw: Path, objects: Any, image_data: Any = None) -> Path:
    raw.mkdir(parents=True, exist_ok=True)
    if image_data is None:
        image_data = [{"image_id": i, "width": 20, "height": 20} for i in (1, 2, 3)]
    (raw / "image_data.json").write_text(json.dumps(image_data))
    (raw / "objects.json").write_text(json.dumps(objects))
    return raw


def _reasons(parsed: Any) -> list[tuple[int, int, str]]:
    rejected = parsed.rejected
    return sorted(zip(rejected["source_id"].tolist(), rejected["image_id"].tolist(), rejected["reason"].tolist()))


def test_a_repeated_image_entry_is_rejected_not_doubled(tmp_path: Path, wordnet: Any) -> None:
    entry = {"image_id": 1, "objects": [_obj(10), _obj(11, "man.n.01")]}
    raw = _write(tmp_path / "vg", [entry, {"image_id": 2, "objects": [_obj(12)]}, entry])
    parsed = parse_visual_genome(raw, VOCABULARY, wordnet)
    objects = parsed.objects.to_pandas().set_index(["image_id", "category"])
    assert objects.loc[(1, "car.n.01"), "n_instances"] == 1  # not 2: the second entry's copy is gone
    assert objects.loc[(1, "man.n.01"), "source_ids"].tolist() == [11]
    assert _reasons(parsed) == [(10, 1, "duplicate_image_entry"), (11, 1, "duplicate_image_entry")]
    assert parsed.n_records == 5


def test_a_repeated_object_id_keeps_the_first_and_rejects_the_later(tmp_path: Path, wordnet: Any) -> None:
    objects = [
        {"image_id": 1, "objects": [_obj(10), _obj(10, "man.n.01")]},
        {"image_id": 2, "objects": [_obj(10, "dog.n.01"), _obj(13)]},
    ]
    parsed = parse_visual_genome(_write(tmp_path / "vg", objects), VOCABULARY, wordnet)
    kept = sorted((row["image_id"], row["category"], row["source_ids"]) for row in parsed.objects.to_pylist())
    assert kept == [(1, "car.n.01", [10]), (2, "car.n.01", [13])]
    assert _reasons(parsed) == [(10, 1, "duplicate_object_id"), (10, 2, "duplicate_object_id")]


def test_object_ids_must_be_integers(tmp_path: Path, wordnet: Any) -> None:
    no_id = {key: value for key, value in _obj(0).items() if key != "object_id"}
    objects = [{"image_id": 1, "objects": [_obj(1.7), _obj("3"), _obj(True), _obj(None), _obj(-4), no_id, _obj(5)]}]
    parsed = parse_visual_genome(_write(tmp_path / "vg", objects), VOCABULARY, wordnet)
    assert parsed.objects["source_ids"].to_pylist() == [[5]]
    assert _reasons(parsed) == [(-1, 1, "invalid_object_id")] * 6


def test_an_entry_image_id_that_is_no_integer_rejects_its_objects(tmp_path: Path, wordnet: Any) -> None:
    objects = [{"image_id": 1.0, "objects": [_obj(1)]}, {"image_id": "2", "objects": [_obj(2)]}]
    parsed = parse_visual_genome(_write(tmp_path / "vg", objects), VOCABULARY, wordnet)
    assert _reasons(parsed) == [(1, -1, "unknown_image"), (2, -1, "unknown_image")]


def test_image_sizes_must_be_positive_integers(tmp_path: Path, wordnet: Any) -> None:
    image_data = [
        {"image_id": 1, "width": 20, "height": 20},
        {"image_id": 2, "width": "20", "height": 20},
        {"image_id": 3, "width": 20.5, "height": 20},
    ]
    objects = [{"image_id": i, "objects": [_obj(i)]} for i in (1, 2, 3)]
    parsed = parse_visual_genome(_write(tmp_path / "vg", objects, image_data), VOCABULARY, wordnet)
    assert _reasons(parsed) == [(2, 2, "invalid_image_size"), (3, 3, "invalid_image_size")]
    assert parsed.statistics["before.images_with_invalid_size"] == 2


@pytest.mark.parametrize(
    ("image_data", "message"),
    [
        ([{"image_id": 1.5, "width": 4, "height": 4}], r"image_data\.json: entry 0 has image_id 1\.5"),
        ([{"image_id": True, "width": 4, "height": 4}], r"image_data\.json: entry 0 has image_id True"),
        ([{"width": 4, "height": 4}], r"image_data\.json: entry 0 has image_id None"),
        ([7], r"image_data\.json: entry 0 is not a JSON object"),
    ],
)
def test_image_data_ids_must_be_integers(tmp_path: Path, wordnet: Any, image_data: list, message: str) -> None:
    raw = _write(tmp_path / "vg", [], image_data)
    with pytest.raises(ValueError, match=message):
        parse_visual_genome(raw, VOCABULARY, wordnet)


@pytest.mark.parametrize(
    ("objects", "message"),
    [
        ([7], r"objects\.json: entry 0 is not a JSON object"),
        ([{"image_id": 1, "objects": {"object_id": 1}}], r"objects\.json: entry 0 has 'objects' that is not a list"),
        ([{"image_id": 1, "objects": [7]}], r"objects\.json: entry 0 holds an object that is not a JSON object"),
    ],
)
def test_objects_json_structure_is_checked(tmp_path: Path, wordnet: Any, objects: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_visual_genome(_write(tmp_path / "vg", objects), VOCABULARY, wordnet)


def test_synset_strings_naming_no_wordnet_sense_are_unknown(wordnet: Any) -> None:
    names = ["car.n.00", "car.n.-1", "car.n.1", "car.n.001", "car.n.99", "car.x.01", "car", 7, "car.n.01.n.01"]
    assert canonical_synsets(names, wordnet) == dict.fromkeys(names, None)
    valid = ["car.n.01", "automobile.n.01", "Car.n.01", "car.n.05", "good.a.01", "good.s.01", "run.v.01"]
    assert canonical_synsets(valid, wordnet) == {
        "car.n.01": "car.n.01",
        "automobile.n.01": "car.n.01",
        "Car.n.01": "car.n.01",
        "car.n.05": "cable_car.n.01",
        "good.a.01": "good.a.01",
        "good.s.01": "full.s.04",
        "run.v.01": "run.v.01",
    }


def test_sense_zero_and_negative_senses_are_rejected_as_unknown_synset(tmp_path: Path, wordnet: Any) -> None:
    objects = [{"image_id": 1, "objects": [_obj(1, "car.n.00"), _obj(2, "car.n.-1"), _obj(3, "car.n.01")]}]
    parsed = parse_visual_genome(_write(tmp_path / "vg", objects), VOCABULARY, wordnet)
    assert _reasons(parsed) == [(1, 1, "unknown_synset"), (2, 1, "unknown_synset")]
    assert parsed.objects["category"].to_pylist() == ["car.n.01"]


def test_box_coordinates_that_are_no_numbers_are_degenerate(tmp_path: Path, wordnet: Any) -> None:
    objects = [
        {"image_id": 1, "objects": [_obj(1), {**_obj(2), "x": "3"}, {**_obj(3), "w": True}, {**_obj(4), "h": None}]}
    ]
    parsed = parse_visual_genome(_write(tmp_path / "vg", objects), VOCABULARY, wordnet)
    assert _reasons(parsed) == [(2, 1, "degenerate_box"), (3, 1, "degenerate_box"), (4, 1, "degenerate_box")]
