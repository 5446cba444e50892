"""The report page, results/report/index.html: one self-contained, offline file.

Inline CSS and a few lines of inline JavaScript (sort and filter the filter cards, sort any table
by a column); images by relative path inside the results folder. No script, style sheet, font or
image is requested from any other host, so the page opens on an offline machine, and the same
inputs give the same bytes (no timestamp).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from lavise.io import atomic_dir, atomic_path
from lavise.report.cards import filter_cards, sort_menu
from lavise.report.curves import CURVES, write_learning_curves
from lavise.report.html import image, key_values
from lavise.report.references import Preset
from lavise.report.sections import StageFiles, stage_section
from lavise.report.summary import reference_table, subsets_table, summary_table

log = logging.getLogger(__name__)

PAGE = "index.html"
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1300px;padding:0 16px;color:#222}
h1{margin:16px 0 4px}h2{border-bottom:2px solid #ccc;margin-top:32px}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ddd;padding:2px 6px;text-align:left}
th{background:#f3f3f3}table.sortable th{cursor:pointer}.ci{color:#777;font-size:12px}
.note,.not-run{color:#666}.not-run{font-style:italic}nav a{margin-right:12px}
.curves img,.sheets img{max-width:48%;margin:4px}figure{margin:4px 0}figure img{max-width:100%}
#cards{display:flex;flex-direction:column;gap:12px}.card{border:1px solid #bbb;border-radius:6px;padding:8px}
.card h3{margin:0 0 4px}.card .meta{margin:0 0 4px;color:#444}.w{margin-right:6px}.w small{color:#888;margin-left:1px}
.ids{color:#666;font-size:12px;word-break:break-all}.controls{position:sticky;top:0;background:#fff;padding:6px 0}
details{margin:8px 0}table.kv td:first-child{font-family:monospace}
"""
SCRIPT = """
(function(){
var box=document.getElementById('cards');if(!box)return;
var cards=Array.prototype.slice.call(box.children);
function num(c,k){var v=c.getAttribute('data-'+k);return v===''?NaN:parseFloat(v);}
function apply(){
 var k=document.getElementById('sort-key').value,d=document.getElementById('sort-desc').checked?-1:1;
 var q=document.getElementById('search').value.toLowerCase().trim(),only=document.getElementById('only-sheets').checked;
 cards.sort(function(a,b){var x=num(a,k),y=num(b,k);
  if(isNaN(x))return isNaN(y)?0:1;if(isNaN(y))return -1;return d*(x-y);});
 var shown=0;cards.forEach(function(c){
  var ok=(!q||c.getAttribute('data-text').indexOf(q)>=0)&&(!only||c.getAttribute('data-sheet')==='1');
  c.style.display=ok?'':'none';if(ok)shown++;box.appendChild(c);});
 document.getElementById('shown').textContent=shown+' of '+cards.length+' filters';}
['sort-key','sort-desc','search','only-sheets'].forEach(function(id){
 var e=document.getElementById(id);e.addEventListener(e.type==='text'?'input':'change',apply);});
apply();
})();
document.querySelectorAll('table.sortable').forEach(function(t){
 t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){
  var b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows),d=th.getAttribute('data-d')==='1'?-1:1;
  th.setAttribute('data-d',d===1?'1':'0');
  rows.sort(function(r,s){var x=r.cells[i].textContent,y=s.cells[i].textContent,p=parseFloat(x),q=parseFloat(y);
   return d*(isNaN(p)||isNaN(q)?x.localeCompare(y):p-q);});
  rows.forEach(function(r){b.appendChild(r);});});});});
"""


@dataclass(frozen=True)
class ReportInputs:
    """Everything the page shows; ``None`` where a stage has not run."""

    params: Mapping[str, Any]
    revision: str | None
    metrics: Mapping[str, Mapping[str, Any] | None]  # annotations, target, train, recall, summary
    history: Mapping[str, Sequence[float]] | None
    explanations: pd.DataFrame | None
    scores: pd.DataFrame | None
    sheets: Mapping[int, Path]
    preset: Preset | None
    stages: Sequence[StageFiles] = field(default_factory=tuple)
    table_rows: int = 50


def not_run(what: str) -> str:
    return f'<p class="not-run">not run ({escape(what)} absent)</p>'


