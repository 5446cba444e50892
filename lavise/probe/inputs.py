"""The probe's inputs as the stages after `probe_features` read them: its cache and index, checked together."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lavise.explain.filters import resolve_filters
from lavise.features.cache import FeatureCache, open_feature_cache
from lavise.probe.listing import read_probe_images


@dataclass(frozen=True)
class ProbeInputs:
    """The probe cache, its index's images (by map row: ``rows``), the image root and the filters ``[F]``."""

    cache: FeatureCache
    images: pd.DataFrame
    rows: pd.DataFrame
    root: Path
    filters: np.ndarray


def open_probe(features: Path, index: Path, root: Path, filters: Any, what: str = "filters") -> ProbeInputs:
    """The probe cache and index, which must come from one `probe_features` run, and the filter
    selection ``filters`` checked against the layer (``what`` names it in a message)."""
    cache = open_feature_cache(features)
    images = read_probe_images(index)
    if cache.images["image_id"].tolist() != images["image_id"].tolist():
        raise ValueError(f"{features} was not built from {index}: run the probe_features stage again")
    if cache.val_maps.shape[0] == 0:
        raise ValueError(f"no probe image could be read (see {features}/images.parquet): nothing to explain")
    rows = images.set_index("image_id").loc[cache.val_images["image_id"].to_numpy()].reset_index()
    selected = resolve_filters(filters, cache.val_maps.shape[1], what)
    return ProbeInputs(cache, images, rows, root, selected)
