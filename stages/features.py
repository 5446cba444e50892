"""`features` stage: one forward pass of the frozen CNN per image, cached (lavise/feature_cache.py)."""

from __future__ import annotations

from lavise.backbones import resolve_weights
from lavise.cli import start_stage
from lavise.feature_cache import build_feature_cache


def main() -> None:
    args, params = start_stage(
        __doc__,
        annotations="data/annotations",
        raw="data/raw",
        target_model="models/target",
        out="data/features",
    )
    backbone = {**params["backbone"], "weights": resolve_weights(params["backbone"]["weights"], args.target_model)}
    build_feature_cache(
        args.annotations, args.raw / params["dataset"], args.out,
        backbone=backbone, transform=params["transform"], **params["features"],
    )


if __name__ == "__main__":
    main()
