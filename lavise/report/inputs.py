"""What the report reads: JSON metrics, the head of Parquet tables, the git revision.

Each reader returns ``None`` for a file that is not there (the page then says "not run"), and
raises a one-line ValueError naming the file for one that is there but unreadable.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def read_metrics(path: Path) -> dict[str, Any] | None:
    """A JSON object, or ``None`` when the file is absent."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def read_table(path: Path, columns: list[str] | None = None) -> pd.DataFrame | None:
    """A whole Parquet table, or ``None`` when the file is absent; missing ``columns`` name the file."""
    if not path.is_file():
        return None
    try:
        return pq.read_table(path, columns=columns).to_pandas()
    except (pa.ArrowInvalid, KeyError) as error:
        raise ValueError(f"{path}: unreadable Parquet or missing columns {columns} ({error})") from None


def read_table_head(path: Path, rows: int) -> tuple[pd.DataFrame, int] | None:
    """The first ``rows`` rows of a Parquet table and its row count, reading no more than that
    batch (memory flat in the table's size); ``None`` when the file is absent."""
    if not path.is_file():
        return None
    try:
        handle = pq.ParquetFile(path)
        batch = next(handle.iter_batches(batch_size=rows), None)
    except pa.ArrowInvalid as error:
        raise ValueError(f"{path}: unreadable Parquet ({error})") from None
    head = pa.Table.from_batches([batch]) if batch is not None else handle.schema_arrow.empty_table()
    return head.to_pandas(), handle.metadata.num_rows


RUN_RECORDS = ("dvc.lock", "metrics")  # what committing a run's results changes, never its inputs


def git_revision(root: Path) -> str | None:
    """The last commit that changed anything but the run's records (dvc.lock, metrics/): the code
    and params the run came from, or ``None`` outside a git checkout (or without git). Not HEAD,
    so that committing the results does not change the page, and a forced rerun of the committed
    run writes the same bytes."""
    excluded = [f":(exclude){path}" for path in RUN_RECORDS]
    command = ["git", "log", "-1", "--format=%H", "--", ".", *excluded]
    try:
        result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    revision = result.stdout.strip()
    return revision if result.returncode == 0 and revision else None
