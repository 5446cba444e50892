"""`download` stage: every raw input into data/raw/ per params.yaml (see lavise/sources.py)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lavise.download import DownloadError
from lavise.params import load_params
from lavise.sources import prepare_raw_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--downloads", type=Path, default=Path("data/downloads"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    params = load_params()
    data = params["data"]
    try:
        prepare_raw_data(
            args.raw, args.downloads, source=data["source"], datasets=data["datasets"],
            glove_dim=data["glove_dim"], demo_seed=data["demo_seed"],
        )
    except DownloadError as error:
        raise SystemExit(f"download failed: {error}") from None


if __name__ == "__main__":
    main()
