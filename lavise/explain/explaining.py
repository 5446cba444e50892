"""The explaining consumer of the map pass: explainer outputs of every method for every pair.

It needs no annotations: the maps, the thresholds, the (filter, top image) pairs, the explainer
and, for the methods that re-run the CNN, the CNN and a way to load each image. Methods come
from :data:`lavise.explain.methods.REGISTRY`; their flags decide how each is batched:

* a method that ignores the filter is explained once per image (the images of the chunk's pairs);
* a method computed from the cached maps is explained in batches of ``batch_size`` pairs;
* a method that re-runs the CNN is explained in batches of ``CNN_BATCH`` pairs, only for the
  pairs of the filters chosen for it (``CnnInputs.filters``), each image decoded once per chunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lavise.data.images import DEFAULT_MAX_PIXELS, UnreadableImage, read_image
from lavise.data.transforms import Preprocessing, preprocess
from lavise.explain.methods import REGISTRY, Method, PairBatch
from lavise.explain.stream import stream_maps
from lavise.features.thresholds import TopImagePairs
from lavise.models.extractor import build_feature_extractor

CNN_BATCH = 16  # masked images per CNN forward (activation memory of a full backbone)


@dataclass(frozen=True)
class CnnInputs:
    """What the methods that re-run the CNN need."""

    cnn: Callable[[torch.Tensor], torch.Tensor]  # normalised images [B, 3, S, S] -> the layer's maps
    filters: np.ndarray  # bool [F]: the evaluated filters these methods run on
    load_image: Callable[[int], torch.Tensor]  # map row -> normalised input image [3, S, S]


@dataclass
class MethodOutputs:
    """One method's explainer outputs: ``vectors`` ``[P, E]`` by pair (NaN rows outside ``pairs``),
    or ``[N, E]`` by map row for a method that ignores the filter; ``pairs``: the pair indices
    the method explains."""

    method: Method
    vectors: torch.Tensor
    pairs: np.ndarray


def explain_features(explainer: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Explainer outputs ``[B, E]`` (float32, CPU) of explainer inputs ``[B, d]``."""
    with torch.inference_mode():
        return explainer(features).float().cpu()


class ExplainingConsumer:
    """Explainer outputs of every registered method for every (filter, top image) pair."""

    def __init__(
        self,
        explainer: torch.nn.Module,
        pairs: TopImagePairs,
        filters: np.ndarray,
        thresholds: np.ndarray,
        maps_shape: tuple[int, ...],
        *,
        batch_size: int,
        device: torch.device,
        cnn: CnnInputs | None = None,
    ) -> None:
        """``filters`` int64 ``[F]`` (channel ids) and ``thresholds`` ``[F]`` of the evaluated filters;
        ``maps_shape`` ``(N, d, h, w)``. Without ``cnn``, the methods that need it explain no pair."""
        n_images, n_channels = maps_shape[:2]
        self.explainer, self.pairs, self.batch_size, self.device = explainer, pairs, batch_size, device
        self.filters_t = torch.from_numpy(filters).to(device)
        self.thresholds_t = torch.from_numpy(thresholds).to(device)
        self.cnn = cnn
        emb_dim = int(explain_features(explainer, torch.zeros(2, n_channels, device=device)).shape[1])
        self.outputs: dict[str, MethodOutputs] = {}
        for method in REGISTRY.values():
            rows = len(pairs) if method.per_filter else n_images
            self.outputs[method.name] = MethodOutputs(
                method, torch.full((rows, emb_dim), math.nan), self._pairs_of(method)
            )

    def _pairs_of(self, method: Method) -> np.ndarray:
        """The pairs ``method`` explains: all, or those of the CNN's filters for a method that needs it."""
        if not method.needs_cnn:
            return np.arange(len(self.pairs))
        if self.cnn is None:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self.cnn.filters[self.pairs.filter_pos])

    def _methods(self, *, per_filter: bool, needs_cnn: bool) -> list[MethodOutputs]:
        """The outputs of the registered methods with these flags, in registry order."""
        return [
            out
            for out in self.outputs.values()
            if out.method.per_filter == per_filter and out.method.needs_cnn == needs_cnn
        ]

    def consume(self, start: int, block: torch.Tensor) -> None:
        """Explain the pairs whose image is in this chunk of maps ``[n, d, h, w]`` (rows ``start ..``)."""
        chunk_pairs = self.pairs.of_rows(start, start + block.shape[0])
        self._explain_images(block, start, chunk_pairs)
        self._explain_from_maps(block, start, chunk_pairs)
        self._explain_with_cnn(block, start, chunk_pairs)

    def _explain_images(self, block: torch.Tensor, start: int, chunk_pairs: slice) -> None:
        """Methods that ignore the filter: once per image of the chunk's pairs."""
        used = np.unique(self.pairs.row[chunk_pairs]) - start
        if not len(used):
            return
        batch = PairBatch(maps=block[torch.from_numpy(used).to(self.device)])
        for out in self._methods(per_filter=False, needs_cnn=False):
            out.vectors[used + start] = explain_features(self.explainer, out.method.features(batch))

    def _batch(self, block: torch.Tensor, start: int, index: np.ndarray) -> PairBatch:
        """The maps ``[B, d, h, w]``, filters and thresholds of pairs ``index`` (all in this chunk)."""
        local_rows = torch.from_numpy(self.pairs.row[index] - start).to(self.device)
        filter_pos = torch.from_numpy(self.pairs.filter_pos[index]).to(self.device)
        return PairBatch(
            maps=block[local_rows], filters=self.filters_t[filter_pos], thresholds=self.thresholds_t[filter_pos]
        )

    def _explain_from_maps(self, block: torch.Tensor, start: int, chunk_pairs: slice) -> None:
        """Per-filter methods computed from the cached maps, ``batch_size`` pairs at a time."""
        methods = self._methods(per_filter=True, needs_cnn=False)
        for batch_start in range(chunk_pairs.start, chunk_pairs.stop, self.batch_size):
            index = np.arange(batch_start, min(batch_start + self.batch_size, chunk_pairs.stop))
            batch = self._batch(block, start, index)
            for out in methods:
                out.vectors[index] = explain_features(self.explainer, out.method.features(batch))

    def _explain_with_cnn(self, block: torch.Tensor, start: int, chunk_pairs: slice) -> None:
        """Methods that re-run the CNN: this chunk's pairs of their filters, ``CNN_BATCH`` at a time."""
        cnn, methods = self.cnn, self._methods(per_filter=True, needs_cnn=True)
        if cnn is None or not methods:
            return
        index = np.arange(chunk_pairs.start, chunk_pairs.stop)
        index = index[cnn.filters[self.pairs.filter_pos[index]]]
        images: dict[int, torch.Tensor] = {}  # each image of the chunk decoded once
        for batch_start in range(0, len(index), CNN_BATCH):
            batch_index = index[batch_start : batch_start + CNN_BATCH]
            for row in self.pairs.row[batch_index]:
                if int(row) not in images:
                    images[int(row)] = cnn.load_image(int(row))
            pairs = self._batch(block, start, batch_index)
            batch = PairBatch(
                maps=pairs.maps,
                filters=pairs.filters,
                thresholds=pairs.thresholds,
                images=torch.stack([images[int(row)] for row in self.pairs.row[batch_index]]).to(self.device),
                cnn=cnn.cnn,
            )
            for out in methods:
                out.vectors[batch_index] = explain_features(self.explainer, out.method.features(batch))