def header(inputs: ReportInputs) -> str:
    """Title, what was explained, the git revision, and a caveat when the data is the demo's."""
    params = inputs.params
    backbone = params.get("backbone", {})
    what = f"{backbone.get('name')} {backbone.get('layer')} (weights: {backbone.get('weights')})"
    what += f" on {params.get('dataset')}"
    revision = inputs.revision or "unknown (not run from a git checkout)"
    parts = [
        "<header><h1>LaViSE pipeline report</h1>",
        f"<p>{escape(what)} · git revision <code>{escape(revision)}</code></p>",
    ]
    if params.get("download", {}).get("source") == "demo":
        parts.append(
            '<p class="note">Data: the embedded synthetic demo (download.source: demo). Its figures check the '
            "pipeline; they are not comparable with the published figures below.</p>"
        )
    links = ["summary", "training", "filters", "stages", "params"]
    parts.append("<nav>" + "".join(f'<a href="#{name}">{name}</a>' for name in links) + "</nav></header>")
    return "".join(parts)


def summary_section(inputs: ReportInputs) -> str:
    """Per-method figures with intervals, seen/unseen, the headline file, the published figures."""
    recall = inputs.metrics.get("recall")
    parts = ['<section id="summary"><h2>Summary per method</h2>']
    if recall is None:
        parts.append(not_run("metrics/recall.json"))
    else:
        parts += [summary_table(recall), subsets_table(recall), "<h3>Published figures</h3>"]
        parts.append(reference_table(inputs.preset, recall))
    headline = inputs.metrics.get("summary")
    if headline is not None:
        parts.append(f"<h3>Headline metrics</h3>{key_values(headline)}")
    parts.append("</section>")
    return "".join(parts)


def training_section(inputs: ReportInputs, page_dir: Path) -> str:
    """The explainer's learning curves (PNGs in the page's folder) and the training metrics."""
    parts = ['<section id="training"><h2>Training</h2>']
    if inputs.history is None:
        parts.append(not_run("the explainer's history"))
    else:
        curves = "".join(image(page_dir / name, page_dir, title) for name, (title, _, _) in CURVES.items())
        parts.append(f'<div class="curves">{curves}</div>')
    for name, title in (("target", "Target CNN"), ("train", "Explainer"), ("annotations", "Annotations")):
        data = inputs.metrics.get(name)
        body = key_values(data) if data is not None else not_run(f"metrics/{name}.json")
        parts.append(f"<details{' open' if name != 'annotations' else ''}><summary>{title}</summary>{body}</details>")
    parts.append("</section>")
    return "".join(parts)


def filters_section(inputs: ReportInputs, page_dir: Path) -> str:
    """The controls and one card per evaluated filter."""
    if inputs.explanations is None or inputs.scores is None:
        return f'<section id="filters"><h2>Filters</h2>{not_run("results/explanations.parquet")}</section>'
    cards, keys = filter_cards(inputs.explanations, inputs.scores, inputs.sheets, page_dir)
    controls = (
        f'<div class="controls">sort by {sort_menu(keys)} <label><input type="checkbox" id="sort-desc"> '
        'descending</label> · search words <input type="text" id="search" placeholder="e.g. car"> '
        '<label><input type="checkbox" id="only-sheets"> with a heatmap sheet only</label> · '
        f'<span id="shown">{len(cards)} filters</span></div>'
    )
    return f'<section id="filters"><h2>Filters</h2>{controls}<div id="cards">{"".join(cards)}</div></section>'


def render_page(inputs: ReportInputs, page_dir: Path) -> str:
    """The whole page; image addresses are relative to ``page_dir``, the page's final folder."""
    stages = "".join(stage_section(files, page_dir, inputs.table_rows) for files in inputs.stages)
    body = "".join(
        [
            header(inputs),
            summary_section(inputs),
            training_section(inputs, page_dir),
            filters_section(inputs, page_dir),
            f'<div id="stages">{stages}</div>',
            f'<section id="params"><h2>Params</h2>{key_values(inputs.params)}</section>',
        ]
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>LaViSE pipeline report</title><style>{STYLE}</style></head>"
        f"<body>{body}<script>{SCRIPT}</script></body></html>\n"
    )


def write_report(out_dir: Path, inputs: ReportInputs) -> Path:
    """The page and its learning curves into ``out_dir``, replaced as a whole only on success."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as staging:
        if inputs.history is not None:
            write_learning_curves(staging, inputs.history)
        with atomic_path(staging / PAGE) as temp:
            temp.write_text(render_page(inputs, out_dir), encoding="utf-8")
    n_cards = 0 if inputs.explanations is None else inputs.explanations["filter"].nunique()
    log.info("report: %s (%d filter cards)", out_dir / PAGE, n_cards)
    return out_dir / PAGE
