"""Every pixel transform: the single resize -> centre-crop mapping shared by images and their
masks, and the normalisation of model inputs.

FACT2023 cropped images and masks differently, so the pooled "object" vectors described pixels
that were not the object. Here every image and every mask goes through ``transform_geometry``
and nothing else, so a pixel of the crop means the same place in both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
import torchvision.transforms.v2.functional as tvf
from torchvision.transforms import InterpolationMode


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


def transform_geometry(x: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    """Resize the shorter side to ``resize`` (bilinear, antialiased), then centre-crop ``crop``.

    Works on uint8 images and float masks alike (``[..., H, W]``), so the two can never drift.
    """
    if x.ndim < 2:
        raise ValueError(f"expected a tensor [..., H, W], got shape {tuple(x.shape)}")
    resized = tvf.resize(x, [resize], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return tvf.center_crop(resized, [crop, crop])


def masks_to_crop(masks: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    """Map binary (or soft) masks ``[n, H, W]`` to soft masks ``[n, crop, crop]`` in [0, 1].

    A crop pixel holds the fraction of it the object covers; ``>= 0.5`` is the binary mask at
    crop resolution (docs/ARCHITECTURE.md). Binary masks are interpolated as uint8 0/255 through
    torchvision's vectorised uint8 kernel (3x faster than float, the per-image bottleneck of
    the features workers); the soft values are then exact to about 1/255.
    """
    if masks.ndim != 3:
        raise ValueError(f"expected masks [n, H, W], got shape {tuple(masks.shape)}")
    if masks.shape[0] == 0:
        return torch.zeros((0, crop, crop), dtype=torch.float32)
    if masks.dtype == torch.bool:
        soft = transform_geometry(masks.to(torch.uint8) * 255, resize, crop).to(torch.float32) / 255.0
        return soft
    soft = transform_geometry(masks.to(torch.float32), resize, crop)
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


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std normalisation of float images in [0, 1] (``[..., 3, H, W]``)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def preprocess(img_uint8: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    """Resize -> centre-crop -> normalise an RGB uint8 image to float ``[3, crop, crop]``.

    The geometry runs on uint8 (torchvision's fast path) through the same
    ``transform_geometry`` the masks use.
    """
    if img_uint8.dtype != torch.uint8 or img_uint8.ndim != 3 or img_uint8.shape[0] != 3:
        raise ValueError(f"expected an RGB uint8 image [3, H, W], got {img_uint8.dtype} {tuple(img_uint8.shape)}")
    cropped = transform_geometry(img_uint8, resize, crop)
    return normalize(cropped.to(torch.float32) / 255.0)
