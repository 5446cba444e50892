"""The explainer's training data, read from the feature cache (opened and checked by
`lavise.features.cache.open_feature_cache`) and the annotation tables.

Samples are the cached pooled vectors of the objects of seen categories; classes are the distinct
tokens of those categories. Only the train split is read: a seeded slice of its images is held out
(:func:`split_holdout`) to choose the epoch, so that the val split, which `evaluate` scores, plays no
part in training. Batches are gathered from the memory-mapped cache by sorted fancy
indexing, float16 -> float32 per batch: nothing per sample in Python and no copy of the cache in
RAM (resident memory is the page cache plus one batch).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from lavise.data.splits import split_images
from lavise.features.cache import FeatureCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """One split's samples: rows into the memory-mapped vectors, each row's category index and image."""

    vectors: np.ndarray  # memory-mapped [n_rows, d] float16; only `rows` of it are samples
    rows: np.ndarray  # int64 [n]
    category_index: np.ndarray  # int64 [n], into the seen-category positive table
    image_ids: np.ndarray  # int64 [n], the image each sample's object lies in
    n_excluded: dict[str, int]  # objects not used, by reason

    def subset(self, keep: np.ndarray, n_excluded: dict[str, int]) -> Split:
        """The samples where the bool mask ``keep`` [n] is set, over the same memory-mapped vectors."""
        return Split(self.vectors, self.rows[keep], self.category_index[keep], self.image_ids[keep], n_excluded)


@dataclass(frozen=True)
class Classes:
    """The explainer's classes: the distinct tokens of the seen categories, sorted."""

    tokens: list[str]
    seen_categories: list[str]
    positives: torch.Tensor  # bool [n_seen_categories, n_classes]
    roles: dict[str, str]  # every known category → seen | unseen | dropped


def load_classes(annotations_dir: Path) -> Classes:
    """Read categories.parquet and build the token classes and each seen category's positives."""
    path = Path(annotations_dir) / "categories.parquet"
    table = pq.read_table(path, columns=["category", "tokens", "role"]).to_pydict()
    roles = dict(zip(table["category"], table["role"]))
    seen = sorted(c for c, r in roles.items() if r == "seen")
    if not seen:
        raise ValueError(f"{path}: no category has role 'seen'; nothing to train on")
    tokens_of = dict(zip(table["category"], table["tokens"]))
    empty = [c for c in seen if not tokens_of[c]]
    if empty:
        raise ValueError(f"{path}: seen categories without tokens: {empty[:10]}")
    tokens = sorted({t for c in seen for t in tokens_of[c]})
    token_index = {t: i for i, t in enumerate(tokens)}
    positives = torch.zeros(len(seen), len(tokens), dtype=torch.bool)
    for row, category in enumerate(seen):
        positives[row, [token_index[t] for t in tokens_of[category]]] = True
    return Classes(tokens=tokens, seen_categories=seen, positives=positives, roles=roles)


def load_class_vectors(embeddings_dir: Path, tokens: list[str]) -> torch.Tensor:
    """The L2-normalised GloVe vector of every class token; a token without one is an error."""
    from lavise.data.embeddings import WordEmbeddings

    store = WordEmbeddings.load(Path(embeddings_dir))
    try:
        vectors = torch.from_numpy(np.asarray(store.vectors_of(tokens), dtype=np.float32))
    except KeyError as error:  # the store is not the one the annotations were built against
        raise ValueError(f"{embeddings_dir}: {error.args[0]}") from None
    norms = vectors.norm(dim=1)
    bad = [t for t, n in zip(tokens, norms.tolist()) if not math.isfinite(n) or n < 1e-6]
    if bad:
        raise ValueError(f"class tokens without a usable embedding in {embeddings_dir}: {bad[:10]}")
    return vectors / norms[:, None]


