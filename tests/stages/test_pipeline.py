"""End to end: the real dvc.yaml on the embedded demo, in a temporary git clone of the project.

One demo run is shared by the tests: the default target CNN (so the saliency acceptance test
explains the demo's own model), and fewer explainer epochs, filters, µ and saliency images than
the committed defaults, to keep CI short. It checks the metrics the stages write, that an edit
of params.yaml invalidates exactly the stages that read the edited key, that a forced rerun
writes the same bytes, and that `dvc metrics diff` and `dvc params diff` compare two branches.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # whole demo pipeline under DVC: minutes
BIN = Path(sys.executable).parent
FAST_OVERRIDES = {
    ("train", "epochs"): 3,
    ("evaluate", "filters"): list(range(0, 512, 8)),
    ("evaluate", "image_masking_filters"): [0, 8],
    ("evaluate", "heatmap_filters"): [0],
    ("probe", "image_masking_filters"): [0],
    ("probe", "heatmap_filters"): [0],
    ("relevance", "mu"): [0.4, 1.6],
    ("relevance", "repeats"): 2,
    ("saliency", "images"): 2,
    ("saliency", "methods"): ["gradcam", "lime"],
    ("saliency", "lime_samples"): 20,
    ("saliency", "sheets"): 1,
}
READS_ALL_PARAMS = {"report"}  # the report shows the whole params.yaml, so every edit re-renders it


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1", TQDM_DISABLE="1")
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(BIN / "dvc"), *args], cwd, check)


def set_params(repo: Path, overrides: dict[tuple[str, ...], object]) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for keys, value in overrides.items():
        node = params
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def project_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file() and not f.startswith(("metrics/", "dvc.lock"))]


@pytest.fixture(scope="module")
def demo_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("clone")
    for name in project_files():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, repo / name)
    set_params(repo, FAST_OVERRIDES)
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], repo)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "demo"], repo)
    dvc("repro", cwd=repo)
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "run"], repo)
    return repo


def stale_stages(repo: Path) -> set[str]:
    return set(json.loads(dvc("status", "--json", cwd=repo).stdout or "{}"))


def test_demo_run_writes_every_method(demo_repo: Path) -> None:
    recall = json.loads((demo_repo / "metrics" / "recall.json").read_text())
    for method in ("original_image", "image_masking", "activation_masking", "filter_attention", "projection"):
        scores = recall[method]
        for s in (1, 5, 10, 20):
            assert 0.0 <= scores[f"recall@{s}"] <= 1.0
        assert scores["recall@5"] <= scores["recall@10"] <= scores["recall@20"]
    assert recall["filter_attention"]["n_filters"] == len(FAST_OVERRIDES[("evaluate", "filters")])
    assert "seen" in recall["filter_attention"] and "unseen" in recall["filter_attention"]
    assert (demo_repo / "results" / "explanations.csv").is_file()
    assert any((demo_repo / "results" / "heatmaps").glob("*.png"))
    page = (demo_repo / "results" / "report" / "index.html").read_text()
    assert page.count('class="card"') == len(FAST_OVERRIDES[("evaluate", "filters")])
    assert all((demo_repo / "plots" / name).is_file() for name in ("train_loss.png", "train_accuracy.png"))
    for name in ("annotations.json", "train.json", "target.json"):
        assert json.loads((demo_repo / "metrics" / name).read_text())
    assert stale_stages(demo_repo) == set()
    summary = json.loads((demo_repo / "metrics" / "summary.json").read_text())["headline"]
    assert set(summary["filter_attention"]) == {"recall@5", "recall@5_low", "recall@5_high", "correlation", "auprc"}
    assert summary["target_val_map"] == json.loads((demo_repo / "metrics" / "target.json").read_text())["val_map"]
    interval = recall["filter_attention"]["interval"]["recall@5"]
    assert interval["low"] <= recall["filter_attention"]["recall@5"] <= interval["high"]


def test_forced_rerun_reproduces_lock_and_metrics_byte_for_byte(demo_repo: Path) -> None:
    """Same machine, same inputs: forcing every stage but `target` rewrites dvc.lock (every
    output's md5) and metrics/ with the same bytes, so the committed run shows no change at all.
    (`target`'s two-run identity is tests/stages/test_target_stage.py's, on a smaller dataset.)"""
    before = {name: (demo_repo / name).read_bytes() for name in ("dvc.lock", *sorted(metric_files(demo_repo)))}
    dvc("repro", "--force", "--single-item", "download", "annotations", cwd=demo_repo)
    dvc("repro", "--force", "--downstream", "features", "probe_features", "saliency", cwd=demo_repo)
    after = {name: (demo_repo / name).read_bytes() for name in ("dvc.lock", *sorted(metric_files(demo_repo)))}
    assert [name for name in after if after[name] != before.get(name)] == [] and set(after) == set(before)
    assert run(["git", "status", "--porcelain"], demo_repo).stdout == ""


def metric_files(repo: Path) -> list[str]:
    return [str(path.relative_to(repo)) for path in (repo / "metrics").glob("*.json")]


def test_demo_relevance_tables(demo_repo: Path) -> None:
    """The relevance stage's study table for both networks, its class table, sheets and plots."""
    relevance = json.loads((demo_repo / "metrics" / "relevance.json").read_text())
    assert relevance["labels"] == "categories" and relevance["d"] == 512
    for network in ("trained", "random"):
        table = relevance[network]["table"]
        assert [row["mu"] for row in table] == FAST_OVERRIDES[("relevance", "mu")]
        assert len({row["original_map"] for row in table}) == 1
        assert table[0]["dropped"] <= table[1]["dropped"]
        for row in table:
            assert 0.0 <= row["selected_map"] <= 1.0 and row["random_sd"] >= 0.0
    classes = (demo_repo / "results" / "relevance" / "classes.csv").read_text().splitlines()
    assert classes[0].startswith("mu,class,n_train_positive,n_selected,rank,filter,weight,netdissect_label,words_")
    sheets = list((demo_repo / "results" / "relevance" / "sheets").glob("class_*.png"))
    assert len(sheets) == relevance["scored_classes"]
    assert {p.name for p in (demo_repo / "plots" / "relevance").iterdir()} == {
        "ablation_trained.png",
        "ablation_random.png",
    }


def test_demo_run_writes_saliency(demo_repo: Path) -> None:
    saliency = json.loads((demo_repo / "metrics" / "saliency.json").read_text())
    assert set(saliency["methods"]) == set(FAST_OVERRIDES[("saliency", "methods")])
    assert 0.0 <= saliency["methods"]["gradcam"]["pointing_game"]["mean"] <= 1.0
    assert saliency["agreement"]["gradcam"]["lime"] == saliency["agreement"]["lime"]["gradcam"]
    assert (demo_repo / "results" / "saliency" / "maps.parquet").is_file()
    assert len(list((demo_repo / "results" / "saliency" / "sheets").glob("image_*.png"))) == 1


def test_demo_cams_point_better_than_both_controls(demo_repo: Path, tmp_path: Path) -> None:
    """Issue 15's acceptance test: with the demo's saliency params (its image subset, channel
    budget, ROAD subset) on the demo's trained target CNN, every CAM method's pointing game beats
    the same method on the random-weights network and the centred Gaussian."""
    from lavise.models.checkpoints import resolve_weights
    from stages.saliency import Paths, run_saliency_stage, saliency_geometry

    params = yaml.safe_load((ROOT / "params.yaml").read_text())  # the committed demo defaults
    cams = ["gradcam", "gradcam++", "scorecam", "ablationcam"]
    section = {**params["saliency"], "methods": cams, "sheets": 0, "device": "cpu"}
    weights = resolve_weights(params["backbone"]["weights"], demo_repo / "models" / "target")
    raw = demo_repo / "data" / "raw" / params["dataset"]
    paths = Paths(demo_repo / "data" / "annotations", raw, tmp_path / "m.json", tmp_path)
    layer = section["layer"] or params["backbone"]["layer"]
    metrics = run_saliency_stage(
        paths, {**params["backbone"], "weights": weights}, layer, saliency_geometry(params), section
    )
    assert metrics["pairs"] >= 10 and 0 < metrics["road_pairs"] <= metrics["pairs"]
    for method in cams:
        trained = metrics["methods"][method]["pointing_game"]["mean"]
        assert trained > metrics["methods"][method]["random_weights"]["pointing_game"]["mean"], method
        assert trained > metrics["gaussian"]["pointing_game"]["mean"], method


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (("evaluate", "p"), 10, {"evaluate"}),
        (("evaluate", "presence_top_k"), 1, {"evaluate"}),
        (("train", "margin"), 0.5, {"train"}),
        (("backbone", "layer"), "layer3", {"features", "evaluate", "probe_features", "probe", "relevance", "saliency"}),
        (("saliency", "top_q"), 0.2, {"saliency"}),
        (("annotations", "seed"), 7, {"annotations"}),
        (("annotations", "min_images"), 30, {"annotations"}),
        (("features", "batch_size"), 8, {"features", "probe_features"}),
        (("features", "decode"), "device", {"features", "probe_features"}),
        (("features", "num_workers"), 0, {"features", "probe_features"}),
        (("target", "num_workers"), 0, {"target"}),
        (("target", "lr"), 0.01, {"target"}),
        (("download", "demo_seed"), 3, {"download"}),
        (("probe", "groups"), "none", {"probe_features"}),
        (("probe", "p"), 10, {"probe"}),
        (("probe", "quantile"), 0.99, {"probe", "compare"}),
        (("compare", "fdr"), 0.01, {"compare"}),
        (("report", "table_rows"), 7, set()),
        (("features", "nproc"), 2, {"features", "probe_features"}),
        (("features", "precision"), "bf16", {"features", "probe_features"}),
        (("target", "nproc"), 2, {"target"}),
        (
            ("transform", "interpolation"),
            "bicubic",
            {"target", "features", "evaluate", "probe_features", "probe", "compare", "relevance", "saliency"},
        ),
        (("relevance", "repeats"), 3, {"relevance"}),
    ],
)
def test_params_edit_invalidates_exactly_its_readers(demo_repo: Path, key: tuple, value: object, expected: set) -> None:
    original = (demo_repo / "params.yaml").read_text()
    try:
        set_params(demo_repo, {key: value})
        assert stale_stages(demo_repo) == expected | READS_ALL_PARAMS
    finally:
        (demo_repo / "params.yaml").write_text(original)
    assert stale_stages(demo_repo) == set()


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (
            "lavise/models/backbones.py",
            {"target", "features", "evaluate", "probe_features", "probe", "compare", "relevance", "saliency"},
        ),
        ("lavise/relevance/lasso.py", {"relevance"}),
        ("lavise/saliency/methods.py", {"saliency"}),
        ("lavise/data/download.py", {"download"}),
        ("lavise/models/explainer.py", {"train", "evaluate", "probe"}),
        ("lavise/metrics/two_proportion.py", {"compare"}),
        ("lavise/report/figures.py", {"train", "relevance", "report"}),
        ("lavise/report/cards.py", {"report"}),
    ],
)
def test_code_edit_invalidates_exactly_its_importers(demo_repo: Path, module: str, expected: set) -> None:
    """Stage deps follow meaning: the backbone code re-runs only the stages that load a model."""
    path = demo_repo / module
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\n# edited\n")
        assert stale_stages(demo_repo) == expected
    finally:
        path.write_bytes(original)
    assert stale_stages(demo_repo) == set()


