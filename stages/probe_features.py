"""`probe_features` stage: the probe images (a folder or a CSV listing, no labels) through the `features` pass.

Lists the probe set (lavise/probe/listing.py) into an annotations-shaped index (data/probe_index)
and runs the same extraction as the `features` stage on it (lavise/features/extract.py, the same
`backbone`, `transform`, `features` and `images` settings), so the probe cache (data/probe_features)
is resumable and counts unusable files exactly as `features` does. Reads `probe.root`,
`probe.listing`, `probe.groups`, `probe.path_column`, `probe.group_column` besides those sections.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lavise.features.cache import META_FILE
from lavise.probe.listing import ProbeSource, list_probe, probe_images, write_probe_index
from stages.backbone_params import validate_backbone
from stages.cli import run_stage, start_stage
from stages.features import build_cache

log = logging.getLogger("stages.probe_features")


def probe_source(section: Mapping[str, Any]) -> ProbeSource:
    """The `probe` params as a :class:`ProbeSource`."""
    root = Path(section["root"])
    listing = Path(section["listing"]) if section["listing"] is not None else root
    return ProbeSource(listing, root, section["groups"], section["path_column"], section["group_column"])


def main() -> None:
    args, params = start_stage(
        __doc__,
        checks=(validate_backbone,),
        outputs=("index", "out"),
        target_model="models/target",
        index="data/probe_index",
        out="data/probe_features",
    )
    source = probe_source(params["probe"])
    listing = list_probe(source)
    images = probe_images(listing, source.root, params["images"]["max_pixels"])
    log.info("probe: %d files under %s, %d groups", len(images), source.root, images["group"].nunique())
    (args.out / META_FILE).unlink(missing_ok=True)  # the cache is unfinished until it matches the new index
    write_probe_index(images, args.index, source)
    build_cache(params, args.index, source.root, args.out, args.target_model)


if __name__ == "__main__":
    run_stage(main)
