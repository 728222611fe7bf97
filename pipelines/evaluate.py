"""Score registrations: ``rlreg evaluate``, for a batch directory or for "fields plus label maps".

Two inputs, one scoring:

* :func:`evaluate_batch`: a directory written by ``rlreg batch`` (``batch.json`` plus one ``<pair-id>/`` folder per
  pair, each holding the outputs of ``rlreg register``). Finished pairs (``rlreg.json`` present) are scored; failed
  ones (``error.json``), unfinished ones (a folder with neither) and ``todo`` ones (no folder) are listed with their
  status and not scored.
* :func:`evaluate_fields`: a pair list (:func:`rlreg.pipelines.pairs.read_pairs`: CSV/TSV or a Learn2Reg
  ``dataset.json``) and a folder with one displacement field per pair, from any tool: an ITK/ANTs field in LPS mm
  (``<pair-id>/warp.nii.gz`` or ``<pair-id>.nii.gz``) or a Learn2Reg voxel field (``disp_{fix}_{mov}.nii.gz``).
* :func:`evaluate`: the entry point behind the command, which dispatches on the input.

What is measured per pair: Dice and HD95 per label (fixed labels vs moving labels brought to the fixed grid), the
regularity of the map (SDlogJ, % folding) and, when the pair has keypoint CSVs, the target registration error (TRE)
before and after. ``learn2reg=True`` switches every definition to the Learn2Reg challenge evaluation's (voxels for
HD95, the "+3" SDlogJ, nearest-neighbour label warping, cubic TRE sampling, mean/std/30% quantile aggregation); see
``docs/evaluate.md`` and :data:`CONVENTIONS` for the exact statements.

Outputs (each file written atomically): ``per_pair.csv``, ``per_label.csv`` and ``evaluation.json``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage
from torch import Tensor

from rlreg import __version__
from rlreg.export import l2r_name
from rlreg.io import Geometry, InputError, atomic_output, check_same_grid, read_image, read_label_map
from rlreg.metrics import (
    dice_per_label,
    hd95,
    jacobian_scores,
    learn2reg_jacobian_scores,
    learn2reg_tre,
)
from rlreg.pipelines.pairs import Pair, read_pairs
from rlreg.spatial import sample_points, warp
from rlreg.transforms import chain_from_world, read_transform, world_displacement, world_jacobian

__all__ = [
    "CONVENTIONS",
    "PER_LABEL_COLUMNS",
    "Evaluation",
    "LabelSummary",
    "PairEvaluation",
    "PairScores",
    "evaluate",
    "evaluate_batch",
    "evaluate_fields",
    "find_field",
]

Progress = Callable[[str, int, int], None]
Status = Literal["done", "failed", "unfinished", "todo"]

PER_LABEL_COLUMNS = ("label", "n_pairs", "dice_mean", "dice_sd", "dice_median", "hd95_mean", "hd95_median")
_METRICS = ("dice_mean", "hd95_mean", "sdlogj", "folding_percent", "tre_before_mm", "tre_after_mm")
_WORSE_IS_HIGHER_L2R = ("sdlogj", "folding_percent", "tre_before_mm", "tre_after_mm")
"""Aggregated by Learn2Reg's 70% quantile (its script: sdlogj and tre; folding is rlreg's addition). Dice and HD95
get the 30% quantile, as in the script (for HD95 that is the better tail: reproduced as it is)."""
_EVALUATION_DIR = "evaluation"
_BATCH_FILE = "batch.json"
_DONE_FILE = "rlreg.json"

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


_HD95_FALLBACK = ("VOXELS (spacing = ones, as L2R), but by MONAI's definition (rlreg.metrics.hd95) because the "
                  "surface-distance package that L2R calls is not installed (pip install surface-distance): on "
                  "brain labels the L2R values are about 0.4 voxel lower; NaN as for Dice; the pair value is the "
                  "nan-mean (inf when a label is lost, as in L2R)")


def _surface_distance() -> Any | None:
    """DeepMind's ``surface_distance`` module (what Learn2Reg's HD95 uses), or ``None`` when not installed."""
    try:
        import surface_distance
    except ImportError:
        return None
    return surface_distance


def _conventions(learn2reg: bool) -> dict[str, str]:
    if not learn2reg:
        return dict(CONVENTIONS["rlreg"])
    out = dict(CONVENTIONS["learn2reg"])
    if _surface_distance() is None:
        out["hd95"] = _HD95_FALLBACK
    return out


# ---------------------------------------------------------------------------------------------------- results
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
        for metric in _METRICS:
            key = self.hd95_column if metric == "hd95_mean" else metric
            agg = self.aggregate.get(key)
            if not agg or not agg.get("n"):
                continue
            third = ("q70" if metric in _WORSE_IS_HIGHER_L2R else "q30") if self.learn2reg else "median"
            lines.append(f"  {names[metric]:<14} {_fmt(agg.get('mean'))} ± {_fmt(agg.get(spread))}  "
                         f"({third} {_fmt(agg.get(third))}, {agg['n']} pairs)")
        if self.learn2reg and self.conventions.get("hd95") == _HD95_FALLBACK:
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


# ---------------------------------------------------------------------------------------------------- helpers
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


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else type(err).__name__).replace("\n", " ")


def _float(value: Tensor | float | np.floating) -> float:
    return float(value.item() if isinstance(value, Tensor) else value)


def _header_geometry(path: Path) -> Geometry:
    """The grid of an image file from its header alone (no voxels read)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise InputError(f"{path}: not a readable image ({_one_line(err)}); re-run the registration of this pair") \
            from None
    return Geometry(size=tuple(reader.GetSize())[::-1], spacing=tuple(reader.GetSpacing())[::-1],
                    origin=tuple(reader.GetOrigin()), direction=tuple(reader.GetDirection()))


