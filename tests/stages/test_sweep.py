"""A queued DVC sweep (README "Scaling out"): a 2 layers x 2 seeds grid with `dvc exp run --queue`,
run by `dvc queue start --jobs 2`, compared with `dvc exp show`, at the smallest demo scale.

Each queued experiment runs in its own temporary workspace and sees only the DVC cache, so the
outputs that dvc.yaml keeps out of the cache are cached in this copy (see UNCACHED_OUTPUTS) and the
params are cut to seconds per stage; the check is that every cell of the grid succeeds, is
isolated (its params and metrics are its own) and is reproducible (the grid's cell with the
workspace's params gives the workspace's metrics).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.stages.test_pipeline import ROOT, dvc, project_files, run, set_params

pytestmark = pytest.mark.slow
SWEEP_OVERRIDES = {
    ("download", "datasets"): ["vg"],
    ("transform", "resize"): 64,
    ("transform", "crop"): 56,
    ("target", "epochs"): 1,
    ("target", "crop"): 32,
    ("train", "epochs"): 2,
    ("evaluate", "filters"): [0, 1, 2, 3],
    ("evaluate", "image_masking_filters"): [0],
    ("evaluate", "heatmap_filters"): [],
    ("evaluate", "top_s"): [5],
    ("probe", "filters"): [0, 1, 2, 3],
    ("probe", "image_masking_filters"): [0],
    ("probe", "heatmap_filters"): [],
    ("relevance", "mu"): [1.6],
    ("relevance", "repeats"): 1,
    ("relevance", "random_control"): False,
    ("relevance", "single_filter_reference"): False,
    ("saliency", "images"): 1,
    ("saliency", "methods"): ["gradcam"],
    ("saliency", "sheets"): 0,
}
# Outputs kept out of the DVC cache in the shipped dvc.yaml (the raw data is ~38 GB at paper scale):
# cached here, so that each queued experiment checks out the unchanged stages' outputs from the
# shared cache instead of rebuilding the whole demo (the README's sweep advice for users).
UNCACHED_OUTPUTS = ("data/raw", "data/features", "data/probe_index", "data/probe_features")
GRID = ("backbone.layer=layer3,layer4", "train.seed=0,1")
GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]


def _recall(data: dict[str, Any]) -> dict[str, Any]:
    return data.get("metrics", {}).get("metrics/recall.json", {}).get("data", {})


def _experiments(repo: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`dvc exp show --json`: the recall metrics of the `main` commit (as DVC reads them: nulls
    dropped) and, per experiment, its name, params and recall metrics."""
    shown = json.loads(dvc("exp", "show", "--json", cwd=repo).stdout)
    baseline = next(_recall(row["data"]) for row in shown if row.get("name") == "main")
    found = []
    for row in shown:
        for exp in row.get("experiments") or []:
            for revision in exp.get("revs", []):
                data = revision.get("data") or {}
                params = data.get("params", {}).get("params.yaml", {}).get("data", {})
                found.append({"name": revision.get("name"), "params": params, "recall": _recall(data)})
    return baseline, found


def cache_outputs(dvc_yaml: Path, outputs: tuple[str, ...]) -> None:
    """Turn ``cache: false`` into ``cache: true`` for ``outputs`` in ``dvc_yaml``."""
    text = dvc_yaml.read_text()
    for out in outputs:
        before = f"      - {out}:\n          cache: false\n"
        assert before in text, f"{out} is not a `cache: false` output of dvc.yaml"
        text = text.replace(before, f"      - {out}:\n          cache: true\n")
    dvc_yaml.write_text(text)


def _wait_for_queue(repo: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = dvc("queue", "status", cwd=repo).stdout
        if not any(word in status for word in ("Queued", "Running")):
            return status
        time.sleep(2)
    raise AssertionError(f"queue still busy after {timeout} s:\n{status}")


def test_a_queued_grid_runs_isolated_reproducible_experiments(tmp_path: Path) -> None:
    repo = tmp_path / "sweep"
    for name in project_files():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, repo / name)
    set_params(repo, SWEEP_OVERRIDES)
    cache_outputs(repo / "dvc.yaml", UNCACHED_OUTPUTS)
    # Copies, not hardlinks, out of the cache: the readers refuse multiply-linked files (CWE-59).
    (repo / ".dvc" / "config").write_text('[core]\n    analytics = false\n[cache]\n    type = "reflink,copy"\n')
    run(["git", "init", "-q", "-b", "main"], repo)
    run([*GIT, "add", "-A"], repo)
    run([*GIT, "commit", "-qm", "sweep"], repo)
    dvc("repro", cwd=repo)  # the workspace's own run: layer4, train.seed 0
    run([*GIT, "add", "-A"], repo)
    run([*GIT, "commit", "-qm", "baseline"], repo)

    dvc("exp", "run", "--queue", *(arg for pair in GRID for arg in ("-S", pair)), cwd=repo)
    dvc("queue", "start", "--jobs", "2", cwd=repo)
    status = _wait_for_queue(repo, timeout=600)
    assert "Failed" not in status, status
    workspace, experiments = _experiments(repo)
    cells = {(e["params"]["backbone"]["layer"], e["params"]["train"]["seed"]): e for e in experiments}
    assert sorted(cells) == [("layer3", 0), ("layer3", 1), ("layer4", 0), ("layer4", 1)], status
    for (layer, seed), exp in cells.items():
        assert exp["params"]["transform"]["crop"] == 56  # the committed params, only the grid's keys changed
        for method in ("filter_attention", "projection"):
            assert 0.0 <= exp["recall"][method]["recall@5"] <= 1.0, (layer, seed)
    assert cells[("layer4", 0)]["recall"] == workspace  # reproducible: same params, same metrics
    assert cells[("layer3", 0)]["recall"] != workspace  # isolated: another layer, other scores
    assert cells[("layer4", 1)]["recall"] != workspace  # another explainer seed, other scores
    columns = r"Experiment|backbone.layer|train.seed|^[a-z_]+\.recall@5$"
    table = dvc("exp", "show", "--csv", "--drop", ".*", "--keep", columns, cwd=repo).stdout.splitlines()
    assert {"backbone.layer", "train.seed", "filter_attention.recall@5"} <= set(table[0].split(","))
    assert len(table) == 1 + 2 + 4  # header, workspace, main, the four cells
