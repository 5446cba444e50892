"""Malformed COCO input is checked before pycocotools sees it: geometry, ids and file structure.

pycocotools rasterises a polygon on a buffer that grows with its coordinates' range, and casts
a ``null`` (NaN) to a huge int: the parse runs in a child process under a 2 GiB address-space
limit, so the code before the checks (24 GB, then a kill or a segfault) cannot take the machine down.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from lavise.data.coco import parse_coco

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
HEIGHT, WIDTH = 10, 20
VOCABULARY = {"dog", "cat"}
SQUARE = [0, 0, 4, 0, 4, 4, 0, 4]
ADDRESS_SPACE_LIMIT = 2 << 30


def _compressed(mask: np.ndarray) -> str:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode("ascii")


def _annotation(annotation_id: Any, segmentation: Any, **fields: Any) -> dict[str, Any]:
    return {"id": annotation_id, "image_id": 1, "category_id": 18, "segmentation": segmentation, "iscrowd": 0, **fields}


def _write(raw: Path, annotations: list[dict[str, Any]], /, **train_fields: Any) -> Path:
    train = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": WIDTH, "height": HEIGHT}],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "cat"}],
        "annotations": annotations,
        **train_fields,
    }
    val = {"images": [], "categories": train["categories"], "annotations": []}
    (raw / "annotations").mkdir(parents=True, exist_ok=True)
    (raw / "annotations" / "instances_train2017.json").write_text(json.dumps(train))
    (raw / "annotations" / "instances_val2017.json").write_text(json.dumps(val))
    return raw


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def _parse_in_child(raw: Path) -> dict[str, Any]:
    """parse_coco in a child under the address-space limit: rejected reasons and object areas."""
    code = (
        "import json, sys, warnings; warnings.simplefilter('ignore');"
        "from lavise.data.coco import parse_coco;"
        f"p = parse_coco({str(raw)!r}, {sorted(VOCABULARY)!r}, crowd='include');"
        "r = dict(zip(p.rejected['source_id'].tolist(), p.rejected['reason'].tolist()));"
        "o = p.objects.to_pylist();"
        "print(json.dumps({'rejected': {str(k): v for k, v in r.items()},"
        " 'objects': [[x['source_ids'], x['area']] for x in o]}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limit_address_space,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, f"child ended with {result.returncode}: {result.stderr[-2000:]}"
    return json.loads(result.stdout.splitlines()[-1])


def test_null_and_huge_polygon_coordinates_are_rejected_under_a_memory_limit(tmp_path: Path) -> None:
    raw = _write(
        tmp_path / "coco",
        [
            _annotation(1, [[1, 2, None, 4, 5, 6, 7, 8]]),
            _annotation(2, [[1, 2, 1e7, 4, 5, 6, 7, 8]]),
            _annotation(3, [[1, 2, 1e8, 4, 5, 6, 7, 8]]),
            _annotation(4, [SQUARE]),
        ],
    )
    parsed = _parse_in_child(raw)
    assert parsed["rejected"] == {"1": "invalid_polygon", "2": "invalid_polygon", "3": "invalid_polygon"}
    assert parsed["objects"] == [[[4], 16.0]]


def test_every_malformed_polygon_is_rejected_and_the_bound_is_inclusive(tmp_path: Path) -> None:
    zigzag = [value for _ in range(2000) for value in (-WIDTH, -HEIGHT, 2 * WIDTH, 2 * HEIGHT)]
    bad = {
        10: [[1, 2, "3", 4, 5, 6]],  # a string
        11: [[1, 2, True, 4, 5, 6]],  # a bool
        12: [[1, 2, 3, 4, 5]],  # odd length
        13: [[1, 2]],  # fewer than 3 points
        14: [],  # no polygon
        15: [SQUARE, "x"],  # a part that is no list
        16: [[-WIDTH - 1, 0, 4, 0, 4, 4]],  # x below -W
        17: [[0, 0, 4, 0, 4, 2 * HEIGHT + 0.5]],  # y above 2H
        18: [zigzag],  # within the bounds, but a boundary long enough to exhaust memory
        19: [[[1, 2, 3, 4, 5, 6]]],  # nested one level too deep
    }
    good = {20: [[-WIDTH, -HEIGHT, 2 * WIDTH, -HEIGHT, 2 * WIDTH, 2 * HEIGHT]]}  # the bounds themselves
    annotations = [_annotation(i, s) for i, s in bad.items()] + [_annotation(i, s) for i, s in good.items()]
    parsed = _parse_in_child(_write(tmp_path / "coco", annotations))
    assert parsed["rejected"] == {str(i): "invalid_polygon" for i in bad}
    assert [ids for ids, _ in parsed["objects"]] == [[20]]


def test_rles_must_match_the_image_and_decode_to_its_pixel_count(tmp_path: Path) -> None:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[2:5, 3:9] = True
    counts = _compressed(mask)
    wrong_size = _compressed(np.ones((HEIGHT + 1, WIDTH), dtype=bool))
    bad = {
        30: {"size": [WIDTH, HEIGHT], "counts": [0, 2, HEIGHT * WIDTH - 2]},  # size is [W, H]
        31: {"size": [HEIGHT, WIDTH], "counts": [0, 2, HEIGHT * WIDTH]},  # sums past H*W
        32: {"size": [HEIGHT, WIDTH], "counts": [0, -2, HEIGHT * WIDTH + 2]},  # a negative run
        33: {"size": [HEIGHT, WIDTH], "counts": [0, 2.5, HEIGHT * WIDTH - 2.5]},  # not integers
        34: {"counts": [0, 2, HEIGHT * WIDTH - 2]},  # no size
        35: {"size": [HEIGHT, WIDTH], "counts": "garbage!"},  # the probe's string: not an RLE at all
        36: {"size": [HEIGHT, WIDTH], "counts": wrong_size},  # decodes to (H+1)*W pixels
        37: {"size": [HEIGHT, WIDTH], "counts": counts + "1"},  # one run too many
        38: {"size": [HEIGHT, WIDTH], "counts": counts[:-1] + "o"},  # ends inside a number
        39: {"size": [HEIGHT, WIDTH], "counts": "0"},  # decodes to no pixel at all
        40: {"size": [HEIGHT, WIDTH], "counts": [True, 2, HEIGHT * WIDTH - 3]},  # a bool
    }
    good = {
        50: {"size": [HEIGHT, WIDTH], "counts": counts},
        51: {"size": [HEIGHT, WIDTH], "counts": [0, 2, HEIGHT * WIDTH - 2]},
    }
    annotations = [_annotation(i, s) for i, s in bad.items()]
    annotations += [_annotation(i, s, category_id=18 if i == 50 else 1) for i, s in good.items()]
    parsed = _parse_in_child(_write(tmp_path / "coco", annotations))
    assert parsed["rejected"] == {str(i): "invalid_rle" for i in bad}
    assert sorted(parsed["objects"]) == [[[50], float(mask.sum())], [[51], 2.0]]


def test_unsupported_segmentation_types_keep_their_reason(tmp_path: Path) -> None:
    annotations = [_annotation(60, None), _annotation(61, 7), _annotation(62, "polygon")]
    parsed = parse_coco(_write(tmp_path / "coco", annotations), VOCABULARY, crowd="include")
    assert dict(zip(parsed.rejected["source_id"], parsed.rejected["reason"])) == {
        60: "invalid_segmentation",
        61: "invalid_segmentation",
        62: "invalid_segmentation",
    }


def test_annotation_ids_must_be_integers_and_unique(tmp_path: Path) -> None:
    annotations = [
        _annotation(100, [SQUARE]),
        _annotation(100, [SQUARE], category_id=1),  # the same id again: the later one goes
        _annotation(1.7, [SQUARE]),
        _annotation("3", [SQUARE]),
        _annotation(True, [SQUARE]),
        _annotation(None, [SQUARE]),
        {"image_id": 1, "category_id": 18, "segmentation": [SQUARE]},  # no id at all
        _annotation(101, [SQUARE], image_id=1.0),  # int(1.0) would be image 1
        _annotation(102, [SQUARE], image_id=True),
        _annotation(103, [SQUARE], category_id=True),  # True == 1 would be "cat"
        _annotation(104, [SQUARE], category_id=18.0),
    ]
    parsed = parse_coco(_write(tmp_path / "coco", annotations), VOCABULARY, crowd="include")
    reasons = sorted(zip(parsed.rejected["source_id"].tolist(), parsed.rejected["reason"].tolist()))
    assert reasons == sorted(
        [(-1, "invalid_annotation_id")] * 5
        + [
            (100, "duplicate_annotation_id"),
            (101, "unknown_image"),
            (102, "unknown_image"),
            (103, "unknown_category"),
            (104, "unknown_category"),
        ]
    )
    assert parsed.objects["source_ids"].to_pylist() == [[100]] and parsed.n_records == len(annotations)


def test_annotation_ids_are_unique_across_the_splits(tmp_path: Path) -> None:
    raw = _write(tmp_path / "coco", [_annotation(7, [SQUARE])])
    val = {
        "images": [{"id": 2, "file_name": "b.jpg", "width": WIDTH, "height": HEIGHT}],
        "categories": [{"id": 18, "name": "dog"}],
        "annotations": [{**_annotation(7, [SQUARE]), "image_id": 2}],
    }
    (raw / "annotations" / "instances_val2017.json").write_text(json.dumps(val))
    parsed = parse_coco(raw, VOCABULARY, crowd="include")
    assert parsed.rejected.to_dict("records") == [{"source_id": 7, "image_id": 2, "reason": "duplicate_annotation_id"}]


def test_images_with_an_unusable_size_reject_their_annotations(tmp_path: Path) -> None:
    images = [
        {"id": 1, "file_name": "a.jpg", "width": WIDTH, "height": HEIGHT},
        {"id": 2, "file_name": "b.jpg", "width": 0, "height": HEIGHT},
        {"id": 3, "file_name": "c.jpg", "width": "20", "height": HEIGHT},
        {"id": 4, "file_name": "d.jpg", "width": 20.5, "height": HEIGHT},
    ]
    annotations = [{**_annotation(200 + i, [SQUARE]), "image_id": i} for i in (1, 2, 3, 4)]
    parsed = parse_coco(_write(tmp_path / "coco", annotations, images=images), VOCABULARY, crowd="include")
    assert dict(zip(parsed.rejected["source_id"], parsed.rejected["reason"])) == {
        202: "invalid_image_size",
        203: "invalid_image_size",
        204: "invalid_image_size",
    }


@pytest.mark.parametrize(
    ("train_fields", "message"),
    [
        ({"images": [{"id": 1.5, "file_name": "a.jpg", "width": 4, "height": 4}]}, r"images\[0\] has id 1\.5"),
        ({"images": [{"id": "1", "file_name": "a.jpg", "width": 4, "height": 4}]}, r"images\[0\] has id '1'"),
        ({"images": [{"id": 1, "width": 4, "height": 4}]}, r"images\[0\] has file_name None"),
        ({"categories": [{"id": "18", "name": "dog"}]}, r"categories\[0\] has id '18'"),
        ({"categories": [{"id": 18}]}, r"categories\[0\] has name None"),
        ({"annotations": {"id": 1}}, r"'annotations' must be a JSON list"),
        ({"annotations": [7]}, r"annotations\[0\] is not a JSON object"),
    ],
)
def test_structural_faults_name_the_file_and_entry(tmp_path: Path, train_fields: dict, message: str) -> None:
    raw = _write(tmp_path / "coco", [], **train_fields)
    with pytest.raises(ValueError, match=message) as caught:
        parse_coco(raw, VOCABULARY, crowd="include")
    assert str(caught.value).startswith(str(raw / "annotations" / "instances_train2017.json"))


def test_a_file_that_is_not_an_object_names_the_file(tmp_path: Path) -> None:
    raw = _write(tmp_path / "coco", [])
    (raw / "annotations" / "instances_train2017.json").write_text("[]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        parse_coco(raw, VOCABULARY, crowd="include")
