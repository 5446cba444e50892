"""Bootstrap intervals: against a naive resampling loop, and the edge cases callers rely on."""

from __future__ import annotations

import numpy as np
import pytest

from lavise.metrics.bootstrap import bootstrap_mean


def naive_percentile_interval(values: np.ndarray, clusters: np.ndarray, n: int, seed: int) -> tuple[float, float]:
    """Resample clusters one resample at a time, pooled mean of the drawn clusters' values."""
    rng = np.random.default_rng(seed)
    ids = np.unique(clusters)
    stats = []
    for _ in range(n):
        drawn = rng.choice(ids, size=ids.size, replace=True)
        pooled = np.concatenate([values[clusters == c] for c in drawn])
        stats.append(pooled.mean())
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def test_mean_is_exact_and_interval_brackets_it() -> None:
    values = np.array([0.0, 1.0, 0.5, 0.25, 0.75, 1.0, 0.0, 0.5])
    interval = bootstrap_mean(values, n_resamples=2000, seed=1)
    assert interval.mean == pytest.approx(4.0 / 8)
    assert interval.low < interval.mean < interval.high
    assert 0.0 <= interval.low and interval.high <= 1.0


def test_interval_matches_a_naive_loop_in_distribution() -> None:
    rng = np.random.default_rng(0)
    values = rng.random(60)
    clusters = np.repeat(np.arange(20), 3)
    got = bootstrap_mean(values, clusters=clusters, n_resamples=4000, seed=3)
    low, high = naive_percentile_interval(values, clusters, 4000, seed=7)
    assert got.low == pytest.approx(low, abs=0.02)
    assert got.high == pytest.approx(high, abs=0.02)


def test_clusters_widen_the_interval_of_correlated_pairs() -> None:
    rng = np.random.default_rng(0)
    per_image = rng.random(30)
    values = np.repeat(per_image, 10)  # ten identical pairs per image: 30 independent values, not 300
    clusters = np.repeat(np.arange(30), 10)
    plain = bootstrap_mean(values, n_resamples=2000, seed=0)
    clustered = bootstrap_mean(values, clusters=clusters, n_resamples=2000, seed=0)
    assert plain.mean == pytest.approx(clustered.mean)
    assert (clustered.high - clustered.low) > 2.5 * (plain.high - plain.low)


def test_same_seed_same_interval_and_edge_cases() -> None:
    values = np.arange(10, dtype=float)
    assert bootstrap_mean(values, seed=5) == bootstrap_mean(values, seed=5)
    empty = bootstrap_mean(np.array([]))
    assert np.isnan(empty.mean) and np.isnan(empty.low) and np.isnan(empty.high)
    single = bootstrap_mean(np.array([0.3]))
    assert (single.mean, single.low, single.high) == (0.3, 0.3, 0.3)
    constant = bootstrap_mean(np.full(5, 2.0))
    assert (constant.low, constant.high) == (2.0, 2.0)
    assert bootstrap_mean(np.array([1.0, 3.0]), clusters=np.array([7, 7])).low == 2.0


def test_bad_input_is_an_error() -> None:
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_mean(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="same shape"):
        bootstrap_mean(np.array([1.0, 2.0]), clusters=np.array([1]))
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_mean(np.array([1.0, 2.0]), n_resamples=0)
