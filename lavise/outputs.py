"""A stage's tables as one output set, so a reader can refuse a mix of two runs.

Each Parquet table of a set carries the set's id in its schema metadata. The id is a digest of
what determines the set's content (the stage's inputs and settings), not a random token: a rerun
with the same inputs writes byte-identical files, while tables left by runs with other inputs
(an interrupted or a concurrent run) disagree, and the consumer says so instead of mixing them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SET_KEY = b"lavise.output_set"


def output_set_id(*parts: Any) -> str:
    """A stable digest of ``parts`` (JSON-serialisable settings, input digests)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def with_set_id(table: pa.Table, set_id: str) -> pa.Table:
    """``table`` with the set id added to its schema metadata (pandas' metadata kept)."""
    return table.replace_schema_metadata({**(table.schema.metadata or {}), SET_KEY: set_id.encode()})


def table_set_id(path: Path) -> str | None:
    """The set id written into a Parquet file's schema, or None for a table written without one."""
    metadata = pq.read_schema(path).metadata or {}
    value = metadata.get(SET_KEY)
    return None if value is None else value.decode()


def check_one_set(directory: Path, names: Iterable[str], writer: str) -> str | None:
    """The common set id of ``directory/<name>.parquet`` for every name; ValueError naming the odd
    table when they come from different runs of ``writer`` (the stage to run again)."""
    missing = [name for name in names if not (Path(directory) / f"{name}.parquet").is_file()]
    if missing:
        raise FileNotFoundError(f"{Path(directory) / missing[0]}.parquet not found: run the {writer} stage first")
    ids = {name: table_set_id(Path(directory) / f"{name}.parquet") for name in names}
    first, *others = ids.items()
    for name, value in others:
        if value != first[1]:
            raise ValueError(
                f"{directory} mixes two runs: {name}.parquet and {first[0]}.parquet come from different "
                f"{writer} runs (one was interrupted or two ran at once); run the {writer} stage again"
            )
    return first[1]
