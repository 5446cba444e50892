"""The presence metrics: does a filter fire on the images that contain what its words name?

Definitions (binding, docs/PROTOCOL.md):

* an image *contains* a token when one of its annotated objects (of a kept category) has that
  token; a filter *names* the tokens among the first ``k`` words of its explanation (NetDissect:
  its label's tokens, cross-fitted like its recall: image i is judged with the label learned on
  the fold without i);
* ``presence_{u,i}``: image i contains a token that filter u names;
* per filter, over *all* evaluation images: ``correlation`` is Pearson's r between the maximum
  activation ``a_{u,i}`` and ``presence_{u,i}`` (lavise/metrics/correlation.py), ``auprc`` the
  average precision of ranking the images by ``a_{u,i}`` against ``presence_{u,i}``
  (lavise/metrics/average_precision.py);
* a filter whose presence is constant (its words name nothing any image contains, or something
  every image contains) or whose activation is constant has neither score: it is counted in
  ``n_filters_undefined``, and the means are over the other filters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lavise.data.vocabulary import tokens_of_categories
from lavise.io import json_float
from lavise.metrics.average_precision import average_precision
from lavise.metrics.correlation import column_correlation


def image_tokens(
    objects: pd.DataFrame, image_ids: np.ndarray, category_index: Mapping[str, int], incidence: np.ndarray
) -> np.ndarray:
    """bool ``[N, T]``: the tokens each evaluation image ``image_ids[n]`` contains, from its objects
    (``image_id``, ``category``); objects of unknown or dropped categories name nothing."""
    row = pd.Index(image_ids).get_indexer(objects["image_id"].to_numpy())
    category = objects["category"].map(category_index)
    known = (row >= 0) & category.notna().to_numpy()
    contains = np.zeros((len(image_ids), incidence.shape[0]), dtype=bool)  # [N, C]
    contains[row[known], category[known].to_numpy(np.int64)] = True
    return tokens_of_categories(contains, incidence)


def named_tokens(
    explanations: Mapping[int, tuple[Sequence[int], Sequence[int]]],
    positions: np.ndarray,
    token_of_word: np.ndarray,
    k: int,
    n_tokens: int,
) -> np.ndarray:
    """bool ``[len(positions), T]``: the category tokens among the first ``k`` explanation words of
    each filter position (word ids into the vocabulary; a filter without words names nothing)."""
    named = np.zeros((len(positions), n_tokens), dtype=bool)
    for row, pos in enumerate(positions):
        words = np.asarray(explanations.get(int(pos), ([], []))[0][:k], dtype=np.int64)
        tokens = token_of_word[words]
        named[row, tokens[tokens >= 0]] = True
    return named


def presence(contains: np.ndarray, named: np.ndarray, group: np.ndarray | None = None) -> np.ndarray:
    """bool ``[N, F]``: image n contains a token filter u names.

    ``contains`` ``[N, T]``; ``named`` ``[G, F, T]`` (one set per group of images, e.g. the
    NetDissect label of each cross-fitting fold) or ``[F, T]``; ``group`` ``[N]`` the set used for
    each image (all 0 by default).
    """
    named = named[None] if named.ndim == 2 else named
    group = np.zeros(len(contains), dtype=np.int64) if group is None else np.asarray(group)
    out = np.zeros((len(contains), named.shape[1]), dtype=bool)
    for g in range(named.shape[0]):
        rows = np.flatnonzero(group == g)
        overlap = contains[rows].astype(np.float32) @ named[g].T.astype(np.float32)  # [n_g, F]: shared tokens
        out[rows] = overlap > 0
    return out


@dataclass(frozen=True)
class PresenceScores:
    """Per filter ``[F]``: correlation and AUPRC, NaN where undefined."""

    correlation: np.ndarray
    auprc: np.ndarray

    @property
    def defined(self) -> np.ndarray:
        return ~np.isnan(self.correlation)


def presence_scores(activation: np.ndarray, present: np.ndarray) -> PresenceScores:
    """Correlation and AUPRC of every filter from its maximum activation ``[N, F]`` and presence
    ``[N, F]``; both NaN for a filter with constant presence or constant activation."""
    correlation = column_correlation(activation, present)
    auprc = average_precision(activation, present).numpy()
    constant = np.isnan(correlation)
    return PresenceScores(correlation, np.where(constant, np.nan, auprc))


def presence_entry(scores: PresenceScores) -> dict[str, Any]:
    """The metrics entry's ``correlation`` and ``auprc`` (means over the defined filters) and the counts."""
    defined = scores.defined

    def mean(values: np.ndarray) -> float | None:
        return json_float(float(values[defined].mean())) if defined.any() else None

    return {
        "correlation": mean(scores.correlation),
        "auprc": mean(scores.auprc),
        "presence": {"n_filters_defined": int(defined.sum()), "n_filters_undefined": int((~defined).sum())},
    }
