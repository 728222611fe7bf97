"""The tables of ``rlreg evaluate``: what each number means, the per-pair and per-label records, their aggregation
and the files they are written to (``per_pair.csv``, ``per_label.csv``, ``evaluation.json``).

The scoring itself is :mod:`rlreg.pipelines.evaluate`; the metrics are :mod:`rlreg.metrics`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rlreg import __version__
from rlreg.io import atomic_output
from rlreg.metrics.learn2reg import surface_distance_module

__all__ = [
    "CONVENTIONS",
    "HD95_FALLBACK",
    "METRICS",
    "PER_LABEL_COLUMNS",
    "Evaluation",
    "LabelSummary",
    "PairEvaluation",
    "PairScores",
    "Status",
    "aggregate",
    "conventions_for",
    "per_label_summary",
    "write_evaluation",
]

Status = Literal["done", "failed", "unfinished", "todo"]
"""A pair's outcome: scored (``done``), ``failed`` (registration or evaluation), ``unfinished``, ``todo``."""

PER_LABEL_COLUMNS = ("label", "n_pairs", "dice_mean", "dice_sd", "dice_median", "hd95_mean", "hd95_median")
METRICS = ("dice_mean", "hd95_mean", "sdlogj", "folding_percent", "tre_before_mm", "tre_after_mm")
WORSE_IS_HIGHER_L2R = ("sdlogj", "folding_percent", "tre_before_mm", "tre_after_mm")
"""Aggregated by Learn2Reg's 70% quantile (its script: sdlogj and tre; folding is rlreg's addition). Dice and HD95
get the 30% quantile, as in the script (for HD95 that is the better tail: reproduced as it is)."""

CONVENTIONS: dict[str, dict[str, str]] = {
    "rlreg": {
        "labels": "Dice and HD95 per label of the fixed label map vs the moving label map on the fixed grid: a batch "
                  "uses <pair>/warped_seg.nii.gz as rlreg register wrote it (label-safe resampling); --fields warps "
                  "the moving labels label-safely (rlreg.spatial.warp mode 'label'). Default labels: every non-zero "
                  "value of either map",
        "dice": "2|A∩B|/(|A|+|B|); NaN when the label is in neither map (not scored), 0 when in one only; the pair "
                "value is the mean over scored labels",
        "hd95": "millimetres (fixed spacing): symmetric 95th-percentile surface distance, MONAI's definition "
                "(rlreg.metrics.hd95); the pair value is the mean over labels with a finite value (a label lost "
                "entirely has HD95 inf and Dice 0)",
        "jacobian": "J = Jacobian determinant of the total map p -> p + u(p) on the whole fixed grid (a batch reads "
                    "jacdet.nii.gz), no offset; sdlogj = sd(log(clip(J, 1e-9, 1e9))) (ddof 1); folding_percent = "
                    "100 * fraction of voxels with J <= 0",
        "tre": "keypoint CSVs: voxel coordinates i,j,k (nibabel/ITK index order), comma-separated, no header, rows "
               "correspond. Fixed keypoint -> LPS point p, moving keypoint -> q (each image's geometry); "
               "TRE = ||p + u(p) - q|| mm with u the LPS-mm field read linearly at p; before = ||p - q|| (identity "
               "map, world coordinates); the pair value is the mean over keypoints",
        "aggregate": "per metric over scored pairs with a finite value: n, mean, sd (ddof 1), median",
    },
    "learn2reg": {
        "reference": "MDL-UzL/L2R evaluation/evaluation.py (eval version 2.0) and evaluation/utils.py @ 8847509",
        "field": "voxel displacement on the fixed grid mapping a fixed voxel index to a moving voxel index "
                 "(Learn2Reg disp_*.nii.gz as given; an ITK field is converted, which is what rlreg register "
                 "--format l2r writes)",
        "labels": "moving labels warped by scipy map_coordinates(order=0) of identity + disp; default labels: every "
                  "non-zero value of the fixed or moving map",
        "dice": "L2R compute_dice: NaN when the label is absent from the fixed or the (unwarped) moving map; the "
                "pair value is the nan-mean",
        "hd95": "VOXELS (spacing = ones, as L2R): DeepMind surface-distance's compute_robust_hausdorff(..., 95) of "
                "compute_surface_distances(fixed == l, warped == l, ones), the package L2R calls; NaN as for Dice; "
                "the pair value is the nan-mean (inf when a label is lost, as in L2R)",
        "jacobian": "L2R jacobian_determinant: central differences, zero padding, 2 voxels cropped per side; "
                    "sdlogj = std(log(clip(J + 3, 1e-9, 1e9))) (ddof 0; the '+3' is L2R's quirk, about a quarter of "
                    "the plain SDlogJ); num_foldings = count of clip(J + 3) <= 0, always 0 (L2R's definition, "
                    "reproduced); folding_percent = 100 * fraction of the cropped voxels with J <= 0 (rlreg's "
                    "addition)",
        "tre": "L2R compute_tre: disp read at the fixed keypoints by map_coordinates (cubic, order 3, zero "
               "outside), ||(kp_fixed + disp - kp_moving) * spacing_moving|| mm; before: disp = 0; the pair value is "
               "the mean over keypoints",
        "aggregate": "per metric over scored pairs (NaN and inf propagate, as in L2R): n, mean, std (ddof 0), q30 "
                     "(30% quantile) for dice/hd95, q70 for sdlogj/folding/tre",
    },
}


