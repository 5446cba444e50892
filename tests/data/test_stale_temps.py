"""Temporaries a killed process leaves (a half-built raw tree, the demo's generated archives, an
atomic write) are found and removed by the next run; a live process's are kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lavise.io import atomic_dir, atomic_path, remove_stale_temps, temp_prefix
from stages.download import prepare_raw_data
from tests.data.test_sources import FAST, fake_demo  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _plant_tree(path: Path) -> Path:
    (path / "vg" / "images").mkdir(parents=True)
    (path / "vg" / "images" / "1.jpg").write_bytes(b"x" * 1000)
    return path


def test_temporary_names_carry_the_process_id(tmp_path: Path) -> None:
    assert temp_prefix("raw") == f".raw.{os.getpid()}."
    with atomic_dir(tmp_path / "raw") as building:
        assert building.name.startswith(f".raw.{os.getpid()}.") and building.name.endswith(".tmp")
        assert remove_stale_temps(tmp_path) == []  # ours: alive
    with atomic_path(tmp_path / "a.json") as tmp:
        assert tmp.name.startswith(f".a.json.{os.getpid()}.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "raw"]


_KILLED_MIDWAY = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from lavise.io import atomic_dir, atomic_path
    out = Path(sys.argv[1])
    with atomic_path(out / "table.parquet") as tmp:
        tmp.write_bytes(b"half")
        with atomic_dir(out / "raw") as building:
            (building / "coco").mkdir()
            (building / "coco" / "1.jpg").write_bytes(b"x" * 1000)
            os.kill(os.getpid(), getattr(signal, sys.argv[2]))
    """
)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_what_a_killed_process_left_is_removed_by_the_next_run(tmp_path: Path, how: str) -> None:
    child = subprocess.run([sys.executable, "-c", _KILLED_MIDWAY, str(tmp_path), how], cwd=ROOT, timeout=60)
    assert child.returncode == -getattr(signal, how)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and all(name.startswith((".raw.", ".table.parquet.")) for name in left), left
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == left
    assert list(tmp_path.iterdir()) == []


def test_a_zombie_counts_as_ended(tmp_path: Path) -> None:
    """A killed stage whose parent has not reaped it yet still answers kill(pid, 0)."""
    child = subprocess.Popen(["true"])
    try:
        for _ in range(100):
            if Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
            time.sleep(0.01)
        _plant_tree(tmp_path / f".raw.{child.pid}.abcdefgh.tmp")
        assert [p.name for p in remove_stale_temps(tmp_path)] == [f".raw.{child.pid}.abcdefgh.tmp"]
    finally:
        child.wait()


def test_old_output_left_mid_swap_is_put_back(tmp_path: Path) -> None:
    """Killed between atomic_dir's two renames: the previous output is restored, not lost."""
    pid = _dead_pid()
    old = _plant_tree(tmp_path / f".raw.{pid}.abcdefgh.old")
    new = _plant_tree(tmp_path / f".raw.{pid}.abcdefgh.tmp")
    remove_stale_temps(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
    assert (tmp_path / "raw" / "vg" / "images" / "1.jpg").is_file()
    assert not old.exists() and not new.exists()
    _plant_tree(tmp_path / f".raw.{pid}.ijklmnop.old")  # the swap had completed: just remove it
    remove_stale_temps(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_download_removes_stale_temps_and_keeps_live_ones(tmp_path: Path, fake_demo: list[str]) -> None:  # noqa: F811
    """The issue's leftovers: data/.raw.*.tmp (the extracted raw tree) and
    data/downloads/.demo-archives.*; others in the same folders are left alone."""
    data = tmp_path / "data"
    raw, downloads = data / "raw", data / "downloads"
    dead, live = _dead_pid(), os.getpid()
    stale = [
        _plant_tree(data / f".raw.{dead}.abcdefgh.tmp"),
        _plant_tree(downloads / f".demo-archives.{dead}.abcdefgh.tmp"),
        _plant_tree(downloads / "demo" / f".raw.{dead}.abcdefgh.extract"),
    ]
    (downloads / f".images.zip.digests.json.{dead}.qrstuvwx.tmp").write_text("{")
    stale.append(downloads / f".images.zip.digests.json.{dead}.qrstuvwx.tmp")
    kept = [
        _plant_tree(data / f".raw.{live}.zzzzzzzz.tmp"),  # a live process's (our own)
        _plant_tree(data / ".raw.abcdefgh.tmp"),  # no process id in the name: not ours to judge
        _plant_tree(data / "annotations"),
    ]
    (downloads / "images.zip.part").write_bytes(b"resumable")  # a cut download, kept for its resume
    kept.append(downloads / "images.zip.part")
    prepare_raw_data(raw, downloads, source="demo", datasets=["vg"], glove_dim=50, demo_seed=0, **FAST)
    assert [path for path in stale if path.exists()] == []
    assert [path for path in kept if not path.exists()] == []
    assert (raw / "vg" / "objects.json").is_file()
    assert not [p for p in downloads.iterdir() if p.name.startswith(f".demo-archives.{live}.")]
