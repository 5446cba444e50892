"""HTTP download with Range resume, bounded retries and checksums, and safe zip extraction.

The official archives are tens of gigabytes on links that drop, so a transfer must survive being
cut (resume from the ``.part`` file), never leave a file at its final name unless it verified, and
fail with an actionable message when the machine is offline. Archives without a published checksum
(Visual Genome) are at least checked to be complete, readable zips before they are kept or reused.
Free disk space is checked once the server has answered (an offline machine gets the offline
message, not a disk-space one), before the first byte is written. Only the file itself is accepted:
``Accept-Encoding: identity`` is sent and a response with any other ``Content-Encoding`` is refused
(a gzip-encoded body is not the archive). Bytes received before a connection stalls or drops are
on disk when the error says so (the body is read as it arrives and the file synced on failure).

Extraction refuses, before writing anything, archive members that would escape the destination
(``..``, absolute paths, drive letters, symlinks), a member that would lie inside another member
(or an existing file) that is a file, and decompression bombs: a member over 1 MiB that expands
more than 200:1, members that together expand more than 200:1, or a total more than 10% over the
size the catalogue expects. Real archives expand far less (COCO images about 1:1, JPEGs do not
compress; the annotation and Visual Genome JSON zips 3:1 to 10:1; GloVe about 3:1). The sizes come
from the central directory, and Python's zipfile stops a member at its declared size (a member
that holds more fails its CRC), so a lying header cannot expand further. Files are written into a
temporary sibling first, so a failed extraction leaves nothing behind.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Collection, Mapping
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from lavise.io import atomic_path, temp_prefix

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
USER_AGENT = "lavise-pipeline/1.0 (+https://github.com/YuYang0901/LaViSE reproduction)"
DIGEST_SIDECAR_SUFFIX = ".digests.json"
VALIDATOR_SUFFIX = ".validator"
_OFFLINE_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ENETUNREACH,
    errno.EHOSTUNREACH,
    errno.ENETDOWN,
    errno.EHOSTDOWN,
    errno.EADDRNOTAVAIL,
}
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
MAX_EXPANSION = 200  # uncompressed : compressed, per member over RATIO_FLOOR_BYTES and in total
RATIO_FLOOR_BYTES = 1 << 20  # small members may compress better (headers, short JSON)
EXPECTED_MARGIN = 0.10  # over the catalogue's expected extracted size


class DownloadError(RuntimeError):
    """A download or extraction could not be completed."""


class OfflineError(DownloadError):
    """The host of a URL cannot be reached at all (DNS failure, refused, no route)."""


class ChecksumError(DownloadError):
    """A downloaded file does not match its published checksum or size."""


class UnsafeArchiveError(DownloadError):
    """An archive holds a member that would be written outside the destination."""


class _RetryableError(Exception):
    """Internal: a transient failure (5xx, reset, short read) worth another attempt."""


def _digests_one_pass(path: Path, progress: bool) -> dict[str, str]:
    """sha256 and md5 in a single read of the file (hashing 19 GB twice costs minutes)."""
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    size = path.stat().st_size
    with (
        open(path, "rb") as f,
        tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"verify {path.name}",
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        while chunk := f.read(CHUNK_BYTES):
            sha256.update(chunk)
            md5.update(chunk)
            bar.update(len(chunk))
    return {"sha256": sha256.hexdigest(), "md5": md5.hexdigest()}


def file_digests(path: str | os.PathLike[str], *, progress: bool = False) -> dict[str, str | int]:
    """``{"size", "sha256", "md5"}`` of a file, cached in a sidecar keyed by size and mtime.

    Re-running the download stage must not re-hash every archive; the sidecar is trusted only
    while the file's size and modification time are unchanged (the same rule DVC uses).
    """
    path = Path(path)
    stat_result = path.stat()
    sidecar = path.with_name(path.name + DIGEST_SIDECAR_SUFFIX)
    if sidecar.exists():
        try:
            cached = json.loads(sidecar.read_text())
            unchanged = (cached.get("size"), cached.get("mtime_ns")) == (stat_result.st_size, stat_result.st_mtime_ns)
            if unchanged:
                return {"size": cached["size"], "sha256": cached["sha256"], "md5": cached["md5"]}
        except (ValueError, KeyError):
            log.warning("ignoring unreadable digest cache %s", sidecar)
    digests = _digests_one_pass(path, progress)
    record = {"size": stat_result.st_size, "mtime_ns": stat_result.st_mtime_ns, **digests}
    with atomic_path(sidecar) as tmp:
        tmp.write_text(json.dumps(record, sort_keys=True))
    return {"size": stat_result.st_size, **digests}


def zip_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete, readable zip archive, or None when it is.

    Reads only the first bytes, the end-of-central-directory record and the central directory (a
    second or so for the 108k-member Visual Genome image zips, no data decompressed), so a
    truncated or cut download, an HTML error page saved under a zip name, or a zip wrapped in a
    gzip stream (which zipfile would read past), is caught. Corruption inside a member's
    data is caught later by the CRC check during extraction.
    """
    try:
        with open(path, "rb") as file:
            head = file.read(4)
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        return f"not a complete, readable zip archive ({error})"
    if head not in (b"PK\x03\x04", b"PK\x05\x06"):  # zipfile accepts data before the archive (a gzip stream)
        kind = "a gzip stream" if head.startswith(b"\x1f\x8b") else f"{head!r}"
        return f"not a zip archive (it starts with {kind}, not a zip member header)"
    if not infos:
        return "not a complete zip archive (no members)"
    file_size = path.stat().st_size
    overrun = [i.filename for i in infos if i.header_offset + i.compress_size > file_size]
    if overrun:
        return f"not a complete zip archive (member {overrun[0]!r} runs past the end of the file)"
    return None


