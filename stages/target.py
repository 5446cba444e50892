"""`target` stage: train the target CNN on the reference dataset (see lavise/target_model.py).

Runs only when `backbone.weights` is `target`; otherwise it records that nothing was trained.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lavise.params import load_params
from lavise.target_model import run_target_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--annotations", type=Path, default=Path("data/annotations"))
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--out", type=Path, default=Path("models/target"))
    parser.add_argument("--metrics", type=Path, default=Path("metrics/target.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    params = load_params()
    run_target_stage(
        args.annotations, args.raw, args.out, args.metrics,
        dataset=params["dataset"], backbone=params["backbone"], target=params["target"],
        transform=params["transform"], num_workers=params["features"]["num_workers"],
        device=params["features"]["device"],
    )


if __name__ == "__main__":
    main()
