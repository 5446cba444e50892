"""The filter selection (all, every k, a list) and the label of the filters a method ran on."""

from __future__ import annotations

import numpy as np
import pytest

from lavise.explain.filters import filters_label, resolve_filters

CHANNELS = 512


def test_resolve_filters_forms() -> None:
    assert resolve_filters("all", 4, "evaluate.filters").tolist() == [0, 1, 2, 3]
    assert resolve_filters({"every": 3}, 10, "evaluate.filters").tolist() == [0, 3, 6, 9]
    assert resolve_filters([5, 1], 8, "evaluate.filters").tolist() == [1, 5]
    with pytest.raises(ValueError, match=r"evaluate.filters: filter\(s\) \[9\] outside the layer's 0..7"):
        resolve_filters([9], 8, "evaluate.filters")
    with pytest.raises(ValueError, match=r"label: duplicate filter indices in \[3, 3\]"):
        resolve_filters([3, 3], 8, "label")


def test_filters_label_names_the_evaluated_filters() -> None:
    # filters 16..27 evaluated, image masking configured {every: 8}: only 16 and 24 are masked
    filters = np.arange(16, 28)
    masking = np.isin(filters, np.arange(0, CHANNELS, 8))
    assert filters_label(filters, masking, CHANNELS) == "16,24"
    # image masking on every filter, but only a subset of the layer evaluated: not "all"
    assert filters_label(filters, np.ones(len(filters), dtype=bool), CHANNELS) == ",".join(map(str, filters))
    assert filters_label(np.arange(CHANNELS), np.ones(CHANNELS, dtype=bool), CHANNELS) == "all"
    assert filters_label(filters, np.zeros(len(filters), dtype=bool), CHANNELS) == ""
