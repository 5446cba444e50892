"""`evaluate` stage: explain every filter, score each method with recall@s (see lavise/explain/evaluation.py)."""

from __future__ import annotations

from lavise.explain.evaluation import evaluate_explanations
from lavise.models.backbones import resolve_weights
from stages.cli import start_stage


def main() -> None:
    args, params = start_stage(
        __doc__,
        features="data/features",
        annotations="data/annotations",
        explainer="models/explainer",
        glove="data/raw/glove",
        raw="data/raw",
        target_model="models/target",
        metrics="metrics/recall.json",
        results="results",
    )
    backbone = {**params["backbone"], "weights": resolve_weights(params["backbone"]["weights"], args.target_model)}
    evaluate_explanations(
        args.features,
        args.annotations,
        args.explainer,
        args.glove,
        args.raw / params["dataset"],
        args.metrics,
        args.results,
        backbone=backbone,
        transform=params["transform"],
        evaluate=params["evaluate"],
    )


if __name__ == "__main__":
    main()
