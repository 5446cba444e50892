"""Saliency sheets: per image, one row per explained class: the crop with the class's mask
outlined in red, then each method's map (trained model) over the crop, scaled to its own range.
Drawn with the heatmap sheets' PIL renderer (lavise/explain/heatmaps.py)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lavise.explain.heatmaps import HeatmapTile, mask_outline, write_sheet
from lavise.saliency.run import Case


def scaled(saliency: np.ndarray) -> np.ndarray:
    """A map ``[S, S]`` min-max scaled to [0, 1] for display (a flat map shows as 0)."""
    low, high = float(saliency.min()), float(saliency.max())
    return np.zeros_like(saliency) if high <= low else (saliency - low) / (high - low)


def sheet_tiles(case: Case, maps: Mapping[str, np.ndarray]) -> list[HeatmapTile]:
    """The tiles of one image, row by row: crop (with the mask outline), then one per method."""
    image = case.crop.permute(1, 2, 0).numpy()  # [S, S, 3]
    everywhere = np.ones(image.shape[:2], dtype=bool)
    tiles = []
    for k, name in enumerate(case.names):
        outline = None if case.masks is None else mask_outline(case.masks[k])
        tiles.append(HeatmapTile(image, np.zeros(image.shape[:2]), everywhere, name, outline, alpha=0.0))
        tiles += [HeatmapTile(image, scaled(m[k]), everywhere, method) for method, m in maps.items()]
    return tiles


def write_case_sheet(out_dir: Path, case: Case, maps: Mapping[str, np.ndarray]) -> None:
    """``image_<id>.png``: the image's classes as rows, the crop and each method's map as columns."""
    header = [f"image {case.image_id}: " + " | ".join(["crop (mask outline)", *maps])]
    write_sheet(out_dir / f"image_{case.image_id}.png", sheet_tiles(case, maps), header, columns=1 + len(maps))
