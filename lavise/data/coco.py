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
- Rejected annotations: ``unknown_image`` (image id not in the file's images),
  ``unknown_category``, ``crowd`` (exclude mode), ``invalid_segmentation`` (pycocotools cannot
  build a mask from it); merged masks with no pixel become ``empty_mask`` downstream.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Container, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pycocotools import mask as mask_utils
from tqdm import tqdm

from lavise.data.annotation_schema import NOT_IN_EMBEDDING, PARSED_OBJECTS_SCHEMA, ParsedAnnotations, rejected_frame
from lavise.data.raw_json import read_dataset_json
from lavise.options import COCO_CROWD

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
UNKNOWN_IMAGE = "unknown_image"
UNKNOWN_CATEGORY = "unknown_category"
CROWD = "crowd"
INVALID_SEGMENTATION = "invalid_segmentation"


def category_tokens(names: Sequence[str]) -> dict[str, list[str]]:
    """COCO category name -> its embedding tokens (the name split on whitespace)."""
    return {name: name.split() for name in names}


def segmentation_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """One annotation's segmentation (polygons, uncompressed or compressed RLE) as a compressed RLE."""
    if isinstance(segmentation, list):
        polygons = [polygon for polygon in segmentation if isinstance(polygon, list) and len(polygon) >= 6]
        if not polygons:
            raise ValueError("no polygon with at least 3 points")
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segmentation, dict) and "counts" in segmentation:
        if isinstance(segmentation["counts"], list):
            return mask_utils.frPyObjects(segmentation, height, width)
        counts = segmentation["counts"]
        return {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")


def _read_split(raw_dir: Path, split: str) -> tuple[pd.DataFrame, list[dict[str, Any]], list[dict[str, Any]]]:
    """One split's images (as a frame), categories and annotations from its instances JSON."""
    data = read_dataset_json(raw_dir / "annotations" / f"instances_{split}2017.json")
    images = data.get("images") or []
    frame = pd.DataFrame(
        {
            "image_id": np.array([int(image["id"]) for image in images], dtype=np.int64),
            "path": [f"{split}2017/{image['file_name']}" for image in images],
            "width": np.array([int(image.get("width") or 0) for image in images], dtype=np.int32),
            "height": np.array([int(image.get("height") or 0) for image in images], dtype=np.int32),
            "split": split,
        }
    )
    return frame, data.get("categories") or [], data.get("annotations") or []


def _read_splits(raw_dir: Path) -> tuple[pd.DataFrame, list[dict[str, Any]], dict[int, str]]:
    """Both splits' images, annotations and category id -> name; an image id may occur once."""
    image_frames, annotations, category_names = [], [], {}
    for split in SPLITS:
        frame, categories, split_annotations = _read_split(raw_dir, split)
        image_frames.append(frame)
        annotations.extend(split_annotations)
        for category in categories:
            category_names[int(category["id"])] = str(category["name"])
    images = pd.concat(image_frames, ignore_index=True)
    duplicated = images["image_id"].duplicated()
    if duplicated.any():
        raise ValueError(f"image ids appear in both splits or twice: {images['image_id'][duplicated].head().tolist()}")
    return images, annotations, category_names


def _rejection_or_rle(
    annotation: dict[str, Any],
    annotation_id: int,
    image_id: int,
    sizes: dict[int, tuple[int, int]],
    category_names: dict[int, str],
    crowd: str,
) -> tuple[str | None, dict[str, Any] | None]:
    """``(reason, None)`` for a rejected annotation, else ``(None, its compressed RLE)``."""
    if image_id not in sizes or min(sizes[image_id]) <= 0:
        return UNKNOWN_IMAGE, None
    if annotation.get("category_id") not in category_names:
        return UNKNOWN_CATEGORY, None
    if annotation.get("iscrowd", 0) and crowd == "exclude":
        return CROWD, None
    height, width = sizes[image_id]
    try:
        return None, segmentation_rle(annotation.get("segmentation"), height, width)
    except (ValueError, TypeError, KeyError, IndexError) as error:
        log.debug("annotation %d: %s", annotation_id, error)
        return INVALID_SEGMENTATION, None


Groups = dict[tuple[int, str], list[tuple[int, dict[str, Any]]]]


def _group_annotations(
    annotations: list[dict[str, Any]], sizes: dict[int, tuple[int, int]], category_names: dict[int, str], crowd: str
) -> tuple[Groups, pd.DataFrame]:
    """(image id, category name) -> its (annotation id, RLE) members, and the rejected records."""
    groups: Groups = {}
    rejected_ids, rejected_images, rejected_reasons = [], [], []
    for annotation in tqdm(annotations, desc="coco annotations", unit="ann", mininterval=2.0):
        annotation_id = int(annotation.get("id", -1))
        image_id = int(annotation.get("image_id", -1))
        reason, rle = _rejection_or_rle(annotation, annotation_id, image_id, sizes, category_names, crowd)
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
        statistics={"before.crowd_annotations": n_crowd, "before.tokens": len({t for n in names for t in tokens[n]})},
    )
