"""`compare` stage: which filters fire more on one group of probe images than on the others (§4.6 of the paper).

Reads the probe cache and index (`probe_features`) and the probe's explanations (`probe`);
thresholds T_u over the pooled probe set (the `probe.quantile`, exact), the share of qualified
images per filter and group, the two-proportion test and Benjamini-Hochberg over the filters
(lavise/probe/compare.py). Writes results/compare/filters.{parquet,csv} (one row per filter and
group), results/compare/sheets/ (example qualified images of every group for each group's top
filters) and, last, metrics/compare.json. Reads `probe.quantile`, `probe.filters`, `transform`,
`images` and `compare` from params.yaml.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lavise.data.images import read_image
from lavise.explain.heatmaps import write_group_sheet
from lavise.features.thresholds import filter_thresholds
from lavise.io import atomic_dir, atomic_path, json_float, write_json, write_parquet
from lavise.probe.compare import compare_groups, example_rows
from lavise.probe.inputs import ProbeInputs, open_probe
from stages.backbone_params import stage_preprocessing
from stages.cli import run_stage, start_stage

log = logging.getLogger("stages.compare")

TOP_WORDS = 3  # words per method quoted for a top filter in metrics/compare.json and on its sheet


def top_filter_entries(table: pd.DataFrame, words: pd.DataFrame, top: int) -> dict[str, list[dict[str, Any]]]:
    """Per group, its ``top`` filters by rank: rates, difference, q-value and the top words per method."""
    methods = [column[: -len("_words")] for column in words.columns if column.endswith("_words")]
    entries: dict[str, list[dict[str, Any]]] = {}
    for group, rows in table[table["rank"] <= top].sort_values(["group", "rank"]).groupby("group", sort=True):
        entries[str(group)] = [
            {
                "filter": int(row.filter),
                "rate": json_float(row.rate),
                "rate_rest": json_float(row.rate_rest),
                "difference": json_float(row.difference),
                "q_value": float(f"{row.q_value:.3g}"),
                "words": {m: [str(w) for w in words.loc[int(row.filter), f"{m}_words"][:TOP_WORDS]] for m in methods},
            }
            for row in rows.itertuples()
        ]
    return entries


def compare_metrics(table: pd.DataFrame, words: pd.DataFrame, settings: Mapping[str, Any]) -> dict[str, Any]:
    """metrics/compare.json: images per group, filters significant at q < fdr, the top filters."""
    groups = table.drop_duplicates("group").set_index("group")["n_images"]
    return {
        "groups": {str(g): int(n) for g, n in groups.items()},
        "fdr": settings["fdr"],
        "filters_tested": int(table["filter"].nunique()),
        "filters_significant": int(table.loc[table["significant"], "filter"].nunique()),
        "top_filters": top_filter_entries(table, words, int(settings["top_filters"])),
    }


def write_sheets(
    out_dir: Path,
    inputs: ProbeInputs,
    entries: dict[str, list[dict[str, Any]]],
    stats: tuple[np.ndarray, np.ndarray, np.ndarray],
    settings: Mapping[str, Any],
    geometry: tuple[int, int, str],
    max_pixels: int,
) -> None:
    """One sheet per top filter (of any group): examples of every group, rates and words in the header."""
    thresholds, image_max, qualified = stats
    groups = inputs.rows["group"].to_numpy()
    paths, ids = inputs.rows["path"].to_numpy(), inputs.rows["image_id"].to_numpy()
    position = {int(f): i for i, f in enumerate(inputs.filters)}
    described: dict[int, list[tuple[str, dict[str, Any]]]] = {}
    for group, group_entries in sorted(entries.items()):
        for entry in group_entries:
            described.setdefault(entry["filter"], []).append((group, entry))
    names = sorted(entries)
    for filter_index, tops in sorted(described.items()):
        pos = position[filter_index]
        header = [f"filter {filter_index}  T={thresholds[pos]:.3f}"]
        header += [
            f"top for {group}: rate {e['rate']:.3f} vs {e['rate_rest']:.3f} elsewhere, q = {e['q_value']:.3g}"
            for group, e in tops
        ]
        header += [f"{method}: {' '.join(found)}" for method, found in tops[0][1]["words"].items()]
        sections = []
        for group in names:
            rows = example_rows(qualified, image_max, groups, group, pos, int(settings["examples"]))
            share = f"{int(qualified[groups == group, pos].sum())}/{int((groups == group).sum())}"
            sections.append((f"group {group}: {share} qualified", rows.tolist()))
        write_group_sheet(
            out_dir / f"filter_{filter_index:04d}.png",
            header,
            sections,
            lambda rows, f=filter_index: np.asarray(inputs.cache.val_maps[rows, f], dtype=np.float32),
            float(thresholds[pos]),
            lambda row: inputs.root / str(paths[row]),
            lambda row: f"image {ids[row]}",
            geometry,
            functools.partial(read_image, max_pixels=max_pixels, root=inputs.root),
            columns=int(settings["examples"]),
        )


def main() -> None:
    args, params = start_stage(
        __doc__,
        outputs=("metrics", "results"),
        features="data/probe_features",
        index="data/probe_index",
        explanations="results/probe/explanations.parquet",
        metrics="metrics/compare.json",
        results="results/compare",
    )
    probe, settings = params["probe"], params["compare"]
    inputs = open_probe(args.features, args.index, Path(probe["root"]), probe["filters"], "probe.filters")
    words = pd.read_parquet(args.explanations).set_index("filter")
    missing = np.setdiff1d(inputs.filters, words.index.to_numpy())
    if len(missing):
        raise ValueError(f"{args.explanations} lacks filter(s) {missing[:5].tolist()}: run the probe stage again")
    thresholds, image_max = filter_thresholds(inputs.cache.val_maps, float(probe["quantile"]), inputs.filters)
    qualified = image_max > thresholds[None, :]  # [N, F]
    table = compare_groups(qualified, inputs.rows["group"].to_numpy(), inputs.filters, float(settings["fdr"]))
    metrics = compare_metrics(table, words, settings)
    args.metrics.unlink(missing_ok=True)
    write_parquet(args.results / "filters.parquet", table)
    with atomic_path(args.results / "filters.csv") as tmp:
        table.to_csv(tmp, index=False)
    preprocessing = stage_preprocessing(params, params["backbone"]["weights"])
    geometry = (preprocessing.resize, preprocessing.crop, preprocessing.interpolation)
    with atomic_dir(args.results / "sheets") as staging:
        stats = (thresholds, image_max, qualified)
        write_sheets(staging, inputs, metrics["top_filters"], stats, settings, geometry, params["images"]["max_pixels"])
    write_json(args.metrics, metrics)
    log.info(
        "compare: %d of %d filters significant at q < %s",
        metrics["filters_significant"],
        len(inputs.filters),
        settings["fdr"],
    )


if __name__ == "__main__":
    run_stage(main)
