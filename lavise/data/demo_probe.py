"""The embedded demo's probe folder: unlabelled images in two groups that differ by one planted concept.

Why: the `probe` and `compare` stages explain a network on images without annotations and compare
groups of them (the paper's target-domain use and its dataset-bias analysis). The demo needs such
a folder whose answer is known: the groups ``PROBE_GROUPS`` are first-level subfolders; the scenes
are drawn like the demo's Visual Genome scenes (1-3 objects of its common categories), and the
concept ``PROBE_CONCEPT`` is drawn in ``PROBE_CONCEPT_RATES[group]`` of each group's images.
Nothing in the folder says which group carries it. A few odd files are planted so that the
stages' counts show the robustness: a grayscale JPEG and a PNG (both read), a truncated JPEG and
a text file (both counted as ``undecodable``).

Determinism: every probe image draws from its own generator seeded by (seed, ``PROBE_STREAM``,
group, index), a stream no other demo file uses, so the probe leaves the bytes of the other demo
files unchanged.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from lavise.data.demo import VG_COMMON, _encode_jpeg, _image_size, _place, _render
from lavise.io import atomic_dir

PROBE_GROUPS = ("north", "south")
PROBE_CONCEPT = "orange"  # a seen demo category the explainer names
PROBE_CONCEPT_RATES = {"north": 0.1, "south": 0.8}  # share of each group's images showing it
PROBE_IMAGES_PER_GROUP = 60
PROBE_STREAM = 101  # seed component of the probe images, distinct from every demo dataset's
# Planted odd files: (group, name, kind)
PROBE_ODD_FILES = (
    ("north", "scan_gray.jpg", "grayscale"),
    ("north", "cut_short.jpg", "truncated"),
    ("south", "photo.png", "png"),
    ("south", "notes.txt", "text"),
)
_OTHER_DRAWINGS = sorted({drawing for _, drawing in VG_COMMON.values()} - {PROBE_CONCEPT})


def _probe_rng(seed: int, group: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, PROBE_STREAM, PROBE_GROUPS.index(group), index])


def probe_scene(seed: int, group: str, index: int) -> tuple[bytes, bool]:
    """One probe image as JPEG bytes, and whether the concept is drawn in it."""
    rng = _probe_rng(seed, group, index)
    width, height = _image_size(rng)
    with_concept = bool(rng.random() < PROBE_CONCEPT_RATES[group])
    n_others = int(rng.integers(1, 3)) if with_concept else int(rng.integers(1, 4))
    drawings = list(rng.choice(_OTHER_DRAWINGS, size=n_others, replace=False))
    if with_concept:
        drawings.insert(int(rng.integers(0, len(drawings) + 1)), PROBE_CONCEPT)
    placed = _place(rng, drawings, width, height)
    image, _ = _render(rng, width, height, [(drawings[i], box) for i, box in placed])
    drawn = any(drawings[i] == PROBE_CONCEPT for i, _ in placed)
    return _encode_jpeg(image), drawn


def _odd_file(seed: int, group: str, index: int, kind: str) -> bytes:
    """The bytes of one planted odd file, drawn from its own probe generator."""
    if kind == "text":
        return b"field notes: not an image\n"
    rng = _probe_rng(seed, group, index)
    width, height = _image_size(rng)
    image, _ = _render(rng, width, height, [])
    if kind == "png":
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=False)
        return buffer.getvalue()
    return _encode_jpeg(image, grayscale=kind == "grayscale", truncate=kind == "truncated")


def write_probe_folder(out_dir: Path, seed: int) -> dict[str, int]:
    """Write the probe folder ``out_dir/<group>/*.jpg`` (atomically); returns per group how many
    images show the concept (for the manifest and the tests)."""
    shown = dict.fromkeys(PROBE_GROUPS, 0)
    with atomic_dir(out_dir) as building:
        for group in PROBE_GROUPS:
            (building / group).mkdir()
            for index in range(PROBE_IMAGES_PER_GROUP):
                data, drawn = probe_scene(seed, group, index)
                (building / group / f"img_{index:04d}.jpg").write_bytes(data)
                shown[group] += drawn
        for offset, (group, name, kind) in enumerate(PROBE_ODD_FILES):
            (building / group / name).write_bytes(_odd_file(seed, group, PROBE_IMAGES_PER_GROUP + offset, kind))
    return shown
