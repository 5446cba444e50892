"""The two-proportion z-test against the hand formula, and Benjamini-Hochberg against a naive loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lavise.metrics.two_proportion import benjamini_hochberg, two_proportion_z


def test_z_and_p_value_by_hand() -> None:
    # 30/50 vs 10/50: pooled 0.4, se = sqrt(0.4 * 0.6 * (1/50 + 1/50)) = sqrt(0.0096)
    z, p = two_proportion_z(np.array([30]), 50, np.array([10]), 50)
    assert z[0] == pytest.approx(0.4 / math.sqrt(0.0096))
    assert z[0] == pytest.approx(4.0825, abs=1e-4)
    assert p[0] == pytest.approx(math.erfc(abs(z[0]) / math.sqrt(2)))


def test_matches_a_naive_loop_and_is_antisymmetric() -> None:
    rng = np.random.default_rng(0)
    n1, n2 = 40, 70
    x1, x2 = rng.integers(0, n1 + 1, 25), rng.integers(0, n2 + 1, 25)
    z, p = two_proportion_z(x1, n1, x2, n2)
    for i in range(25):
        pooled = (x1[i] + x2[i]) / (n1 + n2)
        se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        expected = 0.0 if se == 0 else (x1[i] / n1 - x2[i] / n2) / se
        assert z[i] == pytest.approx(expected)
        assert p[i] == pytest.approx(math.erfc(abs(expected) / math.sqrt(2)))
    z_swapped, p_swapped = two_proportion_z(x2, n2, x1, n1)
    np.testing.assert_allclose(z_swapped, -z)
    np.testing.assert_allclose(p_swapped, p)


def test_equal_extreme_rates_give_no_evidence() -> None:
    z, p = two_proportion_z(np.array([0, 5]), 5, np.array([0, 9]), 9)
    assert z.tolist() == [0.0, 0.0] and p.tolist() == [1.0, 1.0]


def test_bad_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one observation"):
        two_proportion_z(np.array([0]), 0, np.array([1]), 3)
    with pytest.raises(ValueError, match="between 0"):
        two_proportion_z(np.array([4]), 3, np.array([1]), 3)


def test_benjamini_hochberg_matches_a_naive_loop() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.2, 0.005, 0.5, 0.04])
    m = len(p)
    expected = np.empty(m)
    order = np.argsort(p)
    for rank_index, i in enumerate(order):
        expected[i] = min(min(p[j] * m / (r + 1) for r, j in enumerate(order) if r >= rank_index), 1.0)
    np.testing.assert_allclose(benjamini_hochberg(p), expected)
    assert benjamini_hochberg(np.array([])).size == 0
