"""The pages of the QC report: static HTML with inline CSS and a small sorting script, relative links only."""

from __future__ import annotations

import html
import statistics
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from rlreg import __version__
from rlreg.pipelines.register import ERROR_RECORD as ERROR
from rlreg.pipelines.register import SIDECAR
from rlreg.pipelines.report_data import FOLDING_LIMIT, PairEntry, finite
from rlreg.pipelines.report_figures import FIGURES, input_path

__all__ = ["CSS", "SCRIPT", "index_page", "pair_page"]

CSS = """
:root { --red: #b00020; --red-bg: #fde2e4; --amber: #8a4b00; --amber-bg: #fff1c2; --line: #dde1e6; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1b1f24;
       background: #fff; margin: 0 auto; max-width: 1480px; padding: 14px 24px 40px; }
h1 { font-size: 1.55em; margin: 0.2em 0 0.3em; }
h2 { font-size: 1.2em; margin: 1.4em 0 0.5em; border-bottom: 1px solid var(--line); padding-bottom: 0.2em; }
a { color: #0b5cad; }
.meta { color: #555; margin: 0 0 0.8em; overflow-wrap: anywhere; }
nav.pager { display: flex; gap: 18px; flex-wrap: wrap; padding: 6px 0 10px; border-bottom: 1px solid var(--line); }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 8px 0 12px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 5px 12px; background: #f6f8fa; min-width: 90px;
        font-size: 0.92em; }
.card b { display: block; font-size: 1.45em; }
.card.failed b { color: var(--red); } .card.outlier b { color: var(--amber); }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 9px; border-bottom: 1px solid var(--line); text-align: right; vertical-align: middle; }
th.text, td.text { text-align: left; }
thead th { position: sticky; top: 0; background: #eef1f4; z-index: 1; white-space: nowrap; }
th button { font: inherit; font-weight: 600; color: inherit; background: none; border: 0; padding: 0;
            cursor: pointer; }
th[aria-sort="ascending"] button::after { content: " \\25B2"; }
th[aria-sort="descending"] button::after { content: " \\25BC"; }
tbody tr:hover td { background: #f3f6fa; }
tr.failed td { background: var(--red-bg); } tr.outlier td { background: var(--amber-bg); }
td.flags { min-width: 8em; max-width: 30em; overflow-wrap: anywhere; font-size: 0.92em; }
.flag-failed { color: var(--red); font-weight: 600; } .flag-outlier { color: var(--amber); font-weight: 600; }
.status-done { color: #1a7f37; } .status-failed { color: var(--red); font-weight: 600; }
.status-unfinished { color: #6e7781; }
img.thumb { height: 56px; display: block; margin-left: auto; }
.box { border-left: 4px solid; padding: 8px 12px; margin: 10px 0; overflow-wrap: anywhere; }
.box.failed { border-color: var(--red); background: var(--red-bg); }
.box.outlier { border-color: #e0a800; background: var(--amber-bg); }
.box.note { border-color: #8c959f; background: #f6f8fa; }
.columns { display: flex; flex-wrap: wrap; gap: 28px; align-items: flex-start; }
table.kv th { text-align: left; font-weight: 600; background: none; position: static; }
table.stages thead th { text-align: right; }
.method { max-width: 46em; }
nav.toc { margin: 14px 0 10px; }
h3 { font-size: 1.02em; margin: 0.6em 0 0.3em; }
figure { margin: 0 0 22px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: #444; font-size: 0.93em; max-width: 70em; }
code { font-size: 0.92em; overflow-wrap: anywhere; }
footer { margin-top: 2em; color: #555; font-size: 0.92em; }
"""

