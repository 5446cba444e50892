"""The spread of the headline figures over DVC experiments (e.g. one per seed): mean ± sd per method.

A single training of the target CNN and the explainer gives one sample of every figure; the
seeds recipe (README) runs the pipeline as several `dvc exp run` experiments, and this module
reads `dvc exp show --json` and summarises each method's figures across them in one table.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

METRICS_FILE = "metrics/recall.json"
UNFINISHED = ("queued", "running")  # executor states of experiments that have no results yet
FIGURES = ("recall@5", "correlation", "auprc")  # the default columns of the table


@dataclass(frozen=True)
class Experiment:
    """One experiment's name, its params.yaml values and its recall.json metrics."""

    name: str
    params: dict[str, Any]
    metrics: dict[str, Any]


def experiments_of(
    show: Sequence[Mapping[str, Any]], prefix: str = "", metrics_file: str = METRICS_FILE
) -> list[Experiment]:
    """The finished experiments in `dvc exp show --json` output whose name starts with ``prefix``,
    in the order shown. A queued or running one is skipped with a warning; one that failed or has
    no ``metrics_file`` is an error naming it (a table silently missing a seed would understate
    the spread)."""
    found: list[Experiment] = []
    for baseline in show:
        for experiment in baseline.get("experiments") or []:
            name = str(experiment.get("name") or experiment["revs"][0]["rev"][:7])
            if not name.startswith(prefix):
                continue
            state = (experiment.get("executor") or {}).get("state")
            if state in UNFINISHED:
                log.warning("experiment %s is %s: left out", name, state)
                continue
            rev = experiment["revs"][0]  # the experiment's latest revision
            data = rev.get("data") or {}
            metrics = (data.get("metrics") or {}).get(metrics_file, {}).get("data")
            if state or rev.get("error") or metrics is None:
                why = state or rev.get("error") or "not written"
                raise ValueError(f"experiment {name}: no {metrics_file} ({why})")
            params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
            found.append(Experiment(name, params, metrics))
    if not found:
        raise ValueError(f"no experiment named {prefix!r}... in `dvc exp show`; run the seeds recipe first")
    return found


def lookup(tree: Mapping[str, Any], key: str) -> Any:
    """``tree["a"]["b"]`` for the dotted key ``a.b`` (None when absent)."""
    node: Any = tree
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _stats(values: np.ndarray) -> dict[str, Any]:
    """Count, mean, sample sd (ddof 1; None for fewer than two values), min and max."""
    if len(values) == 0:
        return {"n": 0, "mean": None, "sd": None, "min": None, "max": None}
    sd = float(values.std(ddof=1)) if len(values) > 1 else None
    return {
        "n": len(values),
        "mean": float(values.mean()),
        "sd": sd,
        "min": float(values.min()),
        "max": float(values.max()),
    }


def spread_rows(experiments: Sequence[Experiment], figures: Sequence[str] = FIGURES) -> list[dict[str, Any]]:
    """One row per method (the blocks of the first experiment's metrics), with the statistics of
    every figure (a dotted path inside the block, e.g. ``seen.recall@5``) over the experiments
    that report it."""
    rows = []
    for method, block in experiments[0].metrics.items():
        if not isinstance(block, Mapping):
            continue
        row: dict[str, Any] = {"method": method}
        for figure in figures:
            found = [lookup(e.metrics, f"{method}.{figure}") for e in experiments]
            row[figure] = _stats(np.array([v for v in found if v is not None], dtype=np.float64))
        rows.append(row)
    return rows


def format_table(rows: Sequence[Mapping[str, Any]], figures: Sequence[str] = FIGURES) -> str:
    """A Markdown table: ``mean ± sd (min–max)`` per method and figure, with the experiment count."""

    def cell(stats: Mapping[str, Any]) -> str:
        if stats["mean"] is None:
            return "–"
        sd = "–" if stats["sd"] is None else f"{stats['sd']:.3f}"
        return f"{stats['mean']:.3f} ± {sd} ({stats['min']:.3f}–{stats['max']:.3f}, n={stats['n']})"

    lines = ["| method | " + " | ".join(figures) + " |", "|---|" + "---|" * len(figures)]
    lines += [f"| {row['method']} | " + " | ".join(cell(row[f]) for f in figures) + " |" for row in rows]
    return "\n".join(lines)
