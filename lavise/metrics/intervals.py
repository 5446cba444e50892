"""The ``interval`` of a metrics entry: a bootstrap interval for each of its figures.

A figure averaged over filters (correlation, AUPRC) is resampled over filters; one averaged over
(filter, image) pairs (recall@s and its splits) is resampled over images, whole clusters of pairs
at a time, because the pairs of one image share its objects and are not independent evidence.
Values that are not part of a figure's mean (NaN: a pair without ground truth, a filter without
a defined score) are left out, so the interval is centred on the reported figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from lavise.io import json_float
from lavise.metrics.bootstrap import bootstrap_mean


@dataclass(frozen=True)
class BootstrapSettings:
    """Resamples per figure, the interval's coverage and the resampling seed."""

    resamples: int
    confidence: float
    seed: int


Figure = tuple[np.ndarray, np.ndarray | None]  # values [n] (NaN: not in the mean), clusters [n] or None


def figure_intervals(figures: Mapping[str, Figure], settings: BootstrapSettings) -> dict[str, dict[str, float | None]]:
    """``{figure key: {"low", "high"}}``, in the order of ``figures``; null bounds for an empty figure."""
    out: dict[str, dict[str, float | None]] = {}
    for key, (values, clusters) in figures.items():
        kept = ~np.isnan(values)
        interval = bootstrap_mean(
            values[kept],
            clusters=None if clusters is None else clusters[kept],
            n_resamples=settings.resamples,
            confidence=settings.confidence,
            seed=settings.seed,
        )
        out[key] = {"low": json_float(interval.low), "high": json_float(interval.high)}
    return out
