"""COCO 2017 instances JSON -> merged objects, categories, rejections.

Decisions (docs/PROTOCOL.md; shared filtering in `lavise.data.annotation_tables`):

- Splits are the official ones: ``train2017`` -> ``train``, ``val2017`` -> ``val``; image
  paths are ``<split>2017/<file_name>`` relative to ``data/raw/coco``.
- A category is its COCO name; its tokens are the name split on whitespace ("traffic light"
  -> ["traffic", "light"]; the 80 official names give 92 distinct tokens). A name with a token
  absent from the embedding vocabulary is dropped as ``not_in_embedding``. No rare-category
  filter: every COCO category is kept and ``seen`` unless the caller asks for a seen/unseen split.
- Crowd annotations (``iscrowd=1``, an uncompressed RLE over a group of instances):
  ``crowd="include"`` keeps them as instances of their category, their RLE being the mask;
  ``crowd="exclude"`` rejects them with reason ``crowd``.
- All instances of one category in one image are merged into ONE object (the paper's rule, as
  for VG): the mask is the union (``pycocotools.mask.merge``), stored as a compressed RLE
  counts string, ``area`` its pixel count, ``n_instances`` and the annotation ids kept.
- Ids are JSON integers (`lavise.data.raw_json.json_id`): never ``int()`` of ``1.7``, ``"3"`` or
  ``true``. An image or category entry with another id, or an image without a plain file name, is
  an error naming the file and the entry (the tables would be wrong, not just smaller).
- Rejected annotations, first matching reason wins: ``invalid_annotation_id`` (absent or not a
  JSON integer; stored with source id -1), ``duplicate_annotation_id`` (an id seen earlier in
  train2017 then val2017), ``unknown_image`` (image id absent, not an integer, or not in the
  images), ``invalid_image_size`` (its image's width or height is not a positive integer),
  ``unknown_category``, ``crowd`` (exclude mode), then the geometry: ``invalid_polygon``,
  ``invalid_rle``, ``invalid_segmentation`` (neither a polygon list nor an RLE). Merged masks
  with no pixel become ``empty_mask`` downstream.
- The geometry is checked before pycocotools sees it, because pycocotools trusts it: it
  rasterises a polygon on a buffer that grows with its coordinates' range and boundary length
  (a ``null`` becomes NaN, then a huge integer: tens of GB or a segfault) and decodes RLE runs
  past the mask's end. A polygon part is a list of at least 3 x, y points (even length >= 6) of
  JSON numbers, with ``x`` in ``[-W, 2W]`` and ``y`` in ``[-H, 2H]`` of its W x H image (COCO's
  own polygons overshoot the border by a pixel or so), and the annotation's boundary (the sum
  over edges of ``max(|dx|, |dy|)``) is at most ``MAX_BOUNDARY_PER_SIDE`` x (W + H) pixels, which
  keeps pycocotools under a few MB per annotation. An RLE's ``size`` must be the image's
  ``[H, W]`` and its runs (a list of non-negative integers, or a compressed counts string,
  `lavise.data.masks.rle_runs`) must cover exactly H x W pixels.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Container, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pycocotools import mask as mask_utils
from tqdm import tqdm

from lavise.data.annotation_schema import (
    INVALID_IMAGE_SIZE,
    NOT_IN_EMBEDDING,
    PARSED_OBJECTS_SCHEMA,
    UNKNOWN_IMAGE,
    ParsedAnnotations,
    rejected_frame,
)
from lavise.data.masks import rle_runs
from lavise.data.raw_json import json_id, json_size, read_dataset_json
from lavise.options import COCO_CROWD

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
INVALID_ANNOTATION_ID = "invalid_annotation_id"
DUPLICATE_ANNOTATION_ID = "duplicate_annotation_id"
UNKNOWN_CATEGORY = "unknown_category"
CROWD = "crowd"
INVALID_POLYGON = "invalid_polygon"
INVALID_RLE = "invalid_rle"
INVALID_SEGMENTATION = "invalid_segmentation"
# A polygon's coordinates may lie up to one image size outside the image on either side.
POLYGON_MARGIN = 1.0
# An annotation's polygon boundary may be at most this many times the image's W + H long.
MAX_BOUNDARY_PER_SIDE = 100
FIX_FILE = "fix the file or download it again"
_NUMBER_TYPES = frozenset({int, float})  # JSON numbers; bool is not one


def category_tokens(names: Sequence[str]) -> dict[str, list[str]]:
    """COCO category name -> its embedding tokens (the name split on whitespace)."""
    return {name: name.split() for name in names}


def _boundary_length(polygon: list[int | float]) -> float:
    """Sum over the closed polygon's edges of ``max(|dx|, |dy|)``: the points pycocotools rasterises / 5."""
    x, y = np.asarray(polygon, dtype=np.float64).reshape(-1, 2).T
    return float(np.maximum(np.abs(x - np.roll(x, 1)), np.abs(y - np.roll(y, 1))).sum())


