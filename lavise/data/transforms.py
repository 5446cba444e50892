"""Every pixel transform: the single resize -> centre-crop mapping shared by images and their
masks, the seeded random crop of the target CNN's augmentation, and the normalisation of model
inputs (uint8 -> normalised float, written once here).

Which resize, crop, interpolation, mean and std a model gets is a :class:`Preprocessing`:
the model's own preset (its weights' or its timm config's, :mod:`lavise.models.presets`) with any
value the user set on top (:func:`resolve_preprocessing`), or :data:`DEFAULT_PREPROCESSING`
(256 -> 224, bilinear, ImageNet statistics) for weights that name no preset.

FACT2023 cropped images and masks differently, so the pooled "object" vectors described pixels
that were not the object. Here every image and every mask goes through ``transform_geometry``
and nothing else, so a pixel of the crop means the same place in both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as nnf
import torchvision.transforms.v2.functional as tvf
from torchvision.transforms import InterpolationMode

from lavise.options import INTERPOLATIONS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def interpolation_mode(name: str) -> InterpolationMode:
    """torchvision's mode for one of :data:`lavise.options.INTERPOLATIONS`."""
    if name not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {name!r}; valid: {', '.join(INTERPOLATIONS)}")
    return InterpolationMode(name)


def resized_size(height: int, width: int, resize: int) -> tuple[int, int]:
    """Size after torchvision ``Resize(resize)``: shorter side -> ``resize``, aspect kept.

    The longer side is truncated (``int``), exactly as torchvision computes it, so callers can
    predict the geometry without touching pixels.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if resize <= 0:
        raise ValueError(f"resize must be positive, got {resize}")
    if width <= height:
        return int(resize * height / width), resize
    return resize, int(resize * width / height)


def resize_shorter_side(x: torch.Tensor, size: int, interpolation: str = "bilinear") -> torch.Tensor:
    """Antialiased resize of ``[..., H, W]`` so the shorter side is ``size``: the first half of
    ``transform_geometry``, on its own so a resized image can be cached before cropping.
    (``nearest`` has no antialiasing; torchvision ignores the flag for it.)"""
    return tvf.resize(x, [size], interpolation=interpolation_mode(interpolation), antialias=True)


def transform_geometry(x: torch.Tensor, resize: int, crop: int, interpolation: str = "bilinear") -> torch.Tensor:
    """Resize the shorter side to ``resize`` (antialiased ``interpolation``), then centre-crop ``crop``.

    Works on uint8 images and float masks alike (``[..., H, W]``), so the two can never drift.
    """
    if x.ndim < 2:
        raise ValueError(f"expected a tensor [..., H, W], got shape {tuple(x.shape)}")
    return tvf.center_crop(resize_shorter_side(x, resize, interpolation), [crop, crop])


def random_resized_crop_box(
    height: int,
    width: int,
    generator: torch.Generator,
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop covering ``scale`` of the area with aspect in ``ratio``.

    Same sampling as torchvision's RandomResizedCrop (ten tries, then the centred square), but
    from an explicit generator so that the crops depend only on the seed, not on global RNG
    state or worker scheduling.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(3, generator=generator, dtype=torch.float64).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(u[2] * (height - h + 1))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def masks_to_crop(masks: torch.Tensor, resize: int, crop: int, interpolation: str = "bilinear") -> torch.Tensor:
    """Map binary (or soft) masks ``[n, H, W]`` to soft masks ``[n, crop, crop]`` in [0, 1].

    A crop pixel holds the fraction of it the object covers; ``>= 0.5`` is the binary mask at
    crop resolution (docs/ARCHITECTURE.md). Binary masks are interpolated as uint8 0/255 through
    torchvision's vectorised uint8 kernel (3x faster than float, the per-image bottleneck of
    the features workers); the soft values are then exact to about 1/255. ``interpolation`` is
    the images' (bicubic overshoot is saturated by the uint8 kernel, clamped on the float path).
    """
    if masks.ndim != 3:
        raise ValueError(f"expected masks [n, H, W], got shape {tuple(masks.shape)}")
    if masks.shape[0] == 0:
        return torch.zeros((0, crop, crop), dtype=torch.float32)
    if masks.dtype == torch.bool:
        soft = transform_geometry(masks.to(torch.uint8) * 255, resize, crop, interpolation).to(torch.float32) / 255.0
        return soft
    soft = transform_geometry(masks.to(torch.float32), resize, crop, interpolation)
    return soft.clamp_(0.0, 1.0)


def mask_to_grid(soft: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Average soft masks ``[n, crop, crop]`` over the cells of a ``grid`` = (h', w') feature map.

    Each cell gets the fraction of its crop pixels covered by the object, which is the weight the
    feature-map cell receives in pool(F * M).
    """
    if soft.ndim != 3:
        raise ValueError(f"expected soft masks [n, H, W], got shape {tuple(soft.shape)}")
    height, width = int(grid[0]), int(grid[1])
    if soft.shape[0] == 0:
        return soft.new_zeros((0, height, width))
    return nnf.adaptive_avg_pool2d(soft.unsqueeze(1), (height, width)).squeeze(1)


