"""Peak memory of a benchmark's own process, split into what it owns and what the page cache backs.

The kernel records only the peak of total RSS (``VmHWM``), which counts memory-mapped file pages
the kernel can drop at will; the anonymous part (``RssAnon``) is what a stage really holds, so
it is sampled in a thread.
"""

from __future__ import annotations

import threading
from pathlib import Path


def memory_status() -> dict[str, int]:
    """RssAnon / RssFile / VmHWM of this process in KiB, from /proc/self/status."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmHWM", "VmRSS"):
            fields[key] = int(value.split()[0])
    return fields


class PeakMemory:
    """Samples /proc/self/status in a thread: the kernel only records the peak of total RSS."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for key, value in memory_status().items():
            self.peak[key] = max(self.peak.get(key, 0), value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> PeakMemory:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
