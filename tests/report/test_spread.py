"""The seed-spread summary: experiments read from `dvc exp show --json`, mean ± sd per method."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lavise.report.spread import experiments_of, format_table, spread_rows

ROOT = Path(__file__).resolve().parents[2]


def _experiment(name: str, seed: int, metrics: dict | None, error: str | None = None, state: str | None = None) -> dict:
    data = {"params": {"params.yaml": {"data": {"target": {"seed": seed}}}}, "metrics": {}}
    if metrics is not None:
        data["metrics"]["metrics/recall.json"] = {"data": metrics}
    executor = None if state is None else {"state": state, "name": "tempdir", "local": None}
    return {"name": name, "executor": executor, "revs": [{"rev": "0" * 40, "name": name, "data": data, "error": error}]}


def _show(*experiments: dict) -> list:
    workspace = {"rev": "workspace", "data": {}, "experiments": None}
    return [workspace, {"rev": "1" * 40, "name": "main", "data": {}, "experiments": list(experiments)}]


def test_mean_and_sample_sd_per_method() -> None:
    show = _show(
        _experiment("seed1", 1, {"a": {"recall@5": 0.5, "correlation": 0.1}, "b": {"recall@5": 0.2}}),
        _experiment("seed2", 2, {"a": {"recall@5": 0.7, "correlation": None}, "b": {"recall@5": 0.4}}),
        _experiment("other", 3, {"a": {"recall@5": 9.0}}),
        _experiment("seed3", 3, {"a": {"recall@5": 9.0}}, state="running"),  # no results yet: left out
    )
    experiments = experiments_of(show, "seed")
    assert [e.name for e in experiments] == ["seed1", "seed2"] and experiments[1].params["target"]["seed"] == 2
    rows = spread_rows(experiments, ["recall@5", "correlation"])
    a, b = rows
    # a: recall@5 0.5, 0.7: mean 0.6, sd sqrt(((-.1)^2 + .1^2) / 1) = 0.141421; correlation only once
    assert a["recall@5"] == {"n": 2, "mean": pytest.approx(0.6), "sd": pytest.approx(0.1414214), "min": 0.5, "max": 0.7}
    assert a["correlation"] == {"n": 1, "mean": 0.1, "sd": None, "min": 0.1, "max": 0.1}
    assert b["correlation"]["n"] == 0
    table = format_table(rows, ["recall@5", "correlation"]).splitlines()
    assert table[2] == "| a | 0.600 ± 0.141 (0.500–0.700, n=2) | 0.100 ± – (0.100–0.100, n=1) |"
    assert table[3].endswith("| – |")


def test_a_failed_or_missing_experiment_is_an_error() -> None:
    with pytest.raises(ValueError, match="experiment seed2: no metrics/recall.json"):
        experiments_of(_show(_experiment("seed1", 1, {"a": {}}), _experiment("seed2", 2, None)), "seed")
    with pytest.raises(ValueError, match="experiment seed1: no metrics/recall.json \\(boom\\)"):
        experiments_of(_show(_experiment("seed1", 1, {"a": {}}, error="boom")))
    with pytest.raises(ValueError, match="experiment seed1: no metrics/recall.json \\(failed\\)"):
        experiments_of(_show(_experiment("seed1", 1, {"a": {}}, state="failed")))
    with pytest.raises(ValueError, match="no experiment named 'seed'"):
        experiments_of(_show(), "seed")


MAKE = """import json, os, yaml
seed = yaml.safe_load(open("params.yaml"))["train"]["seed"]
os.makedirs("metrics", exist_ok=True)
json.dump({"m": {"recall@5": 0.5 + seed / 10, "correlation": 0.1, "auprc": 0.3}}, open("metrics/recall.json", "w"))
"""
DVC_YAML = """stages:
  m:
    cmd: python make.py
    deps: [make.py]
    params: [train.seed]
    metrics:
      - metrics/recall.json:
          cache: false
"""


@pytest.mark.slow
def test_summary_of_real_dvc_experiments(tmp_path: Path) -> None:
    """Two `dvc exp run` seeds of a one-stage pipeline, summarised by `python -m stages.seed_spread`."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(ROOT)}
    dvc = [sys.executable, "-m", "dvc"]

    def run(*command: str) -> str:
        return subprocess.run(command, cwd=tmp_path, env=env, check=True, capture_output=True, text=True).stdout

    run("git", "init", "-q")
    run("git", "config", "user.email", "t@t")
    run("git", "config", "user.name", "t")
    run(*dvc, "init", "-q")
    (tmp_path / "params.yaml").write_text("train:\n  seed: 0\n")
    (tmp_path / "make.py").write_text(MAKE)
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    run(*dvc, "repro", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "baseline")
    for seed in (1, 2):
        run(*dvc, "exp", "run", "-q", "-n", f"seed{seed}", "-S", f"train.seed={seed}")
    (tmp_path / "show.json").write_text(run(*dvc, "exp", "show", "--json"))
    table = run(sys.executable, "-m", "stages.seed_spread", "--prefix", "seed", "--out", "spread.md")
    assert "| m | 0.650 ± 0.071 (0.600–0.700, n=2) | 0.100 ± 0.000 (0.100–0.100, n=2) |" in table
    assert (tmp_path / "spread.md").read_text() == table
    names = {e["name"] for e in json.loads((tmp_path / "show.json").read_text())[1]["experiments"]}
    assert names == {"seed1", "seed2"}
