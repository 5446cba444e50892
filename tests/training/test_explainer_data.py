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
    gather_batch,
    load_class_vectors,
    load_classes,
    load_split,
    split_holdout,
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


def samples(image_ids: list[int]) -> Split:
    """One sample per entry of ``image_ids``, its row its position."""
    n = len(image_ids)
    return Split(np.zeros((n, 2), np.float16), np.arange(n), np.zeros(n, np.int64), np.asarray(image_ids), {"x": 1})


def test_holdout_is_a_seeded_slice_of_the_training_images_by_image(tiny_cache: dict[str, Path]) -> None:
    cache = open_feature_cache(tiny_cache["features"])
    train = load_split(cache, "train", load_classes(tiny_cache["annotations"]))
    fit, holdout = split_holdout(train, 0.1, 0)
    fit_images, held_images = set(fit.image_ids.tolist()), set(holdout.image_ids.tolist())
    assert len(held_images) == round(0.1 * len(set(train.image_ids.tolist()))) == 7
    assert not fit_images & held_images  # every object of a held-out image is held out
    assert fit_images | held_images == set(train.image_ids.tolist())
    assert sorted(np.concatenate([fit.rows, holdout.rows]).tolist()) == sorted(train.rows.tolist())
    assert not held_images & set(cache.val_objects["image_id"].tolist())  # never a val image
    assert fit.n_excluded == train.n_excluded and holdout.n_excluded == {}
    # a function of (image ids, fraction, seed): the samples' order does not matter
    order = np.random.default_rng(4).permutation(train.rows.size)
    shuffled = Split(train.vectors, train.rows[order], train.category_index[order], train.image_ids[order], {})
    assert set(split_holdout(shuffled, 0.1, 0)[1].image_ids.tolist()) == held_images
    assert set(split_holdout(train, 0.1, 1)[1].image_ids.tolist()) != held_images
    assert len(set(split_holdout(train, 0.5, 0)[1].image_ids.tolist())) == round(0.5 * 71)


def test_holdout_needs_two_images_and_two_objects_to_train_on() -> None:
    fit, holdout = split_holdout(samples([3, 3, 9, 9]), 0.1, 0)  # at least one image is held out
    assert fit.rows.size + holdout.rows.size == 4 and len(set(holdout.image_ids.tolist())) == 1
    with pytest.raises(ValueError, match=r"^train\.holdout_fraction 0\.1: the train split has 1 image\(s\)"):
        split_holdout(samples([3, 3]), 0.1, 0, what="train.holdout_fraction")
    with pytest.raises(ValueError, match=r"holds out 1 of 2 training images and leaves 1 object\(s\) to train on"):
        split_holdout(samples([1, 2]), 0.5, 0)


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
        image_ids=np.arange(30) // 3,
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
