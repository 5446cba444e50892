"""A layer's responses to image files that the feature cache does not hold.

The cache keeps masked object vectors for the training images and full maps only for the
validation images, so the lasso's X (one whole-image pooled vector per training image) and the
randomly initialised control's maps come from one batched pass of the full model here: a
:class:`~lavise.models.extractor.LayerProbe` gives the layer's maps and the logits together (the
logits give the labels of a model whose classes are not the dataset's: its own top-1).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lavise.data.images import UnreadableImage
from lavise.data.transforms import Preprocessing, to_model_input, transform_geometry
from lavise.features.cache import DTYPE
from lavise.features.pooling import pool
from lavise.models.extractor import LayerProbe

log = logging.getLogger(__name__)

ImageReader = Callable[[Path], "torch.Tensor | UnreadableImage"]


class CroppedImages(Dataset):
    """Item i: (i, uint8 centre crop ``[3, crop, crop]`` or the ``UnreadableImage`` of the file)."""

    def __init__(self, files: Sequence[Path], read: ImageReader, preprocessing: Preprocessing) -> None:
        self.files, self.read, self.preprocessing = list(files), read, preprocessing

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        image = self.read(self.files[index])
        if isinstance(image, UnreadableImage):
            return index, image
        p = self.preprocessing
        return index, transform_geometry(image, p.resize, p.crop, p.interpolation)


def _collate(items: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    return items


@dataclass(frozen=True)
class Responses:
    """Per readable image (rows of ``ok``): pooled responses ``[n, d]`` float32, logits ``[n, C]``,
    optionally the maps ``[n, d, h', w']`` float16; ``ok`` bool ``[n_files]``."""

    pooled: np.ndarray
    logits: np.ndarray
    maps: np.ndarray | None
    ok: np.ndarray


def layer_responses(
    model: nn.Module,
    layer: str,
    files: Sequence[Path],
    read: ImageReader,
    preprocessing: Preprocessing,
    *,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    keep_maps: bool = False,
    description: str = "responses",
) -> Responses:
    """One pass of ``model`` over ``files``, preprocessed as `features` preprocesses them.

    Unreadable files are logged with their status and left out (``ok`` False); ``keep_maps``
    keeps the maps in memory as float16, the cache's type (160 demo images: 8 MB; COCO val's
    5,000 at 512 x 7 x 7: 250 MB).
    """
    probe = LayerProbe(model.to(device).eval(), layer)
    loader = DataLoader(
        CroppedImages(files, read, preprocessing), batch_size=batch_size, num_workers=num_workers, collate_fn=_collate
    )
    pooled, logits, maps = [], [], []
    ok = np.zeros(len(files), dtype=bool)
    try:
        for items in tqdm(loader, desc=description, unit="batch"):
            good = [(i, image) for i, image in items if not isinstance(image, UnreadableImage)]
            for image in (image for _, image in items if isinstance(image, UnreadableImage)):
                log.warning("%s: skipping %s", description, image)
            if not good:
                continue
            ok[[i for i, _ in good]] = True
            with torch.inference_mode():
                batch = torch.stack([image for _, image in good])
                out = probe(to_model_input(batch, device, preprocessing.mean, preprocessing.std))
            pooled.append(pool(out.maps.float()).cpu().numpy())
            logits.append(out.logits.float().cpu().numpy())
            if keep_maps:
                maps.append(out.maps.to(torch.float16).contiguous().cpu().numpy().astype(DTYPE))
    finally:
        probe.remove()
    if not pooled:
        raise ValueError(f"{description}: none of the {len(files)} images could be read")
    return Responses(
        np.concatenate(pooled).astype(np.float32),
        np.concatenate(logits).astype(np.float32),
        np.concatenate(maps) if keep_maps else None,
        ok,
    )
