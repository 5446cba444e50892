"""Shared annotation tables: the dataset-independent finishing steps and the table writer.

`lavise.data.coco` and `lavise.data.visual_genome` parse their JSON into a
:class:`~lavise.data.annotation_schema.ParsedAnnotations` (merged objects, one per image and
category, plus every rejected record); this module then applies the same protocol to both, so
COCO and VG cannot drift apart:

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
   rest ``unseen`` (COCO: all ``seen`` unless a seen/unseen split is asked for);
7. the kept images' files are checked: absent -> ``missing``; PIL cannot read the header, or
   the file lacks its format's end marker and does not decode -> ``undecodable`` (a truncated
   download is counted here; see `lavise.data.images.check_image_files`).

Every input record ends up either in exactly one object's ``source_ids`` or in ``rejected``;
:func:`finish_tables` verifies that count before anything is written.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from lavise.data.annotation_schema import (
    CATEGORIES_SCHEMA,
    IMAGES_SCHEMA,
    OBJECTS_SCHEMA,
    REJECTED_SCHEMA,
    ParsedAnnotations,
    rejected_frame,
)
from lavise.data.images import DEFAULT_MAX_PIXELS, MISSING, OUTSIDE_ROOT, TOO_LARGE, UNDECODABLE, check_image_files
from lavise.data.splits import split_categories, split_images
from lavise.io import write_parquet

TOO_FEW_TRAIN_IMAGES = "too_few_train_images"
EMPTY_MASK = "empty_mask"


def max_categories_per_image(image_ids: np.ndarray) -> int:
    """Most objects (= distinct categories after merging) that any one image has."""
    if len(image_ids) == 0:
        return 0
    return int(np.unique(image_ids, return_counts=True)[1].max())


def _objects_to_rejected(objects: pa.Table, reasons: np.ndarray) -> pd.DataFrame:
    """One rejected row per source record of each object row, with that row's reason."""
    parents = pc.list_parent_indices(objects["source_ids"]).to_numpy()
    source_ids = pc.list_flatten(objects["source_ids"]).to_numpy()
    image_ids = objects["image_id"].to_numpy()[parents]
    return rejected_frame(source_ids, image_ids, np.asarray(reasons, dtype=object)[parents])


def _reject_empty_masks(objects: pa.Table) -> tuple[pa.Table, list[pd.DataFrame]]:
    """Step 1: objects whose merged mask has no pixel leave as ``empty_mask`` rejections."""
    empty = objects["area"].to_numpy() <= 0
    if not empty.any():
        return objects, []
    empty_objects = objects.filter(pa.array(empty))
    rejected = _objects_to_rejected(empty_objects, np.full(empty_objects.num_rows, EMPTY_MASK))
    return objects.filter(pa.array(~empty)), [rejected]


def _split_images(
    parsed_images: pd.DataFrame, images_with_objects: np.ndarray, val_fraction: float | None, seed: int
) -> pd.DataFrame:
    """Step 2: the images that have objects (indexed by id), split when ``val_fraction`` is given."""
    images = parsed_images.set_index("image_id", drop=False).loc[images_with_objects].copy()
    if val_fraction is not None:
        images["split"] = split_images(images_with_objects, val_fraction, seed)
    return images


def _object_splits(images: pd.DataFrame, object_images: np.ndarray) -> np.ndarray:
    """The split of each object's image; a parser must have rejected objects of unknown images."""
    object_split = images["split"].reindex(object_images).to_numpy()
    if pd.isna(object_split).any():
        raise ValueError("objects reference images without a split: the parser must reject them")
    return object_split


def _count_train(parsed_categories: pd.DataFrame, objects: pa.Table, object_split: np.ndarray) -> pd.DataFrame:
    """Step 3: categories (indexed by name) with their distinct training images and instances."""
    categories = parsed_categories.set_index("category", drop=False)
    object_categories = objects["category"].to_numpy(zero_copy_only=False)
    is_train = object_split == "train"
    n_train_instances = (
        pd.Series(objects["n_instances"].to_numpy()[is_train]).groupby(object_categories[is_train]).sum()
    )
    n_train_images = pd.Series(objects["image_id"].to_numpy()[is_train]).groupby(object_categories[is_train]).nunique()
    categories["n_train_images"] = n_train_images.reindex(categories.index, fill_value=0).astype(np.int64)
    categories["n_train_instances"] = n_train_instances.reindex(categories.index, fill_value=0).astype(np.int64)
    return categories


