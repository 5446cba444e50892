"""Bootstrap confidence intervals: the spread of a mean over filters, images or (image, class) pairs.

Every figure the pipeline reports is a mean over a sample (filters, pairs, images), and two
trainings on two CPUs can move it by more than the gaps between methods; an interval says how
much of a difference the sample size alone can explain. This is a thin adapter over
``scipy.stats.bootstrap`` (percentile method, seeded), with one addition: a *cluster* bootstrap
for figures averaged over pairs that share an image, which resamples whole clusters (images) so
that correlated pairs are not counted as independent evidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

BATCH = 64  # resamples drawn at once: memory is BATCH x n indices, whatever n_resamples is


@dataclass(frozen=True)
class Interval:
    """A mean and its percentile bootstrap interval; all NaN for an empty sample."""

    mean: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high}


def _ratio_of_sums(sums: np.ndarray, counts: np.ndarray, axis: int = -1) -> np.ndarray:
    return sums.sum(axis=axis) / counts.sum(axis=axis)


def bootstrap_mean(
    values: np.ndarray,
    *,
    clusters: np.ndarray | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Mean of ``values`` [n] with a percentile bootstrap interval.

    ``clusters`` [n] (e.g. the image id of each pair) makes it a cluster bootstrap: clusters are
    drawn with replacement and the statistic is the pooled mean of their values, which equals the
    plain mean when every value is its own cluster. NaN values are an error, not skipped: the
    caller decides what an undefined value means. A sample of one value gives a zero-width
    interval; an empty one gives NaN throughout.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {values.shape}")
    if np.isnan(values).any():
        raise ValueError("values contain NaN; drop or fill them before bootstrapping")
    if n_resamples < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"need n_resamples >= 1 and 0 < confidence < 1, got {n_resamples}, {confidence}")
    if values.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    sums, counts = _cluster_sums(values, clusters)
    mean = float(sums.sum() / counts.sum())
    if sums.size == 1 or np.all(values == values[0]):
        return Interval(mean, mean, mean)
    result = stats.bootstrap(
        (sums, counts),
        _ratio_of_sums,
        n_resamples=n_resamples,
        batch=BATCH,
        vectorized=True,
        paired=True,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    return Interval(mean, float(low), float(high))


def _cluster_sums(values: np.ndarray, clusters: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sums and counts [K], clusters in sorted order (deterministic for a seed)."""
    if clusters is None:
        return values, np.ones_like(values)
    clusters = np.asarray(clusters)
    if clusters.shape != values.shape:
        raise ValueError(f"clusters {clusters.shape} and values {values.shape} must have the same shape")
    _, inverse = np.unique(clusters, return_inverse=True)
    sums = np.bincount(inverse, weights=values)
    counts = np.bincount(inverse).astype(np.float64)
    return sums, counts