Triple = tuple[float, float, float]


def normalize(x: torch.Tensor, mean: Triple = IMAGENET_MEAN, std: Triple = IMAGENET_STD) -> torch.Tensor:
    """Per-channel mean/std normalisation of float images in [0, 1] (``[..., 3, H, W]``)."""
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - mean_t) / std_t


def normalize_uint8(images: torch.Tensor, mean: Triple = IMAGENET_MEAN, std: Triple = IMAGENET_STD) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` in 0..255 -> normalised float32: the one place the pixels a
    backbone sees are scaled, so every caller feeds it the same numbers."""
    return normalize(images.float() / 255.0, mean, std)


def to_model_input(
    batch_uint8: torch.Tensor, device: torch.device, mean: Triple = IMAGENET_MEAN, std: Triple = IMAGENET_STD
) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> normalised float on ``device``, channels_last (the layout the
    convolutions run fastest in)."""
    return normalize_uint8(batch_uint8.to(device), mean, std).contiguous(memory_format=torch.channels_last)


def preprocess(
    img_uint8: torch.Tensor,
    resize: int,
    crop: int,
    interpolation: str = "bilinear",
    mean: Triple = IMAGENET_MEAN,
    std: Triple = IMAGENET_STD,
) -> torch.Tensor:
    """Resize -> centre-crop -> normalise an RGB uint8 image to float ``[3, crop, crop]``.

    The geometry runs on uint8 (torchvision's fast path) through the same
    ``transform_geometry`` the masks use.
    """
    if img_uint8.dtype != torch.uint8 or img_uint8.ndim != 3 or img_uint8.shape[0] != 3:
        raise ValueError(f"expected an RGB uint8 image [3, H, W], got {img_uint8.dtype} {tuple(img_uint8.shape)}")
    return normalize_uint8(transform_geometry(img_uint8, resize, crop, interpolation), mean, std)


PREPROCESSING_KEYS = ("resize", "crop", "interpolation", "mean", "std")


@dataclass(frozen=True)
class Preprocessing:
    """What a model's inputs go through: shorter side to ``resize`` (``interpolation``,
    antialiased), centre crop ``crop``, then ``(x / 255 - mean) / std``; ``preset`` names where
    the values not set by the user came from (``default``, ``torchvision:<weights>``, ``timm:<cfg>``)."""

    resize: int
    crop: int
    interpolation: str
    mean: Triple
    std: Triple
    preset: str

    def record(self) -> dict[str, Any]:
        """The JSON form recorded in the cache's meta.json and fingerprint."""
        return {
            "resize": self.resize,
            "crop": self.crop,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "preset": self.preset,
        }


DEFAULT_PREPROCESSING = Preprocessing(256, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD, "default")


def resolve_preprocessing(preset: Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> Preprocessing:
    """The model's ``preset`` (``PREPROCESSING_KEYS`` and ``source``; None: the default) with
    every non-None value of ``overrides`` on top. ValueError naming the value for an unknown
    interpolation, a crop larger than the resize or a mean/std that is not 3 numbers (std > 0)."""
    base = dict(preset) if preset is not None else {**DEFAULT_PREPROCESSING.record(), "source": "default"}
    values = {key: overrides.get(key) if overrides.get(key) is not None else base[key] for key in PREPROCESSING_KEYS}
    interpolation_mode(values["interpolation"])
    for key in ("mean", "std"):
        triple = values[key]
        if len(triple) != 3 or (key == "std" and min(triple) <= 0):
            raise ValueError(f"{key} must be 3 numbers{' > 0' if key == 'std' else ''}, got {list(triple)}")
        values[key] = tuple(float(v) for v in triple)
    if values["crop"] > values["resize"]:
        raise ValueError(f"crop {values['crop']} is larger than resize {values['resize']}")
    return Preprocessing(
        int(values["resize"]),
        int(values["crop"]),
        values["interpolation"],
        values["mean"],
        values["std"],
        str(base["source"]),
    )
