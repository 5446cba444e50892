"""Pearson correlation per column against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lavise.metrics.correlation import column_correlation


def test_point_biserial_by_hand() -> None:
    # column 0: x = [1, 2, 3, 6], y = [0, 0, 1, 1]: means 3 and 0.5; deviations [-2, -1, 0, 3] and
    # [-.5, -.5, .5, .5]; sxy = 1 + .5 + 0 + 1.5 = 3; sxx = 14; syy = 1: r = 3 / sqrt(14)
    # column 1: y = [1, 0, 0, 1]: sxy = -(-2)(.5)... = (-2)(.5) + (-1)(-.5) + 0 + 3(.5) = 1: r = 1 / sqrt(14)
    x = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [6.0, 6.0]])
    y = np.array([[0, 1], [0, 0], [1, 0], [1, 1]], dtype=bool)
    assert column_correlation(x, y) == pytest.approx([3 / math.sqrt(14), 1 / math.sqrt(14)])


def test_constant_columns_are_undefined_and_shapes_checked() -> None:
    x = np.array([[1.0, 2.0, 5.0], [1.0, 3.0, 4.0], [1.0, 4.0, 3.0]])
    y = np.array([[1, 0, 1], [0, 0, 0], [1, 0, 0]], dtype=bool)
    r = column_correlation(x, y)  # column 0: constant activation; column 1: constant presence
    assert np.isnan(r[0]) and np.isnan(r[1]) and r[2] == pytest.approx(np.corrcoef(x[:, 2], y[:, 2])[0, 1])
    with pytest.raises(ValueError, match="must both be"):
        column_correlation(x, y[:2])
