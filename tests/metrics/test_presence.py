"""Presence of named tokens per image, the per-filter scores and their metrics entry, by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lavise.metrics.presence import (
    PresenceScores,
    image_tokens,
    named_tokens,
    presence,
    presence_entry,
    presence_scores,
)

# categories: "red car" -> tokens red (0), car (1); "dog" -> dog (2); "cat" -> cat (3), red (0)
INCIDENCE = np.array([[1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 1]], dtype=bool)
INDEX = {"red car": 0, "dog": 1, "cat": 2}


def test_image_tokens_from_objects() -> None:
    objects = pd.DataFrame(
        {"image_id": [7, 7, 9, 9, 5], "category": ["dog", "cat", "red car", "unicorn", "dog"]}
    )  # image 5 is no evaluation image; "unicorn" is no kept category
    contains = image_tokens(objects, np.array([9, 7, 8]), INDEX, INCIDENCE)
    assert contains.tolist() == [[True, True, False, False], [True, False, True, True], [False] * 4]


def test_named_tokens_take_the_first_k_words() -> None:
    token_of_word = np.array([-1, 2, 0, 3])  # word 0 names nothing; words 1..3: dog, red, cat
    explanations = {0: ([0, 1, 3], [5, 4, 1]), 2: ([2], [1])}  # position 1 has no words
    named = named_tokens(explanations, np.array([0, 1, 2]), token_of_word, 2, 4)
    assert named.tolist() == [[False, False, True, False], [False] * 4, [True, False, False, False]]


def test_presence_per_group() -> None:
    contains = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [1, 0, 1, 0]], dtype=bool)
    named = np.array([[[1, 0, 0, 0], [0, 0, 0, 1]], [[0, 0, 1, 0], [1, 0, 0, 0]]], dtype=bool)  # [G=2, F=2, T]
    got = presence(contains, named, np.array([0, 1, 1]))  # image 0 judged by group 0, images 1, 2 by group 1
    assert got.tolist() == [[True, False], [True, False], [True, True]]
    assert presence(contains, named[0]).tolist() == [[True, False], [False, False], [True, False]]


def test_scores_are_undefined_for_constant_presence_or_activation() -> None:
    activation = np.array([[3.0, 1.0, 2.0, 1.0], [1.0, 2.0, 2.0, 1.0], [2.0, 3.0, 2.0, 1.0]])
    present = np.array([[1, 1, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0]], dtype=bool)
    scores = presence_scores(activation, present)
    # filter 0: ranks 3 (+), 2 (+), 1 (-): AP = 1; r = corr([3, 1, 2], [1, 0, 1]) = sqrt(3)/2
    assert scores.correlation[0] == pytest.approx(np.sqrt(3) / 2) and scores.auprc[0] == pytest.approx(1.0)
    assert np.isnan(scores.correlation[1:]).all() and np.isnan(scores.auprc[1:]).all()  # all present, flat, none
    entry = presence_entry(scores)
    assert entry["correlation"] == round(np.sqrt(3) / 2, 6) and entry["auprc"] == 1.0
    assert entry["presence"] == {"n_filters_defined": 1, "n_filters_undefined": 3}
    empty = presence_entry(PresenceScores(np.array([np.nan]), np.array([np.nan])))
    assert empty["correlation"] is None and empty["auprc"] is None
