"""The `report` stage as DVC runs it (`python -m stages.report` from the project root) on a tiny
synthetic run: the page, its curves, the other stages' sections; a broken input or a bad
`report` param is one line and exit 2, and leaves the previous page in place."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.writers.report import FILTERS, write_run

ROOT = Path(__file__).resolve().parents[2]


def run_report(root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "stages.report"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def test_stage_writes_the_page_and_fails_in_one_line(tmp_path: Path) -> None:
    root = write_run(tmp_path / "project")
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    result = run_report(root)
    assert result.returncode == 0, result.stderr[-3000:]
    page = (root / "results" / "report" / "index.html").read_text()
    assert page.count('class="card"') == len(FILTERS)
    assert {p.name for p in (root / "results" / "report").iterdir()} == {
        "index.html",
        "train_loss.png",
        "train_accuracy.png",
    }
    assert 'id="stage-probe"' in page and "per_filter.mean" in page
    assert page.count("not run (none of") == 3  # compare, saliency, relevance
    assert "LaViSE, CVPR 2022, Table 2" in page  # vg, resnet18, layer4: the published preset

    (root / "metrics" / "recall.json").write_text("{broken")
    result = run_report(root)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith(
        "error: metrics/recall.json: not valid JSON"
    ), result.stderr
    assert (root / "results" / "report" / "index.html").read_text() == page

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["report"]["table_rows"] = 0
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    result = run_report(root)
    assert result.returncode == 2 and "`report.table_rows` = 0 is invalid" in result.stderr
    assert "Traceback" not in result.stderr
