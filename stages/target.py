"""`target` stage: train the target CNN on the reference dataset (see lavise/training/target.py).

Runs only when `backbone.weights` is `target`; otherwise it records that nothing was trained.
"""

from __future__ import annotations

from lavise.training.target import run_target_stage
from stages.cli import start_stage


def main() -> None:
    args, params = start_stage(
        __doc__,
        annotations="data/annotations",
        raw="data/raw",
        out="models/target",
        metrics="metrics/target.json",
    )
    run_target_stage(
        args.annotations,
        args.raw,
        args.out,
        args.metrics,
        dataset=params["dataset"],
        backbone=params["backbone"],
        target=params["target"],
        transform=params["transform"],
        num_workers=params["features"]["num_workers"],
        device=params["features"]["device"],
    )


if __name__ == "__main__":
    main()
