"""The visual QC report of a batch: ``OUTDIR/report/index.html`` and one page per pair.

The report reads only what ``rlreg batch`` wrote (``batch.json``, each ``<pair-id>/rlreg.json`` or ``error.json``,
the images of each pair) and, when present, ``evaluation/evaluation.json`` from ``rlreg evaluate``. It is a set
of static files that open from disk (``file://``): inline CSS, a small inline script for sorting, relative links,
no network. Layout::

    OUTDIR/report/index.html              sortable table of every pair, summary, flags
    OUTDIR/report/pairs/<pair-id>.html    one page per pair: numbers, method, figures, prev/next links
    OUTDIR/report/img/<pair-id>/*.png     the figures (rlreg.pipelines.qc_figures)

Building again rebuilds every page and figure and removes pages and figures of pairs that are no longer listed.

**Outliers** (amber in the table): a finished pair is flagged when

* its Dice after registration is more than ``outlier_z`` robust standard deviations below the median Dice after of
  the finished pairs (robust SD = 1.4826 x the median absolute deviation); a pair without Dice is judged the same
  way by its LNCC after, against the LNCC after of all finished pairs. This rule needs at least 3 values and a
  non-zero spread, otherwise it flags nothing;
* or more than 1 % of its voxels fold (``qc.folding_percent > 1``);
* or its Dice after is lower than its Dice after the affine stage (the deformable stage made it worse).
"""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from rlreg import __version__
from rlreg.io import InputError, atomic_output
from rlreg.pipelines.batch import read_pair_record
from rlreg.pipelines.register import ERROR_RECORD as ERROR
from rlreg.pipelines.register import SIDECAR

__all__ = ["FOLDING_LIMIT", "PairEntry", "build_report", "evaluation_for_report", "find_outliers", "load_batch"]

FOLDING_LIMIT = 1.0
"""A finished pair with more than this percentage of folding voxels is an outlier."""
MAD_TO_SD = 1.4826
"""Median absolute deviation -> standard deviation of a normal distribution."""
RESERVED = frozenset({"report", "evaluation", "logs"})
Progress = Callable[[str, int, int], None]


@dataclass
class PairEntry:
    """One pair of the batch as the report sees it.

    Attributes:
        index: position in ``batch.json`` (0-based).
        id: pair id (= its folder name under OUTDIR).
        page: file-name stem of its page and figure folder (the id, made safe for file names).
        status: ``done`` (``rlreg.json`` present), ``failed`` (``error.json``) or ``unfinished`` (neither).
        folder: ``OUTDIR/<pair-id>``.
        pair: the pair's entry of ``batch.json`` (paths of its inputs), or ``{}``.
        record: the parsed ``rlreg.json`` of a finished pair.
        error: the parsed ``error.json`` of a failed pair.
        evaluation: the pair's row of ``evaluation.json``, if any.
        outlier: reasons why a finished pair is an outlier (empty: not one).
    """

    index: int
    id: str
    page: str
    status: str
    folder: Path
    pair: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)
    outlier: list[str] = field(default_factory=list)

    @property
    def qc(self) -> dict[str, Any]:
        qc = (self.record or {}).get("qc")
        return qc if isinstance(qc, dict) else {}

    def number(self, key: str) -> float | None:
        """A finite QC number (``qc``, ``seconds_total``, or an ``evaluation.json`` key), else ``None``."""
        if key == "seconds_total":
            seconds = (self.record or {}).get("seconds")
            value = seconds.get("total") if isinstance(seconds, dict) else None
        elif key in ("hd95_mean_mm", "tre_after_mm", "dice_mean"):
            value = self.evaluation.get(key)
        else:
            value = self.qc.get(key)
            if value is None and key == "dice_after":
                value = self.evaluation.get("dice_mean")
        return _finite(value)

    @property
    def error_message(self) -> str:
        if self.error is None:
            return ""
        return str(self.error.get("error") or "failed (error.json gives no message)")


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _read_json(path: Path) -> tuple[Any, str | None]:
    """Parsed JSON, or ``(None, reason)`` when the file is unreadable."""
    try:
        return json.loads(path.read_text()), None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"{path.name} unreadable ({type(err).__name__}: {err})"


