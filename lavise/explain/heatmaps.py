"""Heatmap sheets: a filter's top images with its upsampled activation overlaid, and its words.

PIL and NumPy only (no matplotlib), so the stage has no plotting dependency; the PNGs are DVC
image plots that ``dvc plots show`` renders side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lavise.io import atomic_path

# Piecewise-linear "jet" control points: value -> RGB (blue, cyan, yellow, red).
_JET_STOPS = np.array([0.0, 0.35, 0.65, 1.0])
_JET_COLOURS = np.array([[0, 0, 160], [0, 200, 255], [255, 230, 0], [200, 0, 0]], dtype=np.float64)
_TEXT_LINE = 12  # pixel height of one line of PIL's default bitmap font, plus spacing


@dataclass(frozen=True)
class HeatmapTile:
    """One top image: RGB uint8 ``[H, W, 3]``, its heat in [0, 1] ``[H, W]``, region ``R``, caption."""

    image: np.ndarray
    heat: np.ndarray
    region: np.ndarray
    caption: str


def colour_map(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] ``[H, W]`` to RGB uint8 ``[H, W, 3]`` (jet-like ramp)."""
    clipped = np.clip(values, 0.0, 1.0)
    channels = [np.interp(clipped, _JET_STOPS, _JET_COLOURS[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, region: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the colour-mapped heat over the image; pixels outside ``R`` are dimmed."""
    blended = (1 - alpha) * image.astype(np.float64) + alpha * colour_map(heat).astype(np.float64)
    blended = np.where(region[..., None], blended, 0.6 * blended)
    return blended.round().clip(0, 255).astype(np.uint8)


def _wrap(text: str, width_chars: int) -> list[str]:
    """Greedy word wrap for the fixed-width default font."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if len(candidate) > width_chars and current:
            lines.append(current)
            current = word
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines


def render_sheet(tiles: Sequence[HeatmapTile], header: Sequence[str], columns: int = 5) -> Image.Image:
    """A grid of overlaid tiles under ``header`` lines (filter, words per method)."""
    if not tiles:
        raise ValueError("a heatmap sheet needs at least one image")
    font = ImageFont.load_default()
    tile_h, tile_w = tiles[0].image.shape[:2]
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    width = columns * tile_w
    header_lines = [line for text in header for line in _wrap(text, max(10, width // 6))]
    top = _TEXT_LINE * len(header_lines) + 6
    sheet = Image.new("RGB", (width, top + rows * (tile_h + _TEXT_LINE)), "white")
    draw = ImageDraw.Draw(sheet)
    for index, line in enumerate(header_lines):
        draw.text((4, 3 + index * _TEXT_LINE), line, fill="black", font=font)
    for index, tile in enumerate(tiles):
        x = (index % columns) * tile_w
        y = top + (index // columns) * (tile_h + _TEXT_LINE)
        sheet.paste(Image.fromarray(overlay(tile.image, tile.heat, tile.region)), (x, y))
        draw.text((x + 2, y + tile_h), tile.caption[: max(4, tile_w // 6)], fill="black", font=font)
    return sheet


def write_sheet(path: Path, tiles: Sequence[HeatmapTile], header: Sequence[str]) -> None:
    """Render and write one PNG atomically."""
    sheet = render_sheet(tiles, header)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
