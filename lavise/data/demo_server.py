"""Local HTTP server with Range support, for the embedded demo's archives.

The demo's archives travel the same fetch -> verify -> extract path as the official ones, resume
included, so they are served over HTTP by a server that honours single ``Range`` requests (206
and 416), as the official hosts do.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import logging
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _RangeRequestHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single-range ``Range: bytes=a-b`` requests (206/416), as resume needs."""

    def send_head(self):  # type: ignore[override]
        path = self.translate_path(self.path)
        header = self.headers.get("Range")
        if header is None or not os.path.isfile(path):
            return super().send_head()
        match = _RANGE.match(header.strip())
        size = os.path.getsize(path)
        if match is None or match.groups() == ("", ""):
            self.send_error(400, "unsupported Range header")
            return None
        first, last = match.groups()
        if first == "":
            start, end = max(0, size - int(last)), size - 1
        else:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
        if start >= size or start > end:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        f = open(path, "rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        return _Limited(f, end - start + 1)

    def end_headers(self) -> None:
        self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        log.debug("demo server: " + format, *args)


class _Limited(io.RawIOBase):
    """Read at most ``remaining`` bytes of ``f`` (a large range, streamed by copyfile)."""

    def __init__(self, f: io.BufferedReader, remaining: int) -> None:
        self._f, self._remaining = f, remaining

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = self._remaining if size < 0 else min(size, self._remaining)
        data = self._f.read(size)
        self._remaining -= len(data)
        return data

    def close(self) -> None:
        self._f.close()
        super().close()


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 (free port) in a thread; yield the base URL (no slash)."""
    handler = lambda *args, **kwargs: _RangeRequestHandler(*args, directory=str(directory), **kwargs)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="demo-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