HD95_FALLBACK = ("VOXELS (spacing = ones, as L2R), but by MONAI's definition (rlreg.metrics.hd95) because the "
                  "surface-distance package that L2R calls is not installed (pip install surface-distance): on "
                  "brain labels the L2R values are about 0.4 voxel lower; NaN as for Dice; the pair value is the "
                  "nan-mean (inf when a label is lost, as in L2R)")


def conventions_for(learn2reg: bool) -> dict[str, str]:
    """What every number means under rlreg's or Learn2Reg's conventions (HD95 notes a missing surface-distance)."""
    if not learn2reg:
        return dict(CONVENTIONS["rlreg"])
    out = dict(CONVENTIONS["learn2reg"])
    if surface_distance_module() is None:
        out["hd95"] = HD95_FALLBACK
    return out


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _finite(value: Any) -> Any:
    """JSON-safe copy: NaN and inf become ``None`` (strict JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass
class PairScores:
    """What :func:`evaluate` measures for one pair (``None`` = not measured)."""

    dice_mean: float | None = None
    hd95_mean: float | None = None
    sdlogj: float | None = None
    folding_percent: float | None = None
    num_foldings: float | None = None
    """Learn2Reg's ``num_foldings`` (``learn2reg`` only; always 0: see ``rlreg.metrics.Learn2RegJacobianScores``)."""
    tre_before_mm: float | None = None
    tre_after_mm: float | None = None
    n_keypoints: int | None = None
    n_labels: int = 0
    """Labels scored (Dice not NaN)."""
    labels: dict[int, dict[str, float | None]] = field(default_factory=dict)
    """``{label: {"dice": x, "hd95": y}}`` for every label considered (NaN when not scored)."""


@dataclass(kw_only=True)
class PairEvaluation(PairScores):
    """One row of ``per_pair.csv`` (and of ``evaluation.json["pairs"]``, which adds the per-label scores).

    ``hd95_mean`` is in mm with rlreg's conventions and in voxels with ``learn2reg`` (the CSV column is named
    ``hd95_mean_mm`` or ``hd95_mean_vox`` accordingly). ``None`` = not measured (no labels, no keypoints, not
    scored); ``NaN``/``inf`` are real results (written as ``nan``/``inf`` in CSV and ``null`` in JSON).
    """

    pair: str
    status: Status
    fixed: str | None = None
    moving: str | None = None
    error: str | None = None
    field: str | None = None
    """The displacement field that was scored."""
    seconds: float | None = None
    """Time to score this pair."""
    registration_seconds: float | None = None
    """Batch only: ``rlreg.json`` ``seconds.total`` of the registration."""

    @property
    def scored(self) -> bool:
        return self.status == "done"


@dataclass
class LabelSummary:
    """One row of ``per_label.csv``: a label's scores over the scored pairs where it was scored."""

    label: int
    n_pairs: int
    dice_mean: float | None
    dice_sd: float | None
    dice_median: float | None
    hd95_mean: float | None
    hd95_median: float | None


