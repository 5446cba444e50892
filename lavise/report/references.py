"""The paper's and FACT2023's published recall, for the preset a run's settings match.

The figures live in ``reference_figures.json`` next to this module, each with its source in
words, so that a reader can check every number against the publication it comes from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIGURES_FILE = Path(__file__).with_name("reference_figures.json")


@dataclass(frozen=True)
class Preset:
    """One published configuration: what it was run on and its figures (dicts with ``source``,
    ``cite``, ``method`` and ``recall@s`` keys)."""

    dataset: str
    backbone: str
    layer: str
    pretraining: str
    figures: list[dict[str, Any]]
    compare_with: dict[str, list[str]]  # published method -> this run's methods shown beside it


def load_presets(path: Path = FIGURES_FILE) -> list[Preset]:
    """Every preset of the figures file."""
    data = json.loads(Path(path).read_text())
    return [Preset(**preset, compare_with=data["compare_with"]) for preset in data["presets"]]


def matching_preset(dataset: str, backbone: str, layer: str, presets: list[Preset] | None = None) -> Preset | None:
    """The preset run on the same dataset, backbone and layer, or ``None`` when none was published.

    Pre-training is not matched (the demo trains its own network): the page shows it instead.
    """
    for preset in load_presets() if presets is None else presets:
        if (preset.dataset, preset.backbone, preset.layer) == (dataset, backbone, layer):
            return preset
    return None
