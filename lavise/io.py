"""Atomic file writes: every output appears complete or not at all.

A stage killed mid-write must never leave a truncated Parquet, NumPy or JSON file that a later
run would mistake for a finished one, so everything is written to a temporary sibling and
renamed into place (``os.replace`` is atomic on POSIX within one filesystem).

A process killed outright (kill -9, SIGTERM, a power cut) cannot remove its temporary siblings, so
their names say whose they are: ``.<name>.<pid>.<random>.<kind>`` (:func:`temp_prefix`), and
:func:`remove_stale_temps` removes those whose process is gone (a whole extracted raw tree can be
tens of gigabytes).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()

log = logging.getLogger(__name__)

# .<target name>.<pid>.<tempfile's 8 random characters>.<kind>: see temp_prefix.
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]{8}\.(?P<kind>tmp|old|extract)$")


def temp_prefix(name: str) -> str:
    """The prefix of a temporary sibling of ``name`` made by this process: ``.<name>.<pid>.``.

    Give it to ``tempfile.mkstemp``/``mkdtemp`` with a suffix of ``.tmp`` or ``.extract``, so that
    :func:`remove_stale_temps` can tell a killed process's leftovers from a live one's.
    """
    return f".{name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    """Whether process ``pid`` is running (one of another user counts: it may be writing); a
    zombie (ended, not yet reaped by its parent) is not."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (not Linux): kill's answer stands
    return state not in ("Z", "X")


def remove_stale_temps(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary siblings (named by :func:`temp_prefix`) in ``directory`` whose process
    is no longer alive; return what was removed.

    Call it at the start of a stage for the folders it writes into. A live process's temporaries
    are kept (a PID reused by an unrelated process keeps them too, until it ends). A ``.old`` left
    by a kill in the middle of :func:`atomic_dir`'s swap is the previous output: it is put back
    when the output is missing, and removed otherwise.
    """
    directory = Path(directory)
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or _alive(int(match["pid"])):
            continue
        path, target = Path(entry.path), directory / match["name"]
        if match["kind"] == "old" and not os.path.lexists(target):
            os.replace(path, target)
            log.warning("restored %s from %s, left by a process that was killed while replacing it", target, path)
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        log.warning("removed %s, left by process %s that ended before finishing it", path, match["pid"])
        removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(target.name), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs get the usual mode
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; it replaces ``path`` only on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target.name), suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        if target.exists():
            old = tmp.with_suffix(".old")  # .<name>.<pid>.<random>.old: see remove_stale_temps
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON (stable diffs for DVC metrics)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text())


def write_parquet(path: str | os.PathLike[str], table: pa.Table | Any) -> None:
    """Write a pyarrow Table (or a pandas DataFrame, without its index) atomically."""
    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def file_digest(path: str | os.PathLike[str], algorithm: str) -> str:
    """Hex digest of a file read in chunks, so memory stays flat for 20 GB archives."""
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def json_float(value: float | None, decimals: int = 6) -> float | None:
    """``value`` rounded for a metrics file; ``None`` (JSON null) for a missing, NaN or infinite value."""
    return None if value is None or not math.isfinite(value) else round(float(value), decimals)


class OutputLockedError(RuntimeError):
    """Another live process is writing the same output."""


@contextlib.contextmanager
def output_lock(path: str | os.PathLike[str], owner: str) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (an output file or directory) while a stage writes it.

    The lock is ``flock`` on a file named after the output's absolute path in the system's temp
    folder (``lavise-locks/``), so the project folders get no lock files and an output whose
    folder does not exist yet needs none created. The kernel releases a flock when the process
    ends however it ends (kill -9 included), so a stale lock cannot block a later run. The file
    records who holds it (``owner``, pid, start time) so a second run can say so.
    """
    target = Path(path)
    folder = Path(tempfile.gettempdir()) / "lavise-locks"
    if not folder.is_dir():
        folder.mkdir(exist_ok=True)
        with contextlib.suppress(PermissionError):  # mkdir's mode is cut by the umask; sticky and shared
            os.chmod(folder, 0o1777)
    key = hashlib.sha256(str(target.resolve()).encode()).hexdigest()[:24]
    lock_path = folder / f"{target.name}.{key}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            raise OutputLockedError(
                f"{target} is being written by {holder}; wait for it to finish or stop it, then run again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{owner} (pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode(), 0)
        yield lock_path
    finally:
        os.close(fd)  # closing the descriptor releases the flock


class InsufficientSpaceError(OSError):
    """The disk cannot hold what a writer is about to write (ENOSPC, refused before anything is
    written); its message says how much is needed and how much is free."""

    def __init__(self, message: str, directory: str | os.PathLike[str]) -> None:
        super().__init__(errno.ENOSPC, message, str(directory))

    def __str__(self) -> str:
        return str(self.strerror)
