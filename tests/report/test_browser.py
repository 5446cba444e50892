"""The report in a real headless browser (Debian's chromium): it loads with no request to any
other host, a screenshot of it is not blank, and its DOM holds one card per evaluated filter.

Chromium is pointed at a proxy that is also the page's server: every request the browser makes,
for any host (and every HTTPS tunnel), reaches it and is logged; only the page's own host is
served, the rest refused. Without chromium the test skips, unless LAVISE_REQUIRE_BROWSER=1
(CI, which installs it), where a missing browser fails.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from lavise.report.cards import heatmap_sheets
from lavise.report.inputs import read_metrics, read_table
from lavise.report.page import ReportInputs, write_report
from lavise.report.references import matching_preset
from lavise.report.sections import StageFiles
from tests.writers.report import FILTERS, write_run

pytestmark = pytest.mark.slow  # two browser launches: seconds each
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("LAVISE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"LAVISE_REQUIRE_BROWSER=1 but none of {BROWSERS} is on PATH (apt-get install chromium)")
    pytest.skip(f"no headless browser ({' / '.join(BROWSERS)}) on PATH; set LAVISE_REQUIRE_BROWSER=1 to fail instead")


class LoggingProxy(http.server.SimpleHTTPRequestHandler):
    """Serves files of the page's host from ``directory``; logs and refuses every other request."""

    requests: list[tuple[str, str, str]]
    own_host: str

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        self.requests.append(("GET", parts.netloc, parts.path))
        if parts.netloc != self.own_host:
            self.send_error(403, "the report may not reach other hosts")
            return
        self.path = parts.path
        super().do_GET()

    def do_CONNECT(self) -> None:
        self.requests.append(("CONNECT", self.path, ""))
        self.send_error(403, "the report may not reach other hosts")

    do_POST = do_HEAD = do_CONNECT

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the requests are kept in ``requests``."""


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[tuple[str, list[tuple[str, str, str]], Path]]:
    root = tmp_path / "served"
    write_run(root)
    log: list[tuple[str, str, str]] = []
    handler = type("Handler", (LoggingProxy,), {"requests": log, "own_host": ""})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(root)))
    handler.own_host = f"127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler.own_host, log, root
    finally:
        server.shutdown()
        server.server_close()


def report_inputs(root: Path) -> ReportInputs:
    files = [
        StageFiles(
            "probe",
            "Probe",
            root / "metrics/probe.json",
            root / "results/probe/explanations.parquet",
            root / "results/probe/heatmaps",
        )
    ]
    return ReportInputs(
        params={"dataset": "vg", "backbone": {"name": "resnet18", "layer": "layer4"}},
        revision="0123abc",
        metrics={"recall": read_metrics(root / "metrics" / "recall.json")},
        history={
            "epoch": [1, 2],
            "train_loss": [3, 2],
            "holdout_loss": [3, 2.5],
            "holdout_top1": [0, 1],
            "holdout_top5": [1, 1],
        },
        explanations=read_table(root / "results" / "explanations.parquet"),
        scores=read_table(root / "results" / "filters.parquet"),
        sheets=heatmap_sheets(root / "results" / "heatmaps"),
        preset=matching_preset("vg", "resnet18", "layer4"),
        stages=files,
    )


def chromium(browser: str, host: str, url: str, work: Path) -> tuple[str, Path, list[str]]:
    """Load ``url`` once: its DOM after the scripts ran, a screenshot, and every URL the page asked
    for (NetLog requests whose initiator is the page's origin, and the page itself). Chromium's own
    background requests (time, sign-in, autofill: no initiator) are refused by the proxy but not
    counted against the page."""
    shot, netlog = work / "shot.png", work / "netlog.json"
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-default-apps",
        "--hide-scrollbars", "--window-size=1200,1600", f"--user-data-dir={work / 'profile'}",
        f"--proxy-server=http://{host}", "--proxy-bypass-list=<-loopback>", f"--log-net-log={netlog}",
        "--dump-dom", f"--screenshot={shot}",
    ]  # fmt: skip
    result = subprocess.run([browser, *flags, url], capture_output=True, text=True, timeout=120, cwd=work)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    return result.stdout, shot, page_requests(netlog, f"http://{host}", url)


def page_requests(netlog: Path, origin: str, url: str) -> list[str]:
    """The URLs of the requests the page made (its own navigation included), from a NetLog file."""
    data = json.loads(netlog.read_text())
    start_job = data["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    found = []
    for event in data["events"]:
        params = event.get("params") or {}
        if event["type"] == start_job and (params.get("initiator") == origin or params.get("url") == url):
            found.append(params["url"])
    return found


def test_page_loads_offline_renders_and_has_a_card_per_filter(proxy: tuple, tmp_path: Path) -> None:
    browser = find_browser()
    host, log, root = proxy
    write_report(root / "results" / "report", report_inputs(root))
    url = f"http://{host}/results/report/index.html"
    dom, shot, requested = chromium(browser, host, url, tmp_path)
    assert dom.count('class="card"') == len(FILTERS)
    assert f"{len(FILTERS)} of {len(FILTERS)} filters" in dom  # the inline script ran
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.std() > 10, "the screenshot is blank"
    assert url in requested and f"http://{host}/results/report/train_loss.png" in requested
    others = [u for u in requested if urlsplit(u).netloc != host]
    assert not others, f"the page asked other hosts for {others}"
    served = {path for method, netloc, path in log if netloc == host}
    assert served <= {urlsplit(u).path for u in requested} | {"/favicon.ico"}


def test_the_check_sees_a_page_that_asks_a_cdn(proxy: tuple, tmp_path: Path) -> None:
    """The same check on a page with a CDN script and a remote image: both are caught (and refused)."""
    browser = find_browser()
    host, log, root = proxy
    page = root / "canary.html"
    page.write_text('<html><body><p>x</p><script src="https://cdn.jsdelivr.net/npm/vega@5"></script>'
                    '<img src="http://example.org/a.png"></body></html>')  # fmt: skip
    _, _, requested = chromium(browser, host, f"http://{host}/canary.html", tmp_path)
    assert {"https://cdn.jsdelivr.net/npm/vega@5", "http://example.org/a.png"} <= set(requested)
    assert ("GET", "example.org", "/a.png") in log