@pytest.mark.parametrize(
    ("key", "value", "stage", "kept"),
    [
        (
            ("evaluate", "p"),
            -5,
            "evaluate",
            ["metrics/recall.json", "results/heatmaps", "results/explanations.parquet"],
        ),
        (("download", "source"), "xyz", "download", ["data/raw"]),
    ],
)
def test_rejected_params_leave_every_output(demo_repo: Path, key: tuple, value: object, stage: str, kept: list) -> None:
    """`dvc repro` with a params edit the stage rejects must not delete the outputs first."""
    before = {name: _tree_digest(demo_repo / name) for name in kept}
    original = (demo_repo / "params.yaml").read_text()
    try:
        set_params(demo_repo, {key: value})
        result = dvc("repro", stage, "--single-item", cwd=demo_repo, check=False)
        assert result.returncode != 0
        assert f"`{'.'.join(key)}` = {value!r} is invalid" in result.stdout + result.stderr
        assert {name: _tree_digest(demo_repo / name) for name in kept} == before
    finally:
        (demo_repo / "params.yaml").write_text(original)
    assert stale_stages(demo_repo) == set()


def _tree_digest(path: Path) -> dict[str, str]:
    import hashlib

    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(f.relative_to(path.parent)): hashlib.md5(f.read_bytes()).hexdigest() for f in files}


