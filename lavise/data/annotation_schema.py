"""The annotation tables' Arrow schemas and what a dataset parser hands to the shared protocol.

Both parsers (`lavise.data.coco`, `lavise.data.visual_genome`) build a :class:`ParsedAnnotations`
and `lavise.data.annotation_tables` finishes it into the four tables below, so the schemas live
apart from both sides: every reader and writer of ``data/annotations/`` imports them from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

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
# The four tables of data/annotations/, by file stem, in the order they are written.
TABLE_SCHEMAS: dict[str, pa.Schema] = {
    "images": IMAGES_SCHEMA,
    "objects": OBJECTS_SCHEMA,
    "categories": CATEGORIES_SCHEMA,
    "rejected": REJECTED_SCHEMA,
}

# The one drop reason both parsers assign (a category none of whose token sets is in GloVe).
NOT_IN_EMBEDDING = "not_in_embedding"
# Record rejection reasons both parsers assign: the record's image id is absent, not a JSON integer
# or not among the images; its image has a missing, non-integer or non-positive width or height.
UNKNOWN_IMAGE = "unknown_image"
INVALID_IMAGE_SIZE = "invalid_image_size"


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
