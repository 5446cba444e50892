"""The demo's probe folder: deterministic, the planted concept in the intended share of each group."""

from __future__ import annotations

from pathlib import Path

from lavise.data.demo_probe import (
    PROBE_CONCEPT_RATES,
    PROBE_GROUPS,
    PROBE_IMAGES_PER_GROUP,
    PROBE_ODD_FILES,
    probe_scene,
    write_probe_folder,
)


def test_the_folder_is_byte_identical_across_runs_and_names_no_concept(tmp_path: Path) -> None:
    shown = write_probe_folder(tmp_path / "a", seed=0)
    write_probe_folder(tmp_path / "b", seed=0)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == len(PROBE_GROUPS) * PROBE_IMAGES_PER_GROUP + len(PROBE_ODD_FILES)
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert {f.parts[0] for f in files} == set(PROBE_GROUPS)
    assert not any("orange" in str(f) for f in files)
    low, high = sorted(PROBE_GROUPS, key=PROBE_CONCEPT_RATES.get)
    assert shown[low] <= 0.25 * PROBE_IMAGES_PER_GROUP and shown[high] >= 0.6 * PROBE_IMAGES_PER_GROUP


def test_another_seed_gives_other_scenes() -> None:
    assert probe_scene(0, PROBE_GROUPS[0], 0)[0] != probe_scene(1, PROBE_GROUPS[0], 0)[0]
