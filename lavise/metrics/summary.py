"""The headline metrics: a few figures per method that fit one `dvc exp show` screen.

metrics/recall.json keeps every detail (200+ columns in `dvc exp show`); the summary repeats,
for every method and NetDissect, recall@s at the headline s with its interval, and the mean
correlation and AUPRC, plus the target CNN's validation mAP when the pipeline trained it. All
under one top-level key, ``headline``, so that its columns are named ``headline.<method>.<figure>``
in `dvc exp show`, distinct from recall.json's and selectable with ``--keep '^headline'``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

HEADLINE = "headline"  # the summary's one top-level key
HEADLINE_KEYS = ("correlation", "auprc")  # presence figures copied as they are


def headline(metrics: Mapping[str, Mapping[str, Any]], s: int, target: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"headline": {method: {recall@s, recall@s_low, recall@s_high, correlation, auprc}}}`` from
    the blocks of ``metrics`` (metrics/recall.json), with ``target_val_map`` from ``target``
    (metrics/target.json) when the target CNN was trained."""
    key = f"recall@{s}"
    out: dict[str, Any] = {}
    for method, entry in metrics.items():
        interval = entry.get("interval", {}).get(key, {})
        out[method] = {
            key: entry.get(key),
            f"{key}_low": interval.get("low"),
            f"{key}_high": interval.get("high"),
            **{name: entry.get(name) for name in HEADLINE_KEYS},
        }
    if target is not None and target.get("trained"):
        out["target_val_map"] = target.get("val_map")
    return {HEADLINE: out}
