"""The per-filter feature vectors fed to the explainer, one function per method.

All functions take a batch of (filter u, image i) pairs: the image's whole layer output
``maps`` ``[B, d, h, w]`` and the filter index ``u`` of each pair, and return ``[B, d]``.
``pool`` is global average pooling over h'×w' (what ResNet applies after the layer).

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
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf

from lavise.metrics.recall import activation_regions

METHODS = ("original_image", "image_masking", "activation_masking", "filter_attention", "projection")
FEATURE_METHODS = ("activation_masking", "filter_attention", "projection")


def pool(maps: torch.Tensor) -> torch.Tensor:
    """Global average pooling ``[B, d, h, w] -> [B, d]``."""
    return maps.mean(dim=(2, 3))


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


def feature_method(method: str, maps: torch.Tensor, filters: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Dispatch one of ``FEATURE_METHODS`` (those computed from the cached maps alone)."""
    if method == "activation_masking":
        return activation_masking(maps, filters, thresholds)
    if method == "filter_attention":
        return filter_attention(maps, filters)
    if method == "projection":
        return projection(maps, filters)
    raise ValueError(f"unknown feature method {method!r}; expected one of {FEATURE_METHODS}")


def mask_images(images: torch.Tensor, filter_maps: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Zero normalised images ``[B, 3, S, S]`` where the upsampled map ``[B, h, w]`` is <= T."""
    keep = activation_regions(filter_maps.to(images.dtype), thresholds, images.shape[-1])
    return images * keep[:, None].to(images.dtype)
