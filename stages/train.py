"""`train` stage: the LaViSE explainer from the feature cache (see lavise/training.py)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lavise.params import load_params
from lavise.training import train_explainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--features", type=Path, default=Path("data/features"))
    parser.add_argument("--annotations", type=Path, default=Path("data/annotations"))
    parser.add_argument("--glove", type=Path, default=Path("data/raw/glove"))
    parser.add_argument("--out", type=Path, default=Path("models/explainer"))
    parser.add_argument("--metrics", type=Path, default=Path("metrics/train.json"))
    parser.add_argument("--history", type=Path, default=Path("plots/train_history.csv"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    params = load_params()
    train_explainer(
        args.features, args.annotations, args.glove, args.out,
        metrics_path=args.metrics, history_path=args.history, **params["train"],
    )


if __name__ == "__main__":
    main()
