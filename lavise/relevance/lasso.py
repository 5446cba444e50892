"""The constrained lasso of Oramas et al. (ICLR 2019): which filters each class relies on.

W* = argmin ||X W - L||²_F subject to ||W_j||₁ <= µ, one column W_j per class, X ``[n, d]`` the
layer's pooled responses and L ``[n, C]`` the labels. The constraint is solved exactly, without
a tolerance: scikit-learn's LARS (``method="lasso"``) gives the whole piecewise-linear lasso path,
along which ||w||₁ grows monotonically, so the solution at ||w||₁ = µ is the linear interpolation
between the two knots that bracket µ. When µ exceeds the norm of the path's end (the least-squares
solution, or the minimum-norm one when d > n), the constraint is inactive and that end is returned.

The path only needs the moments XᵀX ``[d, d]`` and XᵀL ``[d, C]``, accumulated here in float64
over row blocks: one pass over X, memory flat in n, and each class's path then costs O(d³) at most,
whatever the number of images (COCO: 118k images).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import lars_path_gram

from lavise.options import LASSO_SCALINGS

BLOCK_ROWS = 8192  # rows of X per accumulation step (memory only; the sums are exact in float64)


@dataclass(frozen=True)
class Moments:
    """XᵀX ``[d, d]``, XᵀL ``[d, C]`` of the (scaled) responses and labels, and n."""

    gram: np.ndarray
    xy: np.ndarray
    n_samples: int


def design_moments(responses: np.ndarray, labels: np.ndarray, scaling: str) -> Moments:
    """The moments of ``responses`` ``[n, d]`` against ``labels`` ``[n, C]``.

    ``raw``: the responses as the layer gives them, no intercept (the paper's problem).
    ``standardised``: every filter centred and divided by its standard deviation (a constant
    filter stays zero and is never selected) and every label column centred, i.e. a model with an
    intercept, in which µ is measured in label units per standard deviation of a filter.
    """
    if scaling not in LASSO_SCALINGS:
        raise ValueError(f"scaling must be one of {LASSO_SCALINGS}, got {scaling!r}")
    n, d = responses.shape
    if labels.shape[0] != n:
        raise ValueError(f"{n} response rows but {labels.shape[0]} label rows")
    if n == 0:
        raise ValueError("no image to fit the lasso on")
    shift, scale = np.zeros(d), np.ones(d)
    label_shift = np.zeros(labels.shape[1])
    if scaling == "standardised":
        shift = _column_sums(responses) / n
        spread = np.sqrt(np.maximum(_column_sums(responses, shift, square=True) / n, 0.0))
        scale = np.where(spread > 0, spread, np.inf)  # a constant filter: all zeros once scaled
        label_shift = labels.astype(np.float64).mean(axis=0)
    gram = np.zeros((d, d))
    xy = np.zeros((d, labels.shape[1]))
    for start in range(0, n, BLOCK_ROWS):
        block = (np.asarray(responses[start : start + BLOCK_ROWS], dtype=np.float64) - shift) / scale
        gram += block.T @ block
        xy += block.T @ (np.asarray(labels[start : start + BLOCK_ROWS], dtype=np.float64) - label_shift)
    return Moments(gram, xy, n)


def _column_sums(x: np.ndarray, shift: np.ndarray | None = None, square: bool = False) -> np.ndarray:
    """Column sums of ``x`` (or of ``(x - shift)²``) over row blocks, in float64."""
    total = np.zeros(x.shape[1])
    for start in range(0, x.shape[0], BLOCK_ROWS):
        block = np.asarray(x[start : start + BLOCK_ROWS], dtype=np.float64)
        total += ((block - shift) ** 2).sum(axis=0) if square else block.sum(axis=0)
    return total


def lasso_path_points(gram: np.ndarray, xy: np.ndarray, n_samples: int, mus: Sequence[float]) -> np.ndarray:
    """The constrained solutions ``[len(mus), d]`` of one class (``xy`` ``[d]``) at ||w||₁ = µ.

    The path is run to its end (``alpha_min=0``, at most 100·d steps, far more than LARS takes),
    so every µ lies on it or beyond it.
    """
    if any(mu <= 0 for mu in mus):
        raise ValueError(f"every µ must be > 0, got {list(mus)}")
    d = gram.shape[0]
    if not np.any(xy):  # labels orthogonal to every filter: the path is the single point 0
        return np.zeros((len(mus), d))
    _, _, coefs = lars_path_gram(
        Xy=xy.copy(), Gram=gram.copy(), n_samples=n_samples, method="lasso", alpha_min=0.0, max_iter=100 * d
    )
    norms = np.abs(coefs).sum(axis=0)  # [n_knots], non-decreasing along the path
    points = np.empty((len(mus), d))
    for i, mu in enumerate(mus):
        if mu >= norms[-1]:
            points[i] = coefs[:, -1]
            continue
        k = int(np.searchsorted(norms, mu, side="right")) - 1  # norms[k] <= mu < norms[k + 1]
        t = (mu - norms[k]) / (norms[k + 1] - norms[k])
        points[i] = coefs[:, k] + t * (coefs[:, k + 1] - coefs[:, k])
    return points


def constrained_lasso(moments: Moments, mus: Sequence[float]) -> np.ndarray:
    """W at every µ for every class: ``[len(mus), C, d]``; a class's non-zero weights are its filters."""
    n_classes = moments.xy.shape[1]
    d = moments.gram.shape[0]
    weights = np.zeros((len(mus), n_classes, d))
    for c in range(n_classes):
        weights[:, c] = lasso_path_points(moments.gram, moments.xy[:, c], moments.n_samples, mus)
    return weights
