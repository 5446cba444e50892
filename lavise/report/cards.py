"""One card per evaluated filter: its words per method, NetDissect's label, T_u, per-filter scores,
its top images and, where `evaluate` drew one, its heatmap sheet.

The cards carry their sort keys and search text as ``data-`` attributes, so the page's few lines
of JavaScript sort and filter them without any library.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

import pandas as pd

from lavise.report.html import Markup, fmt, image, table

SHEET_NAME = re.compile(r"^filter_(\d+)\.png$")  # the names lavise.explain.heatmaps writes
NOT_SCORES = ("filter", "method", "threshold", "n_images", "n_pairs")  # filters.parquet columns that are not scores


@dataclass(frozen=True)
class SortKey:
    """One choice of the page's sort menu: its label and, per filter, the value sorted on."""

    label: str
    values: Mapping[int, float]


def heatmap_sheets(directory: Path) -> dict[int, Path]:
    """filter index -> its heatmap sheet in ``directory`` (empty when the folder is absent)."""
    if not directory.is_dir():
        return {}
    found = {}
    for path in sorted(directory.iterdir()):
        match = SHEET_NAME.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def score_columns(scores: pd.DataFrame) -> list[str]:
    """The per-filter score columns of filters.parquet (recall@s, and the second metric when present)."""
    return [c for c in scores.columns if c not in NOT_SCORES and pd.api.types.is_numeric_dtype(scores[c])]


def sort_keys(explanations: pd.DataFrame, scores: pd.DataFrame) -> list[SortKey]:
    """Filter index, NetDissect IoU, then every (score, method) of filters.parquet."""
    first = explanations.drop_duplicates("filter").set_index("filter")
    keys = [
        SortKey("filter index", {int(f): float(f) for f in evaluated_filters(explanations, scores)}),
        SortKey("NetDissect IoU", {int(f): float(v) for f, v in first["netdissect_iou"].items()}),
    ]
    for column in score_columns(scores):
        for method, group in scores.groupby("method", sort=False):
            values = {int(f): float(v) for f, v in zip(group["filter"], group[column])}
            keys.append(SortKey(f"{column} · {method}", values))
    return keys


def evaluated_filters(explanations: pd.DataFrame, scores: pd.DataFrame) -> list[int]:
    """Every filter that has an explanation or a score, ascending."""
    return sorted(set(explanations["filter"].astype(int)) | set(scores["filter"].astype(int)))


def words_cell(words: Sequence[str], counts: Sequence[int]) -> Markup:
    """Explanation words with their votes."""
    return Markup(
        " ".join(f'<span class="w">{escape(str(w))}<small>{int(c)}</small></span>' for w, c in zip(words, counts))
    )


def method_rows(explained: pd.DataFrame, scored: pd.DataFrame, columns: list[str]) -> list[list]:
    """One row per method of one filter: its words (NetDissect: its label) and its scores."""
    label = explained["netdissect_label"].iloc[0] if len(explained) else None
    words = {row.method: words_cell(row.words, row.word_counts) for row in explained.itertuples()}
    methods = list(dict.fromkeys([*explained["method"], *scored["method"]]))
    by_method = scored.set_index("method")
    rows = []
    for method in methods:
        text = words.get(method, Markup(escape(fmt(label))) if method == "netdissect" else None)
        values = [by_method.at[method, c] if method in by_method.index else None for c in columns]
        rows.append([method, text, *values])
    return rows


def card(
    filter_index: int,
    explained: pd.DataFrame,
    scored: pd.DataFrame,
    columns: list[str],
    sheet: Path | None,
    page_dir: Path,
    keys: Sequence[SortKey],
) -> str:
    """One filter's card (``article.card``) with its data attributes."""
    first = explained.iloc[0] if len(explained) else None
    label = None if first is None else first["netdissect_label"]
    iou = None if first is None else float(first["netdissect_iou"])
    threshold = scored["threshold"].iloc[0] if len(scored) else (None if first is None else first["threshold"])
    top = [] if first is None else [int(i) for i in first["top_image_ids"]]
    search = " ".join([*(w for ws in explained["words"] for w in ws), fmt(label)]).lower()
    attrs = " ".join(f'data-k{i}="{_attr_number(key.values.get(filter_index))}"' for i, key in enumerate(keys))
    meta = (
        f"T<sub>u</sub> = {escape(fmt(threshold))} · NetDissect: <b>{escape(fmt(label))}</b> (IoU {escape(fmt(iou))})"
    )
    rows = method_rows(explained, scored, columns)
    body = table(["method", "words (votes)", *columns], rows, cls="words")
    if sheet is not None:
        picture = f"<figure>{image(sheet, page_dir, f'heatmap sheet of filter {filter_index}')}</figure>"
    else:
        ids = " ".join(map(str, top))
        picture = f'<p class="ids">{len(top)} top images (no heatmap sheet drawn): {escape(ids)}</p>'
    return (
        f'<article class="card" id="filter-{filter_index}" data-text="{escape(search)}" '
        f'data-sheet="{int(sheet is not None)}" {attrs}><h3>filter {filter_index}</h3>'
        f'<p class="meta">{meta} · {len(top)} top images</p>{body}{picture}</article>'
    )


def _attr_number(value: float | None) -> str:
    """A sort value as an attribute: empty for a missing or undefined one (sorted last)."""
    return "" if value is None or math.isnan(value) else repr(float(value))


def filter_cards(
    explanations: pd.DataFrame, scores: pd.DataFrame, sheets: Mapping[int, Path], page_dir: Path
) -> tuple[list[str], list[SortKey]]:
    """Every evaluated filter's card, ascending, and the sort keys they carry."""
    keys = sort_keys(explanations, scores)
    columns = score_columns(scores)
    explained_by = {int(f): g for f, g in explanations.groupby("filter", sort=True)}
    scored_by = {int(f): g for f, g in scores.groupby("filter", sort=True)}
    empty_e, empty_s = explanations.iloc[0:0], scores.iloc[0:0]
    cards = [
        card(f, explained_by.get(f, empty_e), scored_by.get(f, empty_s), columns, sheets.get(f), page_dir, keys)
        for f in evaluated_filters(explanations, scores)
    ]
    return cards, keys


def sort_menu(keys: Sequence[SortKey]) -> str:
    """The <select> of sort keys (``data-k<i>`` of every card)."""
    options = "".join(f'<option value="k{i}">{escape(key.label)}</option>' for i, key in enumerate(keys))
    return f'<select id="sort-key">{options}</select>'
