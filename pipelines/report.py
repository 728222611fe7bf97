"""The visual QC report of a batch: ``OUTDIR/report/index.html`` and one page per pair.

The report reads only what ``rlreg batch`` wrote (``batch.json``, each ``<pair-id>/rlreg.json`` or ``error.json``,
the images of each pair) and, when present, ``evaluation/evaluation.json`` from ``rlreg evaluate``. It is a set
of static files that open from disk (``file://``): inline CSS, a small inline script for sorting, relative links,
no network. Layout::

    OUTDIR/report/index.html              sortable table of every pair, summary, flags
    OUTDIR/report/pairs/<pair-id>.html    one page per pair: numbers, method, figures, prev/next links
    OUTDIR/report/img/<pair-id>/*.png     the figures (rlreg.pipelines.qc_figures)

Building again rebuilds every page and figure and removes pages and figures of pairs that are no longer listed.

The pieces: :mod:`rlreg.pipelines.report_data` (what the batch wrote, outliers), :mod:`rlreg.pipelines.report_figures`
(the figures of one pair) and :mod:`rlreg.pipelines.report_html` (the pages).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from rlreg.io import InputError, atomic_output
from rlreg.pipelines.register import ERROR_RECORD as ERROR
from rlreg.pipelines.register import SIDECAR
from rlreg.pipelines.report_data import find_outliers, load_batch, read_json
from rlreg.pipelines.report_figures import pair_figures
from rlreg.pipelines.report_html import index_page, pair_page

__all__ = ["build_report", "evaluation_for_report"]

Progress = Callable[[str, int, int], None]


# ---------------------------------------------------------------------------------------------------- writing
def _write_text(path: Path, text: str) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _remove_stale(report: Path, pages: set[str]) -> None:
    """Delete pages and figure folders of pairs that are no longer in the batch (only inside ``report/``)."""
    for page in (report / "pairs").glob("*.html"):
        if page.stem not in pages:
            page.unlink()
    if (report / "img").is_dir():
        for folder in (report / "img").iterdir():
            if folder.is_dir() and folder.name not in pages:
                shutil.rmtree(folder)


def build_report(outdir: Path, progress: Progress | None = None, *, outlier_z: float = 2.5) -> Path:
    """Write the QC report of a batch output folder and return ``OUTDIR/report/index.html``.

    Args:
        outdir: a folder written by ``rlreg batch`` (see the module docstring for what is read).
        progress: called as ``progress("report", done, total)`` before the first and after each pair.
        outlier_z: robust standard deviations below the median that make a pair's Dice (or LNCC) an outlier.

    Raises:
        InputError: ``outdir`` is not a batch output folder.
    """
    say = progress or (lambda *_: None)
    outdir = Path(outdir)
    batch, entries = load_batch(outdir)
    for pair_id, reasons in find_outliers(entries, outlier_z).items():
        next(e for e in entries if e.id == pair_id).outlier = reasons
    report = outdir / "report"
    has_eval = (outdir / "evaluation" / "evaluation.json").is_file()
    say("report", 0, len(entries))
    thumbs: dict[str, str] = {}
    for number, entry in enumerate(entries, start=1):
        started = time.perf_counter()
        figures, notes = pair_figures(entry, report / "img" / entry.page) if entry.status == "done" else ({}, [])
        if entry.status != "done" and (report / "img" / entry.page).is_dir():
            shutil.rmtree(report / "img" / entry.page)  # figures of an earlier run that finished
        if "thumb" in figures:
            thumbs[entry.id] = f"img/{quote(entry.page)}/{figures['thumb'].name}"
        previous = entries[number - 2] if number > 1 else None
        following = entries[number] if number < len(entries) else None
        page = pair_page(entry, figures, notes=notes, previous=previous, following=following, outdir=outdir,
                         seconds=time.perf_counter() - started)
        _write_text(report / "pairs" / f"{entry.page}.html", page)
        say("report", number, len(entries))
    index = index_page(outdir, batch, entries=entries, thumbs=thumbs, has_eval=has_eval, outlier_z=outlier_z)
    _remove_stale(report, {e.page for e in entries})
    return _write_text(report / "index.html", index)


def evaluation_for_report(outdir: Path, progress: Progress | None = None) -> str:
    """Make ``OUTDIR/evaluation/evaluation.json`` current for the report, never changing its conventions.

    An existing evaluation is kept when it scored exactly the pairs of ``batch.json`` and is newer than
    ``batch.json`` and every pair's ``rlreg.json``/``error.json``; otherwise the batch is evaluated again with the
    conventions recorded in it (``learn2reg``, ``selected_labels``). Without one, it is made with rlreg's defaults.

    Returns:
        ``"kept"``, ``"updated"`` (re-evaluated with the recorded conventions) or ``"made"``.

    Raises:
        InputError: ``outdir`` is not a batch output folder with ``batch.json``, or its ``evaluation.json`` cannot
            be read (so its conventions are unknown).
    """
    from rlreg.pipelines.evaluate import evaluate_batch

    outdir = Path(outdir)
    batch, entries = load_batch(outdir)
    if not batch:
        raise InputError(f"{outdir}: has no batch.json, so rlreg evaluate cannot score it; rerun rlreg batch on "
                         "this folder, or build the report without evaluation (--no-evaluate)")
    path = outdir / "evaluation" / "evaluation.json"
    if not path.exists():
        evaluate_batch(outdir, progress=progress)
        return "made"
    previous, problem = read_json(path)
    if problem or not isinstance(previous, dict) or not isinstance(previous.get("learn2reg"), bool):
        raise InputError(f"{path}: {problem or 'not an rlreg evaluation'}, so the conventions it was made with are "
                         "unknown; rerun rlreg evaluate on this folder with the options you want, or delete it")
    scored = {str(row.get("pair")) for row in previous.get("pairs") or [] if isinstance(row, dict)}
    made = path.stat().st_mtime
    inputs = [outdir / "batch.json"] + [outdir / e.id / name for e in entries for name in (SIDECAR, ERROR)]
    if scored == {e.id for e in entries} and all(made >= p.stat().st_mtime for p in inputs if p.exists()):
        return "kept"
    evaluate_batch(outdir, learn2reg=previous["learn2reg"], labels=previous.get("selected_labels"), progress=progress)
    return "updated"

