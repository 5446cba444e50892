"""`annotations` stage: raw COCO or VG JSON into the Parquet tables of data/annotations/."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lavise.annotation_tables import build_annotation_tables
from lavise.params import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--out", type=Path, default=Path("data/annotations"))
    parser.add_argument("--stats", type=Path, default=Path("metrics/annotations.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    params = load_params()
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