def load_split(cache: FeatureCache, split: str, classes: Classes) -> Split:
    """Keep one split's objects of seen categories (others counted); the vectors stay memory-mapped.

    The reader has checked that ``row`` indexes the vectors; checked here is what it cannot know,
    that every object has a category of categories.parquet. Objects whose mask the centre crop
    cuts away entirely (``coverage`` 0) have an all-zero pooled vector that says nothing about
    them: they are excluded and counted as ``outside_crop``.
    """
    vectors = {"train": cache.train_vectors, "val": cache.val_vectors}[split]
    objects_path = cache.directory / f"{split}_objects.parquet"
    # Arrow, and only these columns: the pandas table would hold every column of every object.
    objects = cache.table(f"{split}_objects", columns=["row", "image_id", "category", "coverage"])
    rows = objects.column("row").to_numpy().astype(np.int64)
    image_ids = objects.column("image_id").to_numpy().astype(np.int64)
    column = objects.column("category").combine_chunks()
    if column.null_count:
        raise ValueError(f"{objects_path}: {column.null_count} objects have no category")
    # Dictionary-encoded: one Python string per distinct category, not per object (2M objects).
    encoded = column.dictionary_encode()
    unique = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    inverse = encoded.indices.to_numpy().astype(np.int64)
    unknown = [c for c in unique if c not in classes.roles]
    if unknown:
        raise ValueError(f"{objects_path}: categories missing from categories.parquet: {unknown[:10]}")
    seen_index = {c: i for i, c in enumerate(classes.seen_categories)}
    unique_index = np.array([seen_index.get(c, -1) for c in unique], dtype=np.int64)
    category_index = unique_index[inverse] if unique.size else np.zeros(0, dtype=np.int64)
    inside = objects.column("coverage").to_numpy() > 0
    keep = (category_index >= 0) & inside
    n_excluded: dict[str, int] = {"outside_crop": int(((category_index >= 0) & ~inside).sum())}
    for role in ("unseen", "dropped"):
        role_codes = np.array([classes.roles[c] == role for c in unique], dtype=bool)
        n_excluded[role] = int(role_codes[inverse].sum()) if unique.size else 0
    log.info(
        "%s: %d objects, %d of seen categories used, excluded %s",
        split,
        rows.size,
        int(keep.sum()),
        n_excluded,
    )
    return Split(vectors, rows[keep], category_index[keep], image_ids[keep], n_excluded)


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Batch [start, stop) ranges; a trailing batch of one joins the previous one.

    BatchNorm cannot train on a single sample, and dropping it would silently lose data.
    """
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def gather_batch(split: Split, sample_indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Read the given samples' vectors (rows sorted for locality) as float32, with category ids."""
    rows = split.rows[sample_indices]
    order = np.argsort(rows, kind="stable")
    rows, category_index = rows[order], split.category_index[sample_indices[order]]
    features = torch.from_numpy(np.asarray(split.vectors[rows], dtype=np.float32))
    if not bool(torch.isfinite(features).all()):
        bad_rows = rows[~torch.isfinite(features).all(dim=1).numpy()]
        raise ValueError(f"non-finite feature vectors in the cache at rows {bad_rows[:10].tolist()}")
    return features, torch.from_numpy(category_index)


def split_holdout(train: Split, fraction: float, seed: int, what: str = "holdout_fraction") -> tuple[Split, Split]:
    """(fit, holdout): ``train``'s samples split by image, a seeded ``fraction`` of its images held out.

    The epoch is chosen on the hold-out so that nothing about the scored (val) split steers
    training. The held-out images are drawn as `lavise.data.splits.split_images` draws a val
    split: from the sorted distinct image ids of the samples, ``round(fraction * n)`` of them (at
    least 1 and at most n - 1), so the hold-out is a function of (image ids, fraction, seed) only,
    and every object of a held-out image is held out with it. ``what`` names the fraction in
    errors (the stage passes its params key).
    """
    images = np.unique(train.image_ids)
    if images.size < 2:
        raise ValueError(
            f"{what} {fraction}: the train split has {images.size} image(s) with objects of seen categories; "
            "need >= 2 (one to train on, one to hold out to choose the epoch)"
        )
    held = images[split_images(images, fraction, seed) == "val"]
    in_holdout = np.isin(train.image_ids, held)
    fit, holdout = train.subset(~in_holdout, train.n_excluded), train.subset(in_holdout, {})
    if fit.rows.size < 2:  # BatchNorm cannot train on one sample
        raise ValueError(
            f"{what} {fraction} holds out {held.size} of {images.size} training images and leaves "
            f"{fit.rows.size} object(s) to train on; need >= 2: lower {what} or add training images"
        )
    log.info(
        "hold-out: %d of %d training images (%d objects) choose the epoch; %d objects to train on",
        held.size,
        images.size,
        holdout.rows.size,
        fit.rows.size,
    )
    return fit, holdout