def test_demo_cache_thresholds_and_top_images_link_up(demo_repo: Path) -> None:
    """The real features -> evaluate link on the demo: cache rows are the right images under the
    trained target model, and evaluate's T_u and top images follow from the cache by definition."""
    import numpy as np
    import pandas as pd
    import torch

    from lavise.data.images import decode_image
    from lavise.data.transforms import preprocess
    from lavise.models.extractor import build_feature_extractor

    params = yaml.safe_load((demo_repo / "params.yaml").read_text())
    maps = np.load(demo_repo / "data" / "features" / "val_maps.npy", mmap_mode="r")
    val_images = pd.read_parquet(demo_repo / "data" / "features" / "val_images.parquet")
    images = pd.read_parquet(demo_repo / "data" / "annotations" / "images.parquet").set_index("image_id")
    extractor = build_feature_extractor(
        "resnet18", str(demo_repo / "models" / "target" / "model.safetensors"), "layer4"
    )
    for row in (0, len(val_images) - 1):
        path = demo_repo / "data" / "raw" / params["dataset"] / images.loc[val_images["image_id"][row], "path"]
        with torch.inference_mode():
            direct = extractor(preprocess(decode_image(path), 256, 224)[None])[0].numpy()
        np.testing.assert_allclose(maps[row].astype(np.float32), direct, rtol=1e-2, atol=1e-2)

    explanations = pd.read_parquet(demo_repo / "results" / "explanations.parquet")
    p, quantile = params["evaluate"]["p"], params["evaluate"]["quantile"]
    for u in FAST_OVERRIDES[("evaluate", "filters")][:4]:
        values = maps[:, u].astype(np.float32)
        row = explanations[(explanations["filter"] == u) & (explanations["method"] == "filter_attention")].iloc[0]
        assert row["threshold"] == pytest.approx(float(np.quantile(values.astype(np.float64), quantile)), rel=1e-6)
        maxima = values.max(axis=(1, 2))
        order = sorted((r for r in range(len(maxima)) if maxima[r] > 0), key=lambda r: (-maxima[r], r))[:p]
        assert list(row["top_image_ids"]) == [int(val_images["image_id"][r]) for r in order]