@dataclass
class Evaluation:
    """What ``rlreg evaluate`` measured and wrote.

    Attributes:
        input: the batch directory or pair list evaluated.
        mode: ``"batch"`` or ``"fields"``.
        learn2reg: whether Learn2Reg's conventions were used.
        conventions: what every number means (units, definitions), as written to ``evaluation.json``.
        pairs: one row per pair, in input order.
        labels: one row per label seen in any scored pair, ascending.
        aggregate: ``{metric: {"n": ..., "mean": ..., ...}}`` (keys: see ``conventions["aggregate"]``), metric names
            as the ``per_pair.csv`` columns.
        outputs: ``{"per_pair": path, "per_label": path, "evaluation": path}``.
        selected_labels: the label values asked for (``--labels``), ``None`` for every label present; recorded
            beside ``learn2reg`` so that a later run (``rlreg report``) can redo the evaluation with the same settings.
    """

    input: Path
    mode: Literal["batch", "fields"]
    learn2reg: bool
    conventions: dict[str, str]
    pairs: list[PairEvaluation]
    labels: list[LabelSummary]
    aggregate: dict[str, dict[str, float | None]]
    outputs: dict[str, Path] = field(default_factory=dict)
    selected_labels: list[int] | None = None

    @property
    def hd95_column(self) -> str:
        return "hd95_mean_vox" if self.learn2reg else "hd95_mean_mm"

    @property
    def per_pair_columns(self) -> tuple[str, ...]:
        return ("pair", "status", "dice_mean", self.hd95_column, "sdlogj", "folding_percent", "tre_before_mm",
                "tre_after_mm", "n_labels", "error")

    def counts(self) -> dict[str, int]:
        """Pairs per outcome: ``scored``, ``failed`` (registration or evaluation), ``unfinished``, ``todo``."""
        out = {"scored": 0, "failed": 0, "unfinished": 0, "todo": 0}
        for row in self.pairs:
            out["scored" if row.scored else row.status] += 1
        return out

    def summary_lines(self) -> list[str]:
        """A short human summary: counts, the aggregate of each metric, failures, and where the files are."""
        counts = self.counts()
        style = "Learn2Reg conventions (HD95 in voxels, SDlogJ of J+3)" if self.learn2reg else "rlreg conventions"
        lines = [f"Evaluated {len(self.pairs)} pairs of {self.input}: "
                 + ", ".join(f"{n} {k}" for k, n in counts.items() if n) + f" [{style}]"]
        spread = "std" if self.learn2reg else "sd"
        names = {"dice_mean": "Dice", "hd95_mean": "HD95 " + ("vox" if self.learn2reg else "mm"), "sdlogj": "SDlogJ",
                 "folding_percent": "folding %", "tre_before_mm": "TRE before mm", "tre_after_mm": "TRE after mm"}
        for metric in METRICS:
            key = self.hd95_column if metric == "hd95_mean" else metric
            agg = self.aggregate.get(key)
            if not agg or not agg.get("n"):
                continue
            third = ("q70" if metric in WORSE_IS_HIGHER_L2R else "q30") if self.learn2reg else "median"
            lines.append(f"  {names[metric]:<14} {_fmt(agg.get('mean'))} ± {_fmt(agg.get(spread))}  "
                         f"({third} {_fmt(agg.get(third))}, {agg['n']} pairs)")
        if self.learn2reg and self.conventions.get("hd95") == HD95_FALLBACK:
            lines.append("  note: HD95 by MONAI's definition; pip install surface-distance for Learn2Reg's own HD95")
        failed = [row for row in self.pairs if row.error]
        for row in failed[:5]:
            lines.append(f"  {row.status}: {row.pair}: {row.error}")
        if len(failed) > 5:
            lines.append(f"  ... and {len(failed) - 5} more failures (see per_pair.csv)")
        if self.outputs:
            lines.append("Written: " + ", ".join(str(p) for p in self.outputs.values()))
        return lines

    def to_json(self) -> dict[str, Any]:
        """The ``evaluation.json`` document (non-finite numbers become ``null``)."""
        pairs = []
        for row in self.pairs:
            item = {"pair": row.pair, "status": row.status, **asdict(row)}
            item["labels"] = {str(k): v for k, v in row.labels.items()}
            item[self.hd95_column] = item.pop("hd95_mean")
            if not self.learn2reg:
                item.pop("num_foldings")
            pairs.append(item)
        return _finite({
            "tool": "rlreg", "version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "input": str(self.input), "mode": self.mode, "learn2reg": self.learn2reg,
            "selected_labels": self.selected_labels,
            "conventions": self.conventions, "counts": self.counts(), "aggregate": self.aggregate,
            "per_label": [asdict(row) for row in self.labels], "pairs": pairs,
        })


