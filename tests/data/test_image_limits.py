"""Image files that must never reach a decoder, or must not pass as images: a header declaring more
pixels than the limit (``too_large``), a JPEG whose scan data libjpeg calls corrupt (``undecodable``)
and a path that resolves outside the dataset's raw folder (``outside_root``)."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from lavise.data import images
from lavise.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_STATUSES,
    UnreadableImage,
    check_image_files,
    declared_size,
    decode_jpegs_on_device,
    read_image,
    read_image_bytes,
)

ROOT = Path(__file__).resolve().parents[2]


def _jpeg(width: int = 160, height: int = 120, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((height, width, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _claiming(data: bytes, width: int, height: int) -> bytes:
    """``data`` with its baseline frame header (SOF0) rewritten to declare ``width`` x ``height``."""
    at = data.index(b"\xff\xc0")
    return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9 :]


def _truncated_with_end_marker(data: bytes) -> bytes:
    """The first two thirds of a JPEG with its end-of-image marker appended (libjpeg fills grey)."""
    return data[: len(data) * 2 // 3] + b"\xff\xd9"


# --------------------------------------------------------------------------------------------
# Pixel limit


def test_declared_size_reads_jpeg_and_png_headers() -> None:
    assert declared_size(_jpeg(160, 120)) == (160, 120)
    assert declared_size(_claiming(_jpeg(16, 16), 20000, 20000)) == (20000, 20000)
    buffer = io.BytesIO()
    Image.new("RGB", (33, 17)).save(buffer, "PNG")
    assert declared_size(buffer.getvalue()) == (33, 17)
    buffer = io.BytesIO()
    Image.new("RGB", (7, 5)).save(buffer, "BMP")  # any other format: PIL's header parser
    assert declared_size(buffer.getvalue()) == (7, 5)
    assert declared_size(b"definitely not an image") is None


_CHILD = textwrap.dedent(
    """
    import resource, sys
    from lavise.data.images import check_image_files, read_image
    from pathlib import Path
    # Address space for the imports already mapped plus 768 MB: a 20000x20000 RGB decode needs 1.2 GB.
    used = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (used + (768 << 20), resource.RLIM_INFINITY))
    path = Path(sys.argv[1])
    image = read_image(path)
    print(getattr(image, "status", "decoded"))
    print(getattr(image, "error", ""))
    print(check_image_files(path.parent, [path.name]).tolist()[0])
    """
)


def test_tiny_jpeg_claiming_20000x20000_is_too_large_without_decoding(tmp_path: Path) -> None:
    """The issue's 693-byte JPEG: refused from its header, in a child under RLIMIT_AS."""
    path = tmp_path / "bomb.jpg"
    path.write_bytes(_claiming(_jpeg(16, 16), 20000, 20000))
    assert path.stat().st_size < 1000
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, child.stderr[-2000:]
    status, error, checked = child.stdout.splitlines()[-3:]
    assert (status, checked) == ("too_large", "too_large")
    assert error == (
        f"{path}: its header declares 20000x20000 pixels (400000000), over the limit of "
        f"{DEFAULT_MAX_PIXELS} pixels; not decoded (raise the pixel limit to read it)"
    )


def test_pixel_limit_applies_on_every_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _jpeg(160, 120)
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    assert isinstance(read_image(path, max_pixels=160 * 120), torch.Tensor)  # the limit itself is allowed
    refused = read_image(path, max_pixels=160 * 120 - 1)
    assert isinstance(refused, UnreadableImage) and refused.status == "too_large"
    assert "declares 160x120 pixels (19200), over the limit of 19199 pixels" in refused.error
    assert check_image_files(tmp_path, ["a.jpg"], max_pixels=1000).tolist() == ["too_large"]
    assert check_image_files(tmp_path, ["a.jpg"]).tolist() == ["ok"]

    def no_decoder(*args: object, **kwargs: object) -> None:
        raise AssertionError("a decoder ran")

    monkeypatch.setattr(images.tvio, "decode_jpeg", no_decoder)
    monkeypatch.setattr(images, "_decode_with_torchvision", no_decoder)
    monkeypatch.setattr(images, "_decode_with_pil", no_decoder)
    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8)]
    (result,) = decode_jpegs_on_device(encoded, [str(path)], torch.device("cpu"), max_pixels=1000)
    assert result == refused._replace(error=refused.error.replace("19199", "1000"))
    assert read_image(path, max_pixels=1000).status == "too_large"


def test_feature_dataset_refuses_a_too_large_header_on_both_decode_routes(tmp_path: Path) -> None:
    from lavise.features.extract import ImageObjectsDataset

    (tmp_path / "a.jpg").write_bytes(_jpeg(160, 120))
    table = pa.table(
        {"image_id": [1], "path": ["a.jpg"], "height": [120], "width": [160], "status": ["ok"]},
    )
    objects = pa.table({"kind": pa.array([], pa.string()), "rle": pa.array([], pa.string()), "boxes": []})
    for decode in ("workers", "device"):
        dataset = ImageObjectsDataset(
            table, objects, np.array([0, 0]), tmp_path, 32, 32, (1, 1), decode=decode, max_pixels=1000
        )
        item = dataset[0]
        assert (item["status"], item["encoded"], item["image"]) == ("too_large", None, None), decode
        assert "declares 160x120 pixels" in item["error"]