def _read_labels(path: Path, geometry: Geometry, role: str, reference: Path) -> Tensor:
    """A label map ``(1, 1, *S)`` int64 (integer values only), checked to lie on ``geometry``'s grid (that of
    ``reference``): size, spacing, origin and direction."""
    image = read_label_map(path, check_values=False)
    check_same_grid(path, image.geometry, reference, geometry, role)
    return image.data


def _read_keypoints(path: Path, ndim: int) -> np.ndarray:
    """Learn2Reg keypoints ``(P, ndim)``: voxel coordinates in nibabel (= ITK index) order, comma-separated."""
    if not path.is_file():
        raise InputError(f"{path}: keypoint file not found; give a CSV of voxel coordinates i,j,k (no header)")
    try:
        points = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
    except ValueError as err:
        raise InputError(f"{path}: not a keypoint CSV ({_one_line(err)}); give comma-separated voxel coordinates "
                         "i,j,k, one point per row, no header") from None
    if points.shape[1] != ndim:
        raise InputError(f"{path}: has {points.shape[1]} columns; give {ndim} voxel coordinates per row "
                         f"({'i,j,k' if ndim == 3 else 'i,j'}, nibabel index order)")
    return points


def _keypoints(pair: Pair, ndim: int) -> tuple[np.ndarray, np.ndarray] | None:
    if pair.fixed_keypoints is None or pair.moving_keypoints is None:
        return None
    fixed = _read_keypoints(pair.fixed_keypoints, ndim)
    moving = _read_keypoints(pair.moving_keypoints, ndim)
    if fixed.shape != moving.shape:
        raise InputError(f"{pair.moving_keypoints}: has {len(moving)} keypoints but {pair.fixed_keypoints} has "
                         f"{len(fixed)}; rows must correspond one to one")
    return fixed, moving


