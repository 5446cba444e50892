"""The pixel transforms: the shared image/mask geometry (sizes, alignment, cell coverage), the
seeded random crop, and the uint8 -> normalised model input."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as tvf

from lavise.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    mask_to_grid,
    masks_to_crop,
    normalize,
    normalize_uint8,
    preprocess,
    random_resized_crop_box,
    resize_shorter_side,
    resized_size,
    to_model_input,
    transform_geometry,
)


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [(480, 640, (256, 341)), (640, 480, (341, 256)), (300, 300, (256, 256)), (100, 333, (256, 852))],
)
def test_resized_size_hand_computed(height: int, width: int, expected: tuple[int, int]) -> None:
    assert resized_size(height, width, 256) == expected


@pytest.mark.parametrize(("height", "width"), [(480, 640), (333, 500), (500, 375), (97, 1001)])
def test_resized_size_matches_torchvision(height: int, width: int) -> None:
    resized = tvf.resize(torch.zeros(1, height, width), [256], antialias=True)
    assert resized_size(height, width, 256) == tuple(resized.shape[-2:])


def test_resized_size_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="positive"):
        resized_size(0, 10, 256)


def test_transform_geometry_identity_when_sizes_match() -> None:
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(transform_geometry(x, 32, 32), x)


def test_transform_geometry_crops_centre() -> None:
    # 40x40 already at resize 40 -> only the centre 20x20 crop, rows/cols 10..29.
    x = torch.arange(40 * 40, dtype=torch.float32).view(1, 40, 40)
    torch.testing.assert_close(transform_geometry(x, 40, 20), x[:, 10:30, 10:30])


def test_square_maps_to_known_crop_pixels() -> None:
    # 512x512, square rows/cols 64..191 -> x0.5 -> 32..95 -> crop offset 16 -> 16..79.
    mask = torch.zeros(1, 512, 512, dtype=torch.bool)
    mask[0, 64:192, 64:192] = True
    soft = masks_to_crop(mask, 256, 224)
    assert soft.shape == (1, 224, 224) and soft.dtype == torch.float32
    expected = torch.zeros(224, 224, dtype=torch.bool)
    expected[16:80, 16:80] = True
    assert torch.equal(soft[0] >= 0.5, expected)
    assert float(soft.min()) >= 0.0 and float(soft.max()) <= 1.0


def test_image_and_mask_stay_aligned_on_non_square_image() -> None:
    # A white rectangle in a 300x500 black image: after the shared mapping, the pixels the mask
    # marks are the white ones.
    image = torch.zeros(3, 300, 500, dtype=torch.uint8)
    mask = torch.zeros(1, 300, 500, dtype=torch.bool)
    image[:, 90:210, 200:330] = 255
    mask[0, 90:210, 200:330] = True
    crop_image = transform_geometry(image, 256, 224)
    soft = masks_to_crop(mask, 256, 224)
    white = crop_image[0] >= 128
    assert white.any()
    assert torch.equal(white, soft[0] >= 0.5)


def test_masks_to_crop_empty() -> None:
    assert masks_to_crop(torch.zeros(0, 30, 40, dtype=torch.bool), 32, 16).shape == (0, 16, 16)


def test_mask_to_grid_hand_computed() -> None:
    soft = torch.zeros(1, 4, 4)
    soft[0, :2, :2] = 1.0
    soft[0, 2, 2:] = 1.0  # half of the bottom-right cell
    expected = torch.tensor([[[1.0, 0.0], [0.0, 0.5]]])
    torch.testing.assert_close(mask_to_grid(soft, (2, 2)), expected)


def test_mask_to_grid_matches_naive_cell_means() -> None:
    generator = torch.Generator().manual_seed(0)
    soft = torch.rand(3, 224, 224, generator=generator)
    grid = mask_to_grid(soft, (7, 7))
    naive = torch.empty(3, 7, 7)
    for n in range(3):
        for row in range(7):
            for col in range(7):
                naive[n, row, col] = soft[n, row * 32 : (row + 1) * 32, col * 32 : (col + 1) * 32].mean()
    torch.testing.assert_close(grid, naive)


def test_mask_to_grid_empty() -> None:
    assert mask_to_grid(torch.zeros(0, 8, 8), (2, 3)).shape == (0, 2, 3)


def test_bool_masks_match_float_interpolation_to_one_level() -> None:
    generator = torch.Generator().manual_seed(2)
    masks = torch.rand(4, 90, 130, generator=generator) > 0.7
    fast = masks_to_crop(masks, 64, 56)
    exact = masks_to_crop(masks.float(), 64, 56)
    assert float((fast - exact).abs().max()) <= 1.0 / 255


def test_resize_shorter_side_is_the_first_half_of_the_geometry() -> None:
    image = torch.randint(0, 256, (3, 50, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    resized = resize_shorter_side(image, 40)
    assert resized.shape == (3, 40, 64) and resized.dtype == torch.uint8
    assert torch.equal(tvf.center_crop(resized, [32, 32]), transform_geometry(image, 40, 32))


def test_random_resized_crop_box_falls_back_to_the_centred_square() -> None:
    # No crop of 2-3x the image area fits: after ten tries, the centred square of side min(h, w).
    generator = torch.Generator().manual_seed(0)
    assert random_resized_crop_box(30, 50, generator, scale=(2.0, 3.0), ratio=(1.0, 1.0)) == (0, 10, 30, 30)


def test_random_resized_crop_box_whole_image_at_scale_one() -> None:
    # scale 1 and ratio 1 on a square: the only box is the whole image at (0, 0).
    generator = torch.Generator().manual_seed(1)
    assert random_resized_crop_box(20, 20, generator, scale=(1.0, 1.0), ratio=(1.0, 1.0)) == (0, 0, 20, 20)


def test_normalize_uint8_hand_computed() -> None:
    image = torch.zeros(3, 1, 2, dtype=torch.uint8)
    image[:, 0, 1] = 255
    out = normalize_uint8(image)
    assert out.dtype == torch.float32
    for channel, (mean, std) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD)):
        assert out[channel, 0, 0].item() == pytest.approx(-mean / std)
        assert out[channel, 0, 1].item() == pytest.approx((1 - mean) / std)


def test_to_model_input_is_normalised_and_channels_last() -> None:
    batch = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    inputs = to_model_input(batch, torch.device("cpu"))
    assert inputs.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(inputs, normalize(batch.float() / 255.0))
    square = batch[0, :, :, :4].contiguous()
    assert torch.equal(preprocess(square, 4, 4), normalize_uint8(square))
