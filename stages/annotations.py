"""`annotations` stage: raw COCO or VG JSON into the Parquet tables of data/annotations/."""

from __future__ import annotations

from lavise.data.annotation_tables import build_annotation_tables
from stages.cli import start_stage


def main() -> None:
    args, params = start_stage(
        __doc__,
        raw="data/raw",
        out="data/annotations",
        stats="metrics/annotations.json",
    )
    build_annotation_tables(
        params["dataset"],
        args.raw / params["dataset"],
        args.out,
        embeddings_dir=args.raw / "glove",
        wordnet_dir=args.raw / "wordnet",
        min_images=params["preprocess"]["min_images"],
        coco_crowd=params["preprocess"]["coco_crowd"],
        val_fraction=params["split"]["val_fraction"],
        seen_fraction=params["split"]["seen_fraction"],
        split_coco_categories=params["split"]["split_coco_categories"],
        seed=params["split"]["seed"],
        stats_path=args.stats,
    )


if __name__ == "__main__":
    main()
