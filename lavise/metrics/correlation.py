"""Pearson correlation per column: how well a filter's activation tracks a binary presence.

With a binary variable this is the point-biserial correlation. It is NeuronEval's (ICML 2025)
recommended kind of score for a neuron description: unlike recall it falls when the description
names a concept that is also present where the filter stays silent.
"""

from __future__ import annotations

import numpy as np


def column_correlation(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Pearson r of each column of ``scores`` ``[N, F]`` with the same column of ``labels`` ``[N, F]``.

    Computed in float64 from centred columns. A column where either variable is constant has no
    correlation: NaN, for the caller to count (never silently 0).
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must both be [N, F]")
    centred_scores = scores - scores.mean(axis=0)  # [N, F]
    centred_labels = labels - labels.mean(axis=0)
    covariance = (centred_scores * centred_labels).sum(axis=0)  # [F]
    spread = np.sqrt((centred_scores**2).sum(axis=0) * (centred_labels**2).sum(axis=0))
    defined = spread > 0
    return np.divide(covariance, spread, out=np.full(scores.shape[1], np.nan), where=defined)