def _world_points(geometry: Geometry, index_ijk: np.ndarray) -> np.ndarray:
    """LPS mm of voxel coordinates given in ITK/nibabel index order ``(P, ndim)``."""
    matrix = geometry.index_to_world()
    n = geometry.ndim
    tensor_index = index_ijk[:, ::-1]
    return tensor_index @ matrix[:n, :n].T + matrix[:n, n]


def _l2r_to_chain(disp: np.ndarray) -> Tensor:
    """A Learn2Reg ``(X, Y[, Z], ndim)`` voxel field (nibabel order) -> rlreg chain ``(1, ndim, *S)`` float64.

    The inverse of :func:`rlreg.export.write_l2r`: spatial axes and components are both reversed to tensor order.
    """
    ndim = disp.ndim - 1
    tensor_axes = np.moveaxis(disp, range(ndim), range(ndim)[::-1])
    chain = np.moveaxis(tensor_axes, -1, 0)[::-1]
    return torch.from_numpy(np.ascontiguousarray(chain, dtype=np.float64))[None]


def _read_l2r_field(path: Path, fixed: Geometry) -> Tensor:
    """Read a Learn2Reg field (``.nii.gz`` or single-array ``.npz``) on the fixed grid as a chain."""
    try:
        if path.name.lower().endswith(".npz"):
            with np.load(path, allow_pickle=False) as archive:
                if len(archive.files) != 1:
                    raise InputError(f"{path}: holds {len(archive.files)} arrays; a Learn2Reg .npz field holds one")
                disp = np.asarray(archive[archive.files[0]], dtype=np.float64)
        else:
            import nibabel as nib

            disp = np.asarray(cast("nib.Nifti1Image", nib.load(str(path))).get_fdata(dtype=np.float64))
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable Learn2Reg field ({_one_line(err)}); give a (X,Y,Z,3) voxel "
                         "displacement as .nii.gz or .npz") from None
    expected = (*fixed.size[::-1], fixed.ndim)
    if disp.shape != expected:
        raise InputError(f"{path}: field of shape {disp.shape}, expected {expected} (the fixed grid in nibabel "
                         f"order, then {fixed.ndim} voxel components); give the field computed for this fixed image")
    return _l2r_to_chain(disp)


def find_field(fields: Path, pair: Pair) -> tuple[Path, Literal["itk", "l2r"]]:
    """The field of ``pair`` in ``fields`` and its kind, trying in order ``<pair-id>/warp.nii.gz``,
    ``<pair-id>.nii.gz`` (ITK/ANTs, LPS mm), then Learn2Reg's ``disp_{fix}_{mov}.nii.gz`` and ``.npz`` (voxels).

    Raises:
        InputError: none of them exists (one line, naming what was looked for).
    """
    l2r = l2r_name(pair.fixed, pair.moving)
    candidates: list[tuple[Path, Literal["itk", "l2r"]]] = [
        (fields / pair.id / "warp.nii.gz", "itk"), (fields / f"{pair.id}.nii.gz", "itk"), (fields / l2r, "l2r"),
        (fields / (l2r[: -len(".nii.gz")] + ".npz"), "l2r")]
    for path, kind in candidates:
        if path.is_file():
            return path, kind
    raise InputError(f"{fields}: no field for pair {pair.id}; looked for {pair.id}/warp.nii.gz, {pair.id}.nii.gz "
                     f"and {l2r} (or .npz)")


