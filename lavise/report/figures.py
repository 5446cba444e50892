"""Line charts as PNG files, byte-identical for identical data.

DVC's own plot pages load vega from a CDN and stay blank offline, so every tracked chart is an
image the stage draws itself. Matplotlib writes its version and a timestamp into PNG metadata;
both are removed so that a rerun on the same machine reproduces the file's md5.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: the stages run headless

import matplotlib.pyplot as plt  # noqa: E402

from lavise.io import atomic_path  # noqa: E402

PNG_METADATA = {"Software": None}  # no version string: same bytes across runs
DPI = 100


def line_chart(
    path: Path,
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
) -> Path:
    """Write one chart of ``series`` (label -> y values over ``x``) to ``path``, atomically.

    ``bands`` (label -> (low, high)) shades an interval around the series of the same label, for
    a spread that the reader must see beside the line.
    """
    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=DPI)
    try:
        for label, values in series.items():
            if len(values) != len(x):
                raise ValueError(f"series {label!r} has {len(values)} values for {len(x)} x values")
            (line,) = axes.plot(x, values, marker="o", markersize=3, label=label)
            if bands and label in bands:
                low, high = bands[label]
                axes.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.set_title(title)
        axes.grid(True, alpha=0.3)
        if series:
            axes.legend()
        figure.tight_layout()
        with atomic_path(path) as temp:
            figure.savefig(temp, format="png", metadata=PNG_METADATA)
    finally:
        plt.close(figure)
    return path