def test_demo_probe_finds_the_planted_concept(demo_repo: Path) -> None:
    """The demo's probe set: odd files counted as `features` counts them, the top compare filters of
    the group with the planted concept explained with its word, and none significant once the
    group labels are shuffled."""
    import numpy as np

    from lavise.data.demo_probe import PROBE_CONCEPT, PROBE_CONCEPT_RATES
    from lavise.features.thresholds import filter_thresholds
    from lavise.probe.compare import compare_groups
    from lavise.probe.inputs import open_probe

    probe = json.loads((demo_repo / "metrics" / "probe.json").read_text())
    assert (probe["images"]["listed"], probe["images"]["ok"], probe["images"]["undecodable"]) == (124, 122, 2)
    features_meta = json.loads((demo_repo / "data" / "probe_features" / "meta.json").read_text())
    assert features_meta["counts"]["images_undecodable"] == probe["images"]["undecodable"]
    compare = json.loads((demo_repo / "metrics" / "compare.json").read_text())
    concept_group = max(PROBE_CONCEPT_RATES, key=PROBE_CONCEPT_RATES.get)
    top = compare["top_filters"][concept_group]
    # This run's explainer trains 3 epochs (FAST_OVERRIDES): the planted word names at least one of
    # the group's top filters here; the default run names all five (README, "Explain your own images").
    named = [entry for entry in top if PROBE_CONCEPT in entry["words"]["filter_attention"]]
    assert named
    assert all(entry["q_value"] < 0.05 for entry in named)
    params = yaml.safe_load((demo_repo / "params.yaml").read_text())["probe"]
    inputs = open_probe(
        demo_repo / "data" / "probe_features", demo_repo / "data" / "probe_index", demo_repo / "data/raw/probe", "all"
    )
    thresholds, image_max = filter_thresholds(inputs.cache.val_maps, params["quantile"], inputs.filters)
    shuffled = np.random.default_rng(0).permutation(inputs.rows["group"].to_numpy())
    table = compare_groups(image_max > thresholds, shuffled, inputs.filters, fdr=0.05)
    assert not table["significant"].any()


def test_dvc_plots_show_renders_offline(demo_repo: Path, tmp_path: Path) -> None:
    """Every tracked plot is a PNG: DVC's page embeds them and asks no CDN for a chart library."""
    import re

    dvc("plots", "show", "-o", str(tmp_path / "plots"), cwd=demo_repo)
    page = (tmp_path / "plots" / "index.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.I)
    images = re.findall(r'<img[^>]+src="([^"]+)"', page)
    assert any("train_loss" in src for src in images) and any("heatmaps" in src for src in images)
    assert all((tmp_path / "plots" / src).is_file() for src in images)


def test_metrics_and_params_diff_between_branches(demo_repo: Path) -> None:
    # Last in this module: it leaves the untracked outputs (data/features) of the other branch.
    # An interval setting: evaluate re-runs (and the report), nothing downstream of its tables.
    run(["git", "checkout", "-q", "-b", "narrower-intervals"], demo_repo)
    try:
        set_params(demo_repo, {("evaluate", "bootstrap", "confidence"): 0.9})
        assert stale_stages(demo_repo) == {"evaluate", "report"}
        dvc("repro", cwd=demo_repo)
        assert stale_stages(demo_repo) == set()
        run(["git", "add", "-A"], demo_repo)
        run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "90% intervals"], demo_repo)
        metrics = json.loads(dvc("metrics", "diff", "main", "--json", cwd=demo_repo).stdout)
        recall = metrics["metrics/recall.json"]
        for s in (5, 10, 20):
            entry = recall[f"filter_attention.interval.recall@{s}.low"]
            assert set(entry) >= {"old", "new"} and entry["new"] >= entry["old"]
        assert "filter_attention.recall@5" not in recall  # the figure itself did not change
        params = json.loads(dvc("params", "diff", "main", "--json", cwd=demo_repo).stdout)
        changed = params["params.yaml"]["evaluate.bootstrap.confidence"]
        assert (changed["old"], changed["new"]) == (0.95, 0.9)
    finally:
        run(["git", "checkout", "-q", "main"], demo_repo)