def explain_pairs(
    maps: np.ndarray,
    explainer: torch.nn.Module,
    pairs: TopImagePairs,
    filters: np.ndarray,
    thresholds: np.ndarray,
    *,
    batch_size: int,
    device: torch.device,
    cnn: CnnInputs | None = None,
    chunk_bytes: int | None = None,
) -> dict[str, MethodOutputs]:
    """Explain every pair with every method in one pass over ``maps`` ``[N, d, h, w]``, no annotations
    involved (to score the pairs too, feed a ground-truth consumer to the same :func:`stream_maps`)."""
    explaining = ExplainingConsumer(
        explainer, pairs, filters, thresholds, maps.shape, batch_size=batch_size, device=device, cnn=cnn
    )
    stream_maps(maps, [explaining], device, chunk_bytes)
    return explaining.outputs


@dataclass(frozen=True)
class CnnSource:
    """The CNN a CNN-running method re-runs: backbone name, weights (resolved), layer, classes of a
    checkpoint's head (None = inferred), and the setting that names the weights in errors."""

    name: str
    weights: str
    layer: str
    num_classes: int | None = None
    weights_what: str = "weights"


def cnn_inputs(
    source: CnnSource,
    preprocessing: Preprocessing,
    image_path: Callable[[int], Path],
    cnn_filters: np.ndarray,
    device: torch.device,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    root: Path | None = None,
) -> CnnInputs | None:
    """The CNN up to the layer and the image loader, when a registered method needs them and some
    evaluated filter is chosen for them; ``None`` otherwise (the CNN is then never built)."""
    if not cnn_filters.any() or not any(method.needs_cnn for method in REGISTRY.values()):
        return None
    extractor = build_feature_extractor(
        source.name, source.weights, source.layer, num_classes=source.num_classes, what=source.weights_what
    ).to(device)
    p = preprocessing

    def load_image(row: int) -> torch.Tensor:
        image = read_image(image_path(row), max_pixels=max_pixels, root=root)
        if isinstance(image, UnreadableImage):  # it had maps: the file changed after `features` ran
            raise ValueError(f"{image}; the image changed since the features stage read it: run features again")
        return preprocess(image, p.resize, p.crop, p.interpolation, p.mean, p.std)

    return CnnInputs(extractor, cnn_filters, load_image)
