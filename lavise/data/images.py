"""Robust image decoding: every reader of image files goes through here.

Reference datasets contain grayscale, CMYK, PNG-files-named-.jpg and the odd corrupt or
truncated file. One bad file must not stop a stage that runs for hours, so decoding either
returns an RGB uint8 tensor or raises ``UndecodableImageError`` that callers record and skip.
torchvision's libjpeg-turbo decoder is tried first (about twice as fast as PIL); PIL is the
fallback for formats or variants torchvision rejects.

On a GPU, decoding can instead run batched on the device (nvJPEG through torchvision). nvJPEG
takes a narrower set of files than libjpeg-turbo and is less forgiving of damage, so only files
whose header ``device_decodable_size`` accepts are sent there; everything else, and anything
the device decoder still refuses, goes through ``decode_bytes`` exactly as on the CPU path.

An image file has one of three statuses, written once here (:data:`IMAGE_STATUSES`): ``ok``,
``missing`` (no regular file at the path) or ``undecodable`` (a file that gives no image: empty,
corrupt, truncated, or one the operating system refuses to read, such as permission denied or an
I/O error). The annotations stage records them per image (:func:`check_image_files`); a reader
that meets a bad file later gets the same status and a message naming the path from
:func:`read_image` (or :func:`read_image_bytes`), instead of an exception: the feature cache
records it, the target CNN's loader skips and counts it, a heatmap draws it grey.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torchvision.io as tvio
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

OK = "ok"
MISSING = "missing"
UNDECODABLE = "undecodable"
IMAGE_STATUSES = (OK, MISSING, UNDECODABLE)


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
    return decode_bytes(Path(path).read_bytes(), str(path))


def decode_bytes(data: bytes, label: str) -> torch.Tensor:
    """``decode_image`` on a file's bytes; ``label`` (the path) starts every error message."""
    if not data:
        raise UndecodableImageError(f"{label}: empty file")
    try:
        return _decode_with_torchvision(data)
    except (RuntimeError, ValueError) as torchvision_error:
        try:
            return _decode_with_pil(data)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as pil_error:
            raise UndecodableImageError(
                f"{label}: torchvision: {_reason(torchvision_error)}; PIL: {pil_error}"
            ) from pil_error


class UnreadableImage(NamedTuple):
    """A file that gave no image: ``status`` (``missing`` or ``undecodable``) and why, path first.

    ``str()`` is the one line every consumer logs, e.g. ``missing image a.jpg: file not found``.
    """

    status: str
    error: str

    def __str__(self) -> str:
        return f"{self.status} image {self.error}"


def read_image_bytes(path: str | os.PathLike[str]) -> bytes | UnreadableImage:
    """The bytes of ``path``, or an :class:`UnreadableImage` with the status ``check_image_file`` gives.

    No regular file at ``path`` is ``missing``; a file the operating system will not read
    (permission denied, an I/O error) is ``undecodable``: it holds no image for this run either.
    """
    try:
        return Path(path).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return UnreadableImage(MISSING, f"{path}: file not found")
    except IsADirectoryError:
        return UnreadableImage(MISSING, f"{path}: a directory, not a file")
    except OSError as error:
        return UnreadableImage(UNDECODABLE, f"{path}: cannot read: {error.strerror or error}")


def read_image(path: str | os.PathLike[str], data: bytes | None = None) -> torch.Tensor | UnreadableImage:
    """``decode_image`` that returns an :class:`UnreadableImage` instead of raising.

    RGB uint8 ``[3, H, W]`` for a readable file; ``missing`` or ``undecodable`` (see
    :func:`read_image_bytes`; for an empty, corrupt or truncated file the decoders' message)
    otherwise. ``data``: the file's bytes when the caller has already read them with
    ``read_image_bytes``. One bad file in a long run is then a record to count and skip, the same
    record wherever it is read.
    """
    if data is None:
        data = read_image_bytes(path)
        if isinstance(data, UnreadableImage):
            return data
    try:
        return decode_bytes(data, str(path))
    except UndecodableImageError as error:
        return UnreadableImage(UNDECODABLE, str(error))


# What a complete file of each format ends with, before any zero padding: JPEG's end-of-image
# marker, PNG's IEND chunk. A truncated file keeps its header but loses its ending.
END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}


def ends_complete(tail: bytes, image_format: str | None) -> bool:
    """Whether ``tail`` (the last bytes of a file) ends with ``image_format``'s end marker.

    False for formats without a known marker, and for files with trailing bytes after it (they
    may still decode: callers decode those to decide).
    """
    marker = END_MARKERS.get(image_format or "")
    return marker is not None and tail.rstrip(b"\x00").endswith(marker)


_TAIL_BYTES = 1024  # enough for the end marker behind any zero padding seen in practice