def _safe_name(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "pair"
    name, n = base, 1
    while name.lower() in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name.lower())
    return name


# ---------------------------------------------------------------------------------------------------- reading
def load_batch(outdir: Path) -> tuple[dict[str, Any], list[PairEntry]]:
    """The pairs of a batch output folder with their status, records, errors and evaluation rows.

    Pairs come in ``batch.json`` order; without ``batch.json``, every pair folder (one holding ``rlreg.json`` or
    ``error.json``) in name order.

    Returns:
        ``(batch, entries)``: the parsed ``batch.json`` (``{}`` when absent) and one :class:`PairEntry` per pair.

    Raises:
        InputError: ``outdir`` is not a folder, or holds neither ``batch.json`` nor any pair folder.
    """
    outdir = Path(outdir)
    if not outdir.is_dir():
        raise InputError(f"{outdir}: not a directory; give the output folder of rlreg batch")
    batch, problem = _read_json(outdir / "batch.json") if (outdir / "batch.json").exists() else ({}, None)
    if problem or not isinstance(batch, dict):
        raise InputError(f"{outdir / 'batch.json'}: {problem or 'not a JSON object'}; rerun rlreg batch on this "
                         "folder to rewrite it")
    listed = batch.get("pairs") if isinstance(batch.get("pairs"), list) else None
    if listed is None:
        listed = [{"id": p.name} for p in sorted(outdir.iterdir()) if p.is_dir() and p.name not in RESERVED
                  and not p.name.startswith(".") and ((p / SIDECAR).exists() or (p / ERROR).exists())]
        if not listed and (outdir / SIDECAR).is_file():
            raise InputError(f"{outdir}: is the output of one rlreg register run; rlreg report needs a batch "
                             "directory (from rlreg batch); for one run, see its overview.png and rlreg.json")
        if not listed:
            raise InputError(f"{outdir}: holds no batch.json and no pair folders; rlreg report needs the output "
                             "folder of rlreg batch")
    evaluation = _evaluation_rows(outdir / "evaluation" / "evaluation.json")
    taken: set[str] = set()
    entries = []
    for index, pair in enumerate(p for p in listed if isinstance(p, dict) and p.get("id")):
        pair_id = str(pair["id"])
        folder = outdir / pair_id
        entry = PairEntry(index=index, id=pair_id, page=_safe_name(pair_id, taken), status="unfinished",
                          folder=folder, pair=pair, evaluation=evaluation.get(pair_id, {}))
        state = read_pair_record(folder)  # the batch's own reading: a cut rlreg.json is an unfinished pair
        if state.status in ("done", "failed"):
            entry.status, entry.record, entry.error = state.status, state.record, state.error
        entries.append(entry)
    return batch, entries


def _evaluation_rows(path: Path) -> dict[str, dict[str, Any]]:
    """``evaluation.json["pairs"]`` keyed by pair id (``{}`` when the file is absent or malformed)."""
    if not path.is_file():
        return {}
    data, _ = _read_json(path)
    rows = data.get("pairs") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        return {}
    return {str(row["pair"]): row for row in rows if isinstance(row, dict) and row.get("pair") is not None}


# ---------------------------------------------------------------------------------------------------- outliers
def _robust_low(values: dict[str, float], outlier_z: float) -> dict[str, tuple[float, float, float]]:
    """Ids whose value is more than ``outlier_z`` robust SDs below the median -> ``(value, z, median)``."""
    if len(values) < 3:
        return {}
    median = statistics.median(values.values())
    sd = MAD_TO_SD * statistics.median(abs(v - median) for v in values.values())
    if sd <= 0:
        return {}
    return {k: (v, (median - v) / sd, median) for k, v in values.items() if (median - v) / sd > outlier_z}


