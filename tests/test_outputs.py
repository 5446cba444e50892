"""Output sets: tables of one run share an id; a consumer refuses a mix of two runs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lavise.io import write_parquet
from lavise.outputs import check_one_set, output_set_id, table_set_id, with_set_id


def _table(values: list[int]) -> pa.Table:
    return pa.Table.from_pandas(pd.DataFrame({"x": values}), preserve_index=False)


def test_id_is_stable_and_distinguishes_settings() -> None:
    assert output_set_id("vg", {"seed": 0, "min_images": 20}) == output_set_id("vg", {"min_images": 20, "seed": 0})
    assert output_set_id("vg", {"seed": 0}) != output_set_id("vg", {"seed": 1})


def test_mixed_set_is_refused_and_a_whole_set_accepted(tmp_path: Path) -> None:
    run0, run1 = output_set_id({"seed": 0}), output_set_id({"seed": 1})
    for name in ("images", "objects", "categories"):
        write_parquet(tmp_path / f"{name}.parquet", with_set_id(_table([1, 2]), run0))
    assert check_one_set(tmp_path, ["images", "objects", "categories"], "annotations") == run0
    assert pq.read_table(tmp_path / "images.parquet").to_pandas()["x"].tolist() == [1, 2]
    write_parquet(tmp_path / "images.parquet", with_set_id(_table([3]), run1))
    assert table_set_id(tmp_path / "images.parquet") == run1
    with pytest.raises(ValueError, match=r"mixes two runs: objects.parquet and images.parquet come from different "):
        check_one_set(tmp_path, ["images", "objects", "categories"], "annotations")


def _mixed_annotations(directory: Path) -> Path:
    directory.mkdir()
    for name, run in (("images", 1), ("objects", 0), ("categories", 0)):
        write_parquet(directory / f"{name}.parquet", with_set_id(_table([1]), output_set_id({"seed": run})))
    return directory


def test_features_and_train_refuse_annotation_tables_of_two_runs(tmp_path: Path) -> None:
    """The consumers of data/annotations check the set before reading anything else."""
    from lavise.features.extract import prepare_tables
    from stages.train import load_inputs

    annotations = _mixed_annotations(tmp_path / "annotations")
    with pytest.raises(ValueError, match="mixes two runs: objects.parquet and images.parquet"):
        prepare_tables(annotations)
    with pytest.raises(ValueError, match="mixes two runs"):
        load_inputs(tmp_path / "no features", annotations, tmp_path / "no glove", 0.1, 0)


def test_a_missing_table_names_the_file_and_the_stage(tmp_path: Path) -> None:
    write_parquet(tmp_path / "images.parquet", _table([1]))
    with pytest.raises(FileNotFoundError, match=r"objects.parquet not found: run the annotations stage first"):
        check_one_set(tmp_path, ["images", "objects"], "annotations")
