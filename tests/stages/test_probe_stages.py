"""The probe stages on bad input: one line naming the problem, exit status 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _run_stage(tmp_path: Path, probe: dict[str, object]) -> subprocess.CompletedProcess:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["probe"].update(probe)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, PYTHONPATH=str(ROOT), TQDM_DISABLE="1")
    env.pop("LAVISE_TRACEBACK", None)
    return subprocess.run(
        [sys.executable, "-m", "stages.probe_features"], cwd=tmp_path, env=env, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    ("probe", "line"),
    [
        ({"root": "photos"}, "error: probe folder photos holds no files"),
        ({"root": "absent"}, "error: probe folder absent not found (or not a folder)"),
        ({"groups": "column"}, "error: params.yaml: `probe.groups` = 'column' is invalid"),
    ],
)
def test_bad_probe_input_stops_in_one_line_and_writes_nothing(
    tmp_path: Path, probe: dict[str, object], line: str
) -> None:
    (tmp_path / "photos").mkdir()
    result = _run_stage(tmp_path, probe)
    assert result.returncode == 2
    errors = [text for text in result.stderr.splitlines() if text.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(line)
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "probe_index").exists() and not (tmp_path / "data" / "probe_features").exists()
