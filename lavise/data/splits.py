"""Train/val image split and seen/unseen category split, both seeded and order-independent.

- Image split (Visual Genome; COCO uses the official train2017/val2017): the ids are sorted
  first, so the split depends only on the set of ids and the seed, never on JSON order;
  exactly ``round(val_fraction * n)`` images go to ``val`` (at least 1 and at most n - 1 when
  n >= 2, so neither side is empty).
- Seen/unseen: ``round(seen_fraction * n)`` of the categories (at least 1 of each when n >= 2)
  sampled WITHOUT replacement. The reference code samples with replacement, so far fewer than
  70% distinct categories end up seen (docs/PROTOCOL.md).

Each split draws from its own stream (``default_rng([seed, stream])``) so changing one split's
fraction does not reshuffle the other.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_IMAGE_STREAM = 1
_CATEGORY_STREAM = 2


def _split_count(n: int, fraction: float) -> int:
    """``round(fraction * n)`` clamped so that both sides are non-empty when n >= 2."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if n < 2:
        return n
    return int(min(max(int(np.floor(fraction * n + 0.5)), 1), n - 1))


def split_images(image_ids: np.ndarray | Sequence[int], val_fraction: float, seed: int) -> np.ndarray:
    """Split label (``"train"``/``"val"``, object array) for each id, aligned with ``image_ids``."""
    ids = np.asarray(image_ids, dtype=np.int64)
    if len(np.unique(ids)) != len(ids):
        raise ValueError("image ids given to the split must be unique")
    n_val = _split_count(len(ids), val_fraction) if len(ids) >= 2 else 0
    order = np.argsort(ids, kind="stable")
    rng = np.random.default_rng([seed, _IMAGE_STREAM])
    val_positions = order[rng.permutation(len(ids))[:n_val]]
    labels = np.full(len(ids), "train", dtype=object)
    labels[val_positions] = "val"
    return labels


def split_categories(categories: Sequence[str], seen_fraction: float, seed: int) -> np.ndarray:
    """Role (``"seen"``/``"unseen"``, object array) for each category, aligned with the input."""
    names = np.asarray(list(categories), dtype=object)
    if len(set(names.tolist())) != len(names):
        raise ValueError("category names given to the split must be unique")
    n_seen = _split_count(len(names), seen_fraction)
    order = np.argsort(names.astype(str), kind="stable")
    rng = np.random.default_rng([seed, _CATEGORY_STREAM])
    seen_positions = order[rng.choice(len(names), size=n_seen, replace=False)]
    roles = np.full(len(names), "unseen", dtype=object)
    roles[seen_positions] = "seen"
    return roles