def _header_and_tail(path: str) -> tuple[str | None, bytes]:
    """The format PIL reads from the header and the file's last ``_TAIL_BYTES``, in one open."""
    with open(path, "rb") as file:
        with Image.open(file) as image:
            image_format = image.format
        size = file.seek(0, os.SEEK_END)
        file.seek(max(0, size - _TAIL_BYTES))
        return image_format, file.read()


def check_image_file(path: str) -> str:
    """Status of one file: ``ok``, ``missing`` or ``undecodable`` (see :func:`check_image_files`).

    No regular file is ``missing`` and a file the OS refuses to open ``undecodable``, the statuses
    :func:`read_image_bytes` gives when a later stage reads it.
    """
    if not os.path.isfile(path):
        return MISSING
    try:
        image_format, tail = _header_and_tail(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return UNDECODABLE
    if ends_complete(tail, image_format):
        return OK
    try:
        decode_image(path)
        return OK
    except UndecodableImageError:
        return UNDECODABLE


def check_image_files(raw_dir: Path, paths: list[str]) -> np.ndarray:
    """Status per image (object array): ``ok``, ``missing`` or ``undecodable``.

    A header parse catches files that are no image; a truncated file still has a valid header,
    so the last KiB is checked for the format's end marker as well. Only files without one
    (truncated, trailing bytes after the marker, or another format) are decoded in full, so the
    cost stays a header read for almost every image and a truncated download is counted when the
    annotation tables are built, not first discovered by `features`.
    """
    status = np.empty(len(paths), dtype=object)
    for index, relative in enumerate(tqdm(paths, desc="check image files", unit="img", mininterval=2.0)):
        status[index] = check_image_file(os.path.join(raw_dir, relative))
    return status


# Start-of-frame markers nvJPEG decodes: baseline, extended sequential and progressive Huffman.
# Lossless, hierarchical and arithmetic-coded frames go to the CPU decoders.
_DEVICE_FRAMES = {0xC0, 0xC1, 0xC2}
_OTHER_FRAMES = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE_MARKERS = {0x01, *range(0xD0, 0xD8)}


def device_decodable_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) if ``data`` is a complete JPEG the batched device decoder can take, else None.

    Accepted: starts with SOI, ends with EOI (a truncated file has none), one baseline, extended
    or progressive Huffman frame of 1 (grey) or 3 (YCbCr) components, no Adobe APP14 segment
    (CMYK, YCCK and untransformed RGB carry one). Reading only the marker segments costs
    microseconds, so workers route files without decoding them.
    """
    if len(data) < 4 or data[:2] != b"\xff\xd8" or not ends_complete(data, "JPEG"):
        return None
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker == 0xFF:
            offset += 1
            continue
        if marker in _STANDALONE_MARKERS:
            offset += 2
            continue
        (length,) = struct.unpack(">H", data[offset + 2 : offset + 4])
        segment = data[offset + 4 : offset + 2 + length]
        if length < 2 or len(segment) != length - 2 or marker in (0xD9, 0xDA):
            return None
        if marker == 0xEE and segment.startswith(b"Adobe"):
            return None
        if marker in _OTHER_FRAMES:
            return None
        if marker in _DEVICE_FRAMES:
            if len(segment) < 6:
                return None
            height, width = struct.unpack(">HH", segment[1:5])
            components = segment[5]
            if components not in (1, 3) or height == 0 or width == 0:
                return None
            return height, width
        offset += 2 + length
    return None


def decode_jpegs_on_device(
    encoded: list[torch.Tensor], labels: list[str], device: torch.device
) -> list[torch.Tensor | UnreadableImage]:
    """Decode JPEG byte tensors to RGB uint8 ``[3, H, W]`` on ``device``, batched (nvJPEG on CUDA).

    torchvision's batched call fails as a whole if one image fails, so a failed batch is retried
    image by image, and an image the device decoder refuses is decoded by ``read_image`` on its
    bytes and moved to ``device``. The result is, per input, a tensor or the ``undecodable``
    :class:`UnreadableImage` of the CPU path, so a file is undecodable here exactly when it is
    there, with the same message (``labels`` are the paths).
    """
    if not encoded:
        return []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities.*")
        try:
            return list(tvio.decode_jpeg(encoded, mode=tvio.ImageReadMode.RGB, device=device))
        except RuntimeError:
            pass
        results: list[torch.Tensor | UnreadableImage] = []
        for data, label in zip(encoded, labels):
            try:
                results.append(tvio.decode_jpeg(data, mode=tvio.ImageReadMode.RGB, device=device))
            except RuntimeError:
                image = read_image(label, data.numpy().tobytes())
                results.append(image if isinstance(image, UnreadableImage) else image.to(device))
    return results
