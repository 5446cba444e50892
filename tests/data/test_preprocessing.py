"""Each model's preprocessing (lavise/data/transforms.py): interpolation shared by images and masks,
normalisation by the preset's statistics, the default unchanged."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as tvf
from torchvision.transforms import InterpolationMode

from lavise.data.transforms import (
    DEFAULT_PREPROCESSING,
    masks_to_crop,
    normalize_uint8,
    preprocess,
    resolve_preprocessing,
    transform_geometry,
)


def test_the_default_is_the_former_bilinear_imagenet_transform() -> None:
    image = torch.randint(0, 256, (3, 61, 83), dtype=torch.uint8)
    expected = tvf.center_crop(tvf.resize(image, [40], InterpolationMode.BILINEAR, antialias=True), [32, 32])
    assert torch.equal(transform_geometry(image, 40, 32), expected)
    assert torch.equal(transform_geometry(image, 40, 32, "bilinear"), expected)
    assert (DEFAULT_PREPROCESSING.resize, DEFAULT_PREPROCESSING.crop) == (256, 224)
    assert DEFAULT_PREPROCESSING.interpolation == "bilinear" and DEFAULT_PREPROCESSING.std == (0.229, 0.224, 0.225)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_masks_follow_the_images_interpolation(interpolation: str) -> None:
    mask = torch.zeros(1, 61, 83, dtype=torch.bool)
    mask[0, 10:40, 20:70] = True
    as_image = transform_geometry(mask.to(torch.uint8) * 255, 40, 32, interpolation).float() / 255.0
    soft = masks_to_crop(mask, 40, 32, interpolation)
    assert torch.equal(soft, as_image) and 0.0 <= soft.min() and soft.max() <= 1.0
    float_path = masks_to_crop(mask.float(), 40, 32, interpolation)  # the float path is clamped, not saturated
    assert 0.0 <= float_path.min() and float_path.max() <= 1.0
    if interpolation != "bilinear":
        assert not torch.equal(soft, masks_to_crop(mask, 40, 32))


def test_normalisation_uses_the_given_statistics() -> None:
    image = torch.randint(0, 256, (3, 5, 4), dtype=torch.uint8)
    mean, std = (0.5, 0.25, 0.0), (0.5, 2.0, 0.1)
    out = normalize_uint8(image, mean, std)
    for c in range(3):
        for i in range(5):
            for j in range(4):
                expected = (image[c, i, j].item() / 255.0 - mean[c]) / std[c]
                assert out[c, i, j].item() == pytest.approx(expected, rel=1e-6, abs=1e-6)
    big = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    direct = normalize_uint8(transform_geometry(big, 40, 32, "bicubic"), mean, std)
    assert torch.equal(preprocess(big, 40, 32, "bicubic", mean, std), direct)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"interpolation": "lanczos"}, r"unknown interpolation 'lanczos'; valid: bilinear, bicubic, nearest"),
        ({"std": [0.5, 0.0, 0.5]}, r"std must be 3 numbers > 0, got \[0.5, 0.0, 0.5\]"),
        ({"mean": [0.5, 0.5]}, r"mean must be 3 numbers, got \[0.5, 0.5\]"),
        ({"crop": 300}, r"crop 300 is larger than resize 256"),
    ],
)
def test_values_that_do_not_fit_are_one_line(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_preprocessing(None, overrides)
