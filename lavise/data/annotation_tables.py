"""Shared annotation tables: schema, the dataset-independent finishing steps, writing, statistics.

`lavise.data.coco` and `lavise.data.visual_genome` parse their JSON into a :class:`ParsedAnnotations`
(merged objects, one per image and category, plus every rejected record); this module then
applies the same protocol to both, so COCO and VG cannot drift apart:

1. objects whose merged mask is empty are rejected (``empty_mask``);
2. VG only: the images that still have objects get a seeded random train/val split
   (`lavise.data.splits`); COCO keeps train2017/val2017;
3. per category, distinct TRAINING images and instances are counted (the paper's threshold
   counts images; FACT2023 counted instances), over all images whatever their file status, so
   the category set depends on the annotations only;
4. categories without embedding tokens (``not_in_embedding``) and, when ``min_images`` is
   given (VG), categories in fewer than ``min_images`` training images
   (``too_few_train_images``) are dropped; their objects go to ``rejected`` with that reason;
5. images left without objects are dropped from ``images`` (counted, never silent);
6. kept categories get a role: a ``seen_fraction`` sample without replacement is ``seen``, the
   rest ``unseen`` (COCO: all ``seen`` unless ``split_coco_categories``);
7. the kept images' files are checked: absent -> ``missing``; PIL cannot read the header, or
   the file lacks its format's end marker and does not decode -> ``undecodable`` (a truncated
   download is counted here; see :func:`check_image_files`).

Every input record ends up either in exactly one object's ``source_ids`` or in ``rejected``;
:func:`finish_tables` verifies that count before anything is written.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image
from tqdm import tqdm

from lavise.data.embeddings import WordEmbeddings
from lavise.data.images import UndecodableImageError, decode_image, ends_complete
from lavise.data.splits import split_categories, split_images
from lavise.data.wordnet import load_wordnet
from lavise.io import write_json, write_parquet

log = logging.getLogger(__name__)

IMAGES_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("path", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("split", pa.string()),
        ("status", pa.string()),
    ]
)
OBJECTS_SCHEMA = pa.schema(
    [
        ("object_id", pa.int64()),
        ("image_id", pa.int64()),
        ("category", pa.string()),
        ("kind", pa.string()),
        ("rle", pa.string()),
        ("boxes", pa.list_(pa.float32())),
        ("area", pa.float64()),
        ("n_instances", pa.int32()),
        ("source_ids", pa.list_(pa.int64())),
    ]
)
# What the dataset parsers hand over: the objects schema before ids are assigned.
PARSED_OBJECTS_SCHEMA = pa.schema([f for f in OBJECTS_SCHEMA if f.name != "object_id"])
CATEGORIES_SCHEMA = pa.schema(
    [
        ("category", pa.string()),
        ("synset", pa.string()),
        ("tokens", pa.list_(pa.string())),
        ("n_train_images", pa.int64()),
        ("n_train_instances", pa.int64()),
        ("role", pa.string()),
        ("drop_reason", pa.string()),
    ]
)
REJECTED_SCHEMA = pa.schema([("source_id", pa.int64()), ("image_id", pa.int64()), ("reason", pa.string())])

NOT_IN_EMBEDDING = "not_in_embedding"
TOO_FEW_TRAIN_IMAGES = "too_few_train_images"
EMPTY_MASK = "empty_mask"


@dataclass
class ParsedAnnotations:
    """A dataset parsed into merged objects, before splits, filters and ids.

    ``images``: image_id, path, width, height, and ``split`` (None for VG: split later).
    ``objects``: :data:`PARSED_OBJECTS_SCHEMA`, one row per (image, category).
    ``categories``: category, synset, tokens (list, empty when none fit), drop_reason
    (``not_in_embedding`` or None), one row per category that has at least one object.
    ``rejected``: source_id, image_id, reason, for every record not merged into an object.
    ``n_records``: input annotation records in total (objects' instances + rejected).
    ``statistics``: dataset-specific "before" figures (e.g. distinct VG names, clipped boxes).
    """

    images: pd.DataFrame
    objects: pa.Table
    categories: pd.DataFrame
    rejected: pd.DataFrame
    n_records: int
    statistics: dict[str, Any] = field(default_factory=dict)


def rejected_frame(source_ids: Any, image_ids: Any, reason: str | Any) -> pd.DataFrame:
    """A ``rejected`` block with int64 ids (reason broadcast when given as one string)."""
    source_ids = np.asarray(source_ids, dtype=np.int64)
    reasons = np.full(len(source_ids), reason, dtype=object) if isinstance(reason, str) else reason
    return pd.DataFrame({"source_id": source_ids, "image_id": np.asarray(image_ids, dtype=np.int64), "reason": reasons})


def max_categories_per_image(image_ids: np.ndarray) -> int:
    """Most objects (= distinct categories after merging) that any one image has."""
    if len(image_ids) == 0:
        return 0
    return int(np.unique(image_ids, return_counts=True)[1].max())


_TAIL_BYTES = 1024  # enough for the end marker behind any zero padding seen in practice


def _header_and_tail(path: str) -> tuple[str | None, bytes]:
    """The format PIL reads from the header and the file's last ``_TAIL_BYTES``, in one open."""
    with open(path, "rb") as file:
        with Image.open(file) as image:
            image_format = image.format
        size = file.seek(0, os.SEEK_END)
        file.seek(max(0, size - _TAIL_BYTES))
        return image_format, file.read()


def check_image_files(raw_dir: Path, paths: list[str]) -> np.ndarray:
    """Status per image: ``ok``, ``missing`` or ``undecodable``.

    A header parse catches files that are no image; a truncated file still has a valid header,
    so the last KiB is checked for the format's end marker as well. Only files without one
    (truncated, trailing bytes after the marker, or another format) are decoded in full, so the
    cost stays a header read for almost every image and a truncated download is counted here,
    not first discovered by `features`.
    """
    status = np.empty(len(paths), dtype=object)
    for index, relative in enumerate(tqdm(paths, desc="check image files", unit="img", mininterval=2.0)):
        path = os.path.join(raw_dir, relative)
        if not os.path.isfile(path):
            status[index] = "missing"
            continue
        try:
            image_format, tail = _header_and_tail(path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            status[index] = "undecodable"
            continue
        if ends_complete(tail, image_format):
            status[index] = "ok"
            continue
        try:
            decode_image(path)
            status[index] = "ok"
        except UndecodableImageError:
            status[index] = "undecodable"
    return status


def _objects_to_rejected(objects: pa.Table, reasons: np.ndarray) -> pd.DataFrame:
    """One rejected row per source record of each object row, with that row's reason."""
    parents = pc.list_parent_indices(objects["source_ids"]).to_numpy()
    source_ids = pc.list_flatten(objects["source_ids"]).to_numpy()
    image_ids = objects["image_id"].to_numpy()[parents]
    return rejected_frame(source_ids, image_ids, np.asarray(reasons, dtype=object)[parents])


def finish_tables(
    parsed: ParsedAnnotations,
    raw_dir: Path,
    *,
    min_images: int | None,
    val_fraction: float | None,
    seen_fraction: float | None,
    seed: int,
) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    """Apply the shared protocol (module docstring) and return the four tables and statistics.

    ``val_fraction`` None keeps the parsed split; ``seen_fraction`` None makes every kept
    category ``seen``; ``min_images`` None disables the rare-category filter.
    """
    objects = parsed.objects
    rejected_blocks = [parsed.rejected]
    images = parsed.images.set_index("image_id", drop=False)

    area = objects["area"].to_numpy()
    empty = area <= 0
    if empty.any():
        empty_objects = objects.filter(pa.array(empty))
        rejected_blocks.append(_objects_to_rejected(empty_objects, np.full(empty_objects.num_rows, EMPTY_MASK)))
        objects = objects.filter(pa.array(~empty))

    object_images = objects["image_id"].to_numpy()
    images_with_objects = np.unique(object_images)
    images = images.loc[images_with_objects].copy()
    if val_fraction is not None:
        images["split"] = split_images(images_with_objects, val_fraction, seed)
    object_split = images["split"].reindex(object_images).to_numpy()
    if pd.isna(object_split).any():
        raise ValueError("objects reference images without a split: the parser must reject them")

    categories = parsed.categories.set_index("category", drop=False)
    object_categories = objects["category"].to_numpy(zero_copy_only=False)
    is_train = object_split == "train"
    n_train_instances = (
        pd.Series(objects["n_instances"].to_numpy()[is_train]).groupby(object_categories[is_train]).sum()
    )
    n_train_images = pd.Series(object_images[is_train]).groupby(object_categories[is_train]).nunique()
    categories["n_train_images"] = n_train_images.reindex(categories.index, fill_value=0).astype(np.int64)
    categories["n_train_instances"] = n_train_instances.reindex(categories.index, fill_value=0).astype(np.int64)
    drop_reason = categories["drop_reason"].astype(object).where(categories["drop_reason"].notna(), None)
    if min_images is not None:
        rare = drop_reason.isna() & (categories["n_train_images"] < min_images)
        drop_reason = drop_reason.where(~rare, TOO_FEW_TRAIN_IMAGES)
    categories["drop_reason"] = drop_reason

    object_drop = drop_reason.reindex(object_categories).to_numpy()
    dropped_rows = pd.notna(object_drop)
    if dropped_rows.any():
        rejected_blocks.append(_objects_to_rejected(objects.filter(pa.array(dropped_rows)), object_drop[dropped_rows]))
        objects = objects.filter(pa.array(~dropped_rows))

    kept_image_ids = np.unique(objects["image_id"].to_numpy())
    images = images.loc[kept_image_ids].reset_index(drop=True)

    kept = categories["drop_reason"].isna().to_numpy()
    roles = np.full(len(categories), "dropped", dtype=object)
    kept_names = categories.index[kept].tolist()
    if seen_fraction is not None:
        roles[kept] = split_categories(kept_names, seen_fraction, seed)
    else:
        roles[kept] = "seen"
    categories["role"] = roles

    images["status"] = check_image_files(raw_dir, images["path"].tolist())

    order = pc.sort_indices(objects, sort_keys=[("image_id", "ascending"), ("category", "ascending")])
    objects = objects.take(order)
    objects = objects.add_column(0, "object_id", pa.array(np.arange(objects.num_rows, dtype=np.int64)))
    objects = objects.cast(OBJECTS_SCHEMA)

    rejected = pd.concat(rejected_blocks, ignore_index=True)
    n_instances_kept = int(pc.sum(objects["n_instances"]).as_py() or 0)
    n_rejected_from_objects = len(rejected) - len(parsed.rejected)
    if n_instances_kept + len(rejected) != parsed.n_records:
        raise AssertionError(
            f"record accounting broken: {n_instances_kept} in objects + {len(rejected)} rejected "
            f"!= {parsed.n_records} input records"
        )

    categories = categories.reset_index(drop=True).sort_values("category", ignore_index=True)
    tables = {
        "images": pa.Table.from_pandas(
            images.sort_values("image_id")[IMAGES_SCHEMA.names], schema=IMAGES_SCHEMA, preserve_index=False
        ),
        "objects": objects,
        "categories": pa.Table.from_pandas(
            categories[CATEGORIES_SCHEMA.names], schema=CATEGORIES_SCHEMA, preserve_index=False
        ),
        "rejected": pa.Table.from_pandas(
            rejected.sort_values(["reason", "source_id"], kind="stable"), schema=REJECTED_SCHEMA, preserve_index=False
        ),
    }

    kept_objects_images = objects["image_id"].to_numpy()
    status_counts = Counter(images["status"].tolist())
    split_counts = Counter(images["split"].tolist())
    role_counts = Counter(roles.tolist())
    statistics: dict[str, Any] = {
        "before": {
            "images": int(len(parsed.images)),
            "images_with_objects": int(len(images_with_objects)),
            "annotations": int(parsed.n_records),
            "categories": int(len(parsed.categories)),
            "max_categories_per_image": max_categories_per_image(object_images),
        },
        "after": {
            "images": int(len(images)),
            "train_images": int(split_counts.get("train", 0)),
            "val_images": int(split_counts.get("val", 0)),
            "objects": int(objects.num_rows),
            "instances": n_instances_kept,
            "categories": int(kept.sum()),
            "seen_categories": int(role_counts.get("seen", 0)),
            "unseen_categories": int(role_counts.get("unseen", 0)),
            "max_categories_per_image": max_categories_per_image(kept_objects_images),
            "images_missing": int(status_counts.get("missing", 0)),
            "images_undecodable": int(status_counts.get("undecodable", 0)),
        },
        "dropped": {
            "records_by_reason": dict(sorted(Counter(rejected["reason"].tolist()).items())),
            "records_of_dropped_objects": int(n_rejected_from_objects),
            "categories_by_reason": dict(sorted(Counter(drop_reason.dropna().tolist()).items())),
            "images_without_objects": int(len(parsed.images) - len(images_with_objects)),
            "images_emptied_by_category_filter": int(len(images_with_objects) - len(images)),
        },
    }
    for key, value in parsed.statistics.items():
        section, _, name = key.partition(".")
        statistics.setdefault(section, {})[name] = value
    return tables, statistics


def write_tables(tables: dict[str, pa.Table], out_dir: Path) -> None:
    """Write every table as ``<name>.parquet`` in ``out_dir``, each atomically."""
    for name, table in tables.items():
        write_parquet(Path(out_dir) / f"{name}.parquet", table)


def build_annotation_tables(
    dataset: str,
    raw_dir: Path,
    out_dir: Path,
    *,
    embeddings_dir: Path,
    wordnet_dir: Path,
    min_images: int,
    coco_crowd: str,
    val_fraction: float,
    seen_fraction: float,
    split_coco_categories: bool,
    seed: int,
    stats_path: Path,
) -> dict[str, Any]:
    """Parse ``raw_dir`` (``data/raw/<dataset>``), write the four tables and the statistics JSON.

    Returns the statistics. COCO keeps its official split and every category with tokens;
    ``min_images`` and ``val_fraction`` apply to VG only (see the module docstrings).
    """
    raw_dir = Path(raw_dir)
    vocabulary = WordEmbeddings.load(Path(embeddings_dir))
    if dataset == "coco":
        # Imported here: the parsers import this module's schema and ParsedAnnotations.
        from lavise.data.coco import parse_coco

        parsed = parse_coco(raw_dir, vocabulary, crowd=coco_crowd)
        tables, statistics = finish_tables(
            parsed,
            raw_dir,
            min_images=None,
            val_fraction=None,
            seen_fraction=seen_fraction if split_coco_categories else None,
            seed=seed,
        )
    elif dataset == "vg":
        from lavise.data.visual_genome import parse_visual_genome

        parsed = parse_visual_genome(raw_dir, vocabulary, load_wordnet(Path(wordnet_dir)))
        tables, statistics = finish_tables(
            parsed, raw_dir, min_images=min_images, val_fraction=val_fraction, seen_fraction=seen_fraction, seed=seed
        )
    else:
        raise ValueError(f"unknown dataset {dataset!r}; expected 'coco' or 'vg'")
    statistics = {"dataset": dataset, **statistics}
    write_tables(tables, Path(out_dir))
    write_json(stats_path, statistics)
    log.info(
        "%s: %d -> %d images, %d -> %d categories, %d objects; rejected %s",
        dataset,
        statistics["before"]["images"],
        statistics["after"]["images"],
        statistics["before"]["categories"],
        statistics["after"]["categories"],
        statistics["after"]["objects"],
        statistics["dropped"]["records_by_reason"],
    )
    return statistics