SCRIPT = """
(function () {
  "use strict";
  var table = document.getElementById("pairs");
  if (table) {
    var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
    var value = function (row, index, numeric) {
      var raw = row.cells[index].getAttribute("data-value");
      if (raw === null || raw === "") { return null; }
      if (!numeric) { return raw; }
      var number = Number(raw);
      return isNaN(number) ? null : number;
    };
    var sortBy = function (index, descending) {
      var numeric = headers[index].getAttribute("data-type") === "num";
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = value(a, index, numeric), y = value(b, index, numeric);
        if (x === null || y === null) { return (x === null) - (y === null); }
        var c = numeric ? x - y : x.localeCompare(y, undefined, {numeric: true, sensitivity: "base"});
        return descending ? -c : c;
      });
      rows.forEach(function (row) { body.appendChild(row); });
      headers.forEach(function (h, i) {
        h.setAttribute("aria-sort", i === index ? (descending ? "descending" : "ascending") : "none");
      });
      table.setAttribute("data-sorted", headers[index].getAttribute("data-key") + ":" + (descending ? "desc" : "asc"));
    };
    headers.forEach(function (h, i) {
      h.addEventListener("click", function () { sortBy(i, h.getAttribute("aria-sort") === "ascending"); });
    });
    var wanted = /sort=([A-Za-z0-9_]+)(?::(asc|desc))?/.exec(window.location.hash);
    if (wanted) {
      headers.forEach(function (h, i) {
        if (h.getAttribute("data-key") === wanted[1]) { sortBy(i, wanted[2] === "desc"); }
      });
    }
  }
  window.addEventListener("load", function () {
    var images = Array.prototype.slice.call(document.images);
    var broken = images.filter(function (im) { return im.complete && im.naturalWidth === 0; });
    var loaded = images.filter(function (im) { return im.complete && im.naturalWidth > 0; });
    broken.forEach(function (im) { console.error("image failed to load: " + im.getAttribute("src")); });
    document.body.setAttribute("data-images", loaded.length + "/" + images.length);
    document.body.setAttribute("data-images-broken", String(broken.length));
  });
})();
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{_e(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n<script>{SCRIPT}</script>\n</body>\n</html>\n")


@dataclass(frozen=True)
class _Column:
    key: str
    title: str
    digits: int
    tip: str


NUMBER_COLUMNS = (
    _Column("dice_before", "Dice before", 3, "mean Dice over labels before any registration"),
    _Column("dice_affine", "Dice affine", 3, "mean Dice after the affine stage"),
    _Column("dice_after", "Dice after", 3, "mean Dice after registration"),
    _Column("lncc_after", "LNCC after", 3, "local normalised cross-correlation of fixed and warped (window 9)"),
    _Column("folding_percent", "Folding %", 3, "percentage of voxels whose Jacobian determinant is <= 0"),
    _Column("sdlogj", "SDlogJ", 3, "standard deviation of the log Jacobian determinant (smoothness)"),
)
EVAL_COLUMNS = (
    _Column("hd95_mean_mm", "HD95 mm", 2, "mean 95th-percentile Hausdorff distance over labels (rlreg evaluate)"),
    _Column("tre_after_mm", "TRE mm", 2, "mean target registration error of the keypoints (rlreg evaluate)"),
)
SECONDS = _Column("seconds_total", "Seconds", 1, "wall-clock seconds of the whole registration")


def _summary(entries: list[PairEntry]) -> str:
    """Cards: counts by status and outliers, then mean and median of the main scores over the finished pairs."""
    counts = {s: sum(e.status == s for e in entries) for s in ("done", "failed", "unfinished")}
    cards = [("pairs", str(len(entries)), ""), ("done", str(counts["done"]), ""),
             ("failed", str(counts["failed"]), "failed"), ("unfinished", str(counts["unfinished"]), ""),
             ("outliers", str(sum(bool(e.outlier) for e in entries)), "outlier")]
    for key, label in (("dice_after", "Dice after"), ("dice_affine", "Dice affine"), ("lncc_after", "LNCC after"),
                       ("folding_percent", "folding %")):
        values = [v for e in entries if e.status == "done" and (v := e.number(key)) is not None]
        if values:
            cards.append((f"{label}: mean · median",
                          f"{statistics.fmean(values):.3f} · {statistics.median(values):.3f}", "wide"))
    return '<div class="cards">' + "".join(
        f'<div class="card {cls}"><b>{_e(value)}</b>{_e(label)}</div>' for label, value, cls in cards) + "</div>"


def index_page(outdir: Path, batch: dict[str, Any], *, entries: list[PairEntry], thumbs: dict[str, str],
                has_eval: bool, outlier_z: float) -> str:
    columns = list(NUMBER_COLUMNS)
    if has_eval:
        columns += [c for c in EVAL_COLUMNS if any(e.number(c.key) is not None for e in entries)]
    columns.append(SECONDS)
    head = ['<th data-key="order" data-type="num" title="position in batch.json"><button type="button">#</button></th>',
            '<th class="text" data-key="pair" data-type="text"><button type="button">Pair</button></th>',
            '<th class="text" data-key="status" data-type="text"><button type="button">Status</button></th>']
    head += [f'<th data-key="{c.key}" data-type="num" title="{_e(c.tip)}"><button type="button">{_e(c.title)}'
             "</button></th>" for c in columns]
    head += ['<th class="text" data-key="flags" data-type="text"><button type="button">Flags</button></th>',
             '<th class="text" title="coronal mid-slice">Warped</th>']
    rows = []
    for entry in entries:
        cls = "failed" if entry.status == "failed" else ("outlier" if entry.outlier else "")
        cells = [f'<td data-value="{entry.index + 1}">{entry.index + 1}</td>',
                 f'<td class="text" data-value="{_e(entry.id)}"><a href="pairs/{quote(entry.page)}.html">'
                 f"{_e(entry.id)}</a></td>",
                 f'<td class="text status-{entry.status}" data-value="{entry.status}">{entry.status}</td>']
        for column in columns:
            value = entry.number(column.key)
            cells.append(f'<td data-value="{"" if value is None else repr(value)}">{_fmt(value, column.digits)}</td>')
        if entry.status == "failed":
            flag = f'<span class="flag-failed">failed:</span> {_e(entry.error_message)}'
        elif entry.outlier:
            flag = '<span class="flag-outlier">outlier:</span> ' + _e("; ".join(entry.outlier))
        else:
            flag = ""
        flag_value = "failed" if entry.status == "failed" else ("outlier" if entry.outlier else "")
        cells.append(f'<td class="text flags" data-value="{flag_value}">{flag}</td>')
        thumb = f'<img class="thumb" src={_q(thumbs[entry.id])} alt={_q("warped " + entry.id)}>' if \
            entry.id in thumbs else ""
        cells.append(f'<td class="text">{thumb}</td>')
        rows.append(f'<tr class="{cls}" data-pair="{_e(entry.id)}">' + "".join(cells) + "</tr>")
    meta = [f"Output folder <code>{_e(outdir.resolve())}</code>"]
    if batch.get("input"):
        meta.append(f"input <code>{_e(batch['input'])}</code>")
    if batch.get("created"):
        meta.append(f"batch started {_e(batch['created'])}")
    meta.append(f"report built {_e(_now())} by rlreg {_e(__version__)}")
    evaluation = ('Distances (HD95, TRE) from <a href="../evaluation/evaluation.json">evaluation/evaluation.json</a>.'
                  if has_eval else "No <code>evaluation/evaluation.json</code> yet: run <code>rlreg evaluate</code> "
                  "for HD95 and TRE.")
    body = (f"<h1>Batch report: {_e(outdir.resolve().name)}</h1>\n<p class=\"meta\">{' · '.join(meta)}</p>\n"
            f"{_summary(entries)}\n"
            "<p>Click a column header to sort (again to reverse); blank cells sort last. "
            "Red rows failed; amber rows are outliers. Click a pair for its figures. "
            f"{evaluation}</p>\n"
            f'<table id="pairs">\n<thead><tr>{"".join(head)}</tr></thead>\n<tbody>\n' + "\n".join(rows)
            + "\n</tbody>\n</table>\n"
            f"<footer><p><b>Outlier rule.</b> A finished pair is an outlier when its Dice after (its LNCC after if "
            f"it has no Dice) is more than {outlier_z:g} robust SDs (1.4826 × median absolute deviation, over the "
            f"finished pairs; needs at least 3) below the median, or more than {FOLDING_LIMIT:g} % of its voxels "
            "fold, or its Dice after is lower than its Dice after the affine stage. "
            "<b>Status.</b> done: <code>rlreg.json</code> written; failed: <code>error.json</code> written; "
            "unfinished: neither (still running, killed, or not started).</p></footer>")
    return _page(f"rlreg batch report: {outdir.resolve().name}", body)


def _q(value: str) -> str:
    """A quoted HTML attribute value."""
    return f'"{_e(value)}"'


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _kv(rows: list[tuple[str, str]]) -> str:
    return '<table class="kv">' + "".join(f"<tr><th>{_e(k)}</th><td class=\"text\">{v}</td></tr>"
                                          for k, v in rows) + "</table>"


_PAIR_NUMBERS = (*NUMBER_COLUMNS[4:], *EVAL_COLUMNS, _Column("jacobian_min", "Jacobian min", 3, ""),
                 _Column("jacobian_max", "Jacobian max", 3, ""), SECONDS)


def _stages(entry: PairEntry) -> str:
    """Dice and LNCC before registration, after the affine stage and after the deformable stage, as a small table."""
    rows = []
    for name, prefix in (("Dice", "dice"), ("LNCC", "lncc")):
        values = [entry.number(f"{prefix}_{stage}") for stage in ("before", "affine", "after")]
        if any(v is not None for v in values):
            rows.append(f"<tr><th>{name}</th>" + "".join(f"<td>{_fmt(v, 3)}</td>" for v in values) + "</tr>")
    if not rows:
        return ""
    return ('<table class="kv stages"><thead><tr><th></th><th>before</th><th>affine</th><th>after</th></tr></thead>'
            "<tbody>" + "".join(rows) + "</tbody></table>")


def _pair_link(entry: PairEntry | None, label: str) -> str:
    if entry is None:
        return f"<span>{_e(label)}: none</span>"
    return f'<a href="{quote(entry.page)}.html">{_e(label)}: {_e(entry.id)}</a>'


def pair_page(entry: PairEntry, figures: dict[str, Path], *, notes: list[str], previous: PairEntry | None,
               following: PairEntry | None, outdir: Path, seconds: float) -> str:
    nav = (f'<nav class="pager"><a href="../index.html">&#8592; all pairs</a>{_pair_link(previous, "previous")}'
           f"{_pair_link(following, 'next')}</nav>")
    parts = [nav, f"<h1>Pair {_e(entry.id)}</h1>",
             f'<p class="meta">Pair {entry.index + 1} of the batch · status '
             f'<span class="status-{entry.status}">{entry.status}</span></p>']
    if entry.status == "failed":
        error = entry.error or {}
        parts.append(f'<div class="box failed"><b>Failed</b> ({_e(error.get("type") or "error")}'
                     f'{", " + _e(error["created"]) if error.get("created") else ""}): '
                     f"{_e(entry.error_message)}</div>")
    elif entry.status == "unfinished":
        why = "its folder holds neither rlreg.json nor error.json (still running, or killed)" if \
            entry.folder.is_dir() else "its folder does not exist (not started)"
        parts.append(f'<div class="box note"><b>Unfinished</b>: {_e(why)}.</div>')
    if entry.outlier:
        parts.append('<div class="box outlier"><b>Outlier</b>: ' + _e("; ".join(entry.outlier)) + "</div>")
    inputs = [(key, f"<code>{_e(path)}</code>") for key in ("fixed", "moving", "fixed_seg", "moving_seg")
              if (path := input_path(entry, key))]
    files = [f'<a href="../../{quote(entry.id)}/{name}">{name}</a>' for name in
             (SIDECAR, ERROR, "overview.png", "warped.nii.gz", "warp.nii.gz", "jacdet.nii.gz", "warped_seg.nii.gz")
             if (entry.folder / name).is_file()]
    captions = dict(FIGURES)
    method = (entry.record or {}).get("method")
    method = method if isinstance(method, dict) else {}
    if method.get("affine_matrix_lps"):
        linear = np.asarray(method["affine_matrix_lps"], dtype=np.float64)[:-1, :-1]
        captions["jacobian"] += f" The affine stage alone scales volume by {np.linalg.det(linear):.2f}."
    steps = (entry.record or {}).get("steps")
    if isinstance(steps, list) and not any(isinstance(s, dict) and "lncc" in s for s in steps):
        captions["steps"] = ("The instance optimiser's loss (multi-scale LNCC + diffusion; lower is better) during the "
                             "deformable stage. Dotted lines mark a move to a finer level, where the loss is measured "
                             "on another grid and jumps.")
    shown_figures = [name for name in FIGURES if name in figures]
    if entry.record is not None:
        parts.append('<div class="columns">' + _stages(entry) + _kv(
            [(c.title, _e(_fmt(entry.number(c.key), c.digits))) for c in _PAIR_NUMBERS
             if entry.number(c.key) is not None]) + _kv(
            [(k, _e(method[k])) for k in ("deformable", "model", "steps", "affine", "device")
             if method.get(k) is not None]) + "</div>")
    if shown_figures:
        parts.append('<nav class="toc">Figures: ' + " · ".join(
            f'<a href="#fig-{name}">{_e(name)}</a>' for name in shown_figures) + "</nav>")
    for name in shown_figures:
        src = f"../img/{quote(entry.page)}/{quote(figures[name].name)}"
        parts.append(f'<figure id="fig-{name}"><img src="{src}" alt="{_e(name)} of pair {_e(entry.id)}">'
                     f"<figcaption>{_e(captions[name])}</figcaption></figure>")
    details = []
    seconds_rec = (entry.record or {}).get("seconds")
    if isinstance(seconds_rec, dict) and seconds_rec:
        details.append("<div><h3>Seconds</h3>" + _kv([(k, _e(_fmt(finite(v), 1))) for k, v in seconds_rec.items()
                                                      if finite(v) is not None]) + "</div>")
    if method:
        details.append('<div class="method"><h3>Method</h3>' + _kv(
            [(k, _e(method[k])) for k in ("affine", "deformable", "model", "model_version", "steps", "working_grid",
                                         "device", "note") if method.get(k) is not None]) + "</div>")
    if inputs or files:
        details.append("<div><h3>Files</h3>" + _kv([*inputs, ("outputs", " · ".join(files) or "none")]) + "</div>")
    if details:
        parts.append('<h2>Details</h2><div class="columns">' + "".join(details) + "</div>")
    for note in notes:
        parts.append(f'<p class="box note">{_e(note)}</p>')
    if entry.status == "done":
        parts.append(f"<footer>Figures drawn in {seconds:.1f} s. Planes in radiological convention (patient right "
                     "on the left of the screen; anterior up in axial, superior up in coronal and sagittal), pixels "
                     "at their size in mm.</footer>")
    parts.append(nav)
    return _page(f"Pair {entry.id}: rlreg batch report {outdir.resolve().name}", "\n".join(parts))

