"""The ground-truth consumer of the map pass: G of every (filter, top image) pair, NetDissect's sums.

Definitions (binding, docs/PROTOCOL.md):

* object masks are mapped to the crop with the images' own geometry and binarised at soft >= 0.5;
* ``G_{u,i}``: categories of image i whose mask has ``IoU(M, R_{u,i}) > iou_threshold``;
* NetDissect's sums take every evaluated filter on every evaluation image (not only the top
  images), one accumulator per cross-fitting fold of the images.

Per image, only the filters whose maximum reaches ``T_u`` can have a region; the others are
skipped. Memory is the per-pair truth ``bool [P, C]`` and the sums ``[F, C]``, flat in N.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from lavise.data.masks import image_object_masks
from lavise.data.transforms import masks_to_crop
from lavise.features.thresholds import TopImagePairs
from lavise.metrics.netdissect import NETDISSECT_FOLDS, NetDissectAccumulator, fold_of
from lavise.metrics.overlap import activation_regions, iou_from_counts, region_overlaps

log = logging.getLogger(__name__)

ImageMasks = Callable[[int], tuple[torch.Tensor, np.ndarray]]  # map row -> (bool [n, S, S], category ids [n])


def crop_masks(
    objects: pd.DataFrame, height: int, width: int, resize: int, crop: int, interpolation: str = "bilinear"
) -> torch.Tensor:
    """Crop-resolution binary masks ``[n, crop, crop]`` (soft >= 0.5) of one image's objects, through
    the images' geometry (``interpolation`` included)."""
    if len(objects) == 0:
        return torch.zeros((0, crop, crop), dtype=torch.bool)
    full = torch.from_numpy(image_object_masks(objects, height, width))
    return masks_to_crop(full, resize, crop, interpolation) >= 0.5


class ObjectMasks:
    """The masks of each evaluation image's objects, by map row: ``masks(row) -> (masks, category ids)``.

    ``objects`` needs ``image_id``, ``category`` and the mask columns; objects of a category not in
    ``category_index`` (unknown or dropped) are ignored with a warning. ``images`` is indexed by
    ``image_id`` with ``height`` and ``width``; ``image_ids`` ``[N]`` gives the image of each map row.
    """

    def __init__(
        self,
        objects: pd.DataFrame,
        images: pd.DataFrame,
        image_ids: np.ndarray,
        category_index: dict[str, int],
        resize: int,
        crop: int,
        interpolation: str = "bilinear",
    ) -> None:
        objects = objects.copy()
        objects["category_id"] = objects["category"].map(category_index)
        unknown = objects["category_id"].isna()
        if unknown.any():
            log.warning(
                "%d object(s) of %d unknown or dropped categories ignored (e.g. %s)",
                int(unknown.sum()),
                objects.loc[unknown, "category"].nunique(),
                objects.loc[unknown, "category"].iloc[0],
            )
        objects = objects[~unknown & objects["image_id"].isin(image_ids)].reset_index(drop=True)
        objects["category_id"] = objects["category_id"].astype(np.int64)
        self.objects, self.images, self.image_ids = objects, images, image_ids
        self.groups = objects.groupby("image_id").indices
        self.resize, self.crop, self.interpolation = resize, crop, interpolation

    def __call__(self, row: int) -> tuple[torch.Tensor, np.ndarray]:
        image_id = int(self.image_ids[row])
        rows = self.groups.get(image_id, np.zeros(0, dtype=np.int64))
        info = self.images.loc[image_id]
        subset = self.objects.iloc[rows]
        masks = crop_masks(subset, int(info["height"]), int(info["width"]), self.resize, self.crop, self.interpolation)
        return masks, subset["category_id"].to_numpy(np.int64)


class GroundTruthConsumer:
    """``truth`` bool ``[P, C]`` (G of each pair) and ``folds`` (NetDissect's sums per fold), fed chunk by chunk."""

    def __init__(
        self,
        pairs: TopImagePairs,
        filters: np.ndarray,
        thresholds: np.ndarray,
        image_max: np.ndarray,
        image_masks: ImageMasks,
        *,
        n_channels: int,
        n_categories: int,
        iou_threshold: float,
        crop: int,
        device: torch.device,
    ) -> None:
        """``filters`` int64 ``[F]`` with ``thresholds`` ``[F]``, ``image_max`` ``[N, F]`` (max of each map)."""
        self.pairs, self.thresholds, self.image_max, self.image_masks = pairs, thresholds, image_max, image_masks
        self.iou_threshold, self.crop, self.device = iou_threshold, crop, device
        self.filters_t = torch.from_numpy(filters).to(device)
        self.thresholds_t = torch.from_numpy(thresholds).to(device)
        self.all_filters = len(filters) == n_channels and bool(np.all(filters == np.arange(n_channels)))
        self.truth = np.zeros((len(pairs), n_categories), dtype=bool)
        self.folds = [NetDissectAccumulator(len(filters), n_categories) for _ in range(NETDISSECT_FOLDS)]

    def consume(self, start: int, block: torch.Tensor) -> None:
        """Add the images of this chunk of maps ``[n, d, h, w]`` (rows ``start ..``) one by one."""
        selected = block if self.all_filters else block[:, self.filters_t]  # [n, F, h, w]
        for row in range(start, start + block.shape[0]):
            self._add_image(row, selected[row - start])

    def _add_image(self, row: int, maps: torch.Tensor) -> None:
        """Regions of the filters active on image ``row`` (maps ``[F, h, w]``) against its object masks."""
        masks, categories = self.image_masks(row)
        active = np.flatnonzero(self.image_max[row] >= self.thresholds)
        active_t = torch.from_numpy(active).to(self.device)
        regions = activation_regions(maps[active_t], self.thresholds_t[active_t], self.crop)
        r_area, m_area, inter = region_overlaps(regions, masks.to(self.device))
        self.folds[fold_of(row)].add(
            active, r_area.cpu().numpy(), inter.cpu().numpy(), categories, m_area.cpu().numpy()
        )
        row_pairs = self.pairs.of_rows(row, row + 1)
        position = np.full(len(self.thresholds), -1, dtype=np.int64)
        position[active] = np.arange(len(active))
        pair_pos = position[self.pairs.filter_pos[row_pairs]]  # row of each pair's region, -1: none
        has_region = pair_pos >= 0
        if has_region.any() and len(categories):
            iou = iou_from_counts(r_area, m_area, inter).cpu().numpy()  # [active, objects]
            hit = iou[pair_pos[has_region]] > self.iou_threshold
            pair_ids = np.arange(row_pairs.start, row_pairs.stop)[has_region]
            hit_pairs, hit_objects = np.nonzero(hit)
            self.truth[pair_ids[hit_pairs], categories[hit_objects]] = True
