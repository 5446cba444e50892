"""Broken annotation JSON ends in one line naming the file and the position, and the id rule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lavise.data import raw_json
from lavise.data.raw_json import read_dataset_json


@pytest.mark.parametrize(
    ("content", "position", "reason"),
    [
        (b'{"images": [1, 2,\n  3', "line 2, column 4", "unexpected end of data"),  # truncated download
        (b'{"images": [],\n "annotations": }', "line 2, column 17", "expected a JSON value"),
        (b'{"images": [],\n "name": "caf\xe9"}', "line 2, column 14", "not valid UTF-8"),  # a Latin-1 byte
        (b"", "line 1, column 1", "empty"),
    ],
)
def test_broken_json_names_the_file_and_position(tmp_path: Path, content: bytes, position: str, reason: str) -> None:
    path = tmp_path / "instances_val2017.json"
    path.write_bytes(content)
    with pytest.raises(ValueError) as caught:
        read_dataset_json(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: invalid JSON at {position}: "), message
    assert reason in message and "\n" not in message
    assert "download" in message  # says what to do


def test_annotations_stage_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    """Through the stage runner: one line on stderr naming the file, exit 2, no traceback."""
    raw = tmp_path / "raw"
    (raw / "vg").mkdir(parents=True)
    (raw / "vg" / "image_data.json").write_text(json.dumps([{"image_id": 1, "width": 4, "height": 4}])[:-3])
    code = (
        "import sys; from stages.cli import run_stage; from lavise.data.visual_genome import parse_visual_genome;"
        f"run_stage(lambda: parse_visual_genome({str(raw / 'vg')!r}, set(), None))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"{raw / 'vg' / 'image_data.json'}: invalid JSON at line 1, column " in lines[0]


def test_read_dataset_json_still_reads_valid_files(tmp_path: Path) -> None:
    path = tmp_path / "objects.json"
    path.write_text(json.dumps([{"image_id": 1, "objects": []}]))
    assert read_dataset_json(path) == [{"image_id": 1, "objects": []}]
    with pytest.raises(FileNotFoundError, match="run the download stage"):
        read_dataset_json(tmp_path / "absent.json")


def test_json_id_accepts_only_json_integers() -> None:
    assert raw_json.json_id(0) == 0 and raw_json.json_id(2**63 - 1) == 2**63 - 1
    for value in (1.7, 1.0, "3", True, False, None, -1, 2**63, [1], {"id": 1}):
        assert raw_json.json_id(value) is None, value
