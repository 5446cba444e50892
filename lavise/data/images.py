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

An image file has one of five statuses, written once here (:data:`IMAGE_STATUSES`): ``ok``,
``missing`` (no regular file at the path), ``undecodable`` (a file that gives no image: empty,
corrupt, truncated, or one the operating system refuses to read, such as permission denied or an
I/O error), ``too_large`` (its header declares more pixels than ``max_pixels``) or
``outside_root`` (the path resolves outside the dataset's raw folder, e.g. through a symlink).
The annotations stage records them per image (:func:`check_image_files`); a reader that meets a
bad file later gets the same status and a message naming the path from :func:`read_image` (or
:func:`read_image_bytes`), instead of an exception: the feature cache records it, the target
CNN's loader skips and counts it, a heatmap draws it grey.

Limits, because image files are untrusted input:

- Pixels: a 700-byte JPEG can declare 20000x20000 pixels, a 1.2 GB decode. The width and height
  its header declares (:func:`declared_size`: JPEG frame header, PNG IHDR, else PIL's header
  parser) are checked against ``max_pixels`` before any decoder runs, on every path (CPU, device,
  file check); a file whose header gives no size is not decoded either.
- Corrupt JPEG data: libjpeg decodes a JPEG whose scan data is cut short (or damaged) with the
  missing rows grey and only prints a warning ("Corrupt JPEG data: premature end of data
  segment") to stderr. torchvision's decoder uses libjpeg's default message handler, so the
  warning is read from file descriptor 2 while it decodes (:func:`_libjpeg_messages`; a few
  system calls per image) and turns the file ``undecodable``. Only "N extraneous bytes before
  marker 0xd9" (bytes between a complete scan and the end marker) is harmless. Pillow silences
  libjpeg's warnings, so JPEG data that torchvision refuses is not handed to PIL; PIL decodes the
  other formats torchvision does not read (BMP, TIFF, ...). The batched device decoder (nvJPEG)
  reports no such warnings: a damaged scan it accepts is not caught on that route.
- Paths: with a ``root`` (the dataset's raw folder), a path that resolves outside it is
  ``outside_root`` and never read. The root itself may be a symlink (a raw folder on another disk).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import struct
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import torch
import torchvision.io as tvio
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

OK = "ok"
MISSING = "missing"
UNDECODABLE = "undecodable"
TOO_LARGE = "too_large"
OUTSIDE_ROOT = "outside_root"
IMAGE_STATUSES = (OK, MISSING, UNDECODABLE, TOO_LARGE, OUTSIDE_ROOT)

DEFAULT_MAX_PIXELS = 100_000_000  # a 10000x10000 image; a decoded RGB image of that size is 300 MB


class UndecodableImageError(Exception):
    """The file exists but holds no image that either decoder can read completely."""


class TooLargeImageError(UndecodableImageError):
    """The file's header declares more pixels than the limit; it was not decoded."""


def _decode_with_torchvision(data: bytes) -> torch.Tensor:
    """torchvision's decoder; libjpeg's corrupt-data warning is an ``UndecodableImageError``.

    An animated GIF decodes to ``[frames, 3, H, W]``: its first frame is the image, as PIL gives it.
    """
    buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities.*")
        with _libjpeg_messages() as messages:
            image = tvio.decode_image(buffer, mode=tvio.ImageReadMode.RGB)
    damage = [message for message in messages if _is_damage(message)]
    if damage:
        raise _CorruptJpegData(damage[0])
    return image[0] if image.ndim == 4 else image


class _CorruptJpegData(Exception):
    """libjpeg decoded the file but warned that its data is corrupt (rows filled grey)."""


# libjpeg's default message handler writes its first warning as one line to stderr: damaged scan
# data ("Corrupt JPEG data: ...", "Premature end of JPEG file", "Inconsistent progression
# sequence ..."), or a note that leaves every pixel decoded (the rest, and the two harmless
# "Corrupt JPEG data" cases: bytes between a complete scan and the end marker, a bad ICC profile).
_LIBJPEG_LINE = re.compile(
    r"^(Corrupt JPEG data: |Premature end of JPEG file$|Inconsistent progression sequence |"
    r"Warning: unknown JFIF revision|Invalid SOS parameters for sequential JPEG$|"
    r"Unknown Adobe color transform code|Application transferred too many scanlines$)"
)
_LIBJPEG_DAMAGE = re.compile(r"^(Corrupt JPEG data: |Premature end of JPEG file$|Inconsistent progression sequence )")
_LIBJPEG_HARMLESS = re.compile(r"^Corrupt JPEG data: (\d+ extraneous bytes before marker 0xd9|bad ICC marker)$")
_capture: tuple[int, int, threading.Lock] | None = None  # (pid, descriptor, lock): forked workers make their own


def _is_damage(message: str) -> bool:
    return bool(_LIBJPEG_DAMAGE.match(message)) and not _LIBJPEG_HARMLESS.match(message)


def _capture_descriptor() -> tuple[int, threading.Lock]:
    """An anonymous file of this process that receives file descriptor 2 during a decode, and the
    lock that keeps two threads from swapping descriptor 2 at once."""
    global _capture
    if _capture is None or _capture[0] != os.getpid():
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("lavise-libjpeg-messages", os.MFD_CLOEXEC)
        else:  # pragma: no cover - non-Linux
            import tempfile

            fd = os.dup(tempfile.TemporaryFile().fileno())
        _capture = (os.getpid(), fd, threading.Lock())
    return _capture[1], _capture[2]


@contextlib.contextmanager
def _libjpeg_messages() -> Iterator[list[str]]:
    """Collect the lines C code writes to stderr meanwhile: libjpeg's into the list, the others
    passed on to stderr. Without a usable stderr nothing is collected."""
    messages: list[str] = []
    fd, lock = _capture_descriptor()
    with lock:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):
            yield messages
            return
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.dup2(fd, 2)
        try:
            yield messages
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            written = os.lseek(fd, 0, os.SEEK_CUR)
            text = os.pread(fd, written, 0).decode("utf-8", "replace") if written else ""
            others = [line for line in text.splitlines(keepends=True) if not _LIBJPEG_LINE.match(line.strip())]
            messages.extend(line.strip() for line in text.splitlines() if _LIBJPEG_LINE.match(line.strip()))
            if others:
                os.write(2, "".join(others).encode())


def _decode_with_pil(data: bytes) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the pixel limit is checked before
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            rgb = np.asarray(image.convert("RGB"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def _reason(error: Exception) -> str:
    """The message of a torchvision C++ error without its source-file location."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return re.sub(r"^\w+, \S+:\d+, ", "", lines[0])[:200]


_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers of every JPEG process (0xC4 DHT, 0xC8 JPG and 0xCC DAC are not frames).
_FRAME_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE_MARKERS = {0x01, *range(0xD0, 0xD8)}


def _jpeg_segments(file: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(marker, payload) of each marker segment after SOI, up to the first scan or the end marker.

    Stops early at anything malformed (a byte that starts no marker, a truncated segment): libjpeg
    then fails or warns that the data is corrupt. Reads only the segments, never the scan data.
    """
    file.seek(2)
    while file.read(1) == b"\xff":
        marker = file.read(1)
        while marker == b"\xff":  # fill bytes
            marker = file.read(1)
        if not marker or marker[0] in (0xD9, 0xDA):
            return
        if marker[0] in _STANDALONE_MARKERS:
            continue
        length = file.read(2)
        size = struct.unpack(">H", length)[0] - 2 if len(length) == 2 else -1
        payload = file.read(size) if size >= 0 else b""
        if size < 0 or len(payload) != size:
            return
        yield marker[0], payload


def _jpeg_frame_size(file: BinaryIO) -> tuple[int, int] | None:
    """(width, height) from the first frame header; None when there is none before the scan."""
    for marker, payload in _jpeg_segments(file):
        if marker in _FRAME_MARKERS:
            height, width = struct.unpack(">HH", payload[1:5]) if len(payload) >= 5 else (0, 0)
            return (width, height) if width and height else None
    return None


def _declared_size_of(file: BinaryIO) -> tuple[int, int] | None:
    """(width, height) the header of ``file`` declares; None when it gives none.

    JPEG and PNG are read here (PIL refuses headers over its own pixel limit before saying the
    size); other formats through PIL's header parser, which reads no pixel data. A header PIL
    calls a decompression bomb raises ``Image.DecompressionBombError``.
    """
    file.seek(0)
    head = file.read(24)
    if head.startswith(_JPEG_MAGIC):
        return _jpeg_frame_size(file)
    if head.startswith(_PNG_MAGIC):
        width, height = struct.unpack(">II", head[16:24]) if len(head) == 24 and head[12:16] == b"IHDR" else (0, 0)
        return (width, height) if width and height else None
    file.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                return image.size
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, struct.error):
        return None


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) that ``data``'s header declares, read without decoding; None if none."""
    try:
        return _declared_size_of(io.BytesIO(data))
    except Image.DecompressionBombError:
        return None


def declared_file_size(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """:func:`declared_size` of a file, reading only its header (an image without annotated size,
    e.g. a probe image, gets the size the decoders will find)."""
    try:
        with open(path, "rb") as file:
            return _declared_size_of(file)
    except (OSError, Image.DecompressionBombError):
        return None


def _refuse_oversized(file: BinaryIO, label: str, max_pixels: int) -> None:
    """Raise before any decoder runs: ``TooLargeImageError`` for a header declaring more than
    ``max_pixels`` pixels, ``UndecodableImageError`` for one that declares no size."""
    try:
        size = _declared_size_of(file)
    except Image.DecompressionBombError as error:
        raise TooLargeImageError(f"{label}: {error}; not decoded") from None
    if size is None:
        raise UndecodableImageError(f"{label}: no image size in its header (not an image, or a damaged header)")
    width, height = size
    if width * height > max_pixels:
        raise TooLargeImageError(
            f"{label}: its header declares {width}x{height} pixels ({width * height}), over the limit of "
            f"{max_pixels} pixels; not decoded (raise the pixel limit to read it)"
        )


def header_refusal(data: bytes, label: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> UnreadableImage | None:
    """The ``too_large`` (or, with no size in the header, ``undecodable``) record of ``data``, or
    None: the check every decoder here makes first, for a caller that routes bytes elsewhere."""
    try:
        _refuse_oversized(io.BytesIO(data), label, max_pixels)
    except TooLargeImageError as error:
        return UnreadableImage(TOO_LARGE, str(error))
    except UndecodableImageError as error:
        return UnreadableImage(UNDECODABLE, str(error))
    return None


def decode_image(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Decode ``path`` to an RGB uint8 tensor ``[3, H, W]`` (EXIF orientation not applied).

    Orientation is left as stored because annotation coordinates refer to the stored pixels.
    Raises ``FileNotFoundError`` for a missing file, ``TooLargeImageError`` for a header over
    ``max_pixels`` and ``UndecodableImageError`` for an empty, corrupt or truncated one.
    """
    return decode_bytes(Path(path).read_bytes(), str(path), max_pixels)


def decode_bytes(data: bytes, label: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """``decode_image`` on a file's bytes; ``label`` (the path) starts every error message."""
    if not data:
        raise UndecodableImageError(f"{label}: empty file")
    _refuse_oversized(io.BytesIO(data), label, max_pixels)
    try:
        return _decode_with_torchvision(data)
    except _CorruptJpegData as damage:
        raise UndecodableImageError(f"{label}: corrupt JPEG data (libjpeg: {damage})") from None
    except (RuntimeError, ValueError) as torchvision_error:
        if data.startswith(_JPEG_MAGIC):  # PIL would decode a damaged scan without a word
            raise UndecodableImageError(f"{label}: torchvision: {_reason(torchvision_error)}") from torchvision_error
        try:
            return _decode_with_pil(data)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as pil_error:
            raise UndecodableImageError(
                f"{label}: torchvision: {_reason(torchvision_error)}; PIL: {pil_error}"
            ) from pil_error


class UnreadableImage(NamedTuple):
    """A file that gave no image: ``status`` (any of :data:`IMAGE_STATUSES` but ``ok``) and why, path first.

    ``str()`` is the one line every consumer logs, e.g. ``missing image a.jpg: file not found``.
    """

    status: str
    error: str

    def __str__(self) -> str:
        return f"{self.status} image {self.error}"


def _resolved_inside(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> str | UnreadableImage:
    """The real path of ``path``, or its ``outside_root`` record when that lies outside ``root``."""
    resolved, base = os.path.realpath(path), os.path.realpath(root)
    if resolved == base or resolved.startswith(base.rstrip(os.sep) + os.sep):
        return resolved
    return UnreadableImage(
        OUTSIDE_ROOT,
        f"{path}: resolves to {resolved}, outside {root}; not read (put the file inside that folder; "
        f"the folder itself may be a link)",
    )


def read_image_bytes(
    path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
) -> bytes | UnreadableImage:
    """The bytes of ``path``, or an :class:`UnreadableImage` with the status ``check_image_file`` gives.

    No regular file at ``path`` is ``missing``; a file the operating system will not read
    (permission denied, an I/O error) is ``undecodable``: it holds no image for this run either.
    With ``root`` (the dataset's raw folder) a path resolving outside it is ``outside_root`` and
    is not read; the resolved path is read, so a link swapped meanwhile is not followed out.
    """
    source = path
    if root is not None:
        source = _resolved_inside(path, root)
        if isinstance(source, UnreadableImage):
            return source
    try:
        return Path(source).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return UnreadableImage(MISSING, f"{path}: file not found")
    except IsADirectoryError:
        return UnreadableImage(MISSING, f"{path}: a directory, not a file")
    except OSError as error:
        return UnreadableImage(UNDECODABLE, f"{path}: cannot read: {error.strerror or error}")


def read_image(
    path: str | os.PathLike[str],
    data: bytes | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    root: str | os.PathLike[str] | None = None,
) -> torch.Tensor | UnreadableImage:
    """``decode_image`` that returns an :class:`UnreadableImage` instead of raising.

    RGB uint8 ``[3, H, W]`` for a readable file; otherwise ``missing``, ``undecodable`` or
    ``outside_root`` (see :func:`read_image_bytes`; for an empty, corrupt or truncated file the
    decoders' message) or ``too_large`` (a header over ``max_pixels``, never decoded). ``data``:
    the file's bytes when the caller has already read them with ``read_image_bytes`` (``root``
    is then not checked again). One bad file in a long run is then a record to count and skip,
    the same record wherever it is read.
    """
    if data is None:
        data = read_image_bytes(path, root)
        if isinstance(data, UnreadableImage):
            return data
    try:
        return decode_bytes(data, str(path), max_pixels)
    except TooLargeImageError as error:
        return UnreadableImage(TOO_LARGE, str(error))
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


def _header_status(path: str, max_pixels: int) -> str | None:
    """The status the header and the tail give, in one open; None: decode the file to decide.

    The size the header declares is checked against ``max_pixels``; a header without one, or
    that PIL cannot parse, is ``undecodable``; otherwise the last ``_TAIL_BYTES`` are checked
    for the format's end marker (``ok`` when present).
    """
    with open(path, "rb") as file:
        try:
            _refuse_oversized(file, path, max_pixels)
        except TooLargeImageError:
            return TOO_LARGE
        except UndecodableImageError:
            return UNDECODABLE
        file.seek(0)
        head = file.read(8)
        image_format = "JPEG" if head.startswith(_JPEG_MAGIC) else "PNG" if head.startswith(_PNG_MAGIC) else None
        size = file.seek(0, os.SEEK_END)
        file.seek(max(0, size - _TAIL_BYTES))
        return OK if ends_complete(file.read(), image_format) else None


def check_image_file(path: str, max_pixels: int = DEFAULT_MAX_PIXELS, root: str | None = None) -> str:
    """Status of one file (see :func:`check_image_files`); ``root``: the folder it must resolve inside.

    No regular file is ``missing`` and a file the OS refuses to open ``undecodable``, the statuses
    :func:`read_image_bytes` gives when a later stage reads it.
    """
    if root is not None and isinstance(_resolved_inside(path, root), UnreadableImage):
        return OUTSIDE_ROOT
    if not os.path.isfile(path):
        return MISSING
    try:
        status = _header_status(path, max_pixels)
    except OSError:
        return UNDECODABLE
    if status is not None:
        return status
    try:
        decode_image(path, max_pixels)
        return OK
    except TooLargeImageError:
        return TOO_LARGE
    except (UndecodableImageError, OSError):
        return UNDECODABLE


def check_image_files(raw_dir: Path, paths: list[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Status per image (object array, one of :data:`IMAGE_STATUSES`), each path relative to ``raw_dir``.

    A path resolving outside ``raw_dir`` is ``outside_root``. A header parse catches files that
    are no image or declare more than ``max_pixels`` pixels; a truncated file still has a valid
    header, so the last KiB is checked for the format's end marker as well. Only files without
    one (truncated, trailing bytes after the marker, or another format) are decoded in full, so
    the cost stays a header read for almost every image and a truncated download is counted when
    the annotation tables are built, not first discovered by `features` (a file cut short with an
    end marker appended is found when it is decoded there).
    """
    status = np.empty(len(paths), dtype=object)
    for index, relative in enumerate(tqdm(paths, desc="check image files", unit="img", mininterval=2.0)):
        status[index] = check_image_file(os.path.join(raw_dir, relative), max_pixels, str(raw_dir))
    return status


# Start-of-frame markers nvJPEG decodes: baseline, extended sequential and progressive Huffman.
# Lossless, hierarchical and arithmetic-coded frames go to the CPU decoders.
_DEVICE_FRAMES = {0xC0, 0xC1, 0xC2}
_OTHER_FRAMES = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def device_decodable_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) if ``data`` is a complete JPEG the batched device decoder can take, else None.

    Accepted: starts with SOI, ends with EOI (a truncated file has none), one baseline, extended
    or progressive Huffman frame of 1 (grey) or 3 (YCbCr) components, no Adobe APP14 segment
    (CMYK, YCCK and untransformed RGB carry one). Reading only the marker segments costs
    microseconds, so workers route files without decoding them.
    """
    if len(data) < 4 or data[:2] != b"\xff\xd8" or not ends_complete(data, "JPEG"):
        return None
    for marker, segment in _jpeg_segments(io.BytesIO(data)):
        if (marker == 0xEE and segment.startswith(b"Adobe")) or marker in _OTHER_FRAMES:
            return None
        if marker in _DEVICE_FRAMES:
            if len(segment) < 6:
                return None
            height, width = struct.unpack(">HH", segment[1:5])
            components = segment[5]
            if components not in (1, 3) or height == 0 or width == 0:
                return None
            return height, width
    return None


def decode_jpegs_on_device(
    encoded: list[torch.Tensor], labels: list[str], device: torch.device, max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[torch.Tensor | UnreadableImage]:
    """Decode JPEG byte tensors to RGB uint8 ``[3, H, W]`` on ``device``, batched (nvJPEG on CUDA).

    A header over ``max_pixels`` is ``too_large`` before anything is decoded. torchvision's
    batched call fails as a whole if one image fails, so a failed batch is retried image by
    image, and an image the device decoder refuses is decoded by ``read_image`` on its bytes and
    moved to ``device``. The result is, per input, a tensor or the :class:`UnreadableImage` of the
    CPU path, so a file is refused here exactly when it is there, with the same message
    (``labels`` are the paths).
    """
    results: list[torch.Tensor | UnreadableImage | None] = [
        header_refusal(data.numpy().tobytes(), label, max_pixels) for data, label in zip(encoded, labels)
    ]
    pending = [index for index, result in enumerate(results) if result is None]
    decoded = _decode_batch_on_device([encoded[i] for i in pending], [labels[i] for i in pending], device, max_pixels)
    for index, image in zip(pending, decoded):
        results[index] = image
    return results


def _decode_batch_on_device(
    encoded: list[torch.Tensor], labels: list[str], device: torch.device, max_pixels: int
) -> list[torch.Tensor | UnreadableImage]:
    """The batched device decode of :func:`decode_jpegs_on_device`, image by image if the batch fails."""
    if not encoded:
        return []
    if device.type == "cpu":  # libjpeg, whose corrupt-data warnings only the CPU path reads
        return [
            read_image(label, data.numpy().tobytes(), max_pixels=max_pixels) for data, label in zip(encoded, labels)
        ]
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
                image = read_image(label, data.numpy().tobytes(), max_pixels=max_pixels)
                results.append(image if isinstance(image, UnreadableImage) else image.to(device))
    return results
