"""`annotations` stage: raw COCO or VG JSON into the Parquet tables of data/annotations/.

Steps: parse the dataset's JSON into merged objects (`lavise.data.coco` or
`lavise.data.visual_genome`), apply the shared filters and splits (`lavise.data.annotation_tables`),
write the four tables, then the statistics (metrics/annotations.json).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa

from lavise.data.annotation_schema import ParsedAnnotations
from lavise.data.annotation_tables import finish_tables, write_tables
from lavise.data.coco import parse_coco
from lavise.data.embeddings import WordEmbeddings
from lavise.data.visual_genome import parse_visual_genome
from lavise.data.wordnet import load_wordnet
from lavise.io import atomic_dir, write_json
from lavise.options import DATASETS
from lavise.outputs import output_set_id, with_set_id
from stages.cli import run_stage, start_stage

log = logging.getLogger("stages.annotations")


def parse(
    dataset: str, raw_dir: Path, *, embeddings_dir: Path, wordnet_dir: Path, coco_crowd: str
) -> ParsedAnnotations:
    """The dataset's merged objects, categories and rejections; tokens must be in the GloVe vocabulary."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    vocabulary = WordEmbeddings.load(embeddings_dir)
    if dataset == "coco":
        return parse_coco(raw_dir, vocabulary, crowd=coco_crowd)
    return parse_visual_genome(raw_dir, vocabulary, load_wordnet(wordnet_dir))


def finish(
    dataset: str, parsed: ParsedAnnotations, raw_dir: Path, section: dict[str, Any], max_pixels: int
) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    """Filter and split: COCO keeps its official split and every category with tokens (seen/unseen
    only with ``annotations.split_coco_categories``); VG gets the ``min_images`` filter and a seeded split."""
    if dataset == "coco":
        seen_fraction = section["seen_fraction"] if section["split_coco_categories"] else None
        return finish_tables(
            parsed,
            raw_dir,
            min_images=None,
            val_fraction=None,
            seen_fraction=seen_fraction,
            seed=section["seed"],
            max_pixels=max_pixels,
        )
    return finish_tables(
        parsed,
        raw_dir,
        min_images=section["min_images"],
        val_fraction=section["val_fraction"],
        seen_fraction=section["seen_fraction"],
        seed=section["seed"],
        max_pixels=max_pixels,
    )


def write_outputs(
    dataset: str,
    tables: dict[str, pa.Table],
    statistics: dict[str, Any],
    settings: dict[str, Any],
    out_dir: Path,
    stats_path: Path,
) -> dict[str, Any]:
    """The tables as one set, then the statistics JSON (with the dataset's name); returns the statistics.

    All or nothing: the old statistics go first, the table directory is replaced in one rename,
    and every table carries the id of this run's set (``settings`` and the statistics), so a
    consumer refuses tables of two runs. An interrupted run leaves the old tables and no
    statistics, which DVC reports as a stage to run again.
    """
    statistics = {"dataset": dataset, **statistics}
    set_id = output_set_id(dataset, settings, statistics)
    Path(stats_path).unlink(missing_ok=True)
    with atomic_dir(out_dir) as staging:
        write_tables({name: with_set_id(table, set_id) for name, table in tables.items()}, staging)
    write_json(stats_path, statistics)
    log.info(
        "%s: %d -> %d images, %d -> %d categories, %d objects; rejected %s",
        dataset,
        statistics["before"]["images"],
        statistics["after"]["images"],
        statistics["before"]["categories"],
        statistics["after"]["categories"],
        statistics["after"]["objects"],
        statistics["dropped"]["records_by_reason"],
    )
    return statistics


def main() -> None:
    """Read ``dataset`` and ``annotations.*``; parse, finish and write the tables."""
    args, params = start_stage(
        __doc__, outputs=("out", "stats"), raw="data/raw", out="data/annotations", stats="metrics/annotations.json"
    )
    dataset = params["dataset"]
    raw_dir = args.raw / dataset
    parsed = parse(
        dataset,
        raw_dir,
        embeddings_dir=args.raw / "glove",
        wordnet_dir=args.raw / "wordnet",
        coco_crowd=params["annotations"]["coco_crowd"],
    )
    tables, statistics = finish(dataset, parsed, raw_dir, params["annotations"], params["images"]["max_pixels"])
    write_outputs(dataset, tables, statistics, params["annotations"], args.out, args.stats)


if __name__ == "__main__":
    run_stage(main)
