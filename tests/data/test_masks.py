"""Masks from RLE and box unions, checked against hand-drawn masks and a naive pixel loop."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_utils

from lavise.data.masks import box_pixel_bounds, image_object_masks, object_mask, rle_runs


def _encode(mask: np.ndarray) -> str:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode("ascii")


def test_rle_round_trip_hand_mask() -> None:
    expected = np.zeros((5, 6), dtype=bool)
    expected[1:3, 2:5] = True
    expected[4, 0] = True
    result = object_mask("rle", _encode(expected), None, 5, 6)
    assert result.dtype == bool and result.shape == (5, 6)
    np.testing.assert_array_equal(result, expected)


def test_box_union_hand_computed() -> None:
    # box 1 covers rows 1-2, cols 1-2; box 2 (x=2.5 rounds half-up to 3) covers row 0, col 3.
    result = object_mask("boxes", None, [1, 1, 2, 2, 2.5, 0, 1, 1], 5, 6)
    expected = np.zeros((5, 6), dtype=bool)
    expected[1:3, 1:3] = True
    expected[0, 3] = True
    np.testing.assert_array_equal(result, expected)
    assert result.sum() == 5


def test_boxes_match_naive_pixel_loop() -> None:
    rng = np.random.default_rng(3)
    height, width = 13, 17
    boxes = np.column_stack(
        [rng.uniform(-3, 18, 12), rng.uniform(-3, 14, 12), rng.uniform(0, 9, 12), rng.uniform(0, 9, 12)]
    )
    naive = np.zeros((height, width), dtype=bool)
    for x, y, w, h in boxes:
        x0, x1 = np.floor(x + 0.5), np.floor(x + w + 0.5)
        y0, y1 = np.floor(y + 0.5), np.floor(y + h + 0.5)
        for r in range(height):
            for c in range(width):
                if x0 <= c < x1 and y0 <= r < y1:
                    naive[r, c] = True
    np.testing.assert_array_equal(object_mask("boxes", None, boxes.ravel(), height, width), naive)
    r0, r1, c0, c1 = box_pixel_bounds(boxes, height, width)
    assert np.all((r0 >= 0) & (r1 <= height) & (r0 <= r1) & (c0 >= 0) & (c1 <= width) & (c0 <= c1))


def test_image_object_masks_keeps_row_order_and_nulls() -> None:
    first = np.zeros((4, 4), dtype=bool)
    first[0, :] = True
    frame = pd.DataFrame(
        {
            "kind": ["boxes", "rle", "boxes"],
            "rle": [None, _encode(first), None],
            "boxes": [np.array([0, 0, 1, 1], np.float32), None, [2, 2, 2, 2]],
        }
    )
    masks = image_object_masks(frame, 4, 4)
    assert masks.shape == (3, 4, 4) and masks.dtype == bool
    assert masks[0].sum() == 1 and masks[0, 0, 0]
    np.testing.assert_array_equal(masks[1], first)
    assert masks[2].sum() == 4 and masks[2, 2:, 2:].all()


@pytest.mark.parametrize(
    ("kind", "rle", "boxes", "message"),
    [
        ("polygon", None, None, "unknown object kind"),
        ("rle", None, None, "no rle"),
        ("boxes", None, None, "no boxes"),
        ("boxes", None, [1, 2, 3], "groups of 4"),
        ("boxes", None, [0, 0, float("nan"), 1], "NaN"),
        ("rle", "not an rle \x01", None, "cannot decode"),
    ],
)
def test_bad_geometry_raises_clear_error(kind: str, rle: str | None, boxes: list[float] | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        object_mask(kind, rle, boxes, 4, 4)


def _runs(mask: np.ndarray) -> list[int]:
    """Run lengths of a mask in column-major order, starting with a (possibly empty) run of zeros."""
    flat = np.asfortranarray(mask).ravel(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return runs if flat[0] == 0 else [0, *runs]


@pytest.mark.parametrize("seed", range(5))
def test_rle_runs_decode_what_pycocotools_encodes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    height, width = rng.integers(1, 300, size=2)
    mask = rng.random((height, width)) < rng.uniform(0.01, 0.99)
    mask[: rng.integers(0, height), : rng.integers(0, width)] = bool(seed % 2)  # long runs: multi-character numbers
    runs = rle_runs(_encode(mask))
    assert runs == _runs(mask) and sum(runs) == height * width


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ("garbage!", "not in the RLE alphabet"),
        ("0o", "ends inside a run length"),
        ("oooooooo0", "longer than 7 characters"),
        ("0F", "has length -10"),  # "F" is 22 = 0x10 (the sign bit) | 6: -10 as a run
    ],
)
def test_rle_runs_reject_what_pycocotools_would_misread(counts: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rle_runs(counts)
