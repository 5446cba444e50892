"""The explainer's training data: classes, splits from the cache, batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lavise.features.cache import open_feature_cache
from lavise.training.explainer_data import (
    Split,
    batch_bounds,
    feature_dim,
    gather_batch,
    load_class_vectors,
    load_classes,
    load_split,
)


def test_classes_are_sorted_seen_tokens_with_positives(tiny_cache: dict[str, Path]) -> None:
    classes = load_classes(tiny_cache["annotations"])
    assert classes.tokens == ["alpha", "beta", "delta", "gamma"]
    assert classes.seen_categories == ["car", "cat a", "dog"]
    assert classes.positives.tolist() == [
        [False, False, True, False],  # car → delta
        [True, True, False, False],  # cat a → alpha, beta
        [False, False, False, True],  # dog → gamma
    ]


def test_unseen_and_dropped_objects_are_excluded_and_counted(tiny_cache: dict[str, Path]) -> None:
    cache = open_feature_cache(tiny_cache["features"])
    split = load_split(cache, "train", load_classes(tiny_cache["annotations"]))
    assert split.rows.size == 118
    assert split.n_excluded == {"outside_crop": 2, "unseen": 20, "dropped": 3}
    categories = cache.train_objects["category"].tolist()
    assert all(categories[r] in ("cat a", "dog", "car") for r in split.rows)


def test_class_vectors_are_unit_length(tiny_cache: dict[str, Path]) -> None:
    vectors = load_class_vectors(tiny_cache["glove"], ["alpha", "gamma"])
    assert vectors.shape == (2, 8)
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(2))


def test_feature_dim_is_the_columns_and_needs_two_samples_per_split() -> None:
    """The columns' agreement with meta.json is the cache reader's check (tests/stages/test_train_stage.py)."""

    def split(n: int, d: int) -> Split:
        return Split(np.zeros((n, d), dtype=np.float16), np.arange(n), np.zeros(n, dtype=np.int64), {})

    assert feature_dim(split(3, 6), split(2, 6)) == 6
    with pytest.raises(ValueError, match="val split has 1 objects"):
        feature_dim(split(3, 6), split(1, 6))


def test_batch_bounds_cover_everything_without_singletons() -> None:
    assert batch_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert batch_bounds(9, 4) == [(0, 4), (4, 9)]
    assert batch_bounds(8, 4) == [(0, 4), (4, 8)]
    assert batch_bounds(3, 4) == [(0, 3)]


def test_gather_batch_matches_per_sample_loop_and_flags_non_finite() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(50, 6)).astype(np.float16)
    split = Split(
        vectors=vectors,
        rows=rng.permutation(50)[:30].astype(np.int64),
        category_index=rng.integers(0, 3, 30),
        n_excluded={},
    )
    picks = np.array([5, 0, 29, 12, 7])
    features, category_index = gather_batch(split, picks)
    assert features.dtype == torch.float32
    got = {(tuple(f.tolist()), int(c)) for f, c in zip(features, category_index)}
    expected = {
        (tuple(vectors[split.rows[i]].astype(np.float32).tolist()), int(split.category_index[i])) for i in picks
    }
    assert got == expected
    assert np.all(np.diff(split.rows[picks][np.argsort(split.rows[picks])]) > 0)
    vectors[split.rows[12], 2] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        gather_batch(split, picks)
