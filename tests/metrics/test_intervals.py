"""Intervals of a metrics entry: NaN values left out, pair figures clustered, filter figures not."""

from __future__ import annotations

import numpy as np

from lavise.metrics.bootstrap import bootstrap_mean
from lavise.metrics.intervals import BootstrapSettings, figure_intervals

SETTINGS = BootstrapSettings(resamples=200, confidence=0.95, seed=3)


def test_intervals_match_the_bootstrap_of_the_kept_values() -> None:
    pairs = np.array([0.0, 1.0, np.nan, 0.5, 1.0, 0.0])
    images = np.array([4, 4, 4, 7, 7, 8])
    filters = np.array([0.2, np.nan, 0.6, 0.9])
    got = figure_intervals({"recall@5": (pairs, images), "correlation": (filters, None)}, SETTINGS)
    assert list(got) == ["recall@5", "correlation"]
    clustered = bootstrap_mean(pairs[[0, 1, 3, 4, 5]], clusters=images[[0, 1, 3, 4, 5]], n_resamples=200, seed=3)
    plain = bootstrap_mean(np.array([0.2, 0.6, 0.9]), n_resamples=200, seed=3)
    assert got["recall@5"] == {"low": round(clustered.low, 6), "high": round(clustered.high, 6)}
    assert got["correlation"] == {"low": round(plain.low, 6), "high": round(plain.high, 6)}
    assert got["recall@5"]["low"] <= np.nanmean(pairs) <= got["recall@5"]["high"]
    assert got["recall@5"]["low"] < got["recall@5"]["high"]


def test_an_empty_figure_has_null_bounds() -> None:
    assert figure_intervals({"auprc": (np.array([np.nan]), None)}, SETTINGS) == {"auprc": {"low": None, "high": None}}