# ---------------------------------------------------------------------------------------------------- scoring
def _label_scores(scores: PairScores, warped: Tensor, fixed_seg: Tensor, spacing: Sequence[float],
                  labels: Sequence[int] | None, learn2reg: bool, moving_seg: Tensor | None = None) -> None:
    """Dice and HD95 per label into ``scores`` (rlreg or Learn2Reg rules, see :data:`CONVENTIONS`)."""
    if learn2reg:
        assert moving_seg is not None
        if labels is None:
            values = torch.unique(torch.cat([fixed_seg.flatten(), moving_seg.flatten()]))
            labels = [int(v) for v in values if v != 0]
        fixed_has = {int(v) for v in torch.unique(fixed_seg)}
        moving_has = {int(v) for v in torch.unique(moving_seg)}
    dice = dice_per_label(warped, fixed_seg, labels)
    lab = [int(v) for v in dice.labels]
    dice_values = dice.values.double().numpy()
    surface = _surface_distance() if learn2reg else None
    if surface is None:
        dist = hd95(warped, fixed_seg, spacing, labels=lab).values.double().numpy()
    else:  # what L2R's compute_hd95 calls, for the labels it scores
        f, w = fixed_seg[0, 0].numpy().T, warped[0, 0].numpy().T  # nibabel axis order, as L2R loads them
        ones = np.ones(f.ndim)

        def robust_hausdorff(v: int) -> float:
            if v not in fixed_has or v not in moving_has:
                return np.nan
            if not (w == v).any():  # a lost label: inf, as surface-distance gives (its code for it fails on numpy 2)
                return np.inf
            with warnings.catch_warnings():  # it imports from scipy namespaces that SciPy has deprecated
                warnings.simplefilter("ignore", DeprecationWarning)
                distances = surface.compute_surface_distances(f == v, w == v, ones)
            return surface.compute_robust_hausdorff(distances, 95.0)

        dist = np.array([robust_hausdorff(v) for v in lab], dtype=np.float64)
    if learn2reg:
        # L2R compute_dice / compute_hd95: NaN unless the label is in both the fixed and the (unwarped) moving map.
        absent = np.array([v not in fixed_has or v not in moving_has for v in lab], dtype=bool)
        dice_values = np.where(absent, np.nan, dice_values)
        dist = np.where(absent, np.nan, dist)
    scores.labels = {v: {"dice": float(d), "hd95": float(h)} for v, d, h in zip(lab, dice_values, dist, strict=True)}
    scored = ~np.isnan(dice_values)
    scores.n_labels = int(scored.sum())
    if not scored.any():
        return
    scores.dice_mean = float(np.mean(dice_values[scored]))
    if learn2reg:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            scores.hd95_mean = float(np.nanmean(dist))
    else:
        finite = np.isfinite(dist)
        scores.hd95_mean = float(np.mean(dist[finite])) if finite.any() else float("inf")


def _score_rlreg(fixed: Geometry, moving: Geometry | None, world: Callable[[], Tensor], jacobian: Tensor,
                 fixed_seg: Tensor | None, warped_seg: Tensor | None, keypoints: tuple[np.ndarray, np.ndarray] | None,
                 labels: Sequence[int] | None) -> PairScores:
    """rlreg's conventions: mm, world TRE, J of the total map without offset.

    ``world`` returns the ``(1, ndim, *S)`` LPS-mm field on the fixed grid (called only for TRE).
    """
    scores = PairScores()
    if fixed_seg is not None and warped_seg is not None:
        _label_scores(scores, warped_seg, fixed_seg, fixed.spacing, labels, learn2reg=False)
    regularity = jacobian_scores(jacobian)
    scores.sdlogj = _float(regularity.sdlogj[0])
    scores.folding_percent = _float(regularity.folding_percent[0])
    if keypoints is not None:
        assert moving is not None
        fixed_kp, moving_kp = keypoints
        p = _world_points(fixed, fixed_kp)
        q = _world_points(moving, moving_kp)
        u = sample_points(world().double(), torch.from_numpy(np.ascontiguousarray(fixed_kp[:, ::-1]))).numpy()
        scores.tre_before_mm = float(np.linalg.norm(p - q, axis=1).mean())
        scores.tre_after_mm = float(np.linalg.norm(p + u - q, axis=1).mean())
        scores.n_keypoints = len(fixed_kp)
    return scores


