"""Heatmap sheets: a filter's top images with its upsampled activation overlaid, and its words.

Drawn with PIL and NumPy (no matplotlib), so the stage has no plotting dependency; the PNGs are
DVC image plots that ``dvc plots show`` renders side by side.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from lavise.data.images import UnreadableImage, read_image
from lavise.data.transforms import transform_geometry
from lavise.io import atomic_path
from lavise.metrics.overlap import upsample_maps

log = logging.getLogger(__name__)

# Piecewise-linear "jet" control points: value -> RGB (blue, cyan, yellow, red).
_JET_STOPS = np.array([0.0, 0.35, 0.65, 1.0])
_JET_COLOURS = np.array([[0, 0, 160], [0, 200, 255], [255, 230, 0], [200, 0, 0]], dtype=np.float64)
OUTLINE_COLOUR = (255, 0, 0)  # a ground-truth mask's outline
_TEXT_LINE = 12  # pixel height of one line of PIL's default bitmap font, plus spacing


@dataclass(frozen=True)
class HeatmapTile:
    """One top image: RGB uint8 ``[H, W, 3]``, its heat in [0, 1] ``[H, W]``, region ``R``, caption;
    optionally a boolean ``outline`` ``[H, W]`` drawn red on top and the heat's blend ``alpha``."""

    image: np.ndarray
    heat: np.ndarray
    region: np.ndarray
    caption: str
    outline: np.ndarray | None = None
    alpha: float = 0.5


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
        pixels = overlay(tile.image, tile.heat, tile.region, tile.alpha)
        if tile.outline is not None:
            pixels[tile.outline] = OUTLINE_COLOUR
        sheet.paste(Image.fromarray(pixels), (x, y))
        draw.text((x + 2, y + tile_h), tile.caption[: max(4, tile_w // 6)], fill="black", font=font)
    return sheet


def write_sheet(path: Path, tiles: Sequence[HeatmapTile], header: Sequence[str], columns: int = 5) -> None:
    """Render and write one PNG atomically."""
    sheet = render_sheet(tiles, header, columns)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


ImageReader = Callable[[Path], "torch.Tensor | UnreadableImage"]


def tile_image(
    path: Path, caption: str, resize: int, crop: int, read: ImageReader = read_image, interpolation: str = "bilinear"
) -> torch.Tensor:
    """The uint8 crop ``[3, crop, crop]`` of one top image; grey, with a warning, if it is unreadable.

    The warning carries ``read_image``'s status and message, so one bad file does not lose the sheet;
    ``read`` is ``read_image`` with the caller's pixel limit and root folder.
    """
    image = read(path)
    if isinstance(image, UnreadableImage):
        log.warning("heatmap %s: %s, drawn grey", caption, image)
        return torch.full((3, crop, crop), 128, dtype=torch.uint8)
    return transform_geometry(image, resize, crop, interpolation)


def _tiles(
    filter_maps: np.ndarray,
    threshold: float,
    image_paths: Sequence[Path],
    captions: Sequence[str],
    resize: int,
    crop: int,
    read: ImageReader,
    interpolation: str = "bilinear",
) -> list[HeatmapTile]:
    """Tiles of one filter's top images: maps ``[k, h, w]`` upsampled, scaled by their joint maximum.

    An unreadable image is drawn grey (:func:`tile_image`).
    """
    upsampled = upsample_maps(torch.from_numpy(filter_maps), crop).numpy()
    scale = max(float(upsampled.max()), 1e-12)
    tiles = []
    for k, (path, caption) in enumerate(zip(image_paths, captions)):
        image = tile_image(path, caption, resize, crop, read, interpolation)
        tiles.append(
            HeatmapTile(
                image=image.permute(1, 2, 0).numpy(),
                heat=np.clip(upsampled[k] / scale, 0, 1),
                region=upsampled[k] > threshold,
                caption=caption,
            )
        )
    return tiles


def write_heatmaps(
    out_dir: Path,
    heatmap_filters: Sequence[int],
    filters: np.ndarray,
    thresholds: np.ndarray,
    top_rows: np.ndarray,
    maps: np.ndarray,
    image_ids: np.ndarray,
    image_path: Callable[[int], Path],
    words: dict[int, dict[str, list[str]]],
    geometry: tuple[int, int] | tuple[int, int, str],
    read: ImageReader = read_image,
) -> None:
    """One PNG per requested (and evaluated) filter: its top images with the overlay and its words.

    ``top_rows`` ``[F, p]`` (``-1`` padded) and ``maps`` ``[N, d, h, w]``; ``image_path(row)`` is the
    file of map row ``row``; ``words[filter][method]`` the explanation words (header lines in that
    order); ``geometry`` is ``(resize, crop)`` or ``(resize, crop, interpolation)``, the images'
    preprocessing. Stale sheets of other filters are removed.
    """
    resize, crop, interpolation = (*geometry, "bilinear")[:3]
    position = {int(f): i for i, f in enumerate(filters)}
    skipped = [f for f in heatmap_filters if int(f) not in position]
    if skipped:
        log.warning("heatmap filter(s) %s are not among the evaluated filters: no heatmap", skipped)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("filter_*.png"):
        stale.unlink()
    for filter_index in (int(f) for f in heatmap_filters if int(f) in position):
        pos = position[filter_index]
        rows = top_rows[pos][top_rows[pos] >= 0]
        if len(rows) == 0:
            log.warning("filter %d has no image with a positive activation: no heatmap", filter_index)
            continue
        header = [f"filter {filter_index}  T={thresholds[pos]:.3f}  ({len(rows)} top images)"]
        header += [f"{method}: {' '.join(found)}" for method, found in words.get(filter_index, {}).items()]
        tiles = _tiles(
            np.asarray(maps[rows, filter_index], dtype=np.float32),
            thresholds[pos],
            [image_path(int(row)) for row in rows],
            [f"image {image_ids[row]}" for row in rows],
            resize,
            crop,
            read,
            interpolation,
        )
        write_sheet(out_dir / f"filter_{filter_index:04d}.png", tiles, header)


def _text_panel(lines: Sequence[str], width: int) -> Image.Image:
    """White panel of wrapped text lines, ``width`` pixels wide."""
    wrapped = [line for text in lines for line in _wrap(text, max(10, width // 6))]
    panel = Image.new("RGB", (width, _TEXT_LINE * len(wrapped) + 6), "white")
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default()
    for index, line in enumerate(wrapped):
        draw.text((4, 3 + index * _TEXT_LINE), line, fill="black", font=font)
    return panel


def write_group_sheet(
    path: Path,
    header: Sequence[str],
    sections: Sequence[tuple[str, Sequence[int]]],
    filter_maps: Callable[[np.ndarray], np.ndarray],
    threshold: float,
    image_path: Callable[[int], Path],
    caption: Callable[[int], str],
    geometry: tuple[int, int, str],
    read: ImageReader = read_image,
    columns: int = 5,
) -> None:
    """One PNG of a filter's example images by group: ``header`` lines, then per section (title, map
    rows) a titled grid, ``caption(row)`` under each image; ``filter_maps(rows)`` gives the filter's
    maps ``[k, h, w]``; ``geometry`` is (resize, crop, interpolation). The heat of all sections
    shares one scale, so the groups' overlays compare; an empty section shows its title only."""
    rows = np.array([row for _, section_rows in sections for row in section_rows], dtype=np.int64)
    tiles = (
        _tiles(
            filter_maps(rows),
            threshold,
            [image_path(int(r)) for r in rows],
            [caption(int(r)) for r in rows],
            geometry[0],
            geometry[1],
            read,
            geometry[2],
        )
        if len(rows)
        else []
    )
    width = columns * geometry[1]
    panels, start = [_text_panel(header, width)], 0
    for title, section_rows in sections:
        part = tiles[start : start + len(section_rows)]
        start += len(section_rows)
        panels.append(render_sheet(part, [title], columns) if part else _text_panel([title, "(no image)"], width))
    sheet = Image.new("RGB", (max(p.width for p in panels), sum(p.height for p in panels)), "white")
    offset = 0
    for panel in panels:
        sheet.paste(panel, (0, offset))
        offset += panel.height
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


@dataclass(frozen=True)
class FilterRow:
    """One row of a multi-filter sheet: a filter's maps ``[k, h, w]`` on its top images, its ``T_u``,
    the images' files and captions."""

    maps: np.ndarray
    threshold: float
    image_paths: Sequence[Path]
    captions: Sequence[str]


def write_filter_rows_sheet(
    path: Path, header: Sequence[str], rows: Sequence[FilterRow], geometry: tuple[int, int, str], read: ImageReader
) -> None:
    """One PNG with a row of top images per filter (e.g. a class's most relevant filters), drawn as
    the per-filter heatmaps are (each row scaled by its own maximum); a row shorter than the widest
    is padded with white tiles; ``geometry`` is (resize, crop, interpolation)."""
    if not rows:
        raise ValueError("a filter sheet needs at least one filter")
    resize, crop, interpolation = geometry
    blocks = [
        _tiles(row.maps, row.threshold, row.image_paths, row.captions, resize, crop, read, interpolation)
        for row in rows
    ]
    columns = max(len(block) for block in blocks)
    tiles: list[HeatmapTile] = []
    for block in blocks:
        blank = HeatmapTile(
            np.full_like(block[0].image, 255), np.zeros_like(block[0].heat), np.ones_like(block[0].region), ""
        )
        tiles.extend(block + [blank] * (columns - len(block)))
    sheet = render_sheet(tiles, header, columns=columns)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of boolean ``mask`` ``[H, W]``: inside it with a 4-neighbour outside (or at the border)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner
