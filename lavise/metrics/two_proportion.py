"""The two-proportion z-test (pooled), vectorised over filters, and Benjamini-Hochberg q-values.

For counts ``x1`` of ``n1`` and ``x2`` of ``n2``: ``p1 = x1/n1``, ``p2 = x2/n2``, the pooled share
``p = (x1 + x2) / (n1 + n2)``, the standard error ``se = sqrt(p (1 - p) (1/n1 + 1/n2))`` and
``z = (p1 - p2) / se``; the two-sided p-value is ``2 (1 - Phi(|z|))`` (``scipy.stats.norm.sf``).
When both groups share one rate of 0 or 1 (``se = 0``) there is no evidence of a difference:
``z = 0``, p-value 1. The correction over the tests is scipy's Benjamini-Hochberg
(``scipy.stats.false_discovery_control``, method ``bh``).
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def two_proportion_z(
    x1: np.ndarray, n1: np.ndarray | int, x2: np.ndarray, n2: np.ndarray | int
) -> tuple[np.ndarray, np.ndarray]:
    """(z, two-sided p-value), float64 arrays of the shape of ``x1``; every ``n`` must be >= 1."""
    x1, x2 = np.asarray(x1, dtype=np.float64), np.asarray(x2, dtype=np.float64)
    n1, n2 = np.asarray(n1, dtype=np.float64), np.asarray(n2, dtype=np.float64)
    if np.any(n1 < 1) or np.any(n2 < 1):
        raise ValueError("a two-proportion test needs at least one observation in each group")
    if np.any((x1 < 0) | (x1 > n1) | (x2 < 0) | (x2 > n2)):
        raise ValueError("counts must lie between 0 and their group's size")
    pooled = (x1 + x2) / (n1 + n2)
    se = np.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
    difference = x1 / n1 - x2 / n2
    z = np.divide(difference, se, out=np.zeros_like(difference), where=se > 0)
    return z, 2.0 * stats.norm.sf(np.abs(z))


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) of ``p_values`` ``[T]`` (scipy's adapter)."""
    p_values = np.asarray(p_values, dtype=np.float64)
    if p_values.size == 0:
        return p_values.copy()
    return np.asarray(stats.false_discovery_control(p_values, method="bh"), dtype=np.float64)
