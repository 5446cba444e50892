"""Which filters of the layer are explained: a selection checked against the layer's channels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ALL_FILTERS = "all"  # every filter of the layer


def resolve_filters(selection: str | Sequence[int] | dict[str, int], n_channels: int, what: str) -> np.ndarray:
    """``all``, ``{every: k}`` (filters 0, k, 2k, ...) or a list of filter indices, checked
    against the layer's channel count; sorted ``int64``. ``what`` names the selection in errors."""
    if selection == ALL_FILTERS:
        return np.arange(n_channels, dtype=np.int64)
    if isinstance(selection, dict):
        return np.arange(0, n_channels, int(selection["every"]), dtype=np.int64)
    filters = np.asarray(list(selection), dtype=np.int64)
    bad = filters[(filters < 0) | (filters >= n_channels)]
    if len(bad):
        raise ValueError(f"{what}: filter(s) {bad.tolist()} outside the layer's 0..{n_channels - 1}")
    if len(np.unique(filters)) != len(filters):
        raise ValueError(f"{what}: duplicate filter indices in {filters.tolist()}")
    return np.sort(filters)


def filters_label(filters: np.ndarray, selected: np.ndarray, n_channels: int) -> str:
    """The filters a method actually ran on: ``all`` (every filter of the layer) or a list.

    Those are the evaluated ``filters`` that are also ``selected`` (bool ``[F]``), not the
    configured selection itself (which may name filters that are not evaluated).
    """
    chosen = filters[selected]
    return ALL_FILTERS if len(chosen) == n_channels else ",".join(map(str, chosen.tolist()))