def _part_problem(polygon: Any, height: int, width: int) -> tuple[str | None, float]:
    """Why one polygon part is unusable (None when it is fine), and a bound on its boundary length."""
    if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
        return "a polygon part is not a list of at least 3 x, y points", 0.0
    if not set(map(type, polygon)) <= _NUMBER_TYPES:
        return "a polygon coordinate is not a number", 0.0
    try:
        finite = math.isfinite(sum(polygon))
    except OverflowError:  # an integer beyond float range
        finite = False
    if not finite:
        return "a polygon coordinate is not finite or out of range", 0.0
    xs, ys = polygon[0::2], polygon[1::2]
    x_low, x_high, y_low, y_high = min(xs), max(xs), min(ys), max(ys)
    if x_low < -POLYGON_MARGIN * width or x_high > (1 + POLYGON_MARGIN) * width:
        return f"a polygon x lies outside [-W, 2W] of the {width}-pixel-wide image", 0.0
    if y_low < -POLYGON_MARGIN * height or y_high > (1 + POLYGON_MARGIN) * height:
        return f"a polygon y lies outside [-H, 2H] of the {height}-pixel-high image", 0.0
    return None, len(xs) * max(x_high - x_low, y_high - y_low)  # each edge is at most the larger extent


def polygon_problem(polygons: list[Any], height: int, width: int) -> str | None:
    """Why a polygon list is unsafe to rasterise (module docstring), None when it is fine."""
    if not polygons:
        return "no polygon"
    bound = 0.0
    for polygon in polygons:
        problem, part_bound = _part_problem(polygon, height, width)
        if problem is not None:
            return problem
        bound += part_bound
    limit = MAX_BOUNDARY_PER_SIDE * (width + height)
    if bound > limit:  # the cheap bound is not enough: measure (rare for real polygons)
        boundary = sum(_boundary_length(polygon) for polygon in polygons)
        if boundary > limit:
            return f"the polygon boundary is {boundary:.0f} px, over {MAX_BOUNDARY_PER_SIDE} x (W + H) = {limit}"
    return None


def rle_problem(rle: dict[str, Any], height: int, width: int) -> str | None:
    """Why an RLE does not describe exactly this image's pixels (module docstring), None when it does."""
    size = rle.get("size")
    if not (isinstance(size, list) and all(type(side) is int for side in size) and size == [height, width]):
        return f"size {size!r} is not the image's [{height}, {width}]"
    counts = rle.get("counts")
    if isinstance(counts, list):
        if not all(type(run) is int and run >= 0 for run in counts):
            return "the counts are not non-negative integers"
        total = sum(counts)
    elif isinstance(counts, str):
        try:
            total = sum(rle_runs(counts))
        except ValueError as error:
            return f"the counts string is no RLE: {error}"
    else:
        return f"counts of type {type(counts).__name__}"
    if total != height * width:
        return f"the runs cover {total} pixels, not the image's {height * width}"
    return None


class GeometryError(ValueError):
    """An annotation's segmentation that is rejected, with its rejection reason."""

    def __init__(self, reason: str, problem: str) -> None:
        super().__init__(problem)
        self.reason = reason


def segmentation_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """One annotation's segmentation (polygons, uncompressed or compressed RLE) as a compressed RLE.

    GeometryError (``invalid_polygon``, ``invalid_rle``, ``invalid_segmentation``) before
    pycocotools sees anything it would misread.
    """
    if isinstance(segmentation, list):
        problem = polygon_problem(segmentation, height, width)
        if problem is not None:
            raise GeometryError(INVALID_POLYGON, problem)
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation, dict) and "counts" in segmentation:
        problem = rle_problem(segmentation, height, width)
        if problem is not None:
            raise GeometryError(INVALID_RLE, problem)
        if isinstance(segmentation["counts"], list):
            return mask_utils.frPyObjects(segmentation, height, width)
        return {"size": [height, width], "counts": segmentation["counts"].encode("ascii")}
    raise GeometryError(INVALID_SEGMENTATION, f"unsupported segmentation of type {type(segmentation).__name__}")


