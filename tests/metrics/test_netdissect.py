"""NetDissect: the dataset-wide IoU rule on a hand-built case, the 2-fold cross-fitted labels and its entry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lavise.data.vocabulary import Categories
from lavise.metrics.netdissect import (
    NETDISSECT_FOLDS,
    NetDissectAccumulator,
    cross_fitted_label_tokens,
    fold_of,
    label_token_sets,
    netdissect_metrics,
)
from lavise.metrics.overlap import region_overlaps
from lavise.metrics.recall import TruthTokens


def test_netdissect_rule_hand_built() -> None:
    # 2 filters, 2 categories, 3 images of 1x4 pixels.
    # image 0: R0 = 1100, R1 = 0011; cat0 = 1000, cat1 = 0011
    # image 1: R0 = 1000, R1 empty;  cat0 = 1100
    # image 2: R0 empty, R1 = 0001;  cat1 = 0001
    acc = NetDissectAccumulator(2, 2)
    regions = [np.array([[1, 1, 0, 0], [0, 0, 1, 1]]), np.array([[1, 0, 0, 0]]), np.array([[0, 0, 0, 1]])]
    actives = [np.array([0, 1]), np.array([0]), np.array([1])]
    masks = [np.array([[1, 0, 0, 0], [0, 0, 1, 1]]), np.array([[1, 1, 0, 0]]), np.array([[0, 0, 0, 1]])]
    cats = [np.array([0, 1]), np.array([0]), np.array([1])]
    for region, active, mask, cat in zip(regions, actives, masks, cats):
        r, m = torch.tensor(region, dtype=torch.bool), torch.tensor(mask, dtype=torch.bool)
        r_area, m_area, inter = region_overlaps(r, m)
        acc.add(active, r_area.numpy(), inter.numpy(), cat, m_area.numpy())
    iou = acc.iou()
    # filter 0: cat0 inter 1+1=2, union (2+1-1)+(1+2-1)=4 -> 0.5; cat1 inter 0, union 2+2 + 1+0 + 0+1 = 6 -> 0
    # filter 1: cat0 inter 0, union (2+1)+(0+2) = 5 -> 0; cat1 inter 2+1=3, union 2+1 = 3 -> 1
    assert iou == pytest.approx(np.array([[0.5, 0.0], [0.0, 1.0]]))
    labels, best = acc.labels()
    assert labels.tolist() == [0, 1] and best.tolist() == [0.5, 1.0]
    empty = NetDissectAccumulator(1, 2)
    assert empty.labels()[0].tolist() == [-1]


def _folds() -> list[NetDissectAccumulator]:
    """Fold 0 labels filter 0 with category 0 (IoU 2/5) and filter 1 with none; fold 1 labels both
    with category 1 (IoU 1/3 and 1)."""
    even, odd = NetDissectAccumulator(2, 2), NetDissectAccumulator(2, 2)
    even.intersection[:], even.region_area[:], even.mask_area[:] = [[2, 0], [0, 0]], [4, 0], [3, 3]
    odd.intersection[:], odd.region_area[:], odd.mask_area[:] = [[0, 1], [0, 2]], [2, 2], [2, 2]
    assert even.labels()[0].tolist() == [0, -1] and odd.labels()[0].tolist() == [1, 1]
    return [even, odd]


CATEGORIES = Categories(["a", "b c"], np.array([True, False]), ["a", "b", "c"], np.array([[1, 0, 0], [0, 1, 1]], bool))


def test_cross_fitted_labels_come_from_the_other_fold() -> None:
    assert NETDISSECT_FOLDS == 2 and fold_of(np.arange(4)).tolist() == [0, 1, 0, 1]
    assert label_token_sets(np.array([1, -1]), CATEGORIES).astype(int).tolist() == [[0, 1, 1], [0, 0, 0]]
    # pairs (row, filter): (0, 0) gets fold 1's label of filter 0, (1, 0) fold 0's, (2, 1) fold 1's, (3, 1) fold 0's
    tokens = cross_fitted_label_tokens(_folds(), np.array([0, 1, 2, 3]), np.array([0, 0, 1, 1]), CATEGORIES)
    assert tokens.astype(int).tolist() == [[0, 1, 1], [1, 0, 0], [0, 1, 1], [0, 0, 0]]


def test_netdissect_metrics_out_of_sample_and_in_sample() -> None:
    truth_all = np.array([[0, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=bool)  # b, b, c, a
    truth = TruthTokens(truth_all, truth_all, np.zeros_like(truth_all), has_unseen=True)
    result = netdissect_metrics(_folds(), np.array([0, 1, 2, 3]), np.array([0, 0, 1, 1]), 2, CATEGORIES, truth, [1, 5])
    # cross-fitted label tokens {b, c}, {a}, {b, c}, {}: recall 1, 0, 1, 0 for every s
    assert result.per_s[1].tolist() == [1.0, 0.0, 1.0, 0.0] and result.per_s[5] is result.per_s[1]
    # all images: filter 0: IoU 2/9 with category 0, 1/10 with 1; filter 1: 2/5 with category 1
    assert result.labels.tolist() == [0, 1]
    assert result.label_iou == pytest.approx([2 / 9, 2 / 5])
    entry = result.entry
    assert entry["recall@1"] == 0.5 and entry["recall@5"] == 0.5 and entry["n_filters"] == 2
    assert entry["in_sample"] == {"n_pairs": 4, "recall@1": 0.25}  # labels {a}, {a}, {b, c}, {b, c}
    assert entry["n_distinct_concepts"] == 2
    assert entry["seen"]["recall@1"] == 0.5 and entry["unseen"] == {"n_pairs": 0, "recall@1": None, "recall@5": None}
