"""The ablation test on a hand-built head whose answers are computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lavise.metrics.average_precision import average_precision
from lavise.relevance.ablation import (
    AblationSetup,
    ablated_scores,
    ablation_row,
    class_rows,
    mean_ap,
    most_harmful,
    random_filters,
    single_filter_harm,
)

CPU = torch.device("cpu")


@pytest.fixture
def setup() -> AblationSetup:
    """Filter 0 ranks class 0's images perfectly, filter 1 class 1's; filter 2 is unused."""
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        head[2].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    pooled = np.array([[4, 1, 5], [3, 4, 5], [2, 2, 5], [1, 3, 5]], dtype=np.float32)  # [N=4, d=3]
    maps = np.repeat(pooled[:, :, None, None], 2, axis=2).repeat(2, axis=3).astype(np.float16)  # [4, 3, 2, 2]
    labels = np.array([[1, 0], [1, 1], [0, 0], [0, 1]], dtype=np.float32)
    return AblationSetup(head.eval(), maps, labels, np.array([True, True]), batch_size=3, device=CPU)


def test_no_filter_dropped_reproduces_the_original_map_exactly(setup: AblationSetup) -> None:
    with torch.inference_mode():
        direct = setup.head(torch.from_numpy(setup.maps.astype(np.float32))).numpy()
    np.testing.assert_array_equal(ablated_scores(setup.head, setup.maps, [], 3, CPU), direct)
    original = setup.ap([])
    assert mean_ap(original) == float(average_precision(direct, setup.labels).mean())
    row = ablation_row(setup, np.zeros(3, dtype=bool), original, repeats=3, seed=0, key=0)
    assert row["dropped"] == 0
    assert row["selected_map"] == row["original_map"] == row["random_map"] == mean_ap(original)
    assert row["random_sd"] == 0.0


def test_ablating_a_class_filter_by_hand(setup: AblationSetup) -> None:
    # class 0: scores 4,3,2,1 on labels 1,1,0,0 -> AP 1; class 1: 1,4,2,3 on 0,1,0,1 -> AP 1
    np.testing.assert_allclose(setup.ap([]), [1.0, 1.0])
    # filter 0 zeroed: class 0's scores all tie -> one threshold, precision 2/4
    np.testing.assert_allclose(setup.ap([0]), [0.5, 1.0])
    np.testing.assert_allclose(setup.ap([2]), [1.0, 1.0])  # an unused filter changes nothing


def test_class_rows_compare_own_filters_with_random_ones(setup: AblationSetup) -> None:
    weights = np.array([[0.3, 0.0, 0.0], [0.0, 0.0, 0.0]])  # class 0 selects filter 0, class 1 nothing
    rows = class_rows(setup, weights, setup.ap([]), repeats=4, seed=0, key=0)
    first, second = rows
    assert (first["class_index"], first["selected"], first["ap_selected"]) == (0, 1, 0.5)
    draws = [random_filters(3, 1, 0, (0, 0, r))[0] for r in range(4)]
    assert first["ap_random"] == pytest.approx(np.mean([0.5 if f == 0 else 1.0 for f in draws]))
    assert first["ap_drop_selected"] == pytest.approx(0.5)
    assert (second["selected"], second["ap_drop_selected"], second["ap_drop_random"]) == (0, 0.0, 0.0)


def test_unscored_class_is_left_out(setup: AblationSetup) -> None:
    partial = AblationSetup(setup.head, setup.maps, setup.labels, np.array([True, False]), 3, CPU)
    assert np.isnan(partial.ap([])[1])
    assert mean_ap(partial.ap([0])) == 0.5
    assert [row["class_index"] for row in class_rows(partial, np.ones((2, 3)), partial.ap([]), 1, 0, 0)] == [0]


def test_random_filters_are_distinct_sorted_and_reproducible() -> None:
    first = random_filters(512, 40, 7, (2, 1))
    assert len(set(first.tolist())) == 40 and np.all(np.diff(first) > 0)
    np.testing.assert_array_equal(first, random_filters(512, 40, 7, (2, 1)))
    assert not np.array_equal(first, random_filters(512, 40, 7, (2, 2)))


def test_single_filter_harm_and_the_reference_row_by_hand(setup: AblationSetup) -> None:
    # zeroing filter 0: class 0's AP 1 -> 0.5 (mAP 1 -> 0.75); filter 1: class 1's scores all tie,
    # labels 0,1,0,1 -> AP 0.5 (mAP 0.75); filter 2 is unused (0)
    harm = single_filter_harm(setup, setup.ap([]), chunk=2)  # two passes: filters {0, 1}, then {2}
    np.testing.assert_allclose(harm, [0.25, 0.25, 0.0])
    assert most_harmful(harm, 1).tolist() == [0] and most_harmful(harm, 2).tolist() == [0, 1]
    row = ablation_row(setup, np.array([False, False, True]), setup.ap([]), repeats=2, seed=0, key=0, harm=harm)
    assert row["selected_map"] == 1.0 and row["harmful_map"] == 0.75  # as many (1) filters: filter 0
    assert "harmful_map" not in ablation_row(setup, np.array([False, False, True]), setup.ap([]), 2, 0, 0)
