"""Robust decoding: every odd file either becomes RGB or a recorded status and message."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lavise.data import images
from lavise.data.images import (
    IMAGE_STATUSES,
    UndecodableImageError,
    UnreadableImage,
    check_image_files,
    decode_image,
    decode_jpegs_on_device,
    device_decodable_size,
    read_image,
    read_image_bytes,
)
from lavise.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize, preprocess, transform_geometry


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


def test_read_image_gives_the_image_or_a_status_record(tmp_path: Path, pixels: np.ndarray) -> None:
    path = _save(tmp_path / "a.png", Image.fromarray(pixels))
    image = read_image(path)
    assert isinstance(image, torch.Tensor) and torch.equal(image, decode_image(path))
    assert read_image_bytes(path) == path.read_bytes()
    absent = tmp_path / "absent.jpg"
    assert read_image(absent) == UnreadableImage("missing", f"{absent}: file not found")
    assert read_image_bytes(absent) == UnreadableImage("missing", f"{absent}: file not found")
    (tmp_path / "e.jpg").write_bytes(b"")
    assert read_image(tmp_path / "e.jpg") == UnreadableImage("undecodable", f"{tmp_path / 'e.jpg'}: empty file")
    (tmp_path / "x.jpg").write_bytes(b"definitely not an image" * 5)
    corrupt = read_image(tmp_path / "x.jpg")
    assert corrupt == UnreadableImage(
        "undecodable", f"{tmp_path / 'x.jpg'}: no image size in its header (not an image, or a damaged header)"
    )
    truncated = _save(tmp_path / "t.jpg", Image.fromarray(pixels)).read_bytes()
    (tmp_path / "t.jpg").write_bytes(truncated[: len(truncated) // 2])  # header intact: the decoders say why
    assert read_image(tmp_path / "t.jpg").error.startswith(f"{tmp_path / 't.jpg'}: torchvision: ")
    assert IMAGE_STATUSES == ("ok", "missing", "undecodable", "too_large", "outside_root")
    assert str(read_image(absent)) == f"missing image {absent}: file not found"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
        (OSError("device gone"), "device gone"),
    ],
)
def test_a_file_the_os_will_not_read_is_undecodable_everywhere(
    tmp_path: Path, pixels: np.ndarray, monkeypatch: pytest.MonkeyPatch, error: OSError, reason: str
) -> None:
    """As the annotations stage's check_image_file already says: the file holds no image for this run."""
    path = _save(tmp_path / "a.jpg", Image.fromarray(pixels))

    def refuse(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(Path, "read_bytes", refuse)
    monkeypatch.setattr(images, "open", refuse, raising=False)
    expected = UnreadableImage("undecodable", f"{path}: cannot read: {reason}")
    assert read_image(path) == read_image_bytes(path) == expected
    assert check_image_files(tmp_path, ["a.jpg"]).tolist() == ["undecodable"]


def test_no_regular_file_is_missing_everywhere(tmp_path: Path, pixels: np.ndarray) -> None:
    path = _save(tmp_path / "a.jpg", Image.fromarray(pixels))
    (tmp_path / "folder.jpg").mkdir()
    folder = tmp_path / "folder.jpg"
    assert (
        read_image(folder)
        == read_image_bytes(folder)
        == UnreadableImage("missing", f"{folder}: a directory, not a file")
    )
    assert read_image(path / "b.jpg") == UnreadableImage("missing", f"{path / 'b.jpg'}: file not found")
    assert check_image_files(tmp_path, ["folder.jpg", "a.jpg/b.jpg"]).tolist() == ["missing", "missing"]


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


def _corrupt_scan(data: bytes) -> bytes:
    """Keep the headers and the final EOI, replace the entropy-coded data with bogus markers."""
    start = data.index(b"\xff\xda") + 20
    filler = (b"\xff\xc4" * len(data))[: len(data) - 2 - start]
    return data[:start] + filler + data[-2:]


@pytest.mark.parametrize(
    ("kind", "accepted"),
    [
        ("baseline", True),
        ("gray", True),
        ("progressive", True),
        ("restart_markers", True),
        ("exif", True),
        ("cmyk", False),
        ("png", False),
        ("truncated", False),
        ("garbage", False),
        ("lossless_frame", False),
    ],
)
def test_device_decodable_size(tmp_path: Path, pixels: np.ndarray, kind: str, accepted: bool) -> None:
    image = Image.fromarray(pixels)
    save = {
        "gray": (image.convert("L"), {}),
        "progressive": (image, {"progressive": True}),
        "restart_markers": (image, {"restart_marker_blocks": 2}),
        "exif": (image, {"exif": Image.Exif()}),
        "cmyk": (image.convert("CMYK"), {}),
        "png": (image, {"format": "PNG"}),
    }
    picture, options = save.get(kind, (image, {}))
    data = _save(tmp_path / "a.jpg", picture, **({"format": "JPEG"} | options)).read_bytes()
    if kind == "truncated":
        data = data[: len(data) // 2]
    elif kind == "garbage":
        data = b"\xff\xd8" + b"\x00" * 100 + b"\xff\xd9"
    elif kind == "lossless_frame":
        data = data.replace(b"\xff\xc0", b"\xff\xc3", 1)
    assert device_decodable_size(data) == ((60, 80) if accepted else None)


def test_device_decodable_size_reads_the_frame_header_not_the_pixels(tmp_path: Path, pixels: np.ndarray) -> None:
    data = bytearray(_save(tmp_path / "a.jpg", Image.fromarray(pixels)).read_bytes())
    frame = data.index(b"\xff\xc0")
    data[frame + 5 : frame + 9] = (1234).to_bytes(2, "big") + (567).to_bytes(2, "big")
    assert device_decodable_size(bytes(data)) == (1234, 567)


def test_decode_jpegs_on_device_matches_cpu_decoder_and_isolates_failures(tmp_path: Path, pixels: np.ndarray) -> None:
    good = _save(tmp_path / "a.jpg", Image.fromarray(pixels), quality=90).read_bytes()
    gray = _save(tmp_path / "g.jpg", Image.fromarray(pixels).convert("L")).read_bytes()
    bad = _corrupt_scan(good)
    assert device_decodable_size(bad) == (60, 80)
    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in (good, bad, gray)]
    results = decode_jpegs_on_device(encoded, ["a.jpg", "bad.jpg", "g.jpg"], torch.device("cpu"))
    assert torch.equal(results[0], decode_image(tmp_path / "a.jpg"))
    assert torch.equal(results[2], decode_image(tmp_path / "g.jpg"))
    assert isinstance(results[1], UnreadableImage) and results[1].status == "undecodable"
    assert results[1].error.startswith("bad.jpg: torchvision: ")
    (tmp_path / "bad.jpg").write_bytes(bad)
    with pytest.raises(UndecodableImageError) as cpu_error:
        decode_image(tmp_path / "bad.jpg")
    assert str(cpu_error.value).replace(str(tmp_path / "bad.jpg"), "bad.jpg") == results[1].error
    assert read_image(tmp_path / "bad.jpg") == UnreadableImage("undecodable", str(cpu_error.value))
    assert read_image("bad.jpg", bad) == results[1]  # the bytes already read, the same record
    assert decode_jpegs_on_device([], [], torch.device("cpu")) == []


def test_check_image_files_catches_truncation_behind_a_valid_header(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    picture.save(tmp_path / "ok.jpg", quality=90)
    picture.save(tmp_path / "ok.png")
    jpeg, png = (tmp_path / "ok.jpg").read_bytes(), (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "padded.jpg").write_bytes(jpeg + b"\x00" * 300)
    (tmp_path / "trailer.jpg").write_bytes(jpeg + b"camera trailer bytes")  # decodes: still ok
    picture.save(tmp_path / "gif.gif")
    names = ["ok.jpg", "ok.png", "cut.jpg", "cut.png", "padded.jpg", "trailer.jpg", "gif.gif", "absent.jpg"]
    with Image.open(tmp_path / "cut.jpg") as image:
        assert image.size == (60, 40)  # the header alone cannot tell
    assert check_image_files(tmp_path, names).tolist() == [
        "ok",
        "ok",
        "undecodable",
        "undecodable",
        "ok",
        "ok",
        "ok",
        "missing",
    ]


def test_an_animated_gif_decodes_to_its_first_frame(tmp_path: Path) -> None:
    first = np.zeros((12, 20, 3), dtype=np.uint8)
    first[:, :10] = 255
    second = np.full((12, 20, 3), 80, dtype=np.uint8)
    path = tmp_path / "animated.gif"
    Image.fromarray(first).save(path, save_all=True, append_images=[Image.fromarray(second)])
    image = read_image(path)
    assert image.shape == (3, 12, 20)
    assert image[:, :, :10].min() > 200 and image[:, :, 10:].max() < 50
