"""`evaluate` stage: explain every filter, score each method with recall@s (see lavise/evaluation.py)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lavise.backbones import resolve_weights
from lavise.evaluation import evaluate_explanations
from lavise.params import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--features", type=Path, default=Path("data/features"))
    parser.add_argument("--annotations", type=Path, default=Path("data/annotations"))
    parser.add_argument("--explainer", type=Path, default=Path("models/explainer"))
    parser.add_argument("--glove", type=Path, default=Path("data/raw/glove"))
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--target-model", type=Path, default=Path("models/target"))
    parser.add_argument("--metrics", type=Path, default=Path("metrics/recall.json"))
    parser.add_argument("--results", type=Path, default=Path("results"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    params = load_params()
    backbone = {**params["backbone"], "weights": resolve_weights(params["backbone"]["weights"], args.target_model)}
    evaluate_explanations(
        args.features, args.annotations, args.explainer, args.glove, args.raw / params["dataset"],
        args.metrics, args.results, backbone=backbone, transform=params["transform"], evaluate=params["evaluate"],
    )


if __name__ == "__main__":
    main()
