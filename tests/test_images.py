"""Robust decoding: every odd file either becomes RGB or a recorded UndecodableImageError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lavise.geometry import transform_geometry
from lavise.images import IMAGENET_MEAN, IMAGENET_STD, UndecodableImageError, decode_image, normalize, preprocess


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    rng = np.random.default_rng(0)
    smooth = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(smooth).resize((80, 60), Image.BILINEAR))


def _save(path: Path, image: Image.Image, **kwargs: object) -> Path:
    image.save(path, **kwargs)
    return path


def test_rgb_jpeg(tmp_path: Path, pixels: np.ndarray) -> None:
    decoded = decode_image(_save(tmp_path / "a.jpg", Image.fromarray(pixels), quality=95))
    assert decoded.dtype == torch.uint8 and decoded.shape == (3, 60, 80)
    error = np.abs(decoded.permute(1, 2, 0).numpy().astype(int) - pixels.astype(int))
    assert error.mean() < 6


def test_grayscale_becomes_rgb(tmp_path: Path, pixels: np.ndarray) -> None:
    decoded = decode_image(_save(tmp_path / "g.jpg", Image.fromarray(pixels).convert("L")))
    assert decoded.shape == (3, 60, 80)
    assert torch.equal(decoded[0], decoded[1]) and torch.equal(decoded[1], decoded[2])


def test_cmyk_becomes_rgb_like_pil(tmp_path: Path, pixels: np.ndarray) -> None:
    path = _save(tmp_path / "c.jpg", Image.fromarray(pixels).convert("CMYK"), quality=95)
    decoded = decode_image(path)
    with Image.open(path) as image:
        reference = np.asarray(image.convert("RGB")).astype(int)
    assert decoded.shape == (3, 60, 80)
    assert np.abs(decoded.permute(1, 2, 0).numpy().astype(int) - reference).mean() < 3


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P"])
def test_png_named_jpg(tmp_path: Path, pixels: np.ndarray, mode: str) -> None:
    path = _save(tmp_path / "p.jpg", Image.fromarray(pixels).convert(mode), format="PNG")
    decoded = decode_image(path)
    assert decoded.shape == (3, 60, 80)
    if mode == "RGB":
        assert np.array_equal(decoded.permute(1, 2, 0).numpy(), pixels)


def test_truncated_corrupt_and_empty_are_undecodable(tmp_path: Path, pixels: np.ndarray) -> None:
    data = _save(tmp_path / "a.jpg", Image.fromarray(pixels)).read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "x.jpg").write_bytes(b"definitely not an image" * 5)
    (tmp_path / "e.jpg").write_bytes(b"")
    for name in ["t.jpg", "x.jpg", "e.jpg"]:
        with pytest.raises(UndecodableImageError, match=name):
            decode_image(tmp_path / name)


def test_missing_file_is_not_undecodable(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        decode_image(tmp_path / "absent.jpg")


def test_normalize_hand_computed() -> None:
    x = torch.tensor(IMAGENET_MEAN).view(3, 1, 1).expand(3, 2, 2).clone()
    x[:, 0, 0] = 1.0
    out = normalize(x)
    assert torch.allclose(out[:, 1:, 1:], torch.zeros(3, 1, 1), atol=1e-6)
    expected = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    torch.testing.assert_close(out[:, 0, 0], expected)


def test_preprocess_is_geometry_then_normalize() -> None:
    image = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = preprocess(image, 40, 32)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    manual = normalize(transform_geometry(image, 40, 32).float() / 255)
    torch.testing.assert_close(out, manual)
    with pytest.raises(ValueError, match="uint8"):
        preprocess(image.float(), 40, 32)
