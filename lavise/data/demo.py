"""Embedded demo: small synthetic COCO 2017 and Visual Genome 1.2 in their official layouts.

Why: the whole pipeline (download -> annotations -> features -> train -> evaluate) must run
offline in minutes, and the demo must travel the same fetch -> verify -> extract path as the
official archives. So the generator writes archives with the official names and internal
layouts, which `lavise.data.demo_server` serves over HTTP (with Range support, for resume) to the
real downloader.

Content. Every object category is a real English noun in WordNet 3.0 and GloVe 6B 50d, drawn
with its own shape, colour and texture so a small CNN can tell the categories apart (car: blue
body and cabin on black wheels; truck: orange striped cargo box and cab; traffic light: dark
housing with red/yellow/green lamps; fire hydrant: red banded post with dome and nozzles; stop
sign: red octagon on a pole; umbrella: purple striped canopy; ball: white disc with black spots;
kite: yellow/magenta diamond with a tail; bottle: green with neck and cap; cup: cyan tapered cup
with handle; orange: dotted orange disc with leaf; clock: white face, black rim, ticks and hands;
book: red cover with white page edges; VG only: tree, box, piano, lamp post). Backgrounds are
noisy two-colour gradients. Images are 256-320 px per side (mostly non-square), 1-4 objects.

Planted cases (indices are positions in the id-sorted image list of that split/dataset):
- COCO: multiword category names ("traffic light", "fire hydrant", "stop sign", "sports ball";
  real COCO ids and supercategories); iscrowd=1 annotations with uncompressed RLE
  ``{counts, size}`` (a cluster of oranges or balls) in ``CROWD_EVERY``-th images; polygons
  with several parts for iscrowd=0; train image 0 has no annotations; train image 1 is
  grayscale (a one-channel JPEG); train image 2 is a truncated JPEG (annotations kept).
- VG: "car" and "automobile" both map to car.n.01; car.n.01 and truck.n.01 share the hypernym
  motor_vehicle.n.01 (bottle.n.01 and cup.n.01 share container.n.01); "piano" (piano.n.01)
  appears in only ``VG_RARE_IMAGES`` images, below a min_images filter of 20; "traffic light"
  has the multiword synset traffic_light.n.01; "shadow" objects have ``synsets: []``;
  "lamp post" objects carry ``lamp_post.n.01``, a synset unknown to WordNet; some boxes extend
  past the right/bottom edge (objects drawn partly off-canvas); some objects are duplicated
  (same box and names, new object_id); image 0 has ``objects: []``; image 1 is grayscale;
  image 2 is a truncated JPEG. Images are split between VG_100K/ (images.zip) and VG_100K_2/
  (images2.zip) as in VG 1.2, and image_data.json's url names the folder; the objects come in
  objects_v1_2.json.zip (member objects.json), the official VG 1.2 archive name.

Determinism: every image draws from its own generator seeded by (seed, dataset, image id), zip
members are sorted with a fixed timestamp and permissions, JPEG settings are fixed, so the same
seed gives byte-identical archives.
"""

from __future__ import annotations

import io
import json
import logging
import math
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from tqdm import tqdm

from lavise.data.catalogue import CATALOGUE
from lavise.io import atomic_path, file_digest
from lavise.options import DATASETS  # its order fixes the per-image seeds

log = logging.getLogger(__name__)

JPEG_QUALITY = 90
ZIP_DATE = (2017, 1, 1, 0, 0, 0)
COCO_TRAIN_IMAGES = 480
COCO_VAL_IMAGES = 160
VG_IMAGES = 640
CROWD_EVERY = 12
VG_RARE_IMAGES = 10
VG_UNKNOWN_SYNSET_IMAGES = 30
VG_PARTLY_OUTSIDE_EVERY = 9
VG_DUPLICATE_EVERY = 25
VG_NO_SYNSET_EVERY = 7
VG_URL = "https://cs.stanford.edu/people/rak248/{folder}/{image_id}.jpg"
COCO_CROWD_ID_BASE = 900100000000

Polygon = list[float]
Box = tuple[float, float, float, float]
Rgb = tuple[int, int, int]


# ----------------------------------------------------------------------------------------------
# Drawing: each painter draws one object inside the box (x, y, w, h) and returns its silhouette
# as polygons (flat x,y lists), which become the COCO segmentation.


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> Polygon:
    angles = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    points = np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], axis=1)
    return np.round(points, 2).ravel().tolist()


def _rect(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    return [round(float(v), 2) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]


def _regular(cx: float, cy: float, r: float, n: int, phase: float = 0.0) -> Polygon:
    angles = phase + np.arange(n) * 2.0 * math.pi / n
    points = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)
    return np.round(points, 2).ravel().tolist()


def _fill(draw: ImageDraw.ImageDraw, polygon: Polygon, colour: Rgb, outline: Rgb | None = None) -> None:
    draw.polygon(polygon, fill=colour, outline=outline)


def _jitter(rng: np.random.Generator, colour: Rgb, amount: int = 18) -> Rgb:
    shifted = np.clip(np.array(colour) + rng.integers(-amount, amount + 1, size=3), 0, 255)
    return tuple(int(v) for v in shifted)  # type: ignore[return-value]


