"""Robust image decoding and the deterministic evaluation transform.

Reference datasets contain grayscale, CMYK, PNG-files-named-.jpg and the odd corrupt or
truncated file. One bad file must not stop a stage that runs for hours, so decoding either
returns an RGB uint8 tensor or raises ``UndecodableImageError`` that callers record and skip.
torchvision's libjpeg-turbo decoder is tried first (about twice as fast as PIL); PIL is the
fallback for formats or variants torchvision rejects.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision.io as tvio
from PIL import Image, UnidentifiedImageError

from lavise.geometry import transform_geometry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class UndecodableImageError(Exception):
    """The file exists but holds no image that either decoder can read completely."""


def _decode_with_torchvision(data: bytes) -> torch.Tensor:
    buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities.*")
        return tvio.decode_image(buffer, mode=tvio.ImageReadMode.RGB)


def _decode_with_pil(data: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        rgb = np.asarray(image.convert("RGB"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def _reason(error: Exception) -> str:
    """The message of a torchvision C++ error without its source-file location."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return re.sub(r"^\w+, \S+:\d+, ", "", lines[0])[:200]


def decode_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """Decode ``path`` to an RGB uint8 tensor ``[3, H, W]`` (EXIF orientation not applied).

    Orientation is left as stored because annotation coordinates refer to the stored pixels.
    Raises ``FileNotFoundError`` for a missing file and ``UndecodableImageError`` for an empty,
    corrupt or truncated one.
    """
    data = Path(path).read_bytes()
    if not data:
        raise UndecodableImageError(f"{path}: empty file")
    try:
        return _decode_with_torchvision(data)
    except (RuntimeError, ValueError) as torchvision_error:
        try:
            return _decode_with_pil(data)
        except (
            OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError
        ) as pil_error:
            raise UndecodableImageError(
                f"{path}: torchvision: {_reason(torchvision_error)}; "
                f"PIL: {pil_error}"
            ) from pil_error


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
        raise ValueError(
            f"expected an RGB uint8 image [3, H, W], got {img_uint8.dtype} {tuple(img_uint8.shape)}"
        )
    cropped = transform_geometry(img_uint8, resize, crop)
    return normalize(cropped.to(torch.float32) / 255.0)
