"""Generic sections for the other stages' results: their JSON metrics as a key/value table, the
head of their Parquet table (sortable), their PNG sheets as images, or "not run".

A stage that is added later needs no code here: its files are one more :class:`StageFiles`.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from pathlib import Path

from lavise.report.html import image, key_values, table
from lavise.report.inputs import read_metrics, read_table_head


@dataclass(frozen=True)
class StageFiles:
    """What one stage wrote: its metrics file, its main table, and a folder (or file) of PNGs."""

    name: str
    title: str
    metrics: Path
    table: Path
    images: Path


def pngs(path: Path) -> list[Path]:
    """The PNG at ``path`` or the PNGs directly in the folder ``path``, by name."""
    if path.is_file() and path.suffix.lower() == ".png":
        return [path]
    return sorted(p for p in path.glob("*.png") if p.is_file()) if path.is_dir() else []


def stage_section(files: StageFiles, page_dir: Path, table_rows: int) -> str:
    """The section of one stage, or its title and "not run" when none of its files exists."""
    metrics = read_metrics(files.metrics)
    head = read_table_head(files.table, table_rows)
    images = pngs(files.images)
    parts = [f'<section id="stage-{escape(files.name)}"><h2>{escape(files.title)}</h2>']
    if metrics is None and head is None and not images:
        parts.append(f'<p class="not-run">not run (none of {escape(str(files.metrics))}, ')
        parts.append(f"{escape(str(files.table))}, {escape(str(files.images))} exists)</p></section>")
        return "".join(parts)
    if metrics is not None:
        parts.append(f"<h3>{escape(files.metrics.name)}</h3>{key_values(metrics)}")
    if head is not None:
        frame, total = head
        parts.append(f"<h3>{escape(files.table.name)}: first {len(frame)} of {total} rows</h3>")
        parts.append(table(list(frame.columns), list(frame.itertuples(index=False, name=None)), sortable=True))
    if images:
        tags = "".join(
            f"<figure>{image(p, page_dir, p.name)}<figcaption>{escape(p.name)}</figcaption></figure>" for p in images
        )
        parts.append(f'<div class="sheets">{tags}</div>')
    parts.append("</section>")
    return "".join(parts)
