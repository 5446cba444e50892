"""The extraction pass as 2 gloo processes (torchrun's layout): same bytes as one, and a resume;
the precision setting."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from lavise.distributed import World, rank_share
from lavise.features import extract
from lavise.features.cache import open_feature_cache
from lavise.features.extract import ExtractionSettings, build_feature_cache
from tests.features.test_extract import CROP, LAYER, RESIZE, _build, _file_bytes, built, demo  # noqa: F401
from tests.ranks import spawn_ranks


def test_rank_share_is_fixed_by_index_without_overlap_or_padding() -> None:
    shares = [rank_share(range(7), World(rank, 3, rank)) for rank in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    # A resume with chunks 0, 1 and 4 done: each rank keeps exactly its own pending chunks.
    assert [rank_share([2, 3, 5, 6], World(rank, 3, rank)) for rank in range(3)] == [[3, 6], [], [2, 5]]


def _extract_rank(rank: int, data: dict[str, Path], out: Path, results: Path, kill_rank_1: bool) -> None:
    """One rank's pass; with ``kill_rank_1`` rank 1 dies writing its second chunk, once rank 0's
    chunks are both on disk (so what a kill leaves is known)."""
    torch.set_num_threads(1)
    real_write = extract.write_chunk
    written: list[str] = []

    def write(chunk_dir: Path, *args: Any) -> None:
        if kill_rank_1 and rank == 1 and written:
            deadline = time.monotonic() + 60
            while not (out / ".chunks" / "chunk_000002").is_dir() and time.monotonic() < deadline:
                time.sleep(0.05)
            raise KeyboardInterrupt("simulated kill")
        real_write(chunk_dir, *args)
        written.append(chunk_dir.name)

    extract.write_chunk = write
    result = _build(data, out)
    (results / f"rank{rank}.json").write_text(json.dumps({"written": written, "computed": result["images_computed"]}))


@pytest.mark.slow  # three process pairs start torch: ~20 s on 2 cores
def test_two_processes_write_the_one_process_bytes_and_resume(
    demo: dict[str, Path],  # noqa: F811
    built: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    out, results = tmp_path / "features", tmp_path / "results"
    results.mkdir()
    with pytest.raises(mp.ProcessRaisedException):  # rank 1 killed; rank 0 loses its peer at the barrier
        spawn_ranks(2, _extract_rank, demo, out, results, True)
    # 10 images in chunks of 3: rank 0 owns chunks 0 and 2, rank 1 chunks 1 and 3.
    assert [p.name for p in sorted((out / ".chunks").glob("chunk_*"))] == [
        "chunk_000000",
        "chunk_000001",
        "chunk_000002",
    ]
    assert not (out / "meta.json").exists()

    spawn_ranks(2, _extract_rank, demo, out, results, False)  # chunks of both ranks and the resumed one
    ranks = [json.loads((results / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert ranks == [{"written": [], "computed": 0}, {"written": ["chunk_000003"], "computed": 1}]
    assert not (out / ".chunks").exists()
    assert _file_bytes(out) == _file_bytes(built)


def test_bf16_is_recorded_close_to_fp32_and_in_the_fingerprint(
    demo: dict[str, Path],  # noqa: F811
    built: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    settings = ExtractionSettings(
        model="resnet18",
        weights=str(demo["checkpoint"]),
        layer=LAYER,
        num_classes=None,
        resize=RESIZE,
        crop=CROP,
        batch_size=2,
        chunk_images=3,
        device=torch.device("cpu"),
        decode="workers",
        precision="bf16",
    )
    fp32 = replace(settings, precision="fp32")
    assert extract._fingerprint(demo["annotations"], settings) != extract._fingerprint(demo["annotations"], fp32)
    result = build_feature_cache(demo["annotations"], demo["raw"], tmp_path, settings, num_workers=0)
    assert result["precision"] == "bf16" and open_feature_cache(built).meta["precision"] == "fp32"
    maps = open_feature_cache(tmp_path).val_maps.astype(np.float32)
    reference = open_feature_cache(built).val_maps.astype(np.float32)
    assert not np.array_equal(maps, reference)  # bf16 really ran
    assert np.abs(maps - reference).max() <= 0.05 * np.abs(reference).max()