def _l2r_warp_labels(moving_seg: Tensor, chain: Tensor) -> Tensor:
    """Learn2Reg's label warping: ``map_coordinates(moving, identity + disp, order=0)`` (zero outside)."""
    field = chain[0].double().numpy()
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in field.shape[1:]], indexing="ij"))
    warped = ndimage.map_coordinates(moving_seg[0, 0].numpy(), grid + field, order=0)
    return torch.from_numpy(warped)[None, None]


def _score_learn2reg(fixed: Geometry, moving: Geometry, chain: Tensor, fixed_seg: Tensor | None,
                     moving_seg: Tensor | None, keypoints: tuple[np.ndarray, np.ndarray] | None,
                     labels: Sequence[int] | None) -> PairScores:
    """Learn2Reg's conventions on the voxel chain (fixed tensor index -> moving tensor index).

    Every Learn2Reg formula is invariant under the common reversal of spatial axes and components, so it is
    applied in rlreg's tensor order directly (keypoints and spacings reversed to match).
    """
    scores = PairScores()
    chain = chain.double()
    if fixed_seg is not None and moving_seg is not None:
        warped = _l2r_warp_labels(moving_seg, chain)
        _label_scores(scores, warped, fixed_seg, [1.0] * fixed.ndim, labels, learn2reg=True, moving_seg=moving_seg)
    regularity = learn2reg_jacobian_scores(chain)
    scores.sdlogj = _float(regularity.sdlogj[0])
    scores.num_foldings = _float(regularity.num_foldings[0])
    scores.folding_percent = _float(regularity.folding_percent[0])
    if keypoints is not None:
        fixed_kp, moving_kp = (np.ascontiguousarray(k[:, ::-1]) for k in keypoints)
        spacing = moving.spacing
        scores.tre_after_mm = float(learn2reg_tre(fixed_kp, moving_kp, chain[0], spacing).mean())
        scores.tre_before_mm = float(learn2reg_tre(fixed_kp, moving_kp, torch.zeros_like(chain[0]), spacing).mean())
        scores.n_keypoints = len(fixed_kp)
    return scores


# ---------------------------------------------------------------------------------------------------- batch pairs
def _batch_status(folder: Path) -> tuple[Status, str | None]:
    """The states of ``rlreg batch`` (:func:`rlreg.pipelines.batch.read_pair_record`) and a failure's message."""
    from rlreg.pipelines.batch import read_pair_record

    state = read_pair_record(folder)
    return state.status, state.message  # type: ignore[return-value]


def _score_batch_pair(pair: Pair, folder: Path, learn2reg: bool, labels: Sequence[int] | None) -> PairScores:
    warp_path = folder / "warp.nii.gz"
    if not warp_path.is_file():
        raise InputError(f"{warp_path}: missing although {_DONE_FILE} is there; re-run this pair")
    fixed = _header_geometry(warp_path)
    keypoints = _keypoints(pair, fixed.ndim)

    def moving_geometry() -> Geometry:
        return read_image(pair.moving, check_values=False).geometry

    def world() -> Tensor:
        return read_transform(warp_path, fixed)

    if learn2reg:
        moving = moving_geometry()
        chain = chain_from_world(world().double(), fixed, moving)
        fixed_seg = moving_seg = None
        if pair.fixed_seg is not None and pair.moving_seg is not None:
            fixed_seg = _read_labels(pair.fixed_seg, fixed, "fixed label map", pair.fixed)
            moving_seg = _read_labels(pair.moving_seg, moving, "moving label map", pair.moving)
        return _score_learn2reg(fixed, moving, chain, fixed_seg, moving_seg, keypoints, labels)
    jac_path = folder / "jacdet.nii.gz"
    jac = read_image(jac_path, check_values=False)
    if jac.geometry.size != fixed.size:
        raise InputError(f"{jac_path}: grid differs from warp.nii.gz; re-run this pair")
    fixed_seg = warped_seg = None
    warped_path = folder / "warped_seg.nii.gz"
    if pair.fixed_seg is not None and warped_path.is_file():
        fixed_seg = _read_labels(pair.fixed_seg, fixed, "fixed label map", pair.fixed)
        warped_seg = _read_labels(warped_path, fixed, "warped label map", warp_path)
    moving_grid = moving_geometry() if keypoints is not None else None
    return _score_rlreg(fixed, moving_grid, world, jac.data, fixed_seg, warped_seg, keypoints, labels)