def _wheels(draw: ImageDraw.ImageDraw, centres: list[tuple[float, float]], r: float) -> list[Polygon]:
    parts = []
    for cx, cy in centres:
        tyre = _ellipse(cx, cy, r, r)
        _fill(draw, tyre, (20, 20, 20))
        _fill(draw, _ellipse(cx, cy, r * 0.45, r * 0.45), (170, 170, 170))
        parts.append(tyre)
    return parts


def draw_car(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> list[Polygon]:
    x, y, w, h = box
    body = _rect(x, y + 0.38 * h, x + w, y + 0.8 * h)
    cabin = [
        x + 0.22 * w,
        y + 0.38 * h,
        x + 0.32 * w,
        y + 0.08 * h,
        x + 0.68 * w,
        y + 0.08 * h,
        x + 0.8 * w,
        y + 0.38 * h,
    ]
    _fill(draw, body, _jitter(rng, (30, 70, 200)))
    _fill(draw, cabin, _jitter(rng, (30, 70, 200)))
    _fill(draw, _rect(x + 0.34 * w, y + 0.14 * h, x + 0.49 * w, y + 0.36 * h), (190, 230, 250))
    _fill(draw, _rect(x + 0.52 * w, y + 0.14 * h, x + 0.67 * w, y + 0.36 * h), (190, 230, 250))
    wheels = _wheels(draw, [(x + 0.24 * w, y + 0.8 * h), (x + 0.76 * w, y + 0.8 * h)], 0.18 * min(w, h))
    return [body, cabin, *wheels]


def draw_truck(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> list[Polygon]:
    x, y, w, h = box
    cargo = _rect(x, y + 0.05 * h, x + 0.68 * w, y + 0.75 * h)
    cab = _rect(x + 0.7 * w, y + 0.3 * h, x + w, y + 0.75 * h)
    _fill(draw, cargo, _jitter(rng, (240, 140, 20)))
    for i in range(1, 7):
        sx = x + i * 0.68 * w / 7
        draw.line([sx, y + 0.08 * h, sx, y + 0.72 * h], fill=(150, 70, 0), width=2)
    _fill(draw, cab, _jitter(rng, (200, 200, 40)))
    _fill(draw, _rect(x + 0.78 * w, y + 0.36 * h, x + 0.95 * w, y + 0.52 * h), (190, 230, 250))
    r = 0.15 * min(w, h)
    wheels = _wheels(draw, [(x + 0.15 * w, y + 0.78 * h), (x + 0.5 * w, y + 0.78 * h), (x + 0.85 * w, y + 0.78 * h)], r)
    return [cargo, cab, *wheels]


def draw_traffic_light(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> list[Polygon]:
    x, y, w, h = box
    housing = _rect(x + 0.25 * w, y, x + 0.75 * w, y + 0.72 * h)
    pole = _rect(x + 0.45 * w, y + 0.72 * h, x + 0.55 * w, y + h)
    _fill(draw, housing, _jitter(rng, (40, 40, 45), 8))
    _fill(draw, pole, (90, 90, 90))
    r = min(0.2 * w, 0.1 * h)
    for i, colour in enumerate([(235, 30, 30), (245, 200, 20), (30, 210, 60)]):
        _fill(draw, _ellipse(x + 0.5 * w, y + (0.13 + 0.23 * i) * h, r, r), colour)
    return [housing, pole]


def draw_fire_hydrant(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> list[Polygon]:
    x, y, w, h = box
    colour = _jitter(rng, (210, 20, 30))
    dome = _ellipse(x + 0.5 * w, y + 0.25 * h, 0.22 * w, 0.18 * h)
    post = _rect(x + 0.28 * w, y + 0.25 * h, x + 0.72 * w, y + 0.95 * h)
    nozzles = _rect(x + 0.1 * w, y + 0.45 * h, x + 0.9 * w, y + 0.6 * h)
    base = _rect(x + 0.2 * w, y + 0.9 * h, x + 0.8 * w, y + h)
    for part in (dome, post, nozzles, base):
        _fill(draw, part, colour)
    for band in (0.35, 0.7, 0.82):
        draw.line([x + 0.28 * w, y + band * h, x + 0.72 * w, y + band * h], fill=(120, 0, 10), width=3)
    return [dome, post, nozzles, base]


def draw_stop_sign(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> list[Polygon]:
    x, y, w, h = box
    r = min(w, 0.7 * h) / 2
    cx, cy = x + w / 2, y + r
    plate = _regular(cx, cy, r, 8, math.pi / 8)
    pole = _rect(cx - 0.05 * w, cy + r * 0.9, cx + 0.05 * w, y + h)
    _fill(draw, pole, (150, 150, 150))
    _fill(draw, plate, _jitter(rng, (200, 10, 20), 10))
    draw.polygon(_regular(cx, cy, r * 0.82, 8, math.pi / 8), outline=(255, 255, 255), width=3)
    draw.rectangle([cx - 0.5 * r, cy - 0.12 * r, cx + 0.5 * r, cy + 0.12 * r], fill=(255, 255, 255))
    return [plate, pole]


def draw_umbrella(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> list[Polygon]:
    x, y, w, h = box
    cx, cy, r = x + w / 2, y + 0.5 * h, min(w / 2, 0.5 * h)
    angles = np.linspace(math.pi, 2 * math.pi, 25)
    rim = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)
    canopy = [round(float(v), 2) for v in rim.ravel()]
    colours = [_jitter(rng, (130, 40, 190)), (240, 240, 240)]
    for i in range(6):
        draw.pieslice([cx - r, cy - r, cx + r, cy + r], 180 + 30 * i, 210 + 30 * i, fill=colours[i % 2])
    handle = _rect(cx - 0.03 * w, cy, cx + 0.03 * w, y + 0.95 * h)
    _fill(draw, handle, (60, 40, 20))
    draw.arc([cx - 0.15 * w, y + 0.85 * h, cx + 0.03 * w, y + h], 0, 180, fill=(60, 40, 20), width=3)
    return [canopy, handle]


def draw_ball(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> list[Polygon]:
    x, y, w, h = box
    r = min(w, h) / 2
    cx, cy = x + w / 2, y + h / 2
    disc = _ellipse(cx, cy, r, r, 32)
    _fill(draw, disc, (245, 245, 245), outline=(30, 30, 30))
    _fill(draw, _regular(cx, cy, 0.3 * r, 5, rng.uniform(0, 1)), (15, 15, 15))
    for k in range(5):
        a = k * 2 * math.pi / 5 + 0.6
        _fill(draw, _regular(cx + 0.72 * r * math.cos(a), cy + 0.72 * r * math.sin(a), 0.17 * r, 5), (15, 15, 15))
    return [disc]


def draw_kite(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> list[Polygon]:
    x, y, w, h = box
    cx = x + 0.5 * w
    top, mid, bottom = y, y + 0.35 * h, y + 0.8 * h
    diamond = [cx, top, x + w * 0.95, mid, cx, bottom, x + w * 0.05, mid]
    _fill(draw, [cx, top, x + 0.95 * w, mid, cx, mid], _jitter(rng, (250, 220, 0)))
    _fill(draw, [cx, top, x + 0.05 * w, mid, cx, mid], (230, 30, 160))
    _fill(draw, [cx, bottom, x + 0.95 * w, mid, cx, mid], (230, 30, 160))
    _fill(draw, [cx, bottom, x + 0.05 * w, mid, cx, mid], _jitter(rng, (250, 220, 0)))
    draw.line([cx, top, cx, bottom], fill=(60, 30, 0), width=2)
    draw.line([x + 0.05 * w, mid, x + 0.95 * w, mid], fill=(60, 30, 0), width=2)
    tail = [(cx + (0.08 * w if i % 2 else -0.08 * w), bottom + i * 0.04 * h) for i in range(6)]
    draw.line(tail, fill=(230, 30, 160), width=2)
    return [[round(float(v), 2) for v in diamond]]


def draw_bottle(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> list[Polygon]:
    x, y, w, h = box
    colour = _jitter(rng, (20, 140, 60))
    body = _rect(x + 0.2 * w, y + 0.38 * h, x + 0.8 * w, y + h)
    shoulder = [
        x + 0.2 * w,
        y + 0.38 * h,
        x + 0.38 * w,
        y + 0.22 * h,
        x + 0.62 * w,
        y + 0.22 * h,
        x + 0.8 * w,
        y + 0.38 * h,
    ]
    neck = _rect(x + 0.38 * w, y + 0.06 * h, x + 0.62 * w, y + 0.24 * h)
    cap = _rect(x + 0.35 * w, y, x + 0.65 * w, y + 0.07 * h)
    for part in (body, shoulder, neck):
        _fill(draw, part, colour)
    _fill(draw, cap, (230, 200, 40))
    _fill(draw, _rect(x + 0.3 * w, y + 0.45 * h, x + 0.37 * w, y + 0.92 * h), (150, 230, 170))
    _fill(draw, _rect(x + 0.2 * w, y + 0.55 * h, x + 0.8 * w, y + 0.75 * h), (245, 240, 220))
    return [body, shoulder, neck, cap]


def draw_cup(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> list[Polygon]:
    x, y, w, h = box
    colour = _jitter(rng, (20, 200, 210))
    body = [x + 0.05 * w, y + 0.15 * h, x + 0.7 * w, y + 0.15 * h, x + 0.6 * w, y + h, x + 0.15 * w, y + h]
    handle = _ellipse(x + 0.72 * w, y + 0.5 * h, 0.22 * w, 0.2 * h)
    _fill(draw, handle, colour)
    _fill(draw, _ellipse(x + 0.72 * w, y + 0.5 * h, 0.11 * w, 0.1 * h), (0, 0, 0))
    _fill(draw, [round(float(v), 2) for v in body], colour)
    for k in range(3):
        yy = y + (0.35 + 0.2 * k) * h
        draw.line([x + 0.12 * w, yy, x + 0.63 * w, yy], fill=(250, 250, 250), width=3)
    return [[round(float(v), 2) for v in body], handle]


def draw_orange(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> list[Polygon]:
    x, y, w, h = box
    r = min(w, h) / 2
    cx, cy = x + w / 2, y + h / 2
    disc = _ellipse(cx, cy, r, r * 0.95, 32)
    _fill(draw, disc, _jitter(rng, (250, 140, 0), 10))
    offsets = rng.uniform(-0.7, 0.7, size=(14, 2)) * r
    for dx, dy in offsets:
        if dx * dx + dy * dy < (0.75 * r) ** 2:
            draw.ellipse([cx + dx - 1.5, cy + dy - 1.5, cx + dx + 1.5, cy + dy + 1.5], fill=(200, 90, 0))
    _fill(draw, _ellipse(cx + 0.15 * r, cy - 0.9 * r, 0.25 * r, 0.1 * r, 12), (40, 150, 30))
    return [disc]


def draw_clock(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> list[Polygon]:
    x, y, w, h = box
    r = min(w, h) / 2
    cx, cy = x + w / 2, y + h / 2
    face = _ellipse(cx, cy, r, r, 32)
    _fill(draw, face, (20, 20, 20))
    _fill(draw, _ellipse(cx, cy, 0.85 * r, 0.85 * r, 32), (250, 250, 245))
    for k in range(12):
        a = k * math.pi / 6
        draw.line(
            [
                cx + 0.7 * r * math.cos(a),
                cy + 0.7 * r * math.sin(a),
                cx + 0.82 * r * math.cos(a),
                cy + 0.82 * r * math.sin(a),
            ],
            fill=(20, 20, 20),
            width=2,
        )
    hour, minute = rng.uniform(0, 2 * math.pi, size=2)
    draw.line([cx, cy, cx + 0.45 * r * math.cos(hour), cy + 0.45 * r * math.sin(hour)], fill=(20, 20, 20), width=4)
    draw.line([cx, cy, cx + 0.68 * r * math.cos(minute), cy + 0.68 * r * math.sin(minute)], fill=(200, 0, 0), width=2)
    return [face]


def draw_book(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> list[Polygon]:
    x, y, w, h = box
    cover = _rect(x, y + 0.1 * h, x + 0.85 * w, y + h)
    pages = [x + 0.85 * w, y + 0.1 * h, x + w, y, x + w, y + 0.9 * h, x + 0.85 * w, y + h]
    _fill(draw, cover, _jitter(rng, (170, 20, 40)))
    _fill(draw, [round(float(v), 2) for v in pages], (250, 248, 235))
    for k in range(1, 8):
        xx = x + 0.85 * w + k * 0.15 * w / 8
        draw.line([xx, y + 0.1 * h - k * 0.1 * h / 8, xx, y + h - k * 0.1 * h / 8], fill=(180, 180, 170), width=1)
    _fill(draw, _rect(x + 0.15 * w, y + 0.3 * h, x + 0.7 * w, y + 0.4 * h), (230, 190, 40))
    return [cover, [round(float(v), 2) for v in pages]]


def draw_tree(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> list[Polygon]:
    x, y, w, h = box
    trunk = _rect(x + 0.42 * w, y + 0.7 * h, x + 0.58 * w, y + h)
    _fill(draw, trunk, (110, 60, 20))
    parts = [trunk]
    for k, (top, bottom, half) in enumerate([(0.0, 0.35, 0.3), (0.15, 0.55, 0.4), (0.3, 0.75, 0.5)]):
        layer = [x + 0.5 * w, y + top * h, x + (0.5 + half) * w, y + bottom * h, x + (0.5 - half) * w, y + bottom * h]
        _fill(draw, [round(float(v), 2) for v in layer], _jitter(rng, (20, 110 + 20 * k, 30)))
        parts.append([round(float(v), 2) for v in layer])
    return parts


def draw_box(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> list[Polygon]:
    x, y, w, h = box
    s = min(w, h)
    crate = _rect(x, y + h - s, x + s, y + h)
    _fill(draw, crate, _jitter(rng, (200, 160, 100)))
    for k in range(1, 4):
        draw.line([x + k * s / 4, y + h - s, x + k * s / 4, y + h], fill=(120, 80, 30), width=2)
    draw.line([x, y + h - s, x + s, y + h], fill=(120, 80, 30), width=4)
    draw.line([x + s, y + h - s, x, y + h], fill=(120, 80, 30), width=4)
    return [crate]


def draw_piano(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> list[Polygon]:
    x, y, w, h = box
    case = _rect(x, y, x + w, y + 0.75 * h)
    _fill(draw, case, (15, 15, 20))
    _fill(draw, _rect(x + 0.05 * w, y + 0.45 * h, x + 0.95 * w, y + 0.65 * h), (250, 250, 250))
    for k in range(1, 14):
        xx = x + 0.05 * w + k * 0.9 * w / 14
        draw.line([xx, y + 0.45 * h, xx, y + 0.65 * h], fill=(15, 15, 20), width=1)
    legs = [
        _rect(x + 0.05 * w, y + 0.75 * h, x + 0.12 * w, y + h),
        _rect(x + 0.88 * w, y + 0.75 * h, x + 0.95 * w, y + h),
    ]
    for leg in legs:
        _fill(draw, leg, (15, 15, 20))
    return [case, *legs]


def draw_lamp_post(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> list[Polygon]:
    x, y, w, h = box
    pole = _rect(x + 0.44 * w, y + 0.2 * h, x + 0.56 * w, y + h)
    lamp = _ellipse(x + 0.5 * w, y + 0.12 * h, 0.3 * w, 0.12 * h)
    _fill(draw, pole, (70, 80, 70))
    _fill(draw, lamp, (255, 250, 150))
    return [pole, lamp]


Painter = Callable[[ImageDraw.ImageDraw, Box, np.random.Generator], list[Polygon]]


@dataclass(frozen=True)
class Category:
    """One drawable concept: its painter and its box aspect (height / width)."""

    painter: Painter
    aspect: float


DRAWINGS: dict[str, Category] = {
    "car": Category(draw_car, 0.6),
    "truck": Category(draw_truck, 0.6),
    "traffic light": Category(draw_traffic_light, 2.0),
    "fire hydrant": Category(draw_fire_hydrant, 1.4),
    "stop sign": Category(draw_stop_sign, 1.6),
    "umbrella": Category(draw_umbrella, 1.0),
    "ball": Category(draw_ball, 1.0),
    "kite": Category(draw_kite, 1.3),
    "bottle": Category(draw_bottle, 2.2),
    "cup": Category(draw_cup, 1.0),
    "orange": Category(draw_orange, 1.0),
    "clock": Category(draw_clock, 1.0),
    "book": Category(draw_book, 1.3),
    "tree": Category(draw_tree, 1.4),
    "box": Category(draw_box, 1.0),
    "piano": Category(draw_piano, 0.7),
    "lamp post": Category(draw_lamp_post, 2.6),
}

# COCO: (real COCO id, name, supercategory, drawing). Multiword names are the point.
COCO_CATEGORIES: tuple[tuple[int, str, str, str], ...] = (
    (3, "car", "vehicle", "car"),
    (8, "truck", "vehicle", "truck"),
    (10, "traffic light", "outdoor", "traffic light"),
    (11, "fire hydrant", "outdoor", "fire hydrant"),
    (13, "stop sign", "outdoor", "stop sign"),
    (28, "umbrella", "accessory", "umbrella"),
    (37, "sports ball", "sports", "ball"),
    (38, "kite", "sports", "kite"),
    (44, "bottle", "kitchen", "bottle"),
    (47, "cup", "kitchen", "cup"),
    (55, "orange", "food", "orange"),
    (84, "book", "indoor", "book"),
    (85, "clock", "indoor", "clock"),
)
COCO_CROWD_NAMES = ("orange", "sports ball")

# VG: object name -> (synsets, drawing). The common ones are drawn uniformly; the rest are planted.
VG_COMMON: dict[str, tuple[list[str], str]] = {
    "car": (["car.n.01"], "car"),
    "automobile": (["car.n.01"], "car"),
    "truck": (["truck.n.01"], "truck"),
    "traffic light": (["traffic_light.n.01"], "traffic light"),
    "fire hydrant": (["fireplug.n.01"], "fire hydrant"),
    "umbrella": (["umbrella.n.01"], "umbrella"),
    "ball": (["ball.n.01"], "ball"),
    "kite": (["kite.n.03"], "kite"),
    "bottle": (["bottle.n.01"], "bottle"),
    "cup": (["cup.n.01"], "cup"),
    "orange": (["orange.n.01"], "orange"),
    "clock": (["clock.n.01"], "clock"),
    "tree": (["tree.n.01"], "tree"),
    "box": (["box.n.01"], "box"),
}
# "car" and "automobile" share one concept, so each is drawn half as often as other names.
VG_COMMON_WEIGHTS = np.array([0.5 if name in ("car", "automobile") else 1.0 for name in VG_COMMON])
VG_RARE = ("piano", ["piano.n.01"], "piano")
VG_UNKNOWN_SYNSET = ("lamp post", ["lamp_post.n.01"], "lamp post")
VG_NO_SYNSET_NAME = "shadow"


# ----------------------------------------------------------------------------------------------
# Scene planning and rendering


def _image_rng(seed: int, dataset: str, image_id: int) -> np.random.Generator:
    """Each image's own generator, so one image's draws never shift another's."""
    return np.random.default_rng([seed, DATASETS.index(dataset) if dataset in DATASETS else 9, image_id])


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A noisy vertical gradient between two muted colours: plain, but not trivially flat."""
    top, bottom = rng.integers(90, 200, size=(2, 3))
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    gradient = (top * (1 - t) + bottom * t).astype(np.int16)
    pixels = gradient + rng.integers(-12, 13, size=(height, width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _overlaps(box: Box, boxes: list[Box], gap: float = 4.0) -> bool:
    x, y, w, h = box
    return any(
        x < bx + bw + gap and bx < x + w + gap and y < by + bh + gap and by < y + h + gap for bx, by, bw, bh in boxes
    )


def _place(
    rng: np.random.Generator, drawings: list[str], width: int, height: int, outside: frozenset[int] = frozenset()
) -> list[tuple[int, Box]]:
    """Non-overlapping boxes (index into ``drawings``, box) fully inside the image, except the
    indices in ``outside``, which are pushed over the right or bottom edge. A drawing that finds
    no free spot in 30 tries is left out of the scene (never annotated without being drawn)."""
    placed: list[tuple[int, Box]] = []
    for index, drawing in enumerate(drawings):
        aspect = DRAWINGS[drawing].aspect
        for _ in range(30):
            scale = rng.uniform(0.24, 0.42) * min(width, height)
            w = scale / math.sqrt(aspect) * 1.1
            h = min(w * aspect, 0.9 * height)
            w = h / aspect
            if index in outside:
                x = width - w * rng.uniform(0.45, 0.75)
                y = height - h * rng.uniform(0.5, 0.8) if rng.random() < 0.5 else rng.uniform(0, height - h)
            else:
                x = rng.uniform(0, width - w)
                y = rng.uniform(0, height - h)
            box = (round(float(x), 1), round(float(y), 1), round(float(w), 1), round(float(h), 1))
            if not _overlaps(box, [b for _, b in placed]):
                placed.append((index, box))
                break
    return placed


def _place_small(rng: np.random.Generator, count: int, width: int, height: int, taken: list[Box]) -> list[Box]:
    """Small square boxes for the members of a crowd, clear of ``taken`` and of each other."""
    boxes: list[Box] = []
    for _ in range(count):
        for _ in range(40):
            size = float(rng.uniform(0.09, 0.14) * min(width, height))
            box = (
                round(float(rng.uniform(0, width - size)), 1),
                round(float(rng.uniform(0, height - size)), 1),
                round(size, 1),
                round(size, 1),
            )
            if not _overlaps(box, taken + boxes, gap=1.0):
                boxes.append(box)
                break
    return boxes


def _render(
    rng: np.random.Generator, width: int, height: int, objects: list[tuple[str, Box]]
) -> tuple[Image.Image, list[list[Polygon]]]:
    """The background with each object painted in order, and each object's silhouette polygons."""
    image = _background(rng, width, height)
    draw = ImageDraw.Draw(image)
    silhouettes = [DRAWINGS[drawing].painter(draw, box, rng) for drawing, box in objects]
    return image, silhouettes


def _encode_jpeg(image: Image.Image, grayscale: bool = False, truncate: bool = False) -> bytes:
    """Fixed JPEG settings (byte-identical archives); optionally one-channel or cut to 55%."""
    buffer = io.BytesIO()
    (image.convert("L") if grayscale else image).save(
        buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=2, optimize=False
    )
    data = buffer.getvalue()
    return data[: int(len(data) * 0.55)] if truncate else data


def _zip_info(name: str, compress: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    info.create_system = 3
    info.external_attr = (0o40755 << 16) | 0x10 if name.endswith("/") else 0o100644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    return info


class _DeterministicZip:
    """Zip writer with fixed metadata; members must be added in sorted order (checked)."""

    def __init__(self, path: Path) -> None:
        self._zip = zipfile.ZipFile(path, "w")
        self._last = ""

    def add(self, name: str, data: bytes = b"", compress: bool = False) -> None:
        if name <= self._last:
            raise ValueError(f"zip members out of order: {name!r} after {self._last!r}")
        self._last = name
        self._zip.writestr(_zip_info(name, compress), data, compresslevel=6 if compress else None)

    def close(self) -> None:
        self._zip.close()


def _write_zip(path: Path, members: Iterator[tuple[str, bytes, bool]]) -> None:
    with atomic_path(path) as tmp:
        archive = _DeterministicZip(tmp)
        try:
            for name, data, compress in members:
                archive.add(name, data, compress)
        finally:
            archive.close()


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
    width, height = (int(v) for v in rng.integers(256, 321, size=2))
    return width, height


def _json_bytes(data: object) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


# ----------------------------------------------------------------------------------------------
# COCO


def _polygon_area_bbox(polygons: list[Polygon], height: int, width: int) -> tuple[float, list[float]]:
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    return float(mask_utils.area(rle)), [round(float(v), 2) for v in mask_utils.toBbox(rle)]


def uncompressed_rle(mask: np.ndarray) -> dict[str, list[int]]:
    """COCO uncompressed RLE of a binary mask: column-major run lengths, starting with zeros."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _coco_document(images: list[dict], annotations: list[dict]) -> dict[str, object]:
    """An instances JSON document in the official COCO 2017 layout."""
    return {
        "info": {
            "description": "LaViSE embedded demo in the COCO 2017 format (synthetic)",
            "url": "http://cocodataset.org",
            "version": "1.0",
            "year": 2017,
            "contributor": "lavise-pipeline demo generator",
            "date_created": "2017/09/01",
        },
        "licenses": [
            {"url": "http://creativecommons.org/licenses/by/2.0/", "id": i, "name": "Attribution License"}
            for i in range(1, 7)
        ],
        "images": images,
        "annotations": annotations,
        "categories": [{"supercategory": sup, "id": cid, "name": name} for cid, name, sup, _ in COCO_CATEGORIES],
    }


_COCO_CATEGORY_ID = {name: cid for cid, name, _, _ in COCO_CATEGORIES}
_COCO_DRAWING = {name: drawing for _, name, _, drawing in COCO_CATEGORIES}


def _coco_scene(
    rng: np.random.Generator, split: str, position: int, width: int, height: int
) -> tuple[list[tuple[str, Box]], str | None, list[Box]]:
    """The placed (name, box) objects of one image, and its crowd's category and member boxes."""
    names = list(_COCO_CATEGORY_ID)
    planted = split == "train" and position < 3
    n_objects = 0 if (planted and position == 0) else int(rng.integers(1, 5))
    chosen = [names[i] for i in rng.integers(0, len(names), size=n_objects)]
    placed = [(chosen[i], box) for i, box in _place(rng, [_COCO_DRAWING[n] for n in chosen], width, height)]
    crowd_name = COCO_CROWD_NAMES[(position // CROWD_EVERY) % 2] if position % CROWD_EVERY == 5 else None
    crowd_boxes = (
        _place_small(rng, int(rng.integers(4, 7)), width, height, [b for _, b in placed]) if crowd_name else []
    )
    return placed, crowd_name, crowd_boxes


def _coco_instance(polygons: list[Polygon], name: str, image_id: int, height: int, width: int, ann_id: int) -> dict:
    """The iscrowd=0 annotation of one drawn object (its silhouette polygons)."""
    area, bbox = _polygon_area_bbox(polygons, height, width)
    return {
        "segmentation": polygons,
        "area": area,
        "iscrowd": 0,
        "image_id": image_id,
        "bbox": bbox,
        "category_id": _COCO_CATEGORY_ID[name],
        "id": ann_id,
    }


def _coco_crowd(
    silhouettes: list[list[Polygon]], name: str, image_id: int, height: int, width: int, ann_id: int
) -> dict:
    """The iscrowd=1 annotation of a crowd: the uncompressed RLE of all its members' silhouettes."""
    canvas = Image.new("L", (width, height), 0)
    pen = ImageDraw.Draw(canvas)
    for polygons in silhouettes:
        for polygon in polygons:
            pen.polygon(polygon, fill=1)
    rle = uncompressed_rle(np.asarray(canvas))
    compressed = mask_utils.frPyObjects(rle, height, width)
    return {
        "segmentation": rle,
        "area": float(mask_utils.area(compressed)),
        "iscrowd": 1,
        "image_id": image_id,
        "bbox": [round(float(v), 2) for v in mask_utils.toBbox(compressed)],
        "category_id": _COCO_CATEGORY_ID[name],
        "id": ann_id,
    }


def _coco_image_record(split: str, position: int, image_id: int, width: int, height: int) -> dict:
    """One entry of the instances JSON's ``images`` list."""
    file_name = f"{image_id:012d}.jpg"
    return {
        "license": 1 + position % 6,
        "file_name": file_name,
        "coco_url": f"http://images.cocodataset.org/{split}2017/{file_name}",
        "height": height,
        "width": width,
        "date_captured": "2013-11-14 11:18:45",
        "flickr_url": "",
        "id": image_id,
    }


def _coco_images(
    split: str,
    image_ids: list[int],
    seed: int,
    images: list[dict],
    annotations: list[dict],
    next_ids: dict[str, int],
) -> Iterator[tuple[str, bytes, bool]]:
    """Render one split's JPEGs as zip members, filling ``images``/``annotations`` as it goes."""
    yield f"{split}2017/", b"", False
    for position, image_id in enumerate(tqdm(image_ids, desc=f"demo coco {split}2017", unit="img")):
        rng = _image_rng(seed, "coco", image_id)
        width, height = _image_size(rng)
        placed, crowd_name, crowd_boxes = _coco_scene(rng, split, position, width, height)
        scene = [(_COCO_DRAWING[n], b) for n, b in placed] + [(_COCO_DRAWING[crowd_name], b) for b in crowd_boxes]
        image, silhouettes = _render(rng, width, height, scene)
        for (name, _), polygons in zip(placed, silhouettes):
            annotations.append(_coco_instance(polygons, name, image_id, height, width, next_ids["single"]))
            next_ids["single"] += 1
        if crowd_boxes:
            crowd = silhouettes[len(placed) :]
            annotations.append(_coco_crowd(crowd, crowd_name, image_id, height, width, next_ids["crowd"]))
            next_ids["crowd"] += 1
        record = _coco_image_record(split, position, image_id, width, height)
        images.append(record)
        planted = split == "train" and position < 3
        jpeg = _encode_jpeg(image, grayscale=planted and position == 1, truncate=planted and position == 2)
        yield f"{split}2017/{record['file_name']}", jpeg, False


def _build_coco(out_dir: Path, seed: int) -> list[Path]:
    """train2017.zip, val2017.zip and annotations_trainval2017.zip in ``out_dir``; their paths."""
    ids = np.random.default_rng([seed, 100]).choice(581929, size=COCO_TRAIN_IMAGES + COCO_VAL_IMAGES, replace=False) + 1
    splits = {
        "train": sorted(int(i) for i in ids[:COCO_TRAIN_IMAGES]),
        "val": sorted(int(i) for i in ids[COCO_TRAIN_IMAGES:]),
    }
    next_ids = {"single": 1, "crowd": COCO_CROWD_ID_BASE}
    documents: dict[str, dict] = {}
    paths = []
    for split, image_ids in splits.items():
        images: list[dict] = []
        annotations: list[dict] = []
        path = out_dir / f"{split}2017.zip"
        _write_zip(path, _coco_images(split, image_ids, seed, images, annotations, next_ids))
        documents[split] = _coco_document(images, annotations)
        paths.append(path)
    path = out_dir / "annotations_trainval2017.zip"
    _write_zip(
        path,
        iter(
            [
                ("annotations/", b"", False),
                *(
                    (f"annotations/instances_{split}2017.json", _json_bytes(documents[split]), True)
                    for split in ("train", "val")
                ),
            ]
        ),
    )
    return [*paths, path]


# ----------------------------------------------------------------------------------------------
# Visual Genome


@dataclass(frozen=True)
class _VgPlan:
    """Where the planted VG cases go, by position in the id-sorted image list."""

    rare: frozenset[int]
    unknown_synset: frozenset[int]


def _vg_plan() -> _VgPlan:
    """The positions of the rare and the unknown-synset images, spread over the dataset."""
    rare = frozenset(range(13, VG_IMAGES, VG_IMAGES // VG_RARE_IMAGES))
    unknown = frozenset(range(17, VG_IMAGES, VG_IMAGES // VG_UNKNOWN_SYNSET_IMAGES))
    return _VgPlan(
        rare=frozenset(sorted(rare)[:VG_RARE_IMAGES]),
        unknown_synset=frozenset(sorted(unknown)[:VG_UNKNOWN_SYNSET_IMAGES]),
    )


def _vg_scene(
    rng: np.random.Generator, position: int, width: int, height: int, plan: _VgPlan
) -> tuple[list[tuple[str, Box]], list[dict[str, object]]]:
    """Drawings to render and the VG objects (without ids) that describe them."""
    if position == 0:
        return [], []
    names = list(VG_COMMON)
    count = int(rng.integers(1, 5))
    chosen = [names[i] for i in rng.choice(len(names), size=count, p=VG_COMMON_WEIGHTS / VG_COMMON_WEIGHTS.sum())]
    labelled = [(name, VG_COMMON[name][0], VG_COMMON[name][1]) for name in chosen]
    if position in plan.rare:
        labelled.insert(0, VG_RARE)
    if position in plan.unknown_synset:
        labelled.append(VG_UNKNOWN_SYNSET)
    outside = frozenset({0}) if position % VG_PARTLY_OUTSIDE_EVERY == 2 else frozenset()
    placed = _place(rng, [drawing for _, _, drawing in labelled], width, height, outside)
    scene, objects = [], []
    for index, (x, y, w, h) in placed:
        name, synsets, drawing = labelled[index]
        scene.append((drawing, (x, y, w, h)))
        objects.append(
            {
                "x": int(x),
                "y": int(y),
                "w": int(math.ceil(w)),
                "h": int(math.ceil(h)),
                "names": [name],
                "synsets": list(synsets),
                "merged_object_ids": [],
            }
        )
    if objects and position % VG_DUPLICATE_EVERY == 6:
        objects.append(dict(objects[0]))
    if position % VG_NO_SYNSET_EVERY == 4:
        sw, sh = int(width * rng.uniform(0.2, 0.4)), int(height * rng.uniform(0.1, 0.2))
        objects.append(
            {
                "x": int(rng.integers(0, width - sw)),
                "y": int(rng.integers(0, height - sh)),
                "w": sw,
                "h": sh,
                "names": [VG_NO_SYNSET_NAME],
                "synsets": [],
                "merged_object_ids": [],
            }
        )
    return scene, objects


def _build_vg(out_dir: Path, seed: int) -> list[Path]:
    """The two VG image zips, then the objects and image_data JSON zips in ``out_dir``; their paths."""
    planner = np.random.default_rng([seed, 200])
    image_ids = sorted(int(i) + 1 for i in planner.choice(150000, size=VG_IMAGES, replace=False))
    folders = ["VG_100K" if u < 0.6 else "VG_100K_2" for u in planner.random(VG_IMAGES)]
    plan = _vg_plan()
    records: dict[int, tuple[dict, dict]] = {}
    next_object_id = 1000000

    def members(folder: str) -> Iterator[tuple[str, bytes, bool]]:
        nonlocal next_object_id
        yield f"{folder}/", b"", False
        chosen = sorted(
            ((str(image_id), position) for position, image_id in enumerate(image_ids) if folders[position] == folder)
        )
        for name, position in tqdm(chosen, desc=f"demo vg {folder}", unit="img"):
            image_id = image_ids[position]
            rng = _image_rng(seed, "vg", image_id)
            width, height = _image_size(rng)
            scene, objects = _vg_scene(rng, position, width, height, plan)
            image, _ = _render(rng, width, height, scene)
            for obj in objects:
                obj["object_id"] = next_object_id
                next_object_id += 1
            coco_id = int(rng.integers(1, 581930)) if position % 5 == 0 else None
            records[image_id] = (
                {"image_id": image_id, "objects": objects},
                {
                    "width": width,
                    "url": VG_URL.format(folder=folder, image_id=image_id),
                    "height": height,
                    "image_id": image_id,
                    "coco_id": coco_id,
                    "flickr_id": int(rng.integers(10**6, 10**9)),
                },
            )
            yield f"{folder}/{name}.jpg", _encode_jpeg(image, grayscale=position == 1, truncate=position == 2), False

    paths = []
    for folder, archive in (("VG_100K", "images.zip"), ("VG_100K_2", "images2.zip")):
        _write_zip(out_dir / archive, members(folder))
        paths.append(out_dir / archive)
    ordered = [records[image_id] for image_id in image_ids]
    for archive, member, index in (
        ("objects_v1_2.json.zip", "objects.json", 0),
        ("image_data.json.zip", "image_data.json", 1),
    ):
        _write_zip(out_dir / archive, iter([(member, _json_bytes([r[index] for r in ordered]), True)]))
        paths.append(out_dir / archive)
    return paths


# ----------------------------------------------------------------------------------------------
# Public API

# The archive names each dataset's builder writes: the official ones of the catalogue.
ARCHIVES = {dataset: tuple(archive.name for archive in CATALOGUE[dataset]) for dataset in DATASETS}


def build_demo_archives(out_dir: Path, datasets: list[str], seed: int) -> dict[str, str]:
    """Write the demo archives of ``datasets`` into ``out_dir``; return {archive name: sha256}."""
    unknown = sorted(set(datasets) - set(DATASETS))
    if unknown:
        raise ValueError(f"unknown demo datasets {unknown}; choose from {list(DATASETS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    builders = {"coco": _build_coco, "vg": _build_vg}
    checksums: dict[str, str] = {}
    for dataset in DATASETS:
        if dataset in datasets:
            for path in builders[dataset](out_dir, seed):
                checksums[path.name] = file_digest(path, "sha256")
                log.info("demo %s: %s (%d bytes)", dataset, path.name, path.stat().st_size)
    return checksums
