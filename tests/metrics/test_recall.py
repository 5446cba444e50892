"""recall@s, NetDissect's label recall, the summaries and the metrics entry, against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lavise.data.vocabulary import Categories, tokens_of_categories
from lavise.metrics.recall import (
    label_recall,
    method_metrics,
    per_filter_means,
    recall_at,
    split_metrics,
    summarise_recall,
    truth_tokens,
    word_recall_metrics,
)


def test_recall_empty_and_nonempty_ground_truth() -> None:
    # token space: 0 dog, 1 cat, 2 tree, 3 sky
    truth = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]], dtype=bool)
    words = np.array([[-1, 1, 0], [0, 1, 2], [2, -1, 0]])  # -1 = not a category token
    recall = recall_at(words, truth, [1, 2, 3, 20])
    assert recall[1][0] == 0.0 and recall[2][0] == 0.5 and recall[3][0] == 1.0 and recall[20][0] == 1.0
    assert all(math.isnan(recall[s][1]) for s in (1, 2, 3, 20))
    assert recall[1][2] == 0.5 and recall[3][2] == 0.5


def test_label_recall_and_summary() -> None:
    truth = np.array([[1, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=bool)
    label = np.array([[0, 1, 0], [0, 1, 0], [1, 0, 0]], dtype=bool)
    assert np.allclose(label_recall(label, truth)[:2], [0.5, 0.0])
    summary = summarise_recall(np.array([1.0, 0.0, math.nan, 0.5, 0.25]), np.array([0, 0, 0, 1, 2]))
    assert summary["mean"] == pytest.approx(1.75 / 4)
    assert summary["n_pairs"] == 4 and summary["n_filters"] == 3
    assert summary["per_filter"]["median"] == pytest.approx(0.5)  # filter means 0.5, 0.5, 0.25
    assert summary["per_filter"]["mean"] == pytest.approx(1.25 / 3)


def test_tokens_of_categories_matches_loop() -> None:
    rng = np.random.default_rng(1)
    incidence = rng.random((7, 9)) > 0.7
    incidence[np.arange(7), rng.integers(0, 9, 7)] = True
    truth = rng.random((11, 7)) > 0.6
    expected = np.zeros((11, 9), dtype=bool)
    for p in range(11):
        for c in range(7):
            if truth[p, c]:
                expected[p] |= incidence[c]
    assert np.array_equal(tokens_of_categories(truth, incidence), expected)


def _categories() -> Categories:
    # tokens: 0 red, 1 car, 2 cat, 3 sky; "red" is a seen category's token, so not novel
    incidence = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]], dtype=bool)
    return Categories(
        ["red car", "cat", "sky"], np.array([True, False, False]), ["red", "car", "cat", "sky"], incidence
    )


def test_truth_tokens_all_seen_and_novel_unseen() -> None:
    truth = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1]], dtype=bool)
    tokens = truth_tokens(truth, _categories())
    assert tokens.all.astype(int).tolist() == [[1, 1, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1]]
    assert tokens.seen.astype(int).tolist() == [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert tokens.unseen.astype(int).tolist() == [[0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1]]
    assert tokens.has_unseen
    subset = tokens[np.array([3, 0])]
    assert subset.all.astype(int).tolist() == [[0, 0, 0, 1], [1, 1, 1, 0]] and subset.has_unseen


def test_method_metrics_and_split_metrics_hand_computed() -> None:
    per_s = {1: np.array([1.0, 0.0, math.nan, 0.5]), 2: np.array([1.0, 0.5, math.nan, 1.0])}
    entry = method_metrics(per_s, np.array([0, 0, 1, 1]), 3)
    # s=1: filter means 0.5 and 0.5; s=2: 0.75 and 1.0 (quartiles by the linear rule)
    assert entry == {
        "n_filters": 3,
        "per_filter": {
            "recall@1": {"mean": 0.5, "median": 0.5, "q25": 0.5, "q75": 0.5},
            "recall@2": {"mean": 0.875, "median": 0.875, "q25": 0.8125, "q75": 0.9375},
        },
        "recall@1": 0.5,
        "recall@2": 0.833333,
        "n_pairs": 3,
        "n_filters_scored": 2,
    }
    assert split_metrics(per_s) == {"n_pairs": 3, "recall@1": 0.5, "recall@2": 0.833333}
    unscored = method_metrics({1: np.array([math.nan])}, np.array([0]), 1)
    assert unscored["recall@1"] is None and unscored["per_filter"]["recall@1"] is None
    assert unscored["n_pairs"] == 0 and unscored["n_filters_scored"] == 0
    assert split_metrics({1: np.array([math.nan])}) == {"n_pairs": 0, "recall@1": None}
    assert per_filter_means(per_s[2], np.array([0, 0, 1, 1]), 3)[:2].tolist() == [0.75, 1.0]


def test_word_recall_metrics_reports_the_split_when_there_is_one() -> None:
    truth = truth_tokens(np.array([[1, 1, 0], [0, 0, 1]], dtype=bool), _categories())
    words = np.array([[2, -1], [3, 0]])  # pair 0 ranks cat then a non-token; pair 1 sky then red
    entry, figures = word_recall_metrics(words, truth, np.array([0, 1]), 2, [1, 2])
    # pair 0: G = {red, car, cat}: 1/3 at s=1 and 2; pair 1: G = {sky}: 1
    assert figures["recall@1"].tolist() == pytest.approx([1 / 3, 1.0])
    assert figures["recall@2"].tolist() == pytest.approx([1 / 3, 1.0])
    assert figures["seen.recall@1"][0] == 0.0 and np.isnan(figures["seen.recall@1"][1])  # pair 1 has no seen G
    assert figures["unseen.recall@2"].tolist() == [1.0, 1.0]
    assert entry["recall@1"] == round(2 / 3, 6)
    assert entry["seen"] == {"n_pairs": 1, "recall@1": 0.0, "recall@2": 0.0}  # seen G of pair 0: red, car
    assert entry["unseen"] == {"n_pairs": 2, "recall@1": 1.0, "recall@2": 1.0}  # novel: cat; sky
    seen_only = Categories(["a"], np.array([True]), ["a"], np.array([[True]]))
    entry, _ = word_recall_metrics(np.array([[0]]), truth_tokens(np.array([[True]]), seen_only), np.array([0]), 1, [1])
    assert "seen" not in entry and "unseen" not in entry and entry["recall@1"] == 1.0
