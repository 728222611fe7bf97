"""What the QC report knows about a batch: one :class:`PairEntry` per pair, read from what ``rlreg batch`` wrote,
and the outlier flags.

**Outliers** (amber in the table): a finished pair is flagged when

* its Dice after registration is more than ``outlier_z`` robust standard deviations below the median Dice after of
  the finished pairs (robust SD = 1.4826 x the median absolute deviation); a pair without Dice is judged the same
  way by its LNCC after, against the LNCC after of all finished pairs. This rule needs at least 3 values and a
  non-zero spread, otherwise it flags nothing;
* or more than 1 % of its voxels fold (``qc.folding_percent > 1``);
* or its Dice after is lower than its Dice after the affine stage (the deformable stage made it worse).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlreg.io import InputError
from rlreg.pipelines.batch import read_pair_record
from rlreg.pipelines.register import ERROR_RECORD as ERROR
from rlreg.pipelines.register import SIDECAR

__all__ = ["FOLDING_LIMIT", "MAD_TO_SD", "RESERVED", "PairEntry", "find_outliers", "finite", "load_batch", "read_json"]

FOLDING_LIMIT = 1.0
"""A finished pair with more than this percentage of folding voxels is an outlier."""
MAD_TO_SD = 1.4826
"""Median absolute deviation -> standard deviation of a normal distribution."""
RESERVED = frozenset({"report", "evaluation", "logs"})


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
        return finite(value)

    @property
    def error_message(self) -> str:
        if self.error is None:
            return ""
        return str(self.error.get("error") or "failed (error.json gives no message)")


def finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def read_json(path: Path) -> tuple[Any, str | None]:
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
    batch, problem = read_json(outdir / "batch.json") if (outdir / "batch.json").exists() else ({}, None)
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
    data, _ = read_json(path)
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