# ---------------------------------------------------------------------------------------------------- aggregation
def aggregate(rows: list[PairEvaluation], learn2reg: bool, *, hd95_column: str) -> dict[str, dict[str, float | None]]:
    """Per metric over the scored pairs: ``n, mean, sd, median`` (rlreg) or ``n, mean, std, q30/q70`` (Learn2Reg)."""
    out: dict[str, dict[str, float | None]] = {}
    for metric in METRICS:
        values = np.array([getattr(r, metric) for r in rows if r.scored and getattr(r, metric) is not None],
                          dtype=np.float64)
        if values.size == 0:
            continue
        key = hd95_column if metric == "hd95_mean" else metric
        if learn2reg:  # L2R evaluation.py: np.mean, np.std (ddof 0), np.quantile; NaN/inf propagate
            level = 0.7 if metric in WORSE_IS_HIGHER_L2R else 0.3
            with warnings.catch_warnings(), np.errstate(invalid="ignore"):
                warnings.simplefilter("ignore", RuntimeWarning)
                out[key] = {"n": values.size, "mean": float(values.mean()), "std": float(values.std()),
                            f"q{round(level * 100)}": float(np.quantile(values, level))}
        else:
            finite = values[np.isfinite(values)]
            out[key] = {"n": int(finite.size),
                        "mean": float(finite.mean()) if finite.size else None,
                        "sd": float(finite.std(ddof=1)) if finite.size > 1 else None,
                        "median": float(np.median(finite)) if finite.size else None}
    return out


def per_label_summary(rows: list[PairEvaluation]) -> list[LabelSummary]:
    """One row per label scored in any pair, ascending: Dice and HD95 over the pairs where it was scored."""
    table: dict[int, list[tuple[float, float | None]]] = {}
    for row in rows:
        if not row.scored:
            continue
        for label, item in row.labels.items():
            dice = item.get("dice")
            if dice is not None and not math.isnan(dice):
                table.setdefault(label, []).append((dice, item.get("hd95")))
    out = []
    for label in sorted(table):
        dices = np.array([d for d, _ in table[label]])
        dist = np.array([h for _, h in table[label] if h is not None and math.isfinite(h)])
        out.append(LabelSummary(
            label=label, n_pairs=int(dices.size), dice_mean=float(dices.mean()),
            dice_sd=float(dices.std(ddof=1)) if dices.size > 1 else None, dice_median=float(np.median(dices)),
            hd95_mean=float(dist.mean()) if dist.size else None,
            hd95_median=float(np.median(dist)) if dist.size else None))
    return out


# ---------------------------------------------------------------------------------------------------- writing
def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else ("nan" if math.isnan(value) else str(value))
    return str(value)


def _write_csv(path: Path, columns: Sequence[str], rows: list[dict[str, Any]]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in columns])
    with atomic_output(path) as tmp:
        tmp.write_text(buffer.getvalue())
    return path


def write_evaluation(evaluation: Evaluation, output: Path) -> None:
    """Write ``per_pair.csv``, ``per_label.csv`` and ``evaluation.json`` into ``output`` (each atomically) and record
    their paths in ``evaluation.outputs``."""
    output.mkdir(parents=True, exist_ok=True)
    pair_rows = []
    for row in evaluation.pairs:
        item = asdict(row)
        item[evaluation.hd95_column] = row.hd95_mean
        pair_rows.append(item)
    evaluation.outputs = {
        "per_pair": _write_csv(output / "per_pair.csv", evaluation.per_pair_columns, pair_rows),
        "per_label": _write_csv(output / "per_label.csv", PER_LABEL_COLUMNS, [asdict(r) for r in evaluation.labels]),
        "evaluation": output / "evaluation.json",
    }
    with atomic_output(evaluation.outputs["evaluation"]) as tmp:
        tmp.write_text(json.dumps(evaluation.to_json(), indent=2, allow_nan=False))