def _mismatches(
    path: Path, sha256: str | None, md5: str | None, size: int | None, progress: bool, verify_zip: bool = False
) -> list[str]:
    """Human-readable list of what does not match; empty when the file verifies.

    Without a published checksum, ``verify_zip`` adds the zip structure check of
    :func:`zip_problem` (with a checksum that check would add nothing).
    """
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return [f"size: expected {size} bytes, got {actual_size}"]
    if sha256 is None and md5 is None:
        problem = zip_problem(path) if verify_zip else None
        return [problem] if problem else []
    digests = file_digests(path, progress=progress)
    problems = []
    if sha256 is not None and digests["sha256"] != sha256.lower():
        problems.append(f"sha256: expected {sha256.lower()}, got {digests['sha256']}")
    if md5 is not None and digests["md5"] != md5.lower():
        problems.append(f"md5: expected {md5.lower()}, got {digests['md5']}")
    return problems


def verification_phrase(*, checksum: bool, size: int | None, verify_zip: bool) -> str:
    """What will be checked before a file placed by hand is reused (for the offline message)."""
    if checksum:
        return "it will be verified against its published checksum and reused"
    checks = []
    if size is not None:
        checks.append(f"its size ({size} bytes)")
    if verify_zip:
        checks.append("that it is a complete, readable zip archive")
    published = "no checksum is published" if size is not None else "no checksum or size is published"
    if not checks:
        return f"{published}, so it will be reused without verification"
    return f"{published}, so only {' and '.join(checks)} will be checked before it is reused"


def offline_message(
    url: str,
    dest: Path,
    reason: object,
    *,
    verification: str = "it will be verified and reused",
    alternative: str | None = None,
) -> str:
    """The one paragraph a user sees when a host is unreachable: what, where, and what to do.

    ``alternative`` is a further remedy the caller knows of (the stage: switching to the demo).
    """
    return (
        f"Could not download {url} to {dest.resolve()}: the host cannot be reached ({reason}). "
        f"This machine seems to be offline or cannot reach that server. Either download the file "
        f"by other means and place it at exactly {dest.resolve()} ({verification}), "
        f"then re-run `dvc repro download`" + (f"; or {alternative}" if alternative else "") + "."
    )