def find_outliers(entries: Sequence[PairEntry], outlier_z: float = 2.5) -> dict[str, list[str]]:
    """Reasons why each finished pair is an outlier (the rule is in the module docstring); pairs with none are left out.

    Args:
        entries: the batch's pairs; only ``status == "done"`` ones are judged.
        outlier_z: how many robust standard deviations below the median make a low score an outlier.

    Returns:
        pair id -> list of one-line reasons.
    """
    done = [e for e in entries if e.status == "done"]
    reasons: dict[str, list[str]] = {}
    dice = {e.id: v for e in done if (v := e.number("dice_after")) is not None}
    lncc = {e.id: v for e in done if (v := e.number("lncc_after")) is not None}
    low_dice = _robust_low(dice, outlier_z)
    low_lncc = _robust_low(lncc, outlier_z)
    for entry in done:
        found = []
        if entry.id in low_dice:
            value, z, median = low_dice[entry.id]
            found.append(f"Dice after {value:.3f} is {z:.1f} robust SD below the median {median:.3f}")
        elif entry.id not in dice and entry.id in low_lncc:
            value, z, median = low_lncc[entry.id]
            found.append(f"LNCC after {value:.3f} is {z:.1f} robust SD below the median {median:.3f}")
        folding = entry.number("folding_percent")
        if folding is not None and folding > FOLDING_LIMIT:
            found.append(f"folding {folding:.2f} % > {FOLDING_LIMIT:g} %")
        after, affine = entry.number("dice_after"), entry.number("dice_affine")
        if after is not None and affine is not None and after < affine:
            found.append(f"Dice after {after:.3f} < Dice affine {affine:.3f}")
        if found:
            reasons[entry.id] = found
    return reasons


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


def build_report(outdir: Path, progress: Progress | None = None, outlier_z: float = 2.5) -> Path:
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
        figures, notes = _pair_figures(entry, report / "img" / entry.page) if entry.status == "done" else ({}, [])
        if entry.status != "done" and (report / "img" / entry.page).is_dir():
            shutil.rmtree(report / "img" / entry.page)  # figures of an earlier run that finished
        if "thumb" in figures:
            thumbs[entry.id] = f"img/{quote(entry.page)}/{figures['thumb'].name}"
        previous = entries[number - 2] if number > 1 else None
        following = entries[number] if number < len(entries) else None
        page = _pair_page(entry, figures, notes, previous, following, outdir, time.perf_counter() - started)
        _write_text(report / "pairs" / f"{entry.page}.html", page)
        say("report", number, len(entries))
    index = _index_page(outdir, batch, entries, thumbs, has_eval, outlier_z)
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
    previous, problem = _read_json(path)
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


# ---------------------------------------------------------------------------------------------------- figures
def _read(path: Path):
    """``(array in tensor order, Geometry)`` of an image file, without the value checks of a registration input."""
    from rlreg.io import read_image

    image = read_image(path, dtype=None, check_values=False)
    return image.data[0, 0].numpy(), image.geometry


def _input_path(entry: PairEntry, key: str) -> Path | None:
    """An input's path from ``rlreg.json`` (``inputs.<key>.path``), else from ``batch.json``."""
    inputs = (entry.record or {}).get("inputs") or {}
    value = (inputs.get(key) or {}).get("path") if isinstance(inputs.get(key), dict) else None
    value = value or entry.pair.get(key)
    return Path(value) if value else None