def _drop_reasons(categories: pd.DataFrame, min_images: int | None) -> pd.Series:
    """Step 4: each category's drop reason (None when kept), the rare-category filter included."""
    drop_reason = categories["drop_reason"].astype(object).where(categories["drop_reason"].notna(), None)
    if min_images is not None:
        rare = drop_reason.isna() & (categories["n_train_images"] < min_images)
        drop_reason = drop_reason.where(~rare, TOO_FEW_TRAIN_IMAGES)
    return drop_reason


def _reject_dropped_categories(objects: pa.Table, drop_reason: pd.Series) -> tuple[pa.Table, list[pd.DataFrame]]:
    """Step 4: the objects of dropped categories leave, rejected with their category's reason."""
    object_drop = drop_reason.reindex(objects["category"].to_numpy(zero_copy_only=False)).to_numpy()
    dropped_rows = pd.notna(object_drop)
    if not dropped_rows.any():
        return objects, []
    rejected = _objects_to_rejected(objects.filter(pa.array(dropped_rows)), object_drop[dropped_rows])
    return objects.filter(pa.array(~dropped_rows)), [rejected]


def _category_roles(categories: pd.DataFrame, seen_fraction: float | None, seed: int) -> np.ndarray:
    """Step 6: ``seen``/``unseen`` for kept categories (all ``seen`` without a fraction), else ``dropped``."""
    kept = categories["drop_reason"].isna().to_numpy()
    roles = np.full(len(categories), "dropped", dtype=object)
    kept_names = categories.index[kept].tolist()
    if seen_fraction is not None:
        roles[kept] = split_categories(kept_names, seen_fraction, seed)
    else:
        roles[kept] = "seen"
    return roles


def _numbered_objects(objects: pa.Table) -> pa.Table:
    """Objects sorted by (image, category) with ``object_id`` = row number, in the final schema."""
    order = pc.sort_indices(objects, sort_keys=[("image_id", "ascending"), ("category", "ascending")])
    objects = objects.take(order)
    objects = objects.add_column(0, "object_id", pa.array(np.arange(objects.num_rows, dtype=np.int64)))
    return objects.cast(OBJECTS_SCHEMA)


def _checked_instance_count(objects: pa.Table, rejected: pd.DataFrame, n_records: int) -> int:
    """Instances kept in ``objects``; AssertionError unless kept + rejected = the input records."""
    n_instances_kept = int(pc.sum(objects["n_instances"]).as_py() or 0)
    if n_instances_kept + len(rejected) != n_records:
        raise AssertionError(
            f"record accounting broken: {n_instances_kept} in objects + {len(rejected)} rejected "
            f"!= {n_records} input records"
        )
    return n_instances_kept


