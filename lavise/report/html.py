"""HTML building blocks of the report: escaped text, tables, images by relative path.

Everything is built as strings with :func:`html.escape`, so the page needs no template engine,
and every value the run produced is shown as text, never interpreted as markup.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

NOT_AVAILABLE = "—"


def fmt(value: Any, decimals: int = 3) -> str:
    """A value as display text: floats rounded, NaN and None as a dash, lists space-joined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NOT_AVAILABLE
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.{decimals}f}"
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        items = value.tolist() if hasattr(value, "tolist") else value
        return " ".join(fmt(item, decimals) for item in items) if isinstance(items, list) else fmt(items, decimals)
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True)
    return str(value)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (``seen.recall@5``), in the mapping's own order."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, sortable: bool = False, cls: str = "") -> str:
    """A table; cells that are already markup are passed as :class:`Markup`, the rest escaped."""
    classes = " ".join(c for c in (cls, "sortable" if sortable else "") if c)
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell_html(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{classes}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class Markup(str):
    """Text that is already HTML (built here from escaped parts): inserted as is."""


def cell_html(value: Any) -> str:
    """A table cell's content: markup as is, anything else formatted and escaped."""
    return value if isinstance(value, Markup) else escape(fmt(value))


def key_values(data: Mapping[str, Any]) -> str:
    """A flat key/value table of a (nested) mapping: JSON metrics, params."""
    return table(["key", "value"], [[key, value] for key, value in flatten(data).items()], cls="kv")


def relative_src(image: Path, page_dir: Path) -> str:
    """``image``'s address relative to the page's folder, URL-quoted: the page keeps working when
    the folder holding both is copied elsewhere."""
    relative = os.path.relpath(Path(image).resolve(), Path(page_dir).resolve())
    return quote(Path(relative).as_posix())


def image(image_path: Path, page_dir: Path, alt: str, *, lazy: bool = True) -> Markup:
    """An <img> of a local PNG by relative path."""
    loading = ' loading="lazy"' if lazy else ""
    return Markup(f'<img src="{relative_src(image_path, page_dir)}" alt="{escape(alt)}"{loading}>')