def _deformable_part(warp_path: Path, geometry, record: dict[str, Any]) -> np.ndarray:
    """The deformable part ``d`` (LPS mm, ``(ndim, *S)`` float32 on the fixed grid) of ``warp.nii.gz``'s total field.

    ``rlreg register`` composes ``φ(p) = T(p + d(p))`` (``transform.h5``: displacement first, then the affine
    ``T(q) = L q + t``, ``method.affine_matrix_lps``); ``warp.nii.gz`` holds ``u(p) = φ(p) - p``, so
    ``d(p) = L⁻¹ u(p) + (L⁻¹ - I) p - L⁻¹ t``. With ``p = W x + o`` affine in the tensor index ``x``, the last two
    terms are an affine function of ``x``, added axis by axis (no full coordinate grid: 1 mm brains stay cheap).
    Without an affine, ``d = u``.
    """
    from rlreg.transforms import read_transform

    total = read_transform(warp_path, geometry)[0].numpy()
    matrix = (record.get("method") or {}).get("affine_matrix_lps")
    if not matrix:
        return total
    n = geometry.ndim
    affine = np.asarray(matrix, dtype=np.float64)
    inverse = np.linalg.inv(affine[:n, :n])
    world = geometry.index_to_world()
    slope = (inverse - np.eye(n)) @ world[:n, :n]  # mm of d per tensor index step, (channel, tensor axis)
    offset = (inverse - np.eye(n)) @ world[:n, n] - inverse @ affine[:n, n]
    d = np.einsum("ij,j...->i...", inverse.astype(np.float32), total)
    for channel in range(n):
        d[channel] += np.float32(offset[channel])
        for axis, size in enumerate(geometry.size):
            shape = [1] * n
            shape[axis] = size
            d[channel] += (slope[channel, axis] * np.arange(size)).astype(np.float32).reshape(shape)
    return d


def _label_dice(entry: PairEntry) -> tuple[list[str], list[float], str]:
    """Per-label Dice: from ``evaluation.json`` when it has them, else ``warped_seg`` vs the fixed segmentation."""
    labels = entry.evaluation.get("labels")
    if isinstance(labels, dict):
        pairs = [(str(k), _finite(v.get("dice"))) for k, v in labels.items() if isinstance(v, dict)]
        found = [(k, v) for k, v in pairs if v is not None]
        if found:
            return [k for k, _ in found], [v for _, v in found], "evaluation.json"
    fixed_seg = _input_path(entry, "fixed_seg")
    warped_seg = entry.folder / "warped_seg.nii.gz"
    if fixed_seg is None or not fixed_seg.is_file() or not warped_seg.is_file():
        return [], [], ""
    from rlreg.metrics import dice_per_label

    values, labels_ = dice_per_label(_read(warped_seg)[0], _read(fixed_seg)[0])
    keep = ~np.isnan(values.numpy())
    return ([str(int(v)) for v in labels_.numpy()[keep]], [float(v) for v in values.numpy()[keep]],
            "warped_seg.nii.gz vs the fixed segmentation")


FIGURES = {
    "images": "Fixed, moving and warped images: mid planes. The moving image is shown on its own grid, as it is; "
              "fixed and warped share the fixed grid.",
    "checkerboard": "Checkerboard of the fixed and warped images: edges should run on across the tiles.",
    "edges": "Edges of the fixed image (iso-contours) drawn on the warped image.",
    "grid": "The fixed grid moved by the deformable part of the transform (affine removed), over the fixed image: "
            "crossing lines mean folding.",
    "jacobian": "Jacobian determinant of the total map (affine included): blue shrinks, red grows, white keeps "
                "volume; black marks folding (J ≤ 0).",
    "dice": "Dice per label after registration, sorted from worst to best.",
    "steps": "Similarity of the fixed and warped images (LNCC, higher is better) after each step of the agent.",
}


