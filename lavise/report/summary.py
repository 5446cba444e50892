"""The report's summary: per method, every recall@s, seen/unseen, distinct concepts and the second
metric, each with its bootstrap interval where `evaluate` wrote one, beside the published figures.

Read from ``metrics/recall.json`` as it is: a method block is any mapping that holds a
``recall@s`` key; an interval is ``interval[figure_key] = {"low", "high"}`` in the block, where
the figure key of a seen/unseen figure is written ``seen.recall@5`` (``seen/recall@5`` and
``seen_recall@5`` are read too), or an ``interval`` inside the ``seen`` block itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from html import escape
from typing import Any

from lavise.report.html import Markup, fmt, table
from lavise.report.references import Preset

RECALL_KEY = re.compile(r"^recall@(\d+)$")
SECOND_METRIC = ("correlation", "auprc")  # NeuronEval-style scores, when evaluate wrote them
SUBSETS = ("seen", "unseen")


def method_blocks(recall: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The per-method blocks of recall.json (NetDissect included), in the file's order."""
    return {
        name: block
        for name, block in recall.items()
        if isinstance(block, Mapping) and any(RECALL_KEY.match(key) for key in block)
    }


def recall_steps(blocks: Mapping[str, Mapping[str, Any]]) -> list[int]:
    """Every s of a recall@s key in any block, ascending."""
    found = {int(m.group(1)) for block in blocks.values() for key in block if (m := RECALL_KEY.match(key))}
    return sorted(found)


def interval(block: Mapping[str, Any], key: str, subset: str | None = None) -> tuple[float, float] | None:
    """The (low, high) interval of figure ``key`` (of ``subset`` when given), or ``None``."""
    intervals = block.get("interval") or {}
    candidates = [key] if subset is None else [f"{subset}{sep}{key}" for sep in (".", "/", "_")]
    for name in candidates:
        found = intervals.get(name)
        if isinstance(found, Mapping) and found.get("low") is not None and found.get("high") is not None:
            return float(found["low"]), float(found["high"])  # null bounds: the figure is undefined
    if subset is not None and isinstance(block.get(subset), Mapping):
        return interval(block[subset], key)
    return None


def with_interval(block: Mapping[str, Any], key: str, subset: str | None = None) -> Markup:
    """``value [low, high]`` where an interval exists, the value alone where not, a dash when absent."""
    source = block.get(subset, {}) if subset else block
    text = fmt(source.get(key) if isinstance(source, Mapping) else None)
    bounds = interval(block, key, subset)
    if bounds is not None:
        text += f' <span class="ci">[{bounds[0]:.3f}, {bounds[1]:.3f}]</span>'
    return Markup(text)


def summary_table(recall: Mapping[str, Any]) -> str:
    """One row per method: recall@s for every s, distinct concepts, the second metric, what was scored."""
    blocks = method_blocks(recall)
    steps = recall_steps(blocks)
    extra = [key for key in SECOND_METRIC if any(key in block for block in blocks.values())]
    header = ["method", *[f"R@{s}" for s in steps], *extra, "distinct concepts", "filters scored", "pairs"]
    rows = [
        [
            name,
            *[with_interval(block, f"recall@{s}") for s in steps],
            *[with_interval(block, key) for key in extra],
            block.get("n_distinct_concepts"),
            block.get("n_filters_scored"),
            block.get("n_pairs"),
        ]
        for name, block in blocks.items()
    ]
    return table(header, rows, cls="summary")


def subsets_table(recall: Mapping[str, Any]) -> str:
    """Seen and unseen recall@s per method (VG's novelty split); empty when no block has them."""
    blocks = method_blocks(recall)
    steps = recall_steps(blocks)
    subsets = [name for name in SUBSETS if any(isinstance(block.get(name), Mapping) for block in blocks.values())]
    if not subsets:
        return ""
    header = ["method", *[f"{subset} R@{s}" for subset in subsets for s in steps], *[f"{s} pairs" for s in subsets]]
    rows = [
        [
            name,
            *[with_interval(block, f"recall@{s}", subset) for subset in subsets for s in steps],
            *[(block.get(subset) or {}).get("n_pairs") for subset in subsets],
        ]
        for name, block in blocks.items()
    ]
    return table(header, rows, cls="summary")


def reference_table(preset: Preset | None, recall: Mapping[str, Any]) -> str:
    """This run's recall@5/10/20 per method beside the published figures of the matching preset."""
    if preset is None:
        return '<p class="note">No published figures for this dataset, backbone and layer.</p>'
    blocks = method_blocks(recall)
    steps = sorted({int(m.group(1)) for f in preset.figures for k in f if (m := RECALL_KEY.match(k))})
    header = ["method", "source", *[f"R@{s}" for s in steps], "cited from"]
    rows: list[list[Any]] = []
    for method in dict.fromkeys(figure["method"] for figure in preset.figures):
        for ours in (m for m in preset.compare_with.get(method, [method]) if m in blocks):
            rows.append([ours, "this run", *[blocks[ours].get(f"recall@{s}") for s in steps], ""])
        for figure in (f for f in preset.figures if f["method"] == method):
            rows.append([method, figure["source"], *[figure.get(f"recall@{s}") for s in steps], figure["cite"]])
    caption = (
        f'<p class="note">Published preset: {escape(preset.dataset)}, {escape(preset.backbone)} '
        f"{escape(preset.layer)}, pre-training: {escape(preset.pretraining)}.</p>"
    )
    return caption + table(header, rows, cls="summary")
