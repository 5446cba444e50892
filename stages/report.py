"""`report` stage: results/report/index.html, the offline page a researcher reads.

Reads the run's params and git revision, the metrics of annotations, target, train and evaluate
(and the headline file when there is one), the explainer's history, the result tables and the
heatmap sheets, and the files of the stages listed in ``STAGE_SECTIONS`` (each shown when it ran,
"not run" otherwise); writes the page and its learning-curve PNGs (lavise/report/page.py).
Reads `dataset`, `backbone`, `download` (to show them) and `report` from params.yaml: the page
shows the whole file, so dvc.yaml declares all of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lavise.report.cards import heatmap_sheets
from lavise.report.curves import read_history
from lavise.report.inputs import git_revision, read_metrics, read_table
from lavise.report.page import ReportInputs, write_report
from lavise.report.references import matching_preset
from lavise.report.sections import StageFiles
from stages.cli import run_stage, start_stage

# name, title, metrics file, main table, PNG folder: a new stage's results are one more line here
# (and its files in the report stage's deps in dvc.yaml).
STAGE_SECTIONS = (
    (
        "probe",
        "Probe: explanations of an unlabelled image set",
        "metrics/probe.json",
        "results/probe/explanations.parquet",
        "results/probe/heatmaps",
    ),
    (
        "compare",
        "Comparison of two image groups",
        "metrics/compare.json",
        "results/compare/filters.parquet",
        "results/compare/sheets",
    ),
    (
        "saliency",
        "Saliency maps",
        "metrics/saliency.json",
        "results/saliency/maps.parquet",
        "results/saliency/sheets",
    ),
    (
        "relevance",
        "Class relevance",
        "metrics/relevance.json",
        "results/relevance/classes.parquet",
        "results/relevance/sheets",
    ),
)
CORE_METRICS = ("annotations", "target", "train", "recall", "summary")
EXPLANATION_COLUMNS = [
    "filter",
    "method",
    "words",
    "word_counts",
    "top_image_ids",
    "netdissect_label",
    "netdissect_iou",
    "threshold",
]


def stage_paths() -> dict[str, str]:
    """The command-line options of the other stages' files, with their dvc.yaml paths as defaults."""
    paths = {}
    for name, _, metrics, table, images in STAGE_SECTIONS:
        paths.update({f"{name}_metrics": metrics, f"{name}_table": table, f"{name}_images": images})
    return paths


def gather(args: Any, params: Mapping[str, Any]) -> ReportInputs:
    """Read every input; a missing one is ``None`` (shown as "not run"), a broken one a ValueError."""
    metrics = {name: read_metrics(getattr(args, f"{name}_metrics")) for name in CORE_METRICS}
    history = read_history(args.history) if args.history.is_file() else None
    explanations = read_table(args.explanations, EXPLANATION_COLUMNS)
    backbone = params["backbone"]
    stages = [
        StageFiles(name, title, *(getattr(args, f"{name}_{kind}") for kind in ("metrics", "table", "images")))
        for name, title, *_ in STAGE_SECTIONS
    ]
    return ReportInputs(
        params=params,
        revision=git_revision(Path.cwd()),
        metrics=metrics,
        history=history,
        explanations=explanations,
        scores=read_table(args.filters),
        sheets=heatmap_sheets(args.heatmaps),
        preset=matching_preset(params["dataset"], backbone["name"], backbone["layer"]),
        stages=stages,
        table_rows=int(params["report"]["table_rows"]),
    )


def main() -> None:
    args, params = start_stage(
        __doc__,
        outputs=("out",),
        annotations_metrics="metrics/annotations.json",
        target_metrics="metrics/target.json",
        train_metrics="metrics/train.json",
        recall_metrics="metrics/recall.json",
        summary_metrics="metrics/summary.json",
        history="plots/train_history.csv",
        explanations="results/explanations.parquet",
        filters="results/filters.parquet",
        heatmaps="results/heatmaps",
        out="results/report",
        **stage_paths(),
    )
    write_report(args.out, gather(args, params))


if __name__ == "__main__":
    run_stage(main)