def _entries(data: dict[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    """``data[key]`` as a list of JSON objects ([] when absent); ValueError naming the file otherwise."""
    entries = data.get(key)
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise ValueError(f"{path}: {key!r} must be a JSON list, not {type(entries).__name__}; {FIX_FILE}")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: {key}[{index}] is not a JSON object; {FIX_FILE}")
    return entries


def _checked_ids(entries: list[dict[str, Any]], key: str, path: Path) -> list[int]:
    """Each entry's ``id``; ValueError naming the first one that is not a JSON integer."""
    ids = [json_id(entry.get("id")) for entry in entries]
    if None in ids:
        index = ids.index(None)
        raise ValueError(
            f"{path}: {key}[{index}] has id {entries[index].get('id')!r}; ids must be non-negative JSON integers: "
            f"{FIX_FILE}"
        )
    return ids  # type: ignore[return-value]  # no None left


def _check_file_names(images: list[dict[str, Any]], path: Path) -> None:
    """Every image names a plain file (no folder, no ``..``): its path is joined to the raw folder."""
    for index, image in enumerate(images):
        name = image.get("file_name")
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
            raise ValueError(f"{path}: images[{index}] has file_name {name!r}, not a plain file name; {FIX_FILE}")


def _image_frame(images: list[dict[str, Any]], split: str, path: Path) -> pd.DataFrame:
    """One split's images: id, path, and the size (0 where not a positive JSON integer)."""
    image_ids = _checked_ids(images, "images", path)
    _check_file_names(images, path)
    return pd.DataFrame(
        {
            "image_id": np.array(image_ids, dtype=np.int64),
            "path": [f"{split}2017/{image['file_name']}" for image in images],
            "width": np.array([json_size(image.get("width")) for image in images], dtype=np.int32),
            "height": np.array([json_size(image.get("height")) for image in images], dtype=np.int32),
            "split": split,
        }
    )


def _category_names(categories: list[dict[str, Any]], path: Path) -> dict[int, str]:
    """Category id -> name; ValueError for an id that is no integer, a missing name, or one id, two names."""
    names: dict[int, str] = {}
    for index, (category_id, category) in enumerate(zip(_checked_ids(categories, "categories", path), categories)):
        name = category.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{path}: categories[{index}] has name {name!r}; {FIX_FILE}")
        if names.setdefault(category_id, name) != name:
            raise ValueError(f"{path}: category id {category_id} is both {names[category_id]!r} and {name!r}")
    return names


def _read_split(raw_dir: Path, split: str) -> tuple[pd.DataFrame, dict[int, str], list[dict[str, Any]]]:
    """One split's images (as a frame), category names and annotations from its instances JSON."""
    path = raw_dir / "annotations" / f"instances_{split}2017.json"
    data = read_dataset_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object (images, categories, annotations); {FIX_FILE}")
    frame = _image_frame(_entries(data, "images", path), split, path)
    return frame, _category_names(_entries(data, "categories", path), path), _entries(data, "annotations", path)


def _read_splits(raw_dir: Path) -> tuple[pd.DataFrame, list[dict[str, Any]], dict[int, str]]:
    """Both splits' images, annotations and category id -> name; an image id may occur once."""
    image_frames, annotations, category_names = [], [], {}
    for split in SPLITS:
        frame, split_categories, split_annotations = _read_split(raw_dir, split)
        image_frames.append(frame)
        annotations.extend(split_annotations)
        for category_id, name in split_categories.items():
            if category_names.setdefault(category_id, name) != name:
                raise ValueError(
                    f"category id {category_id} is {category_names[category_id]!r} in one split and {name!r} "
                    f"in the other ({raw_dir / 'annotations'}); {FIX_FILE}"
                )
    images = pd.concat(image_frames, ignore_index=True)
    duplicated = images["image_id"].duplicated()
    if duplicated.any():
        raise ValueError(f"image ids appear in both splits or twice: {images['image_id'][duplicated].head().tolist()}")
    return images, annotations, category_names


class _Checker:
    """The record checks of one parse (module docstring order), remembering the annotation ids seen."""

    def __init__(self, sizes: dict[int, tuple[int, int]], category_names: dict[int, str], crowd: str) -> None:
        self.sizes, self.category_names, self.crowd = sizes, category_names, crowd
        self.seen_ids: set[int] = set()

    def record_reason(self, annotation: dict[str, Any], annotation_id: int | None, image_id: int | None) -> str | None:
        """The first reason that rejects the record before its geometry, None when there is none."""
        if annotation_id is None:
            return INVALID_ANNOTATION_ID
        if annotation_id in self.seen_ids:
            return DUPLICATE_ANNOTATION_ID
        self.seen_ids.add(annotation_id)
        if image_id not in self.sizes:
            return UNKNOWN_IMAGE
        if min(self.sizes[image_id]) <= 0:
            return INVALID_IMAGE_SIZE
        if json_id(annotation.get("category_id")) not in self.category_names:
            return UNKNOWN_CATEGORY
        if annotation.get("iscrowd", 0) and self.crowd == "exclude":
            return CROWD
        return None

    def reason_or_rle(self, annotation: dict[str, Any]) -> tuple[int, int, str | None, dict[str, Any] | None]:
        """The record's ids (-1 when invalid) and ``(reason, None)`` or ``(None, its compressed RLE)``."""
        annotation_id, image_id = json_id(annotation.get("id")), json_id(annotation.get("image_id"))
        ids = (-1 if annotation_id is None else annotation_id, -1 if image_id is None else image_id)
        reason = self.record_reason(annotation, annotation_id, image_id)
        if reason is not None:
            return *ids, reason, None
        height, width = self.sizes[image_id]  # type: ignore[index]  # record_reason checked it
        try:
            return *ids, None, segmentation_rle(annotation.get("segmentation"), height, width)
        except GeometryError as error:
            log.debug("annotation %d: %s", ids[0], error)
            return *ids, error.reason, None


Groups = dict[tuple[int, str], list[tuple[int, dict[str, Any]]]]


def _group_annotations(
    annotations: list[dict[str, Any]], sizes: dict[int, tuple[int, int]], category_names: dict[int, str], crowd: str
) -> tuple[Groups, pd.DataFrame]:
    """(image id, category name) -> its (annotation id, RLE) members, and the rejected records."""
    checker = _Checker(sizes, category_names, crowd)
    groups: Groups = {}
    rejected_ids, rejected_images, rejected_reasons = [], [], []
    for annotation in tqdm(annotations, desc="coco annotations", unit="ann", mininterval=2.0):
        annotation_id, image_id, reason, rle = checker.reason_or_rle(annotation)
        if reason is not None:
            rejected_ids.append(annotation_id)
            rejected_images.append(image_id)
            rejected_reasons.append(reason)
            continue
        key = (image_id, category_names[annotation["category_id"]])
        groups.setdefault(key, []).append((annotation_id, rle))
    return groups, rejected_frame(rejected_ids, rejected_images, np.asarray(rejected_reasons, dtype=object))


def _merged_objects(groups: Groups) -> pa.Table:
    """One object per group, sorted by (image, category): the union RLE of its members."""
    keys = sorted(groups)
    rles, areas, n_instances, source_ids = [], np.zeros(len(keys)), np.zeros(len(keys), np.int32), []
    for index, key in enumerate(keys):
        members = sorted(groups[key], key=lambda member: member[0])
        merged = members[0][1] if len(members) == 1 else mask_utils.merge([rle for _, rle in members])
        rles.append(merged["counts"].decode("ascii"))
        areas[index] = float(mask_utils.area(merged))
        n_instances[index] = len(members)
        source_ids.append([annotation_id for annotation_id, _ in members])
    return pa.table(
        {
            "image_id": pa.array([key[0] for key in keys], pa.int64()),
            "category": pa.array([key[1] for key in keys], pa.string()),
            "kind": pa.array(["rle"] * len(keys), pa.string()),
            "rle": pa.array(rles, pa.string()),
            "boxes": pa.nulls(len(keys), pa.list_(pa.float32())),
            "area": pa.array(areas, pa.float64()),
            "n_instances": pa.array(n_instances, pa.int32()),
            "source_ids": pa.array(source_ids, pa.list_(pa.int64())),
        },
        schema=PARSED_OBJECTS_SCHEMA,
    )


def _categories(names: list[str], tokens: dict[str, list[str]], vocabulary: Container[str]) -> pd.DataFrame:
    """Every category name with its tokens; ``not_in_embedding`` when a token is missing."""
    return pd.DataFrame(
        {
            "category": names,
            "synset": [None] * len(names),
            "tokens": [tokens[name] for name in names],
            "drop_reason": [
                None if tokens[name] and all(token in vocabulary for token in tokens[name]) else NOT_IN_EMBEDDING
                for name in names
            ],
        }
    )


def parse_coco(raw_dir: Path, vocabulary: Container[str], *, crowd: str) -> ParsedAnnotations:
    """Read ``raw_dir/annotations/instances_{train,val}2017.json`` into merged objects."""
    if crowd not in COCO_CROWD:
        raise ValueError(f"crowd must be one of {COCO_CROWD}, got {crowd!r}")
    images, annotations, category_names = _read_splits(Path(raw_dir))
    sizes = dict(zip(images["image_id"].tolist(), zip(images["height"].tolist(), images["width"].tolist())))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pycocotools vs NumPy 2 copy keyword
        groups, rejected = _group_annotations(annotations, sizes, category_names, crowd)
        objects = _merged_objects(groups)
    names = sorted(set(category_names.values()))
    tokens = category_tokens(names)
    n_crowd = sum(1 for annotation in annotations if annotation.get("iscrowd", 0))
    return ParsedAnnotations(
        images=images,
        objects=objects,
        categories=_categories(names, tokens, vocabulary),
        rejected=rejected,
        n_records=len(annotations),
        statistics={
            "before.crowd_annotations": n_crowd,
            "before.tokens": len({t for n in names for t in tokens[n]}),
            "before.images_with_invalid_size": int(((images["width"] <= 0) | (images["height"] <= 0)).sum()),
        },
    )
