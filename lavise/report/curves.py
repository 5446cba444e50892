"""The explainer's learning curves as two PNG charts, from its per-epoch history.

One definition for both readers: the `train` stage writes them next to its CSV (DVC image plots,
which render offline), and the report draws the same charts into its own folder, so the page
works when only the results folder is copied.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

from lavise.report.figures import line_chart

# file name -> (title, y label, history columns drawn)
CURVES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "train_loss.png": ("Explainer hinge loss per epoch", "loss", ("train_loss", "holdout_loss")),
    "train_accuracy.png": ("Explainer hold-out accuracy per epoch", "accuracy", ("holdout_top1", "holdout_top5")),
}


def read_history(path: Path) -> dict[str, list[float]]:
    """The history CSV as column -> values; a missing column or a non-number names the file."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    needed = {"epoch", *(column for _, _, columns in CURVES.values() for column in columns)}
    missing = sorted(needed - set(rows[0] if rows else {}))
    if missing:
        raise ValueError(f"{path}: no rows or missing columns {missing}; run the train stage again")
    try:
        return {column: [float(row[column]) for row in rows] for column in sorted(needed)}
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def write_learning_curves(out_dir: Path, history: Mapping[str, Sequence[float]]) -> list[Path]:
    """Every chart of ``CURVES`` into ``out_dir`` (x: epoch); returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (title, ylabel, columns) in CURVES.items():
        series = {column: history[column] for column in columns}
        written.append(line_chart(out_dir / name, history["epoch"], series, xlabel="epoch", ylabel=ylabel, title=title))
    return written
