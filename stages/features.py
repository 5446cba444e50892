"""`features` stage: one forward pass of the frozen CNN per image, cached (lavise/feature_cache.py)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lavise.backbones import resolve_weights
from lavise.feature_cache import build_feature_cache
from lavise.params import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--annotations", type=Path, default=Path("data/annotations"))
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--target-model", type=Path, default=Path("models/target"))
    parser.add_argument("--out", type=Path, default=Path("data/features"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    params = load_params()
    backbone = {**params["backbone"], "weights": resolve_weights(params["backbone"]["weights"], args.target_model)}
    build_feature_cache(
        args.annotations, args.raw / params["dataset"], args.out,
        backbone=backbone, transform=params["transform"], **params["features"],
    )


if __name__ == "__main__":
    main()
