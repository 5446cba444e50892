"""Average precision (scikit-learn's definition, ties as one threshold) and mAP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lavise.metrics.average_precision import average_precision, mean_average_precision


def _naive_average_precision(scores: np.ndarray, labels: np.ndarray) -> list[float]:
    """sklearn's definition, one category and one threshold at a time."""
    result = []
    for c in range(scores.shape[1]):
        n_pos = labels[:, c].sum()
        if n_pos == 0:
            result.append(float("nan"))
            continue
        ap, previous_recall = 0.0, 0.0
        for threshold in sorted(set(scores[:, c].tolist()), reverse=True):
            predicted = scores[:, c] >= threshold
            tp = (predicted & (labels[:, c] == 1)).sum()
            recall = tp / n_pos
            ap += (recall - previous_recall) * tp / predicted.sum()
            previous_recall = recall
        result.append(ap)
    return result


def test_average_precision_hand_computed() -> None:
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.8, 0.5, 0.2], [0.7, 0.2, 0.3], [0.6, 0.1, 0.4]])
    labels = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]])
    ap = average_precision(scores, labels)
    # col 0: hits at ranks 1 and 3 -> (1/1 + 2/3) / 2; col 1: the tie at 0.5 is one threshold
    # with precision 1/2, then 2/3 at 0.2 -> 0.5 * 1/2 + 0.5 * 2/3; col 2: no positive.
    assert ap[0].item() == pytest.approx(5 / 6)
    assert ap[1].item() == pytest.approx(7 / 12)
    assert torch.isnan(ap[2])
    assert mean_average_precision(scores, labels) == pytest.approx((5 / 6 + 7 / 12) / 2)
    assert average_precision(torch.tensor([[0.5], [0.5]]), torch.tensor([[1], [0]])).item() == pytest.approx(0.5)


def test_average_precision_matches_naive_loop_with_ties() -> None:
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 6, size=(60, 7)).astype(np.float64) / 5  # many ties
    labels = (rng.random((60, 7)) < 0.3).astype(np.int64)
    labels[:, 4] = 0
    np.testing.assert_allclose(
        average_precision(scores, labels).numpy(), _naive_average_precision(scores, labels), rtol=1e-12, equal_nan=True
    )


def test_average_precision_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="must both be"):
        average_precision(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="NaN"):
        average_precision(torch.tensor([[float("nan")]]), torch.tensor([[1]]))


def test_no_images_or_no_positives_give_nan() -> None:
    assert torch.isnan(average_precision(torch.zeros(0, 2), torch.zeros(0, 2))).all()
    assert np.isnan(mean_average_precision(torch.tensor([[0.3], [0.7]]), torch.tensor([[0], [0]])))
    # a perfect ranking scores 1 for every category that has a positive
    assert mean_average_precision(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.eye(2)) == 1.0
