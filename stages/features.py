"""`features` stage: one forward pass of the frozen CNN per image, cached (lavise/features/cache.py)."""

from __future__ import annotations

from lavise.features.cache import build_feature_cache
from lavise.models.backbones import resolve_weights
from stages.cli import start_stage


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
        args.annotations,
        args.raw / params["dataset"],
        args.out,
        backbone=backbone,
        transform=params["transform"],
        **params["features"],
    )


if __name__ == "__main__":
    main()
