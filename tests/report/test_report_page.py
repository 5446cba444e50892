"""The report page's parts on a tiny synthetic run: intervals, published figures, cards, other
stages' sections, and the page as a whole (relative images, no other host, same bytes twice)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lavise.report.cards import filter_cards, heatmap_sheets
from lavise.report.html import flatten, fmt, relative_src
from lavise.report.inputs import git_revision, read_metrics, read_table, read_table_head
from lavise.report.page import ReportInputs, render_page, write_report
from lavise.report.references import load_presets, matching_preset
from lavise.report.sections import StageFiles, stage_section
from lavise.report.summary import recall_steps, reference_table, subsets_table, summary_table, with_interval
from tests.writers.report import FILTERS, recall_metrics, write_run


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run")


def inputs(root: Path) -> ReportInputs:
    recall = read_metrics(root / "metrics" / "recall.json")
    return ReportInputs(
        params={"dataset": "vg", "backbone": {"name": "resnet18", "layer": "layer4"}, "download": {"source": "demo"}},
        revision="abc123",
        metrics={"recall": recall, "train": read_metrics(root / "metrics" / "train.json")},
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
        stages=[
            StageFiles(
                name,
                name,
                root / f"metrics/{name}.json",
                root / f"results/{name}/t.parquet",
                root / f"results/{name}/heatmaps",
            )
            for name in ("probe", "compare")
        ],
    )


def test_a_figure_shows_its_interval_where_one_exists() -> None:
    block = recall_metrics()["filter_attention"]
    assert with_interval(block, "recall@5") == '0.150 <span class="ci">[0.111, 0.222]</span>'
    assert with_interval(block, "recall@5", "seen") == '0.500 <span class="ci">[0.444, 0.556]</span>'
    assert with_interval(block, "recall@10") == "0.200"  # no interval written for it
    assert with_interval(block, "auprc") == "0.400"
    assert with_interval(block, "recall@5", "unseen") == "0.000"
    nested = {"recall@5": 0.3, "seen": {"recall@5": 0.7, "interval": {"recall@5": {"low": 0.6, "high": 0.8}}}}
    assert with_interval(nested, "recall@5", "seen") == '0.700 <span class="ci">[0.600, 0.800]</span>'
    assert with_interval({}, "auprc") == "—"
    undefined = {"correlation": None, "interval": {"correlation": {"low": None, "high": None}}}
    assert with_interval(undefined, "correlation") == "—"  # an undefined figure has null bounds


def test_summary_tables_have_a_row_per_method_and_the_second_metric_when_written() -> None:
    recall = {"note": "not a block", **recall_metrics()}
    assert recall_steps(recall_metrics()) == [1, 5, 10]
    html = summary_table(recall)
    assert html.count("<tr>") == 1 + 3 and ">correlation<" in html and ">auprc<" in html
    assert "not a block" not in html
    plain = summary_table(recall_metrics(with_intervals=False))
    assert "correlation" not in plain and "[" not in plain
    assert "seen R@5" in subsets_table(recall) and "unseen pairs" in subsets_table(recall)
    assert subsets_table({"m": {"recall@5": 0.1}}) == ""


def test_published_figures_of_the_matching_preset_only() -> None:
    preset = matching_preset("vg", "resnet18", "layer4")
    assert preset is not None and preset.pretraining == "ImageNet weights"
    paper = [f for f in preset.figures if f["source"] == "paper" and f["method"] == "filter_attention"]
    assert [paper[0][f"recall@{s}"] for s in (5, 10, 20)] == [0.273, 0.353, 0.429]
    assert matching_preset("coco", "vgg16", "features") is None
    assert all(f["source"] in ("paper", "FACT2023") and f["cite"] for p in load_presets() for f in p.figures)
    html = reference_table(preset, recall_metrics())
    assert "LaViSE, CVPR 2022, Table 2" in html
    assert html.count("this run") == 2  # the paper's filter attention beside both variants (equation, code)
    assert "No published figures" in reference_table(None, recall_metrics())


def test_one_card_per_filter_with_its_sheet_or_its_top_images(run: Path) -> None:
    explanations = read_table(run / "results" / "explanations.parquet")
    scores = read_table(run / "results" / "filters.parquet")
    page_dir = run / "results" / "report"
    cards, keys = filter_cards(explanations, scores, heatmap_sheets(run / "results" / "heatmaps"), page_dir)
    assert len(cards) == len(FILTERS)
    assert [k.label for k in keys] == [
        "filter index",
        "NetDissect IoU",
        *[f"recall@5 · {m}" for m in scores.method.unique()],
    ]
    assert 'src="../heatmaps/filter_0003.png"' in cards[1] and "<img" not in cards[0]
    assert "2 top images (no heatmap sheet drawn): 10 20" in cards[0]
    assert "&lt;b&gt;road&lt;/b&gt;" in cards[0] and "<b>road</b>" not in cards[0]  # words are text, not markup
    projection = keys.index(next(k for k in keys if k.label == "recall@5 · projection"))
    assert f'data-k{projection}=""' in cards[0]  # NaN: sorted last
    assert re.search(r"<td>netdissect</td><td>car\.n\.01</td>", cards[2])


def test_other_stages_show_their_files_or_not_run(run: Path) -> None:
    page_dir = run / "results" / "report"
    probe = StageFiles(
        "probe",
        "Probe",
        run / "metrics/probe.json",
        run / "results/probe/explanations.parquet",
        run / "results/probe/heatmaps",
    )
    html = stage_section(probe, page_dir, table_rows=1)
    assert (
        "per_filter.mean" in html and "first 1 of 2 rows" in html and 'src="../probe/heatmaps/filter_0001.png"' in html
    )
    missing = StageFiles("compare", "Compare", run / "no.json", run / "no.parquet", run / "no")
    assert "not run" in stage_section(missing, page_dir, table_rows=5)


def test_the_page_refers_to_no_other_host_and_is_reproducible(run: Path) -> None:
    first = write_report(run / "results" / "report", inputs(run)).read_bytes()
    assert (run / "results" / "report" / "train_loss.png").is_file()
    second = write_report(run / "results" / "report", inputs(run)).read_bytes()
    assert first == second
    page = first.decode()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.I) and "@import" not in page
    assert page.count('class="card"') == len(FILTERS) and "abc123" in page and "not comparable" in page
    for src in re.findall(r'src="([^"]+)"', page):
        assert (run / "results" / "report" / src).resolve().is_file(), src


def test_readers_say_absent_or_name_the_broken_file(tmp_path: Path) -> None:
    assert read_metrics(tmp_path / "none.json") is None and read_table(tmp_path / "none.parquet") is None
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        read_metrics(tmp_path / "bad.json")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet: unreadable Parquet"):
        read_table_head(tmp_path / "bad.parquet", 3)
    assert git_revision(tmp_path) is None  # not a git checkout


def test_formatting_and_addresses(tmp_path: Path) -> None:
    assert [fmt(None), fmt(float("nan")), fmt(0.12345), fmt(True), fmt([1, 2.5])] == [
        "—",
        "—",
        "0.123",
        "true",
        "1 2.500",
    ]
    assert flatten({"a": {"b": 1, "c": {}}, "d": 2}) == {"a.b": 1, "a.c": {}, "d": 2}
    assert relative_src(tmp_path / "x y" / "a.png", tmp_path / "report") == "../x%20y/a.png"
    assert render_page(ReportInputs({}, None, {}, None, None, None, {}, None), tmp_path).count("not run") >= 3


def test_revision_is_the_inputs_commit_not_the_results_commit(tmp_path: Path) -> None:
    import subprocess

    def git(*args: str) -> str:
        command = ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args]
        return subprocess.run(command, cwd=tmp_path, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "params.yaml").write_text("a: 1\n")
    git("add", "-A")
    git("commit", "-qm", "inputs")
    inputs = git("rev-parse", "HEAD")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "recall.json").write_text("{}")
    (tmp_path / "dvc.lock").write_text("x")
    git("add", "-A")
    git("commit", "-qm", "results")
    assert git_revision(tmp_path) == inputs  # committing the run's records leaves the page as it was
    (tmp_path / "params.yaml").write_text("a: 2\n")
    git("commit", "-qam", "new params")
    assert git_revision(tmp_path) == git("rev-parse", "HEAD")
