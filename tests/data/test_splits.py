"""Image and category splits: exact sizes, determinism, order independence, no replacement."""

from __future__ import annotations

import numpy as np
import pytest

from lavise.data.splits import split_categories, split_images


def test_image_split_size_is_rounded_fraction() -> None:
    labels = split_images(np.arange(1000, 2000), 0.1, seed=0)
    assert (labels == "val").sum() == 100 and (labels == "train").sum() == 900
    assert (split_images(np.arange(7), 0.25, seed=0) == "val").sum() == 2  # round(1.75) = 2
    assert (split_images(np.arange(3), 0.01, seed=0) == "val").sum() == 1  # never an empty side
    assert (split_images(np.arange(3), 0.99, seed=0) == "val").sum() == 2
    assert split_images(np.array([5]), 0.5, seed=0).tolist() == ["train"]


def test_image_split_deterministic_seeded_and_order_independent() -> None:
    ids = np.arange(500) * 3 + 11
    first = split_images(ids, 0.2, seed=4)
    assert np.array_equal(first, split_images(ids, 0.2, seed=4))
    assert not np.array_equal(first, split_images(ids, 0.2, seed=5))
    shuffled = np.random.default_rng(1).permutation(len(ids))
    by_id = dict(zip(ids.tolist(), first.tolist()))
    assert dict(zip(ids[shuffled].tolist(), split_images(ids[shuffled], 0.2, seed=4).tolist())) == by_id


def test_seen_fraction_exact_without_replacement() -> None:
    names = [f"synset_{i}.n.01" for i in range(1208)]
    roles = split_categories(names, 0.7, seed=0)
    assert (roles == "seen").sum() == 846  # round(0.7 * 1208) = 845.6 -> 846 DISTINCT categories
    assert set(roles.tolist()) == {"seen", "unseen"}
    assert np.array_equal(roles, split_categories(names, 0.7, seed=0))
    assert not np.array_equal(roles, split_categories(names, 0.7, seed=1))
    reordered = names[::-1]
    assert dict(zip(reordered, split_categories(reordered, 0.7, seed=0))) == dict(zip(names, roles))


def test_small_category_sets_keep_one_of_each() -> None:
    assert sorted(split_categories(["a", "b"], 0.99, seed=0).tolist()) == ["seen", "unseen"]
    assert sorted(split_categories(["a", "b"], 0.01, seed=0).tolist()) == ["seen", "unseen"]
    assert split_categories(["a"], 0.3, seed=0).tolist() == ["seen"]
    assert split_categories([], 0.3, seed=0).tolist() == []


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="unique"):
        split_images([1, 1, 2], 0.5, seed=0)
    with pytest.raises(ValueError, match="unique"):
        split_categories(["a", "a"], 0.5, seed=0)
    with pytest.raises(ValueError, match="fraction"):
        split_categories(["a", "b"], 1.0, seed=0)