def _is_offline(reason: BaseException | str) -> bool:
    """Whether a connection error means the host cannot be reached at all (DNS, refused, no route)."""
    if isinstance(reason, socket.gaierror):
        return True
    if isinstance(reason, ConnectionRefusedError):
        return True
    return isinstance(reason, OSError) and reason.errno in _OFFLINE_ERRNOS


def _remove_quietly(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _content_range_total(header: str | None) -> int | None:
    """Total length from ``Content-Range: bytes a-b/N`` or ``bytes */N``; None when unknown."""
    if not header or "/" not in header:
        return None
    total = header.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def _content_range_start(header: str | None) -> int | None:
    match = re.match(r"\s*bytes\s+(\d+)-", header or "")
    return int(match.group(1)) if match else None


def _remember_validator(validator_file: Path, headers: Mapping[str, str]) -> None:
    """Keep the ETag (or Last-Modified) of a fresh transfer for ``If-Range`` on resume.

    With ``If-Range`` a server whose file changed since the cut sends the whole new file instead
    of splicing new bytes onto old ones, which matters for archives without a published checksum.
    """
    validator = headers.get("ETag") or headers.get("Last-Modified")
    if validator and not validator.startswith("W/"):
        validator_file.write_text(validator)
    else:
        validator_file.unlink(missing_ok=True)


def _resume_offset(part: Path, size: int | None) -> int:
    """Bytes of ``part`` to resume from; a part longer than the published size is restarted."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        log.warning("%s is longer than the expected %d bytes; restarting", part, size)
        part.unlink()
        offset = 0
    return offset


def _request(url: str, offset: int, validator_file: Path) -> urllib.request.Request:
    """A GET for the bytes from ``offset`` on, ``If-Range`` guarded when a validator is kept."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator_file.exists():
            headers["If-Range"] = validator_file.read_text().strip()
    return urllib.request.Request(url, headers=headers)


def _open(url: str, part: Path, offset: int, size: int | None, timeout_s: float) -> http.client.HTTPResponse | None:
    """The server's response, or None when a 416 says ``part`` is already complete.

    Transient HTTP failures raise ``_RetryableError``, the others ``DownloadError``.
    """
    validator_file = part.with_name(part.name + VALIDATOR_SUFFIX)
    try:
        return urllib.request.urlopen(_request(url, offset, validator_file), timeout=timeout_s)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 416 and offset:
            total = _content_range_total(error.headers.get("Content-Range"))
            if total == offset or (total is None and size == offset):
                return None
            log.warning("server refused the resume of %s at byte %d; restarting", part, offset)
            part.unlink()
            raise _RetryableError(f"HTTP 416 at offset {offset}") from error
        if error.code >= 500 or error.code in (408, 429):
            raise _RetryableError(f"HTTP {error.code} {error.reason}") from error
        raise DownloadError(f"HTTP {error.code} {error.reason} for {url}") from error


def _write_start(response: http.client.HTTPResponse, url: str, offset: int) -> tuple[int, str]:
    """(byte the body starts at, file mode): a server that ignored the Range restarts the file."""
    status = response.status
    if offset and status == 200:
        log.warning("server ignored the Range request for %s; restarting from byte 0", url)
        return 0, "wb"
    if status == 206 and _content_range_start(response.headers.get("Content-Range")) != offset:
        raise _RetryableError(f"unexpected Content-Range {response.headers.get('Content-Range')}")
    if status not in (200, 206):
        raise DownloadError(f"unexpected HTTP status {status} for {url}")
    return offset, "ab"


def _write_body(
    response: http.client.HTTPResponse, part: Path, mode: str, total: int | None, offset: int, progress: bool
) -> int:
    """Append (or write) the response body to ``part``; return the bytes received."""
    received = 0
    with (
        open(part, mode) as out,
        tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name.removesuffix(".part"),
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        try:
            # read1: what has arrived (up to a chunk), so a stall loses nothing already received.
            while chunk := response.read1(CHUNK_BYTES):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        except BaseException:
            out.flush()
            os.fsync(out.fileno())  # "partial data kept" must hold even if the machine goes down next
            raise
    return received


def _refuse_encoded(response: http.client.HTTPResponse, url: str, dest: Path) -> None:
    """A body sent with a content coding (gzip, ...) is not the file's bytes: refuse it unread."""
    encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise DownloadError(
            f"{url} was sent with Content-Encoding: {response.headers.get('Content-Encoding')} although only "
            f"the file itself (identity) was asked for; the response was not kept: try again later, or "
            f"download the file by other means and place it at {dest.resolve()}"
        )


def _transfer_once(url: str, part: Path, *, size: int | None, timeout_s: float, progress: bool) -> None:
    """One HTTP request that appends to ``part`` (or restarts it); raises on any failure.

    Returns normally only when the response body was received in full.
    """
    on_disk = _resume_offset(part, size)
    if size is not None and on_disk == size:
        return
    validator_file = part.with_name(part.name + VALIDATOR_SUFFIX)
    response = _open(url, part, on_disk, size, timeout_s)
    if response is None:
        return
    with response:
        _refuse_encoded(response, url, part.with_name(part.name.removesuffix(".part")))
        offset, mode = _write_start(response, url, on_disk)
        if mode == "wb" or not offset:
            _remember_validator(validator_file, response.headers)
        length_header = response.headers.get("Content-Length")
        expected_body = int(length_header) if length_header and length_header.isdigit() else None
        total = offset + expected_body if expected_body is not None else size
        if total is not None:
            # Checked only now that the server answered: offline must read as offline.
            _ensure_room(part, total - on_disk)
        received = _write_body(response, part, mode, total, offset, progress)
        if expected_body is not None and received < expected_body:
            raise _RetryableError(f"short read: {received} of {expected_body} bytes")


def _reusable(
    dest: Path, sha256: str | None, md5: str | None, size: int | None, progress: bool, verify_zip: bool
) -> bool:
    """Whether an existing ``dest`` verifies (logged either way)."""
    if not dest.exists():
        return False
    problems = _mismatches(dest, sha256, md5, size, progress, verify_zip)
    if problems:
        log.warning("existing %s does not verify (%s); downloading it again", dest, "; ".join(problems))
        return False
    log.info(
        "reusing %s (%s)",
        dest,
        "checksum verified"
        if sha256 or md5
        else "no published checksum; " + ("complete zip" if verify_zip else "not verified"),
    )
    return True


def _download_with_retries(
    url: str,
    part: Path,
    *,
    size: int | None,
    retries: int,
    backoff_s: float,
    timeout_s: float,
    progress: bool,
    sleep: Callable[[float], None],
    offline: Callable[[object], str],
) -> None:
    """Transfer into ``part`` with exponential backoff; OfflineError if the host was never reached."""
    connected_once = False
    last_error: BaseException | None = None
    for attempt in range(retries + 1):
        if attempt:
            delay = backoff_s * 2 ** (attempt - 1)
            log.warning("retrying %s in %.1fs (attempt %d of %d): %s", url, delay, attempt + 1, retries + 1, last_error)
            sleep(delay)
        try:
            _transfer_once(url, part, size=size, timeout_s=timeout_s, progress=progress)
            return
        except _RetryableError as error:
            connected_once = True
            last_error = error
        except urllib.error.URLError as error:
            if _is_offline(error.reason) and not connected_once:
                raise OfflineError(offline(error.reason)) from error
            last_error = error
        except (TimeoutError, ConnectionError, http.client.HTTPException) as error:
            if _is_offline(error) and not connected_once:
                raise OfflineError(offline(error)) from error
            connected_once = True
            last_error = error
    raise DownloadError(
        f"giving up on {url} after {retries + 1} attempts (partial data kept in {part} for the next run): {last_error}"
    )


def _install(
    part: Path,
    dest: Path,
    url: str,
    sha256: str | None,
    md5: str | None,
    size: int | None,
    progress: bool,
    verify_zip: bool,
) -> None:
    """Rename a complete ``part`` onto ``dest`` if it verifies; delete it (ChecksumError) if not."""
    part.with_name(part.name + VALIDATOR_SUFFIX).unlink(missing_ok=True)
    problems = _mismatches(part, sha256, md5, size, progress, verify_zip)
    if problems:
        _remove_quietly(part, part.with_name(part.name + DIGEST_SIDECAR_SUFFIX))
        raise ChecksumError(f"{dest.name} downloaded from {url} is corrupt and was deleted: " + "; ".join(problems))
    os.replace(part, dest)
    sidecar = part.with_name(part.name + DIGEST_SIDECAR_SUFFIX)
    if sidecar.exists():
        os.replace(sidecar, dest.with_name(dest.name + DIGEST_SIDECAR_SUFFIX))
    if sha256 is None and md5 is None:
        file_digests(dest, progress=progress)
    log.info("downloaded %s (%d bytes)", dest, dest.stat().st_size)


def fetch(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    retries: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
    progress: bool = True,
    verify_zip: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    offline_alternative: str | None = None,
) -> Path:
    """Download ``url`` to ``dest`` unless ``dest`` already verifies; return ``dest``.

    Bytes go to ``dest.name + ".part"`` and are resumed with a Range request after a cut; the
    file is renamed onto ``dest`` only after its size and checksums match. When no checksum is
    published the sha256 is computed and cached (see :func:`file_digests`) for the manifest, and
    ``verify_zip`` requires the file (an existing ``dest`` as well as a fresh download) to be a
    complete, readable zip archive (see :func:`zip_problem`). ``offline_alternative`` is added
    to the message of an OfflineError as a further remedy.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if _reusable(dest, sha256, md5, size, progress, verify_zip):
        return dest
    part = dest.with_name(dest.name + ".part")
    verification = verification_phrase(checksum=sha256 is not None or md5 is not None, size=size, verify_zip=verify_zip)

    def offline(reason: object) -> str:
        return offline_message(url, dest, reason, verification=verification, alternative=offline_alternative)

    _download_with_retries(
        url,
        part,
        size=size,
        retries=retries,
        backoff_s=backoff_s,
        timeout_s=timeout_s,
        progress=progress,
        sleep=sleep,
        offline=offline,
    )
    _install(part, dest, url, sha256, md5, size, progress, verify_zip)
    return dest


def _free_bytes(directory: Path) -> int:
    """Free bytes on the filesystem of ``directory`` (a seam for tests)."""
    return shutil.disk_usage(directory).free


def _ensure_room(part: Path, needed: int) -> None:
    """Fail before writing a transfer that cannot fit, rather than hours later with a full disk.

    Called once the server has answered, with the bytes still to come (from Content-Length, or
    the published size), so an unreachable host is reported as offline whatever the free space.
    """
    if needed <= 0:
        return
    free = _free_bytes(part.parent)
    if needed > free:
        raise DownloadError(
            f"{part.parent} has {free} bytes free but {part.name.removesuffix('.part')} needs "
            f"{needed} more bytes; free some space or put the downloads folder on a larger disk "
            f"(e.g. a symlink for data/downloads), then re-run `dvc repro download`"
        )


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a member is unsafe to extract, or None when it is safe."""
    name = info.filename
    normalised = name.replace("\\", "/")
    if normalised.startswith("/"):
        return "absolute path"
    if _DRIVE_LETTER.match(normalised):
        return "drive letter"
    if ".." in PurePosixPath(normalised).parts:
        return "'..' component"
    if "\x00" in name:
        return "NUL byte in name"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symbolic link"
    return None


def _is_under(name: str, prefix: str) -> bool:
    """Whether a member is the folder ``prefix`` (ending in "/") or lies inside it."""
    return (name.replace("\\", "/").rstrip("/") + "/").startswith(prefix)


def _relative_target(name: str, strip_prefix: str | None) -> PurePosixPath | None:
    """Path of a member inside the destination, or None for the stripped folder itself."""
    normalised = name.replace("\\", "/")
    if strip_prefix is not None:
        prefix = strip_prefix.rstrip("/") + "/"
        if normalised.rstrip("/") + "/" == prefix:
            return None
        normalised = normalised[len(prefix) :]
    parts = [p for p in PurePosixPath(normalised).parts if p not in ("", ".")]
    return PurePosixPath(*parts) if parts else None


def sole_member(archive: Path, suffix: str) -> str:
    """The name of the one file member of ``archive`` ending in ``suffix``; DownloadError otherwise.

    For archives whose inner file name is not fixed by the publisher (Visual Genome's
    ``objects_v1_2.json.zip``): any single ``*.json`` member is accepted, wherever it lies.
    """
    archive = Path(archive)
    try:
        with zipfile.ZipFile(archive) as zipped:
            names = [i.filename for i in zipped.infolist() if not i.is_dir()]
    except zipfile.BadZipFile as error:
        raise DownloadError(
            f"{archive} is not a readable zip archive: {error}; delete it to download it again"
        ) from error
    matching = [
        n for n in names if n.lower().endswith(suffix.lower()) and not n.replace("\\", "/").startswith("__MACOSX/")
    ]
    if len(matching) != 1:
        found = f"{len(matching)}: {matching[:5]}" if matching else "none"
        raise DownloadError(
            f"{archive} should hold exactly one *{suffix} file but holds {found} (all members: "
            f"{names[:10]}{' ...' if len(names) > 10 else ''}); unexpected archive layout: check "
            f"that the file at {archive} is the right one, or delete it to download it again"
        )
    return matching[0]


Targets = list[tuple[zipfile.ZipInfo, PurePosixPath | None]]


def _open_zip(archive: Path) -> zipfile.ZipFile:
    """The open archive; a file that is no zip is a DownloadError."""
    try:
        return zipfile.ZipFile(archive)
    except zipfile.BadZipFile as error:
        raise DownloadError(f"{archive} is not a readable zip archive: {error}") from error


def _selected_members(
    archive: Path, infos: list[zipfile.ZipInfo], members: Collection[str] | None, strip_prefix: str | None
) -> list[zipfile.ZipInfo]:
    """The members to extract, after refusing any unsafe member, a missing one or one outside the prefix."""
    unsafe = [(i.filename, why) for i in infos if (why := _member_problem(i))]
    if unsafe:
        listed = ", ".join(f"{name!r} ({why})" for name, why in unsafe[:5])
        raise UnsafeArchiveError(
            f"refusing to extract {archive}: {len(unsafe)} unsafe member(s): {listed}; nothing was written"
        )
    if members is not None:
        wanted = set(members)
        missing = sorted(wanted - {i.filename for i in infos})
        if missing:
            raise DownloadError(f"{archive} lacks the expected member(s) {missing}")
        infos = [i for i in infos if i.filename in wanted]
    if strip_prefix is not None:
        prefix = strip_prefix.rstrip("/") + "/"
        outside = [i.filename for i in infos if not _is_under(i.filename, prefix)]
        if outside:
            raise DownloadError(
                f"{archive}: {len(outside)} member(s) are not under "
                f"{prefix!r}, e.g. {outside[:3]}; unexpected archive layout"
            )
    return infos


def _targets(
    archive: Path, infos: list[zipfile.ZipInfo], strip_prefix: str | None, rename: Mapping[str, str] | None
) -> Targets:
    """Each member with its path inside the destination (None: the stripped folder itself)."""
    renamed = {}
    for name, target in (rename or {}).items():
        if (why := _member_problem(zipfile.ZipInfo(target))) or not _relative_target(target, None):
            raise UnsafeArchiveError(f"refusing to extract {name!r} of {archive} to {target!r} ({why or 'empty path'})")
        renamed[name] = _relative_target(target, None)
    return [
        (info, renamed[info.filename] if info.filename in renamed else _relative_target(info.filename, strip_prefix))
        for info in infos
    ]


def _files(archive: Path, targets: Targets) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """The file members to write, each target path at most once and none inside another file."""
    files = [(info, rel) for info, rel in targets if rel is not None and not info.is_dir()]
    file_members: dict[PurePosixPath, str] = {}
    for info, rel in files:
        if rel in file_members:
            raise DownloadError(f"{archive} holds {rel} twice")
        file_members[rel] = info.filename
    for info, rel in targets:
        if rel is None:
            continue
        clash = (
            rel
            if info.is_dir() and rel in file_members
            else next((parent for parent in rel.parents if parent in file_members), None)
        )
        if clash is not None:
            raise UnsafeArchiveError(
                f"refusing to extract {archive}: member {info.filename!r} would lie inside member "
                f"{file_members[clash]!r}, which is a file; nothing was written"
            )
    return files


def _bomb_problem(files: list[tuple[zipfile.ZipInfo, PurePosixPath]], expected_bytes: int | None) -> str | None:
    """Why the declared sizes look like a decompression bomb (see the module docstring), or None."""
    for info, _ in files:
        if info.file_size > RATIO_FLOOR_BYTES and info.file_size > MAX_EXPANSION * max(info.compress_size, 1):
            return (
                f"member {info.filename!r} would expand {info.compress_size} bytes to {info.file_size} "
                f"({info.file_size // max(info.compress_size, 1)}:1, over the limit of {MAX_EXPANSION}:1 for a "
                f"member over {RATIO_FLOOR_BYTES >> 20} MiB): a decompression bomb, or not the archive it should "
                f"be; delete it to download it again"
            )
    total = sum(info.file_size for info, _ in files)
    compressed = sum(info.compress_size for info, _ in files)
    if total > RATIO_FLOOR_BYTES and total > MAX_EXPANSION * max(compressed, 1):
        return (
            f"its members would expand {compressed} bytes to {total} ({total // max(compressed, 1)}:1, over the "
            f"limit of {MAX_EXPANSION}:1): a decompression bomb, or not the archive it should be; delete it to "
            f"download it again"
        )
    if expected_bytes is not None and total > expected_bytes * (1 + EXPECTED_MARGIN):
        return (
            f"its members would extract to {total} bytes, more than the {expected_bytes} bytes expected "
            f"(+{EXPECTED_MARGIN:.0%}); not the archive it should be: delete it to download it again"
        )
    return None


def _destination_problem(dest_dir: Path, files: list[tuple[zipfile.ZipInfo, PurePosixPath]]) -> str | None:
    """Why the files cannot be merged into an existing ``dest_dir`` (a file where a folder must go)."""
    if not dest_dir.exists():
        return None
    parents = {parent for _, rel in files for parent in rel.parents if parent != PurePosixPath(".")}
    for parent in sorted(parents, key=lambda p: len(p.parts)):
        existing = dest_dir.joinpath(*parent.parts)
        if existing.exists() and not existing.is_dir():
            below = next(str(rel) for _, rel in files if parent in rel.parents)
            return f"{below!r} would lie inside the existing file {existing} (remove that file first)"
    return None


def _check_space(archive: Path, dest_dir: Path, files: list[tuple[zipfile.ZipInfo, PurePosixPath]]) -> None:
    """Refuse an extraction whose uncompressed size exceeds the free space beside ``dest_dir``."""
    needed = sum(info.file_size for info, _ in files)
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    free = _free_bytes(dest_dir.parent)
    if needed > free:
        raise DownloadError(f"extracting {archive} needs {needed} bytes, {dest_dir.parent} has {free} free")


def _extract_via_staging(
    zip_file: zipfile.ZipFile,
    archive: Path,
    dest_dir: Path,
    targets: Targets,
    files: list[tuple[zipfile.ZipInfo, PurePosixPath]],
    progress: bool,
) -> list[Path]:
    """Write ``files`` into a staging folder beside ``dest_dir``, then move them in; return their paths."""
    staging = Path(tempfile.mkdtemp(prefix=temp_prefix(dest_dir.name), suffix=".extract", dir=dest_dir.parent))
    try:
        for info, rel in tqdm(files, desc=f"extract {archive.name}", unit="file", disable=not progress, leave=False):
            target = staging.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zip_file.open(info) as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK_BYTES)
            except (zipfile.BadZipFile, zlib.error, EOFError) as error:
                raise DownloadError(
                    f"{archive} is corrupt at member {info.filename!r}: {error}; delete it to download it again"
                ) from error
        for info, rel in targets:
            if rel is not None and info.is_dir():
                staging.joinpath(*rel.parts).mkdir(parents=True, exist_ok=True)
        written = [dest_dir.joinpath(*rel.parts) for _, rel in files]
        _move_into_place(staging, dest_dir, written)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return written


def safe_extract_zip(
    archive: Path,
    dest_dir: Path,
    *,
    strip_prefix: str | None = None,
    members: Collection[str] | None = None,
    rename: Mapping[str, str] | None = None,
    expected_bytes: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Extract ``archive`` into ``dest_dir`` after checking every member; return the files written.

    All members are validated before a byte is written, against the limits of the module
    docstring; ``expected_bytes``: the extracted size the catalogue knows, if any (the members
    extracted may total at most 10% more). Files are extracted into a temporary
    directory beside ``dest_dir`` and then moved in: ``dest_dir`` is renamed into place when it
    does not exist yet, otherwise the files are merged into it (an existing file is never
    overwritten). ``strip_prefix`` drops a leading folder (``"VG_100K_2/"``); ``members`` limits
    extraction to those member names, each of which must be present. ``rename`` maps a member name
    to the relative path it is written to instead (``{"objects_v1_2.json": "objects.json"}``).
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    with _open_zip(archive) as zip_file:
        infos = _selected_members(archive, zip_file.infolist(), members, strip_prefix)
        targets = _targets(archive, infos, strip_prefix, rename)
        files = _files(archive, targets)
        problem = _bomb_problem(files, expected_bytes) or _destination_problem(dest_dir, files)
        if problem:
            raise UnsafeArchiveError(f"refusing to extract {archive}: {problem}; nothing was written")
        _check_space(archive, dest_dir, files)
        written = _extract_via_staging(zip_file, archive, dest_dir, targets, files, progress)
    log.info("extracted %d files from %s into %s", len(written), archive.name, dest_dir)
    return written


def _move_into_place(staging: Path, dest_dir: Path, written: list[Path]) -> None:
    """Rename the staging tree onto ``dest_dir``, or merge it in without overwriting anything."""
    if not dest_dir.exists():
        os.replace(staging, dest_dir)
        return
    clashes = [p for p in written if p.exists()]
    if clashes:
        raise DownloadError(f"refusing to overwrite {len(clashes)} existing file(s) in {dest_dir}, e.g. {clashes[:3]}")
    for root, _dirs, names in os.walk(staging):
        relative = Path(root).relative_to(staging)
        (dest_dir / relative).mkdir(parents=True, exist_ok=True)
        for name in names:
            os.replace(Path(root) / name, dest_dir / relative / name)
    shutil.rmtree(staging)
