"""Visual Genome ``objects.json`` + ``image_data.json`` -> merged objects, categories, rejections.

Decisions (docs/PROTOCOL.md; the shared filtering and splits are in `lavise.data.annotation_tables`):

- An object's category is its FIRST WordNet synset, canonicalised through NLTK
  (``wordnet.synset(name).name()``), so names sharing a synset merge ("car" and "automobile"
  are both ``car.n.01``) and a non-canonical synset name merges with its canonical one.
- A category's embedding tokens come from the synset's lemma names (lower-cased: GloVe 6B is
  uncased), in WordNet order, the head lemma first: the first lemma that is present in the
  vocabulary, where a multiword lemma ("traffic_light") is present when each of its
  parts is, and then gives all its parts as tokens (averaged downstream like COCO's multiword
  names). So traffic_light.n.01 -> ["traffic", "light"] (its head lemma, as COCO names it),
  not "stoplight". A synset with no such lemma is dropped as ``not_in_embedding``. FACT2023 cut
  at the first "_" (traffic_light.n.01 -> "traffic"); we never do.
- Ids and sizes are JSON integers (`lavise.data.raw_json.json_id`): never ``int()`` of ``1.7``,
  ``"3"`` or ``true``. An image_data.json entry whose image id is not one, or that repeats one, is
  an error naming the file and the entry; a width or height that is not a positive integer makes
  the image's size invalid.
- Boxes are clipped to the image (counted as ``clipped_boxes``); rejected records, first
  matching reason wins: ``duplicate_image_entry`` (every object of an objects.json entry whose
  image id an earlier entry has: the image's objects are not doubled), ``invalid_object_id``
  (absent or not a JSON integer; stored with source id -1), ``duplicate_object_id`` (an id an
  earlier object has; the first is kept), ``unknown_image`` (the entry's image id is absent, not
  an integer, or not in image_data.json), ``invalid_image_size`` (its image has a missing or
  invalid size), ``no_synset``, ``unknown_synset`` (not a WordNet 3.0 synset name, see below),
  ``degenerate_box`` (non-finite coordinates, or width or height <= 0 after clipping).
- A synset string names a WordNet sense only in the form ``lemma.pos.NN`` (pos one of n v a s r,
  NN a two-digit sense number from 01): NLTK resolves ``car.n.00`` to the last sense by list
  indexing (``cable_car.n.01``) and ``car.n.-1`` to the one before (``car.n.04``). The synset
  NLTK returns must have that lemma and part of speech, else ``unknown_synset``.
- All instances of one category in one image become ONE object whose mask is the union of the
  clipped boxes (``lavise.data.masks`` rasterisation); ``area`` is that union's pixel count and
  ``source_ids`` the VG object ids, sorted.
- The image path is ``images/<basename of url>`` (the download merges VG_100K and VG_100K_2),
  or ``images/<image_id>.jpg`` when the url is absent.

Parsing goes through `lavise.data.raw_json` (orjson); after parsing, everything is numpy
and pyarrow columns: no per-object Python except the attribute extraction itself.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Container, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from nltk.corpus.reader.wordnet import WordNetError

from lavise.data.annotation_schema import (
    INVALID_IMAGE_SIZE,
    NOT_IN_EMBEDDING,
    PARSED_OBJECTS_SCHEMA,
    UNKNOWN_IMAGE,
    ParsedAnnotations,
    rejected_frame,
)
from lavise.data.masks import box_pixel_bounds
from lavise.data.raw_json import json_id, json_size, read_dataset_json

log = logging.getLogger(__name__)

DUPLICATE_IMAGE_ENTRY = "duplicate_image_entry"
INVALID_OBJECT_ID = "invalid_object_id"
DUPLICATE_OBJECT_ID = "duplicate_object_id"
NO_SYNSET = "no_synset"
UNKNOWN_SYNSET = "unknown_synset"
DEGENERATE_BOX = "degenerate_box"
SYNSET_NAME = re.compile(r"(?P<lemma>.+)\.(?P<pos>[nvasr])\.(?P<sense>[0-9]{2,})")
FIX_FILE = "fix the file or download it again"
_NUMBER_TYPES = frozenset({int, float})  # JSON numbers; bool is not one


def _id(value: Any) -> int:
    """An id as int, -1 when absent or not a JSON integer (then rejected through the record's reason)."""
    checked = json_id(value)
    return -1 if checked is None else checked


def _check_entries(entries: Any, source: str) -> None:
    """``entries`` is a JSON list of JSON objects; ValueError naming the file and the entry otherwise."""
    if not isinstance(entries, list):
        raise ValueError(f"{source} must hold a JSON list of images; {FIX_FILE}")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{source}: entry {index} is not a JSON object; {FIX_FILE}")


def _numbers(values: list[Any]) -> np.ndarray:
    """Float64 column of JSON numbers; anything else (absent, a string, a bool) becomes NaN (-> ``degenerate_box``).

    NumPy alone would read ``"3"`` as 3 and ``true`` as 1.
    """
    if set(map(type, values)) <= _NUMBER_TYPES:
        return np.array(values, dtype=np.float64)
    return np.array([value if type(value) in _NUMBER_TYPES else np.nan for value in values], dtype=np.float64)


def image_table(image_data: list[dict[str, Any]], source: str = "image_data.json") -> pd.DataFrame:
    """image_data.json entries -> image_id, path, width, height (split filled in later).

    ValueError naming ``source`` and the entry for an image id that is not a JSON integer or repeats.
    """
    _check_entries(image_data, source)
    raw_ids = [entry.get("image_id", entry.get("id")) for entry in image_data]
    checked = [json_id(value) for value in raw_ids]
    if None in checked:
        index = checked.index(None)
        raise ValueError(
            f"{source}: entry {index} has image_id {raw_ids[index]!r}; image ids must be non-negative JSON "
            f"integers: {FIX_FILE}"
        )
    image_ids = np.array(checked, dtype=np.int64)
    if len(np.unique(image_ids)) != len(image_ids):
        duplicates = pd.Series(image_ids)[pd.Series(image_ids).duplicated()].unique()[:5].tolist()
        raise ValueError(f"{source} repeats image ids, e.g. {duplicates}; {FIX_FILE}")
    urls = [entry.get("url") for entry in image_data]
    paths = [
        f"images/{url.rsplit('/', 1)[-1]}" if isinstance(url, str) and url else f"images/{image_id}.jpg"
        for url, image_id in zip(urls, image_ids.tolist())
    ]
    return pd.DataFrame(
        {
            "image_id": image_ids,
            "path": paths,
            "width": np.array([json_size(entry.get("width")) for entry in image_data], dtype=np.int64),
            "height": np.array([json_size(entry.get("height")) for entry in image_data], dtype=np.int64),
            "split": None,
        }
    )


def _entry_objects(objects_json: list[dict[str, Any]], source: str) -> list[list[dict[str, Any]]]:
    """Each entry's object list ([] when absent); ValueError naming the entry when it is not one."""
    per_image = []
    for index, entry in enumerate(objects_json):
        objects = entry.get("objects")
        if objects is None:
            objects = []
        if not isinstance(objects, list):
            raise ValueError(f"{source}: entry {index} has 'objects' that is not a list; {FIX_FILE}")
        if not all(isinstance(obj, dict) for obj in objects):
            raise ValueError(f"{source}: entry {index} holds an object that is not a JSON object; {FIX_FILE}")
        per_image.append(objects)
    return per_image


def record_reasons(entry_ids: np.ndarray, counts: np.ndarray, source_ids: np.ndarray) -> np.ndarray:
    """Per object the id-level rejection reason (module docstring order), None when there is none.

    ``entry_ids``: each objects.json entry's image id (-1 when invalid), ``counts`` its object
    count; ``source_ids``: each object's id (-1 when absent or invalid).
    """
    repeated_entry = pd.Series(entry_ids).duplicated().to_numpy() & (entry_ids >= 0)
    reason = np.full(len(source_ids), None, dtype=object)
    reason[np.repeat(repeated_entry, counts)] = DUPLICATE_IMAGE_ENTRY
    reason[(reason == None) & (source_ids < 0)] = INVALID_OBJECT_ID  # noqa: E711 - elementwise on object array
    candidates = np.flatnonzero(reason == None)  # noqa: E711
    repeated_id = pd.Series(source_ids[candidates]).duplicated().to_numpy()
    reason[candidates[repeated_id]] = DUPLICATE_OBJECT_ID
    return reason


def flatten_objects(objects_json: list[dict[str, Any]], source: str = "objects.json") -> pd.DataFrame:
    """objects.json -> one row per object: source_id, image_id, x, y, w, h, synset, name, record_reason.

    ``record_reason`` is the id-level rejection (:func:`record_reasons`) or None.
    """
    _check_entries(objects_json, source)
    per_image = _entry_objects(objects_json, source)
    counts = np.fromiter((len(objects) for objects in per_image), dtype=np.int64, count=len(per_image))
    entry_ids = np.array([_id(entry.get("image_id", entry.get("id"))) for entry in objects_json], dtype=np.int64)
    flat = [obj for objects in per_image for obj in objects]
    source_ids = np.array([_id(obj.get("object_id", obj.get("id"))) for obj in flat], dtype=np.int64)
    synsets = [s[0] if isinstance(s := obj.get("synsets"), list) and s else None for obj in flat]
    names = [n[0] if isinstance(n := obj.get("names"), list) and n else obj.get("name") for obj in flat]
    return pd.DataFrame(
        {
            "source_id": source_ids,
            "image_id": np.repeat(entry_ids, counts),
            "x": _numbers([obj.get("x") for obj in flat]),
            "y": _numbers([obj.get("y") for obj in flat]),
            "w": _numbers([obj.get("w") for obj in flat]),
            "h": _numbers([obj.get("h") for obj in flat]),
            "synset": pd.array(synsets, dtype=object),
            "name": pd.array(names, dtype=object),
            "record_reason": record_reasons(entry_ids, counts, source_ids),
        }
    )


def _synset_form(name: Any) -> tuple[str, str] | None:
    """(lemma, pos) of a ``lemma.pos.NN`` synset string with NN >= 01 (lower-cased as NLTK does), else None."""
    if not isinstance(name, str):
        return None
    match = SYNSET_NAME.fullmatch(name.lower())
    if match is None or int(match["sense"]) < 1 or match["sense"] != f"{int(match['sense']):02d}":
        return None
    return match["lemma"], match["pos"]


def canonical_synsets(names: Iterable[Any], wordnet: Any) -> dict[Any, str | None]:
    """Raw synset name -> WordNet's canonical name, or None when it names no WordNet synset.

    The form is checked before NLTK is asked (module docstring), and the synset NLTK returns must
    carry the name's lemma and part of speech ("a" and satellite "s" count as one).
    """
    canonical: dict[Any, str | None] = {}
    for name in names:
        form = _synset_form(name)
        canonical[name] = None
        if form is None:
            continue
        try:
            synset = wordnet.synset(name)
        except (WordNetError, ValueError, AttributeError, KeyError):
            continue
        lemma, pos = form
        same_pos = synset.pos() == pos or {synset.pos(), pos} == {"a", "s"}
        if same_pos and lemma in (lemma_name.lower() for lemma_name in synset.lemma_names()):
            canonical[name] = synset.name()
    return canonical


def choose_tokens(lemma_names: Iterable[str], vocabulary: Container[str]) -> list[str] | None:
    """Embedding tokens for a synset from its lemma names (rule in the module docstring)."""
    for lemma in lemma_names:
        parts = [part for part in lemma.lower().split("_") if part]
        if parts and all(part in vocabulary for part in parts):
            return parts
    return None


def union_box_areas(
    boxes: np.ndarray, group_offsets: np.ndarray, heights: np.ndarray, widths: np.ndarray
) -> np.ndarray:
    """Pixel count of the union of each group's boxes, with `lavise.data.masks` rasterisation.

    ``boxes`` [n, 4] x,y,w,h sorted by group; group g owns rows
    ``group_offsets[g]:group_offsets[g+1]`` and has image size ``heights[g] x widths[g]``.
    Single boxes and pairs are exact closed forms (vectorised); groups of >= 3 boxes are
    rasterised on their compressed coordinate grid (at most (2k-1)^2 cells).
    """
    sizes = np.diff(group_offsets)
    group_of_box = np.repeat(np.arange(len(sizes)), sizes)
    r0, r1, c0, c1 = box_pixel_bounds(boxes, heights[group_of_box], widths[group_of_box])
    box_area = (r1 - r0) * (c1 - c0)
    areas = np.zeros(len(sizes), dtype=np.float64)
    starts = group_offsets[:-1]

    single = sizes == 1
    areas[single] = box_area[starts[single]]

    pair = sizes == 2
    first, second = starts[pair], starts[pair] + 1
    overlap_rows = np.clip(np.minimum(r1[first], r1[second]) - np.maximum(r0[first], r0[second]), 0, None)
    overlap_cols = np.clip(np.minimum(c1[first], c1[second]) - np.maximum(c0[first], c0[second]), 0, None)
    areas[pair] = box_area[first] + box_area[second] - overlap_rows * overlap_cols

    for group in np.flatnonzero(sizes >= 3).tolist():
        rows = slice(group_offsets[group], group_offsets[group + 1])
        row_edges = np.unique(np.concatenate([r0[rows], r1[rows]]))
        col_edges = np.unique(np.concatenate([c0[rows], c1[rows]]))
        covered = np.zeros((len(row_edges) - 1, len(col_edges) - 1), dtype=bool)
        top, bottom = np.searchsorted(row_edges, r0[rows]), np.searchsorted(row_edges, r1[rows])
        left, right = np.searchsorted(col_edges, c0[rows]), np.searchsorted(col_edges, c1[rows])
        for t, b, lft, rgt in zip(top.tolist(), bottom.tolist(), left.tolist(), right.tolist()):
            covered[t:b, lft:rgt] = True
        areas[group] = float(np.diff(row_edges) @ covered @ np.diff(col_edges))
    return areas


def _read(raw_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The image table and the flat object rows of ``raw_dir``'s two JSON files."""
    log.info("reading %s", raw_dir / "image_data.json")
    images = image_table(read_dataset_json(raw_dir / "image_data.json"), str(raw_dir / "image_data.json"))
    log.info("reading %s", raw_dir / "objects.json")
    flat = flatten_objects(read_dataset_json(raw_dir / "objects.json"), str(raw_dir / "objects.json"))
    log.info("%d objects in %d image entries", len(flat), flat["image_id"].nunique())
    return images, flat


def _zero_invalid_sizes(images: pd.DataFrame) -> np.ndarray:
    """Set a missing or non-positive width or height to 0 (int32) in place; return which were valid."""
    valid_size = ((images["width"] > 0) & (images["height"] > 0)).to_numpy()
    images["width"] = images["width"].where(valid_size, 0).astype(np.int32)
    images["height"] = images["height"].where(valid_size, 0).astype(np.int32)
    return valid_size


def _canonical_synset_column(synset_raw: np.ndarray, wordnet: Any) -> np.ndarray:
    """Each object's canonical synset (object array), None when absent or unknown to WordNet."""
    raw_codes, raw_names = pd.factorize(synset_raw)
    canonical = canonical_synsets(raw_names.tolist(), wordnet)
    canonical_of_raw = np.array([canonical[name] for name in raw_names.tolist()] + [None], dtype=object)
    return canonical_of_raw[raw_codes]  # code -1 (NaN) maps to the trailing None


def _clip_boxes(flat: pd.DataFrame, width: np.ndarray, height: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes clipped to their image as x, y, w, h [n, 4], and which are degenerate after clipping."""
    x0 = np.clip(flat["x"].to_numpy(), 0, width)
    y0 = np.clip(flat["y"].to_numpy(), 0, height)
    x1 = np.clip(flat["x"].to_numpy() + flat["w"].to_numpy(), 0, width)
    y1 = np.clip(flat["y"].to_numpy() + flat["h"].to_numpy(), 0, height)
    with np.errstate(invalid="ignore"):
        degenerate = ~np.isfinite(x0 + y0 + x1 + y1) | (x1 - x0 <= 0) | (y1 - y0 <= 0)
    return np.column_stack([x0, y0, x1 - x0, y1 - y0]), degenerate


def _rejection_reasons(
    record_reason: np.ndarray,
    width: np.ndarray,
    height: np.ndarray,
    synset_raw: np.ndarray,
    synset: np.ndarray,
    degenerate: np.ndarray,
) -> np.ndarray:
    """Per object the first matching rejection reason (module docstring order), None when valid."""
    reason = np.where(pd.isna(record_reason), None, record_reason).astype(object)
    for rejected, name in (
        (np.isnan(width), UNKNOWN_IMAGE),
        ((width == 0) | (height == 0), INVALID_IMAGE_SIZE),
        (pd.isna(synset_raw), NO_SYNSET),
        (pd.isna(synset), UNKNOWN_SYNSET),
        (degenerate, DEGENERATE_BOX),
    ):
        reason[(reason == None) & rejected] = name  # noqa: E711 - elementwise on object array
    return reason


def _merged_objects(
    flat: pd.DataFrame, synset: np.ndarray, clipped_boxes: np.ndarray, valid: np.ndarray, size: pd.DataFrame
) -> tuple[np.ndarray, pa.Table]:
    """The sorted category names and one object per (image, synset) of the valid rows."""
    category_codes, category_names = pd.factorize(synset[valid], sort=True)
    image_ids = flat["image_id"].to_numpy()[valid]
    source_ids = flat["source_id"].to_numpy()[valid]
    boxes = clipped_boxes[valid]
    order = np.lexsort((source_ids, category_codes, image_ids))
    image_ids, category_codes = image_ids[order], category_codes[order]
    source_ids, boxes = source_ids[order], boxes[order]
    new_group = np.ones(len(order), dtype=bool)
    new_group[1:] = (image_ids[1:] != image_ids[:-1]) | (category_codes[1:] != category_codes[:-1])
    starts = np.flatnonzero(new_group)
    offsets = np.append(starts, len(order)).astype(np.int64)
    group_images = image_ids[starts]
    group_height = size["height"].reindex(group_images).to_numpy(np.int64)
    group_width = size["width"].reindex(group_images).to_numpy(np.int64)
    areas = union_box_areas(boxes, offsets, group_height, group_width)
    objects = pa.table(
        {
            "image_id": pa.array(group_images, pa.int64()),
            "category": pa.array(np.asarray(category_names, dtype=object)[category_codes[starts]], pa.string()),
            "kind": pa.array(np.full(len(starts), "boxes", dtype=object), pa.string()),
            "rle": pa.nulls(len(starts), pa.string()),
            "boxes": pa.ListArray.from_arrays(
                pa.array((offsets * 4).astype(np.int32)), pa.array(boxes.astype(np.float32).ravel())
            ),
            "area": pa.array(areas, pa.float64()),
            "n_instances": pa.array(np.diff(offsets).astype(np.int32)),
            "source_ids": pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(source_ids)),
        },
        schema=PARSED_OBJECTS_SCHEMA,
    )
    return category_names, objects


def _categories(category_names: np.ndarray, vocabulary: Container[str], wordnet: Any) -> pd.DataFrame:
    """Each synset with its embedding tokens, ``not_in_embedding`` when no lemma fits."""
    tokens: list[list[str]] = []
    drop_reason: list[str | None] = []
    for name in category_names.tolist():
        chosen = choose_tokens(wordnet.synset(name).lemma_names(), vocabulary)
        tokens.append(chosen or [])
        drop_reason.append(None if chosen else NOT_IN_EMBEDDING)
    return pd.DataFrame(
        {"category": list(category_names), "synset": list(category_names), "tokens": tokens, "drop_reason": drop_reason}
    )


def parse_visual_genome(raw_dir: Path, vocabulary: Container[str], wordnet: Any) -> ParsedAnnotations:
    """Read ``raw_dir/{image_data,objects}.json`` into merged objects (one per image and synset)."""
    images, flat = _read(Path(raw_dir))
    valid_size = _zero_invalid_sizes(images)
    size = images.set_index("image_id")[["width", "height"]]
    width = size["width"].reindex(flat["image_id"]).to_numpy(np.float64)
    height = size["height"].reindex(flat["image_id"]).to_numpy(np.float64)
    synset_raw = flat["synset"].to_numpy(dtype=object)
    synset = _canonical_synset_column(synset_raw, wordnet)
    clipped_boxes, degenerate = _clip_boxes(flat, width, height)
    reason = _rejection_reasons(flat["record_reason"].to_numpy(), width, height, synset_raw, synset, degenerate)
    valid = reason == None  # noqa: E711
    original = flat[["x", "y", "w", "h"]].to_numpy()
    n_clipped = int((np.abs(clipped_boxes - original).max(axis=1)[valid] > 0).sum())
    rejected = rejected_frame(flat["source_id"].to_numpy()[~valid], flat["image_id"].to_numpy()[~valid], reason[~valid])
    category_names, objects = _merged_objects(flat, synset, clipped_boxes, valid, size)
    categories = _categories(category_names, vocabulary, wordnet)
    log.info(
        "%d valid objects -> %d merged objects, %d synsets (%d without embedding tokens), %d clipped boxes",
        int(valid.sum()),
        objects.num_rows,
        len(categories),
        int(categories["drop_reason"].notna().sum()),
        n_clipped,
    )
    return ParsedAnnotations(
        images=images,
        objects=objects,
        categories=categories,
        rejected=rejected,
        n_records=len(flat),
        statistics={
            "before.names": int(flat["name"].nunique()),
            "before.images_with_invalid_size": int((~valid_size).sum()),
            "before.clipped_boxes": n_clipped,
        },
    )
