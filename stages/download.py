"""`download` stage: every raw input into data/raw/ per params.yaml (see lavise/data/sources.py)."""

from __future__ import annotations

from lavise.data.download import DownloadError
from lavise.data.sources import prepare_raw_data
from stages.cli import start_stage


def main() -> None:
    args, params = start_stage(__doc__, raw="data/raw", downloads="data/downloads")
    data = params["data"]
    try:
        prepare_raw_data(
            args.raw,
            args.downloads,
            source=data["source"],
            datasets=data["datasets"],
            glove_dim=data["glove_dim"],
            demo_seed=data["demo_seed"],
        )
    except DownloadError as error:
        raise SystemExit(f"download failed: {error}") from None


if __name__ == "__main__":
    main()
