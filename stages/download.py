"""`download` stage: every raw input into data/raw/ per params.yaml (see lavise/sources.py)."""

from __future__ import annotations

from lavise.cli import start_stage
from lavise.download import DownloadError
from lavise.sources import prepare_raw_data


def main() -> None:
    args, params = start_stage(__doc__, raw="data/raw", downloads="data/downloads")
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