# --------------------------------------------------------------------------------------------
# Corrupt JPEG data


def test_jpeg_truncated_with_end_marker_appended_is_undecodable(tmp_path: Path) -> None:
    """libjpeg fills the missing rows grey and only warns "Corrupt JPEG data": that is no image."""
    good = tmp_path / "good.jpg"
    good.write_bytes(_jpeg())
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(_truncated_with_end_marker(good.read_bytes()))
    assert isinstance(read_image(good), torch.Tensor)
    result = read_image(bad)
    assert isinstance(result, UnreadableImage) and result.status == "undecodable"
    assert result.error == f"{bad}: corrupt JPEG data (libjpeg: Corrupt JPEG data: premature end of data segment)"


def test_corrupt_jpeg_is_not_accepted_by_the_pil_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow silences libjpeg's warnings, so JPEG data torchvision refuses is not handed to it."""
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(_truncated_with_end_marker(_jpeg()))

    def refuse(data: bytes) -> torch.Tensor:
        raise RuntimeError("refused")

    monkeypatch.setattr(images, "_decode_with_torchvision", refuse)
    result = read_image(bad)
    assert isinstance(result, UnreadableImage) and result.status == "undecodable", result
    other = tmp_path / "a.bmp"  # the other formats still fall back to PIL
    Image.new("RGB", (7, 5), (10, 20, 30)).save(other, "BMP")
    assert torch.equal(read_image(other)[:, 0, 0], torch.tensor([10, 20, 30], dtype=torch.uint8))


def test_extraneous_bytes_before_the_end_marker_are_harmless(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """Every pixel decoded; libjpeg only notes garbage between the scan and EOI. Its message is
    not printed, and what other code writes to stderr meanwhile is passed on."""
    data = _jpeg()
    path = tmp_path / "extra.jpg"
    path.write_bytes(data[:-2] + b"\x00\x11" + data[-2:])
    decoded = read_image(path)
    assert isinstance(decoded, torch.Tensor)
    assert torch.equal(decoded, read_image(_write(tmp_path / "clean.jpg", data)))
    read_image(_write(tmp_path / "bad.jpg", _truncated_with_end_marker(data)))
    with images._libjpeg_messages() as messages:
        os.write(2, b"someone else's line\n")
    assert messages == []
    captured = capfd.readouterr()
    assert "Corrupt JPEG data" not in captured.err and "someone else's line" in captured.err


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------------------------
# Paths that leave the raw folder


def test_symlink_leaving_the_raw_folder_is_outside_root_and_never_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    _write(outside / "secret.jpg", _jpeg())
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "images" / "leak.jpg").symlink_to(outside / "secret.jpg")
    _write(raw / "images" / "inside.jpg", _jpeg(seed=1))
    (raw / "images" / "alias.jpg").symlink_to(raw / "images" / "inside.jpg")  # stays inside: fine
    linked_raw = tmp_path / "linked_raw"
    linked_raw.symlink_to(raw)  # the raw folder itself may be a link (e.g. to a larger disk)
    names = ["images/leak.jpg", "images/inside.jpg", "images/alias.jpg", "../elsewhere/secret.jpg"]
    assert check_image_files(linked_raw, names).tolist() == ["outside_root", "ok", "ok", "outside_root"]
    leak = linked_raw / "images" / "leak.jpg"
    expected = UnreadableImage(
        "outside_root",
        f"{leak}: resolves to {outside / 'secret.jpg'}, outside {linked_raw}; not read (put the file inside "
        f"that folder; the folder itself may be a link)",
    )
    read = []
    original = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self) or original(self))
    assert read_image_bytes(leak, root=linked_raw) == expected
    assert read_image(leak, root=linked_raw) == expected
    assert read == []  # never opened
    assert isinstance(read_image_bytes(linked_raw / "images" / "alias.jpg", root=linked_raw), bytes)
    assert "outside_root" in IMAGE_STATUSES and "too_large" in IMAGE_STATUSES


def test_feature_dataset_records_outside_root(tmp_path: Path) -> None:
    from lavise.features.extract import ImageObjectsDataset

    outside = _write(tmp_path / "secret.jpg", _jpeg())
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "leak.jpg").symlink_to(outside)
    table = pa.table({"image_id": [1], "path": ["leak.jpg"], "height": [120], "width": [160], "status": ["ok"]})
    objects = pa.table({"kind": pa.array([], pa.string()), "rle": pa.array([], pa.string()), "boxes": []})
    item = ImageObjectsDataset(table, objects, np.array([0, 0]), raw, 32, 32, (1, 1))[0]
    assert item["status"] == "outside_root" and item["error"].startswith(f"{raw / 'leak.jpg'}: resolves to")


def test_annotations_count_images_over_the_pixel_limit(tmp_path) -> None:
    """The annotations stage applies `images.max_pixels` too: a file over it is `too_large`, counted."""
    import numpy as np
    from PIL import Image

    from lavise.data.images import TOO_LARGE, check_image_files

    Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(tmp_path / "small.jpg")
    statuses = check_image_files(tmp_path, ["small.jpg"], 40 * 50 - 1)
    assert statuses.tolist() == [TOO_LARGE]
    assert check_image_files(tmp_path, ["small.jpg"], 40 * 50).tolist() == ["ok"]