def _registration_seconds(folder: Path) -> float | None:
    try:
        return float(json.loads((folder / _DONE_FILE).read_text())["seconds"]["total"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------------------------------------------- field pairs
def _score_field_pair(pair: Pair, fields: Path, learn2reg: bool,
                      labels: Sequence[int] | None) -> tuple[PairScores, Path]:
    path, kind = find_field(fields, pair)
    fixed = read_image(pair.fixed, check_values=False).geometry
    moving = read_image(pair.moving, check_values=False).geometry
    if fixed.ndim != moving.ndim:
        raise InputError(f"{pair.moving}: is {moving.ndim}-D but the fixed image is {fixed.ndim}-D")
    keypoints = _keypoints(pair, fixed.ndim)
    if kind == "l2r":
        chain = _read_l2r_field(path, fixed)
        world = world_displacement(chain, fixed, moving)
    else:
        world = read_transform(path, fixed).double()
        chain = chain_from_world(world, fixed, moving)
    fixed_seg = moving_seg = None
    if pair.fixed_seg is not None and pair.moving_seg is not None:
        fixed_seg = _read_labels(pair.fixed_seg, fixed, "fixed label map", pair.fixed)
        moving_seg = _read_labels(pair.moving_seg, moving, "moving label map", pair.moving)
    if learn2reg:
        return _score_learn2reg(fixed, moving, chain, fixed_seg, moving_seg, keypoints, labels), path
    warped = None if moving_seg is None else warp(moving_seg, chain.float(), "label")
    jac = world_jacobian(world, fixed)
    return _score_rlreg(fixed, moving, lambda: world, jac, fixed_seg, warped, keypoints, labels), path


# ---------------------------------------------------------------------------------------------------- aggregation
def _aggregate(rows: list[PairEvaluation], learn2reg: bool, hd95_column: str) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for metric in _METRICS:
        values = np.array([getattr(r, metric) for r in rows if r.scored and getattr(r, metric) is not None],
                          dtype=np.float64)
        if values.size == 0:
            continue
        key = hd95_column if metric == "hd95_mean" else metric
        if learn2reg:  # L2R evaluation.py: np.mean, np.std (ddof 0), np.quantile; NaN/inf propagate
            level = 0.7 if metric in _WORSE_IS_HIGHER_L2R else 0.3
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


def _per_label(rows: list[PairEvaluation]) -> list[LabelSummary]:
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


def _write(evaluation: Evaluation, output: Path) -> None:
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


def _finish(source: Path, mode: Literal["batch", "fields"], learn2reg: bool, rows: list[PairEvaluation],
            output: Path, selected_labels: list[int] | None = None) -> Evaluation:
    evaluation = Evaluation(input=source, mode=mode, learn2reg=learn2reg, conventions=_conventions(learn2reg),
                            pairs=rows,
                            labels=_per_label(rows), aggregate={}, selected_labels=selected_labels)
    evaluation.aggregate = _aggregate(rows, learn2reg, evaluation.hd95_column)
    _write(evaluation, output)
    return evaluation


_PAIR_ERRORS = (InputError, ValueError, OSError, RuntimeError, KeyError)
"""What fails one pair only (missing or unreadable files, wrong grids); anything else is a bug and propagates."""


def _run(pair: Pair, score: Callable[[], PairScores | tuple[PairScores, Path]], prefix: str = "") -> PairEvaluation:
    """Score one pair; a failure fails this pair only (status ``failed``, ``prefix`` + the one-line error)."""
    row = PairEvaluation(pair=pair.id, status="done", fixed=str(pair.fixed), moving=str(pair.moving))
    started = time.perf_counter()
    try:
        result = score()
    except _PAIR_ERRORS as err:
        row.status, row.error = "failed", prefix + _one_line(err)
        return row
    scores, row.field = (result[0], str(result[1])) if isinstance(result, tuple) else (result, None)
    for name, value in asdict(scores).items():
        setattr(row, name, value)
    row.labels = scores.labels
    row.seconds = time.perf_counter() - started
    return row


# ---------------------------------------------------------------------------------------------------- entry points
def _check_labels(labels: Sequence[int] | None) -> list[int] | None:
    if labels is None:
        return None
    out = [int(v) for v in labels]
    if not out:
        raise InputError("--labels: empty; give label values such as --labels 1,2,3, or omit it to score all labels")
    return out


def evaluate_batch(outdir: Path, learn2reg: bool = False, labels: Sequence[int] | None = None,
                   progress: Progress | None = None, output: Path | None = None) -> Evaluation:
    """Score every finished pair of a batch directory (the ``rlreg batch`` contract) and write the tables.

    Args:
        outdir: the batch output directory (holds ``batch.json``).
        learn2reg: use the Learn2Reg challenge's conventions instead of rlreg's (see :data:`CONVENTIONS`).
        labels: label values to score (default: every label present, see :data:`CONVENTIONS`).
        progress: optional ``callable(stage, done, total)``, called with stage ``"evaluate"`` per pair.
        output: where to write ``per_pair.csv``, ``per_label.csv`` and ``evaluation.json`` (default
            ``OUTDIR/evaluation/``).

    Raises:
        InputError: ``outdir`` has no readable ``batch.json`` (one line, names the file and the fix).
    """
    outdir = Path(outdir)
    labels = _check_labels(labels)
    batch_file = outdir / _BATCH_FILE
    if not batch_file.is_file():
        raise InputError(f"{outdir}: has no {_BATCH_FILE}; give a directory written by rlreg batch, or a pair list "
                         "with --fields DIR")
    try:
        pairs = [Pair.from_json(item) for item in json.loads(batch_file.read_text())["pairs"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise InputError(f"{batch_file}: not a readable rlreg batch file ({_one_line(err)}); re-run rlreg batch "
                         "to rewrite it") from None
    say = progress or (lambda *_: None)
    say("evaluate", 0, len(pairs))
    rows = []
    for index, pair in enumerate(pairs, start=1):
        folder = outdir / pair.id
        status, message = _batch_status(folder)
        if status == "done":
            row = _run(pair, partial(_score_batch_pair, pair, folder, learn2reg, labels), "evaluation: ")
            row.field = str(folder / "warp.nii.gz")
            row.registration_seconds = _registration_seconds(folder)
        else:
            row = PairEvaluation(pair=pair.id, status=status, fixed=str(pair.fixed), moving=str(pair.moving),
                                 error=message)
        rows.append(row)
        say("evaluate", index, len(pairs))
    return _finish(outdir, "batch", learn2reg, rows, Path(output) if output else outdir / _EVALUATION_DIR, labels)


def evaluate_fields(source: str | Path, fields: Path, output: Path, learn2reg: bool = False,
                    subset: str | None = None, labels: Sequence[int] | None = None,
                    progress: Progress | None = None) -> Evaluation:
    """Score displacement fields from any tool against the label maps and keypoints of a pair list.

    Args:
        source: pair list read by :func:`rlreg.pipelines.pairs.read_pairs` (CSV/TSV or Learn2Reg ``dataset.json``).
        fields: folder with one field per pair (see :func:`find_field`). ITK fields are LPS-mm pull-back
            displacements (``rlreg.transforms.read_transform``: vector NIfTI/NRRD/MHA or ``.h5``); Learn2Reg fields
            are ``(X, Y, Z, 3)`` voxel displacements in nibabel order on the fixed grid, read as
            ``moving(x + u(x))``.
        output: folder for ``per_pair.csv``, ``per_label.csv`` and ``evaluation.json``.
        learn2reg: use the Learn2Reg challenge's conventions (see :data:`CONVENTIONS`).
        subset: Learn2Reg pair list to use (``registration_val``, ...; default: the first non-empty).
        labels: label values to score (default: every label present).
        progress: optional ``callable(stage, done, total)``, called with stage ``"evaluate"`` per pair.

    A pair whose field is missing or unreadable fails alone (status ``failed`` with a one-line error).

    Raises:
        InputError: the pair list or the fields folder is unusable (one line, names the file and the fix).
    """
    fields = Path(fields)
    labels = _check_labels(labels)
    if not fields.is_dir():
        raise InputError(f"{fields}: --fields must be a folder holding one displacement field per pair "
                         "(<pair-id>/warp.nii.gz, <pair-id>.nii.gz or disp_{fix}_{mov}.nii.gz)")
    pairs = read_pairs(source, subset=subset)
    say = progress or (lambda *_: None)
    say("evaluate", 0, len(pairs))
    rows = []
    for index, pair in enumerate(pairs, start=1):
        rows.append(_run(pair, partial(_score_field_pair, pair, fields, learn2reg, labels)))
        say("evaluate", index, len(pairs))
    return _finish(Path(source), "fields", learn2reg, rows, Path(output), labels)


def evaluate(input: Path, fields: Path | None = None, output: Path | None = None, learn2reg: bool = False,
             labels: Sequence[int] | None = None, subset: str | None = None,
             progress: Progress | None = None) -> Evaluation:
    """``rlreg evaluate INPUT``: a batch directory -> :func:`evaluate_batch`; a pair list with ``fields`` ->
    :func:`evaluate_fields`.

    Args:
        input: a batch output directory (with ``batch.json``) or a pair list (CSV/TSV/Learn2Reg ``.json``).
        fields: the folder of fields to score (pair lists only).
        output: output folder; default ``INPUT/evaluation/`` for a batch and ``FIELDS/evaluation/`` for fields.
        learn2reg, labels, subset, progress: see :func:`evaluate_fields`.

    Raises:
        InputError: INPUT is neither a batch directory nor a pair list, a pair list comes without ``fields``, or
            ``fields``/``subset`` are given with a batch directory (one line each, naming the file and the fix).
    """
    input = Path(input)
    if not input.exists():
        raise InputError(f"{input}: not found; give a batch output directory (from rlreg batch) or a pair list "
                         "(CSV/TSV/dataset.json) with --fields DIR")
    if input.is_dir():
        if not (input / _BATCH_FILE).is_file():
            raise InputError(f"{input}: is a directory without {_BATCH_FILE}; give a directory written by rlreg "
                             "batch, or a pair list (CSV/TSV/dataset.json) with --fields DIR")
        if fields is not None:
            raise InputError(f"--fields {fields}: a batch directory is scored from its own warp.nii.gz files; "
                             f"drop --fields, or give the pair list ({input / _BATCH_FILE} names the inputs) instead")
        if subset is not None:
            raise InputError(f"--subset {subset}: applies to a Learn2Reg dataset.json, not to the batch directory "
                             f"{input}; drop --subset")
        return evaluate_batch(input, learn2reg=learn2reg, labels=labels, progress=progress, output=output)
    if fields is None:
        raise InputError(f"{input}: a pair list needs --fields DIR, the folder of displacement fields to score "
                         "(or give a batch output directory instead)")
    return evaluate_fields(input, Path(fields), Path(output) if output else Path(fields) / _EVALUATION_DIR,
                           learn2reg=learn2reg, subset=subset, labels=labels, progress=progress)
