"""Which filters a class relies on, in words: its most relevant filters (by |weight|) with what
`evaluate` says they detect (LaViSE's words per method, NetDissect's label), and a sheet of
their top images per class."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from lavise.explain.heatmaps import FilterRow, ImageReader, write_filter_rows_sheet

CLASS_COLUMNS = ["mu", "class", "n_train_positive", "n_selected", "rank", "filter", "weight", "netdissect_label"]


@dataclass(frozen=True)
class FilterWords:
    """Per filter: words per method (space-joined), the NetDissect label and ``T_u``, from
    evaluate's explanations table; ``methods`` in the table's order."""

    methods: list[str]
    words: dict[int, dict[str, str]]
    netdissect: dict[int, str | None]
    thresholds: dict[int, float]


def read_filter_words(explanations: pd.DataFrame) -> FilterWords:
    """The explanations table (``filter``, ``method``, ``words``, ``netdissect_label``, ``threshold``)
    indexed by filter."""
    missing = {"filter", "method", "words", "netdissect_label", "threshold"} - set(explanations.columns)
    if missing:
        raise ValueError(f"explanations table lacks columns {sorted(missing)}")
    methods = list(dict.fromkeys(explanations["method"]))
    words: dict[int, dict[str, str]] = {}
    netdissect: dict[int, str | None] = {}
    thresholds: dict[int, float] = {}
    for row in explanations.itertuples(index=False):
        f = int(row.filter)
        words.setdefault(f, {})[row.method] = " ".join(row.words)
        netdissect.setdefault(f, None if pd.isna(row.netdissect_label) else str(row.netdissect_label))
        thresholds.setdefault(f, float(row.threshold))
    return FilterWords(methods, words, netdissect, thresholds)


def class_table(
    classes: Sequence[str],
    mus: Sequence[float],
    weights: np.ndarray,
    scored: np.ndarray,
    n_positive: np.ndarray,
    top_k: int,
    words: FilterWords,
) -> pa.Table:
    """Rows (µ, scored class, rank) for each class's ``top_k`` filters by |weight| at every µ.

    ``weights`` ``[M, C, d]``; ties in |weight| go to the lower filter index. A filter `evaluate`
    did not explain has empty words and no label.
    """
    rows = []
    for m, mu in enumerate(mus):
        for c in np.flatnonzero(scored):
            w = weights[m, c]
            order = np.lexsort((np.arange(len(w)), -np.abs(w)))
            chosen = [f for f in order[:top_k] if w[f] != 0]
            for rank, f in enumerate(chosen, start=1):
                row = {
                    "mu": float(mu),
                    "class": classes[c],
                    "n_train_positive": int(n_positive[c]),
                    "n_selected": int(np.count_nonzero(w)),
                    "rank": rank,
                    "filter": int(f),
                    "weight": float(w[f]),
                    "netdissect_label": words.netdissect.get(int(f)),
                }
                row.update({f"words_{method}": words.words.get(int(f), {}).get(method, "") for method in words.methods})
                rows.append(row)
    columns = CLASS_COLUMNS + [f"words_{method}" for method in words.methods]
    return pa.Table.from_pandas(pd.DataFrame(rows, columns=columns), preserve_index=False)


def sheet_name(category: str) -> str:
    """A file name for a class: its name with anything but letters, digits, ``._-`` as ``_``."""
    return "class_" + re.sub(r"[^A-Za-z0-9._-]", "_", category) + ".png"


def write_class_sheet(
    path: Path,
    category: str,
    weights: np.ndarray,
    maps: np.ndarray,
    image_max: np.ndarray,
    n_filters: int,
    n_images: int,
    words: FilterWords,
    image_path: Callable[[int], Path],
    image_ids: np.ndarray,
    geometry: tuple[int, int, str],
    read: ImageReader,
) -> None:
    """A row per top filter of the class (``weights`` ``[d]``): its ``n_images`` validation images
    with the highest spatial maximum (``image_max`` ``[N, d]``), overlaid with its maps ``[N, d, h, w]``."""
    order = np.lexsort((np.arange(len(weights)), -np.abs(weights)))
    top = [int(f) for f in order[:n_filters] if weights[f] != 0]
    header = [f"class {category}: top {len(top)} of {np.count_nonzero(weights)} selected filters (by |weight|)"]
    rows = []
    for f in top:
        images = np.lexsort((np.arange(len(image_max)), -image_max[:, f]))[:n_images]
        labels = [f"{method}: {text}" for method, text in words.words.get(f, {}).items()]
        header.append(f"filter {f} w={weights[f]:+.3g} NetDissect={words.netdissect.get(f)} | " + " | ".join(labels))
        rows.append(
            FilterRow(
                maps=np.asarray(maps[np.sort(images), f], dtype=np.float32)[np.argsort(np.argsort(images))],
                threshold=words.thresholds.get(f, 0.0),
                image_paths=[image_path(int(i)) for i in images],
                captions=[f"f{f} img {image_ids[i]}" for i in images],
            )
        )
    if rows:
        write_filter_rows_sheet(path, header, rows, geometry, read)
