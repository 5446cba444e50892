"""`train` stage: the LaViSE explainer from the feature cache (see lavise/training/explainer.py)."""

from __future__ import annotations

from lavise.training.explainer import train_explainer
from stages.cli import start_stage


def main() -> None:
    args, params = start_stage(
        __doc__,
        features="data/features",
        annotations="data/annotations",
        glove="data/raw/glove",
        out="models/explainer",
        metrics="metrics/train.json",
        history="plots/train_history.csv",
    )
    train_explainer(
        args.features,
        args.annotations,
        args.glove,
        args.out,
        metrics_path=args.metrics,
        history_path=args.history,
        **params["train"],
    )


if __name__ == "__main__":
    main()