def _as_tables(
    images: pd.DataFrame, objects: pa.Table, categories: pd.DataFrame, rejected: pd.DataFrame
) -> dict[str, pa.Table]:
    """The four tables in their schemas and row orders (images by id, categories by name)."""
    categories = categories.reset_index(drop=True).sort_values("category", ignore_index=True)
    return {
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


def _before_statistics(
    parsed: ParsedAnnotations, images_with_objects: np.ndarray, object_images: np.ndarray
) -> dict[str, int]:
    """What the parser delivered (objects after the empty-mask step)."""
    return {
        "images": int(len(parsed.images)),
        "images_with_objects": int(len(images_with_objects)),
        "annotations": int(parsed.n_records),
        "categories": int(len(parsed.categories)),
        "max_categories_per_image": max_categories_per_image(object_images),
    }


def _after_statistics(
    images: pd.DataFrame, objects: pa.Table, n_instances_kept: int, categories: pd.DataFrame
) -> dict[str, int]:
    """What the tables hold."""
    status_counts = Counter(images["status"].tolist())
    split_counts = Counter(images["split"].tolist())
    role_counts = Counter(categories["role"].tolist())
    return {
        "images": int(len(images)),
        "train_images": int(split_counts.get("train", 0)),
        "val_images": int(split_counts.get("val", 0)),
        "objects": int(objects.num_rows),
        "instances": n_instances_kept,
        "categories": int(categories["drop_reason"].isna().sum()),
        "seen_categories": int(role_counts.get("seen", 0)),
        "unseen_categories": int(role_counts.get("unseen", 0)),
        "max_categories_per_image": max_categories_per_image(objects["image_id"].to_numpy()),
        "images_missing": int(status_counts.get(MISSING, 0)),
        "images_undecodable": int(status_counts.get(UNDECODABLE, 0)),
        "images_too_large": int(status_counts.get(TOO_LARGE, 0)),
        "images_outside_root": int(status_counts.get(OUTSIDE_ROOT, 0)),
    }


def _dropped_statistics(
    parsed: ParsedAnnotations,
    images_with_objects: np.ndarray,
    images: pd.DataFrame,
    rejected: pd.DataFrame,
    drop_reason: pd.Series,
) -> dict[str, Any]:
    """What was dropped, by reason."""
    return {
        "records_by_reason": dict(sorted(Counter(rejected["reason"].tolist()).items())),
        "records_of_dropped_objects": int(len(rejected) - len(parsed.rejected)),
        "categories_by_reason": dict(sorted(Counter(drop_reason.dropna().tolist()).items())),
        "images_without_objects": int(len(parsed.images) - len(images_with_objects)),
        "images_emptied_by_category_filter": int(len(images_with_objects) - len(images)),
    }


def finish_tables(
    parsed: ParsedAnnotations,
    raw_dir: Path,
    *,
    min_images: int | None,
    val_fraction: float | None,
    seen_fraction: float | None,
    seed: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    """Apply the shared protocol (module docstring) and return the four tables and statistics.

    ``val_fraction`` None keeps the parsed split; ``seen_fraction`` None makes every kept
    category ``seen``; ``min_images`` None disables the rare-category filter.
    """
    objects, empty_rejected = _reject_empty_masks(parsed.objects)
    object_images = objects["image_id"].to_numpy()
    images_with_objects = np.unique(object_images)
    images = _split_images(parsed.images, images_with_objects, val_fraction, seed)
    categories = _count_train(parsed.categories, objects, _object_splits(images, object_images))
    drop_reason = _drop_reasons(categories, min_images)
    categories["drop_reason"] = drop_reason
    objects, dropped_rejected = _reject_dropped_categories(objects, drop_reason)
    images = images.loc[np.unique(objects["image_id"].to_numpy())].reset_index(drop=True)
    categories["role"] = _category_roles(categories, seen_fraction, seed)
    images["status"] = check_image_files(raw_dir, images["path"].tolist(), max_pixels)
    objects = _numbered_objects(objects)
    rejected = pd.concat([parsed.rejected, *empty_rejected, *dropped_rejected], ignore_index=True)
    n_instances_kept = _checked_instance_count(objects, rejected, parsed.n_records)
    statistics: dict[str, Any] = {
        "before": _before_statistics(parsed, images_with_objects, object_images),
        "after": _after_statistics(images, objects, n_instances_kept, categories),
        "dropped": _dropped_statistics(parsed, images_with_objects, images, rejected, drop_reason),
    }
    for key, value in parsed.statistics.items():
        section, _, name = key.partition(".")
        statistics.setdefault(section, {})[name] = value
    return _as_tables(images, objects, categories, rejected), statistics


def write_tables(tables: dict[str, pa.Table], out_dir: Path) -> None:
    """Write every table as ``<name>.parquet`` in ``out_dir``, each atomically."""
    for name, table in tables.items():
        write_parquet(Path(out_dir) / f"{name}.parquet", table)
