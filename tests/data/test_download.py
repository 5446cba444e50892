"""HTTP fetch (resume, retries, checksums, offline) against a real local server; safe extraction."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import random
import socket
import stat
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lavise.data.download import (
    ChecksumError,
    DownloadError,
    OfflineError,
    UnsafeArchiveError,
    fetch,
    file_digests,
    safe_extract_zip,
    sole_member,
    zip_problem,
)
from lavise.io import file_digest
from stages.download import OFFLINE_ALTERNATIVE


@dataclass
class ServerBehaviour:
    """What the test server does; the handler reads it and records each request."""

    files: dict[str, bytes] = field(default_factory=dict)
    honour_range: bool = True
    cut_after: int | None = None  # close the connection after this many body bytes...
    cuts_left: int = 0  # ...for this many responses
    fail_status: int | None = None
    failures_left: int = 0
    etag: str | None = None
    content_encoding: str | None = None  # sent as Content-Encoding (the body is sent as stored)
    stall_after: int | None = None  # send this many body bytes, then stall until `release` is set
    release: threading.Event = field(default_factory=threading.Event)
    requests: list[dict[str, str | None]] = field(default_factory=list)


class _Handler(http.server.BaseHTTPRequestHandler):
    behaviour: ServerBehaviour

    def log_message(self, format: str, *args: object) -> None:
        """Keep pytest output clean."""

    def do_GET(self) -> None:
        behaviour = self.behaviour
        behaviour.requests.append(
            {"path": self.path, "range": self.headers.get("Range"), "encoding": self.headers.get("Accept-Encoding")}
        )
        if behaviour.failures_left > 0:
            behaviour.failures_left -= 1
            self.send_error(behaviour.fail_status or 503)
            return
        body = behaviour.files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404)
            return
        start = 0
        range_header = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        stale = if_range is not None and if_range != behaviour.etag
        if range_header and behaviour.honour_range and not stale:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        if behaviour.etag:
            self.send_header("ETag", behaviour.etag)
        if behaviour.content_encoding:
            self.send_header("Content-Encoding", behaviour.content_encoding)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if behaviour.stall_after is not None:
            stall_after, behaviour.stall_after = behaviour.stall_after, None
            self.wfile.write(payload[:stall_after])
            self.wfile.flush()
            behaviour.release.wait(10)
            self.close_connection = True
            return
        if behaviour.cuts_left > 0 and behaviour.cut_after is not None:
            behaviour.cuts_left -= 1
            self.wfile.write(payload[: behaviour.cut_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)


@pytest.fixture
def server() -> Iterator[tuple[str, ServerBehaviour]]:
    behaviour = ServerBehaviour()
    handler = type("Handler", (_Handler,), {"behaviour": behaviour})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", behaviour
    finally:
        behaviour.release.set()
        httpd.shutdown()
        httpd.server_close()


def _payload(n_bytes: int = 200_000) -> bytes:
    return bytes((i * 7 + i // 251) % 256 for i in range(n_bytes))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


FAST = {"backoff_s": 0.0, "timeout_s": 5.0, "progress": False}


def test_file_digest_matches_known_vectors(tmp_path: Path) -> None:
    path = tmp_path / "abc"
    path.write_bytes(b"abc")
    assert file_digest(path, "sha256") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert file_digest(path, "md5") == "900150983cd24fb0d6963f7d28e17f72"
    assert file_digests(path) == {
        "size": 3,
        "sha256": file_digest(path, "sha256"),
        "md5": "900150983cd24fb0d6963f7d28e17f72",
    }


def test_digest_cache_invalidated_when_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"abc")
    first = file_digests(path)
    path.write_bytes(b"abcd")
    os.utime(path, ns=(1, 1))
    assert file_digests(path)["sha256"] == hashlib.sha256(b"abcd").hexdigest() != first["sha256"]


def test_cut_transfer_resumes_with_range(server, tmp_path: Path) -> None:
    base, behaviour = server
    data = _payload()
    behaviour.files["a.zip"] = data
    behaviour.cut_after, behaviour.cuts_left = len(data) // 2, 1
    dest = fetch(base + "a.zip", tmp_path / "a.zip", sha256=hashlib.sha256(data).hexdigest(), **FAST)
    assert dest.read_bytes() == data
    assert [r["range"] for r in behaviour.requests] == [None, f"bytes={len(data) // 2}-"]
    assert not (tmp_path / "a.zip.part").exists()


def test_server_ignoring_range_restarts_and_completes(server, tmp_path: Path) -> None:
    base, behaviour = server
    data = _payload()
    behaviour.files["a.zip"] = data
    behaviour.honour_range = False
    behaviour.cut_after, behaviour.cuts_left = len(data) // 3, 2
    dest = fetch(base + "a.zip", tmp_path / "a.zip", md5=hashlib.md5(data).hexdigest(), **FAST)
    assert dest.read_bytes() == data
    assert len(behaviour.requests) == 3


def test_file_changed_on_server_since_cut_is_not_spliced(server, tmp_path: Path) -> None:
    base, behaviour = server
    old, new = _payload(4000), bytes(reversed(_payload(4000)))
    behaviour.files["a.zip"], behaviour.etag = old, '"v1"'
    behaviour.cut_after, behaviour.cuts_left = 1000, 1
    with pytest.raises(DownloadError, match="partial data kept"):
        fetch(base + "a.zip", tmp_path / "a.zip", retries=0, **FAST)
    assert (tmp_path / "a.zip.part").stat().st_size == 1000
    behaviour.files["a.zip"], behaviour.etag = new, '"v2"'
    assert fetch(base + "a.zip", tmp_path / "a.zip", **FAST).read_bytes() == new
    assert behaviour.requests[-1]["range"] == "bytes=1000-"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "a.zip.digests.json"]


def test_complete_part_answered_416_is_accepted(server, tmp_path: Path) -> None:
    base, behaviour = server
    data = _payload(5000)
    behaviour.files["a.zip"] = data
    (tmp_path / "a.zip.part").write_bytes(data)
    dest = fetch(base + "a.zip", tmp_path / "a.zip", sha256=hashlib.sha256(data).hexdigest(), **FAST)
    assert dest.read_bytes() == data
    assert behaviour.requests == [{"path": "/a.zip", "range": "bytes=5000-", "encoding": "identity"}]


def test_part_longer_than_size_restarts(server, tmp_path: Path) -> None:
    base, behaviour = server
    data = _payload(5000)
    behaviour.files["a.zip"] = data
    (tmp_path / "a.zip.part").write_bytes(b"x" * 6000)
    dest = fetch(base + "a.zip", tmp_path / "a.zip", size=5000, **FAST)
    assert dest.read_bytes() == data
    assert behaviour.requests[0]["range"] is None


def test_transient_5xx_retried_then_bounded(server, tmp_path: Path) -> None:
    base, behaviour = server
    data = _payload(1000)
    behaviour.files["a.zip"] = data
    behaviour.fail_status, behaviour.failures_left = 503, 2
    delays: list[float] = []
    fetch(
        base + "a.zip", tmp_path / "a.zip", retries=5, backoff_s=0.5, timeout_s=5.0, progress=False, sleep=delays.append
    )
    assert delays == [0.5, 1.0]
    behaviour.requests.clear()
    behaviour.failures_left = 100
    with pytest.raises(DownloadError, match="after 3 attempts"):
        fetch(base + "a.zip", tmp_path / "b.zip", retries=2, sleep=delays.append, **FAST)
    assert len(behaviour.requests) == 3
    assert not (tmp_path / "b.zip").exists()


def test_404_fails_without_retry(server, tmp_path: Path) -> None:
    base, behaviour = server
    with pytest.raises(DownloadError, match="404") as caught:
        fetch(base + "missing.zip", tmp_path / "missing.zip", **FAST)
    assert not isinstance(caught.value, OfflineError)
    assert len(behaviour.requests) == 1


def test_corrupt_archive_rejected_and_nothing_left(server, tmp_path: Path) -> None:
    base, behaviour = server
    behaviour.files["a.zip"] = _payload(3000)
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as caught:
        fetch(base + "a.zip", tmp_path / "a.zip", sha256=wrong, **FAST)
    message = str(caught.value)
    assert "a.zip" in message and wrong in message
    assert hashlib.sha256(_payload(3000)).hexdigest() in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_wrong_size_rejected(server, tmp_path: Path) -> None:
    base, behaviour = server
    behaviour.files["a.zip"] = _payload(3000)
    with pytest.raises(ChecksumError, match="expected 2999 bytes, got 3000"):
        fetch(base + "a.zip", tmp_path / "a.zip", size=2999, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_verified_destination_reused_without_network(server, tmp_path: Path) -> None:
    base, behaviour = server
    data = _payload(3000)
    (tmp_path / "a.zip").write_bytes(data)
    fetch(base + "a.zip", tmp_path / "a.zip", md5=hashlib.md5(data).hexdigest(), **FAST)
    assert behaviour.requests == []


def test_corrupt_destination_downloaded_again(server, tmp_path: Path) -> None:
    base, behaviour = server
    data = _payload(3000)
    behaviour.files["a.zip"] = data
    (tmp_path / "a.zip").write_bytes(b"stale")
    fetch(base + "a.zip", tmp_path / "a.zip", sha256=hashlib.sha256(data).hexdigest(), **FAST)
    assert (tmp_path / "a.zip").read_bytes() == data


@pytest.mark.parametrize(
    "url", [f"http://127.0.0.1:{_closed_port()}/train2017.zip", "http://no-such-host.invalid/train2017.zip"]
)
def test_offline_error_names_url_file_and_remedy(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Offline is reported as offline even on a full disk: free space is checked only once a
    # server has answered, so this does not depend on the machine's free space.
    monkeypatch.setattr("lavise.data.download._free_bytes", lambda directory: 0)
    dest = tmp_path / "downloads" / "train2017.zip"
    with pytest.raises(OfflineError) as caught:
        fetch(
            url,
            dest,
            retries=3,
            size=19336861798,
            md5="cced6f7f71b7629ddf16f17bbcfab6b2",
            sleep=lambda s: pytest.fail("offline must not retry"),
            offline_alternative=OFFLINE_ALTERNATIVE,
            **FAST,
        )
    message = str(caught.value)
    assert url in message and str(dest.resolve()) in message
    assert "download.source: demo" in message and "\n" not in message
    assert "verified against its published checksum" in message
    assert not dest.exists() and not dest.with_name("train2017.zip.part").exists()


def test_offline_message_says_what_is_checked_without_checksum(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/objects_v1_2.json.zip"
    with pytest.raises(OfflineError) as caught:
        fetch(url, tmp_path / "objects_v1_2.json.zip", verify_zip=True, **FAST)
    message = str(caught.value)
    assert "no checksum or size is published" in message
    assert "complete, readable zip archive will be checked" in message
    assert "verified" not in message
    assert "download.source" not in message  # the library names no params key; the stage adds its remedy
    with pytest.raises(OfflineError, match="its size \\(862182613 bytes\\) and that it is a complete"):
        fetch(url, tmp_path / "glove.6B.zip", size=862182613, verify_zip=True, **FAST)
    with pytest.raises(OfflineError, match="reused without verification"):
        fetch(url, tmp_path / "other.bin", **FAST)


def test_free_space_checked_once_server_answers(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, behaviour = server
    data = _payload(5000)
    behaviour.files["a.zip"] = data
    free = {"bytes": 4999}
    monkeypatch.setattr("lavise.data.download._free_bytes", lambda directory: free["bytes"])
    with pytest.raises(DownloadError, match="4999 bytes free but a.zip needs 5000 more bytes") as caught:
        fetch(
            base + "a.zip",
            tmp_path / "a.zip",
            retries=3,
            sleep=lambda s: pytest.fail("a full disk must not be retried"),
            **FAST,
        )
    assert not isinstance(caught.value, OfflineError)
    assert len(behaviour.requests) == 1 and list(tmp_path.iterdir()) == []
    # A resumed transfer needs room only for the bytes still to come.
    (tmp_path / "a.zip.part").write_bytes(data[:3000])
    free["bytes"] = 2000
    assert fetch(base + "a.zip", tmp_path / "a.zip", size=5000, **FAST).read_bytes() == data
    assert behaviour.requests[-1]["range"] == "bytes=3000-"


def test_free_space_uses_published_size_and_real_disk_usage(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import collections
    import shutil

    base, behaviour = server
    behaviour.files["a.zip"] = _payload(5000)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 100, 100))
    with pytest.raises(DownloadError, match="100 bytes free"):
        fetch(base + "a.zip", tmp_path / "a.zip", size=5000, **FAST)
    assert not (tmp_path / "a.zip.part").exists()


def test_encoded_body_refused_and_identity_asked_for(server, tmp_path: Path) -> None:
    """A gzip-encoded body is not the file: never kept, even with nothing to verify it against."""
    base, behaviour = server
    zipped = _zip_bytes({"objects.json": _payload(20_000)})
    behaviour.files["objects.json.zip"] = gzip.compress(zipped, compresslevel=0)
    behaviour.content_encoding = "gzip"
    dest = tmp_path / "objects.json.zip"
    with pytest.raises(DownloadError) as error:
        fetch(base + dest.name, dest, **FAST)
    assert str(error.value) == (
        f"{base}objects.json.zip was sent with Content-Encoding: gzip although only the file itself "
        f"(identity) was asked for; the response was not kept: try again later, or download the file by "
        f"other means and place it at {dest.resolve()}"
    )
    assert [r["encoding"] for r in behaviour.requests] == ["identity"]
    assert list(tmp_path.iterdir()) == []
    behaviour.content_encoding = "identity"  # stated explicitly: fine
    behaviour.files["objects.json.zip"] = zipped
    assert fetch(base + dest.name, dest, verify_zip=True, **FAST).read_bytes() == zipped


def test_bytes_received_before_a_stall_are_kept_for_the_resume(server, tmp_path: Path) -> None:
    """The message says partial data was kept: it must be, on disk, when the server stalls."""
    base, behaviour = server
    data = _payload(3 << 20)
    behaviour.files["a.zip"] = data
    behaviour.stall_after = 300_000  # less than one read of CHUNK_BYTES
    dest, part = tmp_path / "a.zip", tmp_path / "a.zip.part"
    started = time.monotonic()
    with pytest.raises(DownloadError, match="partial data kept in .*a.zip.part"):
        fetch(base + "a.zip", dest, retries=0, backoff_s=0.0, timeout_s=0.5, progress=False)
    assert time.monotonic() - started < 8
    assert part.stat().st_size == 300_000
    behaviour.release.set()
    assert fetch(base + "a.zip", dest, sha256=hashlib.sha256(data).hexdigest(), **FAST).read_bytes() == data
    assert behaviour.requests[-1]["range"] == "bytes=300000-"


def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_zip_problem_detects_truncation(tmp_path: Path) -> None:
    data = _zip_bytes({"objects.json": _payload(20_000), "b.txt": b"b"})
    path = tmp_path / "a.zip"
    path.write_bytes(data)
    assert zip_problem(path) is None
    for cut in (len(data) - 1, len(data) // 2, 10):
        path.write_bytes(data[:cut])
        assert "not a complete" in zip_problem(path)
    path.write_bytes(b"<html>404</html>")
    assert "not a complete" in zip_problem(path)
    path.write_bytes(gzip.compress(data, compresslevel=0))  # zipfile finds the archive inside: not the file
    assert zip_problem(path) == "not a zip archive (it starts with a gzip stream, not a zip member header)"


def test_truncated_zip_without_checksum_downloaded_again(server, tmp_path: Path) -> None:
    base, behaviour = server
    data = _zip_bytes({"objects.json": _payload(20_000)})
    behaviour.files["objects_v1_2.json.zip"] = data
    dest = tmp_path / "objects_v1_2.json.zip"
    dest.write_bytes(data[: len(data) - 100])
    assert fetch(base + dest.name, dest, verify_zip=True, **FAST).read_bytes() == data
    assert len(behaviour.requests) == 1
    behaviour.requests.clear()
    fetch(base + dest.name, dest, verify_zip=True, **FAST)  # complete now: reused, no request
    assert behaviour.requests == []


def test_download_that_is_not_a_zip_rejected_without_checksum(server, tmp_path: Path) -> None:
    base, behaviour = server
    behaviour.files["images.zip"] = b"<html>maintenance</html>"
    with pytest.raises(ChecksumError, match="images.zip .*corrupt.*not a complete, readable zip"):
        fetch(base + "images.zip", tmp_path / "images.zip", verify_zip=True, **FAST)
    assert list(tmp_path.iterdir()) == []


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def test_extract_with_strip_prefix_and_merge(tmp_path: Path) -> None:
    first = _zip(tmp_path / "images.zip", {"VG_100K/": b"", "VG_100K/1.jpg": b"one"})
    second = _zip(tmp_path / "images2.zip", {"VG_100K_2/2.jpg": b"two", "VG_100K_2/sub/3.jpg": b"3"})
    dest = tmp_path / "raw" / "images"
    assert safe_extract_zip(first, dest, strip_prefix="VG_100K/", progress=False) == [dest / "1.jpg"]
    written = safe_extract_zip(second, dest, strip_prefix="VG_100K_2", progress=False)
    assert sorted(written) == [dest / "2.jpg", dest / "sub" / "3.jpg"]
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*.jpg")) == ["1.jpg", "2.jpg", "sub/3.jpg"]
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["images"]
    with pytest.raises(DownloadError, match="overwrite"):
        safe_extract_zip(first, dest, strip_prefix="VG_100K/", progress=False)


def test_extract_selected_members_only(tmp_path: Path) -> None:
    archive = _zip(
        tmp_path / "ann.zip", {"annotations/instances_val2017.json": b"{}", "annotations/captions_val2017.json": b"{}"}
    )
    dest = tmp_path / "coco"
    safe_extract_zip(archive, dest, members=["annotations/instances_val2017.json"], progress=False)
    assert [p.name for p in dest.rglob("*.json")] == ["instances_val2017.json"]
    with pytest.raises(DownloadError, match="lacks"):
        safe_extract_zip(archive, tmp_path / "other", members=["annotations/x.json"], progress=False)


@pytest.mark.parametrize("member", ["objects.json", "objects_v1_2.json", "data/objects.json"])
def test_sole_json_member_installed_under_fixed_name(tmp_path: Path, member: str) -> None:
    archive = _zip(tmp_path / "objects_v1_2.json.zip", {"data/": b"", member: b"[1]"})
    assert sole_member(archive, ".json") == member
    written = safe_extract_zip(
        archive, tmp_path / "vg", members=[member], rename={member: "objects.json"}, progress=False
    )
    assert written == [tmp_path / "vg" / "objects.json"]
    assert [p.name for p in (tmp_path / "vg").rglob("*")] == ["objects.json"]
    assert (tmp_path / "vg" / "objects.json").read_bytes() == b"[1]"


def test_sole_member_refuses_none_or_several(tmp_path: Path) -> None:
    several = _zip(tmp_path / "several.zip", {"objects.json": b"[]", "attributes.json": b"[]"})
    with pytest.raises(DownloadError, match=r"exactly one \*\.json file but holds 2"):
        sole_member(several, ".json")
    none = _zip(tmp_path / "none.zip", {"readme.txt": b""})
    with pytest.raises(DownloadError, match="holds none"):
        sole_member(none, ".json")
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 nope")
    with pytest.raises(DownloadError, match="not a readable zip"):
        sole_member(broken, ".json")


def test_rename_target_must_stay_inside(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "a.zip", {"objects.json": b"[]"})
    with pytest.raises(UnsafeArchiveError):
        safe_extract_zip(archive, tmp_path / "out", rename={"objects.json": "../evil.json"}, progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.json").exists()


def _symlink_zip(path: Path) -> Path:
    info = zipfile.ZipInfo("link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ok.txt", b"fine")
        archive.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize(
    "bad_name, reason",
    [
        ("../evil", "'..' component"),
        ("dir/../../evil", "'..' component"),
        ("/tmp/absolute_evil", "absolute path"),
        ("C:/evil", "drive letter"),
        ("..\\evil", "'..' component"),
    ],
)
def test_unsafe_member_refused_and_nothing_written(tmp_path: Path, bad_name: str, reason: str) -> None:
    archive_dir = tmp_path / "archives"
    archive_dir.mkdir()
    archive = _zip(archive_dir / "bad.zip", {"ok.txt": b"fine", bad_name: b"evil"})
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(UnsafeArchiveError, match=reason.replace("'", ".")):
        safe_extract_zip(archive, work / "out", progress=False)
    assert list(work.iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_symlink_member_refused(tmp_path: Path) -> None:
    archive = _symlink_zip(tmp_path / "link.zip")
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        safe_extract_zip(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_member_outside_prefix_and_broken_zip_refused(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "images.zip", {"VG_100K/1.jpg": b"1", "__MACOSX/x": b"2"})
    with pytest.raises(DownloadError, match="not under 'VG_100K/'"):
        safe_extract_zip(archive, tmp_path / "out", strip_prefix="VG_100K/", progress=False)
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DownloadError, match="not a readable zip"):
        safe_extract_zip(broken, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_corrupt_member_fails_and_leaves_nothing(tmp_path: Path) -> None:
    noise = random.Random(0).randbytes(20_000)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.txt", b"a" * 1000)
        archive.writestr("b.txt", noise)
    data = bytearray(buffer.getvalue())
    middle = data.find(b"b.txt") + 10_000
    data[middle : middle + 64] = bytes(64)
    archive_path = tmp_path / "corrupt.zip"
    archive_path.write_bytes(bytes(data))
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(DownloadError, match="corrupt at member 'b.txt'"):
        safe_extract_zip(archive_path, work / "out", progress=False)
    assert list(work.iterdir()) == []


@pytest.mark.parametrize(
    "entries",
    [
        {"a": b"file", "a/b": b"inside a file"},
        {"a/b": b"inside a file", "a": b"file"},
        {"a": b"file", "a/": b""},
        {"x/a": b"file", "x/a/b/c": b"deeper"},
    ],
)
def test_member_below_another_file_member_refused_naming_both(tmp_path: Path, entries: dict[str, bytes]) -> None:
    """Was FileExistsError (a traceback) after part of the archive was written."""
    archive = _zip(tmp_path / "clash.zip", entries)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(UnsafeArchiveError) as error:
        safe_extract_zip(archive, work / "out", progress=False)
    file_member, below = sorted(entries, key=len)
    assert str(error.value) == (
        f"refusing to extract {archive}: member {below!r} would lie inside member {file_member!r}, "
        f"which is a file; nothing was written"
    )
    assert list(work.iterdir()) == []


def test_member_below_an_existing_file_refused_before_writing(tmp_path: Path) -> None:
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / "a").write_text("already here")
    archive = _zip(tmp_path / "b.zip", {"a/b": b"x", "c": b"y"})
    with pytest.raises(DownloadError, match=r"refusing to extract .*b.zip: 'a/b' would lie inside the existing file"):
        safe_extract_zip(archive, dest, progress=False)
    assert sorted(p.name for p in dest.iterdir()) == ["a"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _deflated(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def test_zip_bomb_member_refused_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """8 MB of zeros compress to ~8 KB (1000:1): refused from the central directory, no byte written."""
    archive = _deflated(tmp_path / "bomb.zip", {"ok.txt": b"fine", "zeros.bin": bytes(8 << 20)})
    assert archive.stat().st_size < 20_000
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda *a, **k: pytest.fail("a member was decompressed"))
    with pytest.raises(UnsafeArchiveError) as error:
        safe_extract_zip(archive, tmp_path / "out", progress=False)
    info = zipfile.ZipFile(archive).getinfo("zeros.bin")
    assert str(error.value) == (
        f"refusing to extract {archive}: member 'zeros.bin' would expand {info.compress_size} bytes to "
        f"{info.file_size} ({info.file_size // info.compress_size}:1, over the limit of 200:1 for a member over "
        f"1 MiB): a decompression bomb, or not the archive it should be; delete it to download it again; "
        f"nothing was written"
    )
    assert not (tmp_path / "out").exists()


def test_many_small_bomb_members_refused_by_the_whole_archive_ratio(tmp_path: Path) -> None:
    """Each member under 1 MiB escapes the per-member cap; together they are 12 MB from ~12 KB."""
    archive = _deflated(tmp_path / "bombs.zip", {f"z{i}.bin": bytes(600_000) for i in range(20)})
    with pytest.raises(
        UnsafeArchiveError, match=r"its members would expand \d+ bytes to 12000000 \(\d+:1, over the limit of 200:1"
    ):
        safe_extract_zip(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_total_over_the_expected_extracted_size_refused(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "a.zip", {"a.bin": _payload(6000), "b.bin": _payload(5100)})
    with pytest.raises(UnsafeArchiveError) as error:
        safe_extract_zip(archive, tmp_path / "out", expected_bytes=10_000, progress=False)
    assert str(error.value) == (
        f"refusing to extract {archive}: its members would extract to 11100 bytes, more than the 10000 bytes "
        f"expected (+10%); not the archive it should be: delete it to download it again; nothing was written"
    )
    assert not (tmp_path / "out").exists()
    assert safe_extract_zip(archive, tmp_path / "out", expected_bytes=10_100, progress=False)  # within 10%
