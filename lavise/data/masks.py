"""Object geometry from ``objects.parquet`` turned into binary masks at the original image size.

Two kinds of geometry exist (docs/ARCHITECTURE.md):

- ``rle``: COCO instance masks stored as pycocotools *compressed* RLE counts strings (the
  ``counts`` field of ``mask.encode`` / ``mask.merge``); the image size gives the RLE its shape.
- ``boxes``: Visual Genome boxes, a flat ``x, y, w, h, x, y, w, h, ...`` list; the mask is the
  union of the boxes filled as rectangles (the paper fills VG boxes as masks).

Box rasterisation convention (shared by every stage, and by the ``area`` column written by the
annotations stage through :func:`box_pixel_bounds`): the box edges are rounded half-up,
``c0 = floor(x + 0.5)``, ``c1 = floor(x + w + 0.5)`` (rows likewise with ``y`` and ``h``), clamped
to the image, and pixel ``(r, c)`` is inside when ``c0 <= c < c1`` and ``r0 <= r < r1``. A box
whose rounded extent is empty therefore covers no pixel; pixel centres are not used because
VG boxes are given in integer pixel coordinates where this rule is exact.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils


def box_pixel_bounds(
    boxes: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Integer half-open pixel bounds ``(r0, r1, c0, c1)`` of ``[n, 4]`` x,y,w,h boxes.

    Vectorised so the annotations stage can compute box areas for millions of boxes with the
    exact rule :func:`object_mask` uses.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x, y, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    c0 = np.clip(np.floor(x + 0.5), 0, width).astype(np.int64)
    c1 = np.clip(np.floor(x + w + 0.5), 0, width).astype(np.int64)
    r0 = np.clip(np.floor(y + 0.5), 0, height).astype(np.int64)
    r1 = np.clip(np.floor(y + h + 0.5), 0, height).astype(np.int64)
    return r0, np.maximum(r1, r0), c0, np.maximum(c1, c0)


def boxes_mask(boxes: Sequence[float] | np.ndarray, height: int, width: int) -> np.ndarray:
    """Union of flat x,y,w,h boxes as a bool ``[height, width]`` mask (convention above)."""
    flat = np.asarray(boxes, dtype=np.float64).ravel()
    if flat.size % 4:
        raise ValueError(f"boxes must be flat groups of 4 (x, y, w, h); got {flat.size} values")
    if not np.all(np.isfinite(flat)):
        raise ValueError("boxes contain NaN or infinite values")
    mask = np.zeros((height, width), dtype=bool)
    r0, r1, c0, c1 = box_pixel_bounds(flat, height, width)
    for top, bottom, left, right in zip(r0.tolist(), r1.tolist(), c0.tolist(), c1.tolist()):
        mask[top:bottom, left:right] = True
    return mask


# pycocotools' compressed counts: each run length is a delta-coded signed number (from the 3rd run on,
# relative to the run two back), written 5 bits per character from "0" (48) upward, 0x20 marking
# "more characters follow" and 0x10 the sign in the last one. A uint32 needs at most 7 characters.
_RLE_CHARACTERS = 64
_RLE_MAX_CHARACTERS_PER_RUN = 7


def rle_runs(counts: str) -> list[int]:
    """The run lengths a compressed RLE counts string holds (pycocotools' ``rleFrString``), checked.

    pycocotools reads past the end of a string whose last number is unfinished and turns a
    negative run into a huge unsigned one, so a string from an untrusted file is decoded here
    first: ValueError for a character outside the alphabet, an unfinished or overlong number, or a
    run outside ``[0, 2**32)``.
    """
    runs: list[int] = []
    value = characters = 0
    for position, character in enumerate(counts):
        code = ord(character) - 48
        if not 0 <= code < _RLE_CHARACTERS:
            raise ValueError(f"character {character!r} at {position} is not in the RLE alphabet '0'..'o'")
        value |= (code & 0x1F) << (5 * characters)
        characters += 1
        if code & 0x20:
            if characters >= _RLE_MAX_CHARACTERS_PER_RUN:
                raise ValueError(f"run {len(runs)} is longer than {_RLE_MAX_CHARACTERS_PER_RUN} characters")
            continue
        if code & 0x10:
            value |= -1 << (5 * characters)
        if len(runs) > 2:
            value += runs[-2]
        if not 0 <= value < 2**32:
            raise ValueError(f"run {len(runs)} has length {value}")
        runs.append(value)
        value = characters = 0
    if characters:
        raise ValueError("the string ends inside a run length")
    return runs


def rle_mask(rle: str | bytes, height: int, width: int) -> np.ndarray:
    """Decode a pycocotools compressed RLE counts string into a bool ``[height, width]`` mask."""
    counts = rle.encode("ascii") if isinstance(rle, str) else rle
    try:
        with warnings.catch_warnings():
            # pycocotools' Cython decoder trips NumPy 2's copy-keyword DeprecationWarning.
            warnings.simplefilter("ignore", DeprecationWarning)
            decoded = mask_utils.decode({"size": [int(height), int(width)], "counts": counts})
    except Exception as error:  # pycocotools raises bare Exceptions/ValueErrors on bad RLE
        raise ValueError(f"cannot decode RLE for a {height}x{width} mask: {error}") from error
    return np.ascontiguousarray(decoded, dtype=bool)


def object_mask(
    kind: str,
    rle: str | None,
    boxes: Sequence[float] | np.ndarray | None,
    height: int,
    width: int,
) -> np.ndarray:
    """Binary mask of one ``objects.parquet`` row at the original image size (bool ``[H, W]``)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if kind == "rle":
        if rle is None:
            raise ValueError("object of kind 'rle' has no rle string")
        return rle_mask(rle, height, width)
    if kind == "boxes":
        if boxes is None:
            raise ValueError("object of kind 'boxes' has no boxes")
        return boxes_mask(boxes, height, width)
    raise ValueError(f"unknown object kind {kind!r}; expected 'rle' or 'boxes'")


def _missing(value: object) -> bool:
    """True for the null markers pandas uses for absent list/str cells."""
    return value is None or (isinstance(value, float) and np.isnan(value))


def image_object_masks(objects: pd.DataFrame, height: int, width: int) -> np.ndarray:
    """Masks of all rows of ``objects`` (one image's objects) as bool ``[n, H, W]``, in row order."""
    masks = np.zeros((len(objects), height, width), dtype=bool)
    kinds = objects["kind"].tolist()
    rles = objects["rle"].tolist() if "rle" in objects else [None] * len(objects)
    boxes = objects["boxes"].tolist() if "boxes" in objects else [None] * len(objects)
    for index, (kind, rle, box_list) in enumerate(zip(kinds, rles, boxes)):
        masks[index] = object_mask(
            kind,
            None if _missing(rle) else rle,
            None if _missing(box_list) else box_list,
            height,
            width,
        )
    return masks
