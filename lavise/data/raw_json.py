"""Reading the raw datasets' JSON files (COCO instances, VG objects and image data) in one call.

Visual Genome's ``objects.json`` is about 400 MB: orjson parses it about three times faster than
the standard library, which stays the fallback when orjson is absent. A file that does not parse
(a truncated download, an edit gone wrong, bytes that are not UTF-8) is one ``ValueError`` naming
the file and the line and column, never a parser traceback.

Ids and sizes read from these files go through :func:`json_id` and :func:`json_size`: a JSON
integer only, so ``1.7``, ``"3"``, ``true`` and ``null`` never become ids by ``int()`` truncation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

try:
    import orjson

    def _loads(data: bytes) -> Any:
        return orjson.loads(data)

except ImportError:  # pragma: no cover - orjson is in the pinned environment

    def _loads(data: bytes) -> Any:
        return json.loads(data)


# Ids are stored as int64; a negative id is reserved for "absent or invalid" (-1) in the tables.
MAX_ID = 2**63 - 1
# Image sizes are stored as int32.
MAX_SIZE = 2**31 - 1


def json_id(value: Any) -> int | None:
    """``value`` when it is a JSON integer in ``[0, 2**63)``, else None (floats, strings, bools, null)."""
    if type(value) is int and 0 <= value <= MAX_ID:
        return value
    return None


def json_size(value: Any) -> int:
    """A positive JSON integer image width or height (int32), 0 for anything else (an unusable size)."""
    if type(value) is int and 0 < value <= MAX_SIZE:
        return value
    return 0


def _line_and_column(data: bytes, offset: int) -> tuple[int, int]:
    """1-based line and column (in characters, as the parser counts) of byte ``offset`` in ``data``."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    column = len(data[line_start:offset].decode("utf-8", errors="replace")) + 1
    return data.count(b"\n", 0, offset) + 1, column


def _syntax_error(path: Path, data: bytes, error: json.JSONDecodeError) -> ValueError:
    """One line naming the file, the position and the reason (the first non-UTF-8 byte when that is it)."""
    line, column, reason = error.lineno, error.colno, error.msg
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as bad_bytes:  # orjson reports position 0 for these: find the byte
        line, column = _line_and_column(data, bad_bytes.start)
        reason = f"bytes that are not valid UTF-8 ({bad_bytes.reason})"
    return ValueError(
        f"{path}: invalid JSON at line {line}, column {column}: {reason}; "
        "the file is damaged or truncated: download it again (or fix it by hand)"
    )


def read_dataset_json(path: Path) -> Any:
    """Parse a (large) JSON file in one call, with a clear error on a missing or unparsable file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the download stage first")
    data = path.read_bytes()
    try:
        return _loads(data)
    except json.JSONDecodeError as error:  # orjson.JSONDecodeError is a subclass
        raise _syntax_error(path, data, error) from None
    except UnicodeDecodeError as error:  # pragma: no cover - the stdlib fallback decodes first
        line, column = _line_and_column(data, error.start)
        raise ValueError(
            f"{path}: invalid JSON at line {line}, column {column}: bytes that are not valid UTF-8; "
            "download it again (or fix it by hand)"
        ) from None
