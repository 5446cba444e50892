"""The per-filter explanation methods: a registry with one entry per method.

Each method turns a batch of (filter u, image i) pairs into the feature vectors ``[B, d]`` fed
to the explainer. Its inputs (:class:`PairBatch`) are the image's whole layer output ``maps``
``[B, d, h, w]``, the filter index ``u`` and threshold ``T_u`` of each pair, and, for a method
that re-runs the CNN, the normalised input images and the CNN up to the layer. ``pool`` is
global average pooling over h'×w' (what ResNet applies after the layer).

* ``original_image``: ``pool(F)`` — no masking; identical for every filter of an image.
* ``image_masking``: the normalised input is set to 0 where the upsampled map of u is <= T_u,
  then the CNN runs again to the layer: ``pool(Feat(x ⊙ [up(A_u) > T_u]))``. Zero is taken in
  the normalised space (the ImageNet mean colour), as the reference code multiplies the
  normalised tensor by the mask (infer_filter.py, ``img * (xf > threshold)``).
* ``activation_masking``: ``pool(F ⊙ [A_u > T_u])`` at feature resolution.
* ``filter_attention`` (the paper's equation): ``F_k^att = cos(F_u, F_k) F_k`` for every filter
  k, with the cosine between the flattened h'×w' maps; ``pool(F^att) = cos(F_u, F_k) pool(F_k)``.
  An all-zero map has cosine 0 with everything.
* ``projection`` (the reference code's "filter attention"): ``pool(F ⊙ A_u / ||A_u||)``, a
  spatial reweighting by u's own map (an all-zero map gives a zero vector).

Adding a method is one new :data:`REGISTRY` entry: the explaining pass, the word search, the
metrics, the tables and the heatmaps iterate the registry and read only the entry's flags.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf

from lavise.features.pooling import pool
from lavise.metrics.overlap import activation_regions


@dataclass(frozen=True)
class PairBatch:
    """The inputs of one batch of (filter, image) pairs (``B`` pairs, or ``B`` images for a method
    that ignores the filter: then only ``maps`` is set)."""

    maps: torch.Tensor  # [B, d, h, w]: the layer output of each pair's image
    filters: torch.Tensor | None = None  # int64 [B]: channel index u of each pair
    thresholds: torch.Tensor | None = None  # [B]: T_u of each pair's filter
    images: torch.Tensor | None = None  # [B, 3, S, S]: normalised input images (methods that need the CNN)
    cnn: Callable[[torch.Tensor], torch.Tensor] | None = None  # images -> the layer's maps [B, d, h, w]


@dataclass(frozen=True)
class Method:
    """One explanation method and what the explaining pass must give it.

    ``per_filter``: False for a method that ignores the filter (one vector per image, shared by
    all its pairs). ``needs_cnn``: the method re-runs the CNN on edited input images, so it runs
    only on the filters chosen for it (it costs a forward pass per pair). ``constant_without_region``:
    every pair whose map never exceeds ``T_u`` gets the same vector, so its words are searched once.
    """

    name: str
    features: Callable[[PairBatch], torch.Tensor]  # PairBatch -> explainer input [B, d]
    per_filter: bool = True
    needs_cnn: bool = False
    constant_without_region: bool = False

    def __post_init__(self) -> None:
        if self.needs_cnn and not self.per_filter:
            raise ValueError(f"method {self.name!r}: a method that re-runs the CNN is explained per filter")


def _filter_maps(maps: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Each pair's own map A_u, flattened: ``[B, h·w]``."""
    index = filters.to(device=maps.device, dtype=torch.int64)
    return maps[torch.arange(maps.shape[0], device=maps.device), index].flatten(1)


def activation_masking(maps: torch.Tensor, filters: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """``pool(F ⊙ [A_u > T_u])`` for each pair; ``thresholds`` is T of each pair's filter ``[B]``."""
    keep = (_filter_maps(maps, filters) > thresholds.to(maps)[:, None]).to(maps.dtype)
    return torch.einsum("bdn,bn->bd", maps.flatten(2), keep) / keep.shape[1]


def filter_attention(maps: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """``pool(F^att)`` with ``F_k^att = cos(F_u, F_k) F_k`` (the paper's equation)."""
    flat = maps.flatten(2)
    unit = nnf.normalize(flat, dim=2, eps=1e-12)
    own = _filter_maps(unit.unflatten(2, maps.shape[2:]), filters)
    cosine = torch.einsum("bdn,bn->bd", unit, own)
    return cosine * flat.mean(dim=2)


def projection(maps: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """``pool(F ⊙ A_u / ||A_u||)`` (the reference code's implementation)."""
    own = _filter_maps(maps, filters)
    weights = own / own.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return torch.einsum("bdn,bn->bd", maps.flatten(2), weights) / weights.shape[1]


def mask_images(images: torch.Tensor, filter_maps: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Zero normalised images ``[B, 3, S, S]`` where the upsampled map ``[B, h, w]`` is <= T."""
    keep = activation_regions(filter_maps.to(images.dtype), thresholds, images.shape[-1])
    return images * keep[:, None].to(images.dtype)


def image_masking(
    images: torch.Tensor,
    maps: torch.Tensor,
    filters: torch.Tensor,
    thresholds: torch.Tensor,
    cnn: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """``pool(Feat(x ⊙ [up(A_u) > T_u]))``: mask each pair's image by its filter's region, re-run the CNN."""
    filter_maps = maps[torch.arange(maps.shape[0], device=maps.device), filters]  # [B, h, w]
    masked = mask_images(images, filter_maps, thresholds)
    with torch.inference_mode():
        return pool(cnn(masked).float())


REGISTRY: dict[str, Method] = {
    method.name: method
    for method in (
        Method("original_image", lambda batch: pool(batch.maps), per_filter=False),
        Method(
            "image_masking",
            lambda batch: image_masking(batch.images, batch.maps, batch.filters, batch.thresholds, batch.cnn),
            needs_cnn=True,
        ),
        Method(
            "activation_masking",
            lambda batch: activation_masking(batch.maps, batch.filters, batch.thresholds),
            constant_without_region=True,  # F ⊙ 0 pools to the zero vector
        ),
        Method("filter_attention", lambda batch: filter_attention(batch.maps, batch.filters)),
        Method("projection", lambda batch: projection(batch.maps, batch.filters)),
    )
}


def method_named(name: str) -> Method:
    """The registry entry ``name``; a ValueError listing the registered methods otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; expected one of {tuple(REGISTRY)}")
    return REGISTRY[name]