def _pair_figures(entry: PairEntry, folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Draw every figure of a finished pair into ``folder``; a figure whose inputs are missing or unreadable is
    skipped with a note, so one damaged pair never stops the report."""
    from rlreg.pipelines import qc_figures as qf

    figures: dict[str, Path] = {}
    notes: list[str] = []

    def attempt(name: str, draw: Callable[[], Path | None]) -> None:
        try:
            path = draw()
        except Exception as err:  # any failure is reported on the page, not raised
            notes.append(f"{name}: not drawn ({type(err).__name__}: {err})")
            return
        if path is not None:
            figures[name] = path

    loaded: dict[str, Any] = {}

    def volume(name: str, path: Path | None):
        if name not in loaded:
            if path is None or not path.exists():
                raise FileNotFoundError(f"{path or name} not found")
            data, geometry = _read(path)
            loaded[name] = (qf.reorient(data.astype(np.float32), geometry), geometry)
        return loaded[name]

    def images() -> Path:
        rows, windows = {}, {}
        fixed_path = _input_path(entry, "fixed")
        moving_path = _input_path(entry, "moving")
        for name, path in (("fixed", fixed_path), ("moving", moving_path),
                           ("warped", entry.folder / "warped.nii.gz")):
            try:
                rows[name] = volume(name, path)[0]
            except (OSError, InputError, RuntimeError) as err:
                notes.append(f"{name} image: not shown ({err})")
        if "moving" in rows:
            windows["moving"] = windows["warped"] = qf.window(rows["moving"].data)
        return qf.save_images(folder / "images.png", rows, windows=windows)

    def checkerboard() -> Path:
        fixed, warped = volume("fixed", _input_path(entry, "fixed"))[0], volume("warped", entry.folder /
                                                                                 "warped.nii.gz")[0]
        return qf.save_checkerboard(folder / "checkerboard.png", fixed, warped, qf.window(fixed.data),
                                    qf.window(warped.data))

    def edges() -> Path:
        fixed, warped = volume("fixed", _input_path(entry, "fixed"))[0], volume("warped", entry.folder /
                                                                                 "warped.nii.gz")[0]
        return qf.save_edges(folder / "edges.png", fixed, warped, qf.window(warped.data))

    def grid() -> Path:
        fixed, geometry = volume("warped", entry.folder / "warped.nii.gz")
        background = loaded["fixed"][0] if "fixed" in loaded else fixed
        d = _deformable_part(entry.folder / "warp.nii.gz", geometry, entry.record or {})
        return qf.save_grid(folder / "grid.png", qf.reorient(d.astype(np.float32), geometry), background,
                            qf.window(background.data))

    def jacobian() -> Path:
        return qf.save_jacobian(folder / "jacobian.png", volume("jacobian", entry.folder / "jacdet.nii.gz")[0])

    def dice() -> Path | None:
        labels, values, source = _label_dice(entry)
        if not labels:
            return None
        notes.append(f"Dice per label from {source}.")
        return qf.save_dice_bars(folder / "dice.png", labels, values)

    def steps() -> Path | None:
        curve = [s for s in (entry.record or {}).get("steps") or [] if isinstance(s, dict) and "step" in s]
        config = ((entry.record or {}).get("method") or {}).get("config") or {}
        iterations = config.get("iterations") if isinstance(config, dict) else None
        levels = np.cumsum(iterations)[:-1].tolist() if isinstance(iterations, list) and len(iterations) > 1 else []
        return qf.save_steps(folder / "steps.png", curve, levels) if curve else None

    def thumb() -> Path:
        warped = volume("warped", entry.folder / "warped.nii.gz")[0]
        return qf.save_thumbnail(folder / "thumb.png", warped, qf.window(warped.data))

    folder.mkdir(parents=True, exist_ok=True)
    for name, draw in (("images", images), ("checkerboard", checkerboard), ("edges", edges), ("grid", grid),
                       ("jacobian", jacobian), ("dice", dice), ("steps", steps), ("thumb", thumb)):
        attempt(name, draw)
    for stale in folder.glob("*.png"):
        if stale not in figures.values():
            stale.unlink()
    return figures, notes


# ---------------------------------------------------------------------------------------------------- HTML
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


def _index_page(outdir: Path, batch: dict[str, Any], entries: list[PairEntry], thumbs: dict[str, str],
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


def _pair_page(entry: PairEntry, figures: dict[str, Path], notes: list[str], previous: PairEntry | None,
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
              if (path := _input_path(entry, key))]
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
        details.append("<div><h3>Seconds</h3>" + _kv([(k, _e(_fmt(_finite(v), 1))) for k, v in seconds_rec.items()
                                                      if _finite(v) is not None]) + "</div>")
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
