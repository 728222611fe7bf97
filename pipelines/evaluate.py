"""Score registrations: ``rlreg evaluate``, for a batch directory or for "fields plus label maps".

Two inputs, one scoring:

* :func:`evaluate_batch`: a directory written by ``rlreg batch`` (``batch.json`` plus one ``<pair-id>/`` folder per
  pair, each holding the outputs of ``rlreg register``). Finished pairs (``rlreg.json`` present) are scored; failed
  ones (``error.json``), unfinished ones (a folder with neither) and ``todo`` ones (no folder) are listed with their
  status and not scored.
* :func:`evaluate_fields`: a pair list (:func:`rlreg.data.pairs.read_pairs`: CSV/TSV or a Learn2Reg
  ``dataset.json``) and a folder with one displacement field per pair, from any tool: an ITK/ANTs field in LPS mm
  (``<pair-id>/warp.nii.gz`` or ``<pair-id>.nii.gz``) or a Learn2Reg voxel field (``disp_{fix}_{mov}.nii.gz``).
* :func:`evaluate`: the entry point behind the command, which dispatches on the input.

What is measured per pair: Dice and HD95 per label (fixed labels vs moving labels brought to the fixed grid), the
regularity of the map (SDlogJ, % folding) and, when the pair has keypoint CSVs, the target registration error (TRE)
before and after. ``learn2reg=True`` switches every definition to the Learn2Reg challenge evaluation's (voxels for
HD95, the "+3" SDlogJ, nearest-neighbour label warping, cubic TRE sampling, mean/std/30% quantile aggregation); see
``docs/evaluate.md`` and ``evaluate_tables.CONVENTIONS`` for the exact statements.

Outputs (each file written atomically): ``per_pair.csv``, ``per_label.csv`` and ``evaluation.json``.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk
import torch
from torch import Tensor

from rlreg.data.pairs import Pair, read_pairs
from rlreg.formats import l2r_name, read_keypoints, read_l2r
from rlreg.io import Geometry, InputError, check_same_grid, read_image, read_label_map
from rlreg.metrics import dice_per_label, hd95, jacobian_scores, label_values, learn2reg_jacobian_scores, learn2reg_tre
from rlreg.metrics.learn2reg import learn2reg_hd95, learn2reg_warp_labels
from rlreg.pipelines.evaluate_tables import (
    Evaluation,
    PairEvaluation,
    PairScores,
    Status,
    aggregate,
    conventions_for,
    per_label_summary,
    write_evaluation,
)
from rlreg.spatial import sample_points, warp
from rlreg.transforms import chain_from_world, read_transform, world_displacement, world_jacobian

__all__ = [
    "evaluate",
    "evaluate_batch",
    "evaluate_fields",
    "find_field",
]

Progress = Callable[[str, int, int], None]

_EVALUATION_DIR = "evaluation"
_BATCH_FILE = "batch.json"
_DONE_FILE = "rlreg.json"

# ---------------------------------------------------------------------------------------------------- helpers
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


def _keypoints(pair: Pair, ndim: int) -> tuple[np.ndarray, np.ndarray] | None:
    if pair.fixed_keypoints is None or pair.moving_keypoints is None:
        return None
    fixed = read_keypoints(pair.fixed_keypoints, ndim)
    moving = read_keypoints(pair.moving_keypoints, ndim)
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
    """Dice and HD95 per label into ``scores`` (rlreg or Learn2Reg rules, see ``evaluate_tables.CONVENTIONS``)."""
    if learn2reg:
        assert moving_seg is not None
        if labels is None:
            values = torch.unique(torch.cat([fixed_seg.flatten(), moving_seg.flatten()]))
            labels = [int(v) for v in values if v != 0]
        fixed_has, moving_has = set(label_values(fixed_seg)), set(label_values(moving_seg))
    dice = dice_per_label(warped, fixed_seg, labels)
    lab = [int(v) for v in dice.labels]
    dice_values = dice.values.double().numpy()
    dist = learn2reg_hd95(warped, fixed_seg, lab, fixed_has & moving_has) if learn2reg else None
    if dist is None:
        dist = hd95(warped, fixed_seg, spacing, labels=lab).values.double().numpy()
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
        warped = learn2reg_warp_labels(moving_seg, chain)
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
        chain = read_l2r(path, fixed)
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


def _finish(source: Path, mode: Literal["batch", "fields"], learn2reg: bool, rows: list[PairEvaluation],
            output: Path, selected_labels: list[int] | None = None) -> Evaluation:
    evaluation = Evaluation(input=source, mode=mode, learn2reg=learn2reg, conventions=conventions_for(learn2reg),
                            pairs=rows,
                            labels=per_label_summary(rows), aggregate={}, selected_labels=selected_labels)
    evaluation.aggregate = aggregate(rows, learn2reg, hd95_column=evaluation.hd95_column)
    write_evaluation(evaluation, output)
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


def evaluate_batch(outdir: Path, learn2reg: bool = False, *, labels: Sequence[int] | None = None,
                   progress: Progress | None = None, output: Path | None = None) -> Evaluation:
    """Score every finished pair of a batch directory (the ``rlreg batch`` contract) and write the tables.

    Args:
        outdir: the batch output directory (holds ``batch.json``).
        learn2reg: use the Learn2Reg challenge's conventions instead of rlreg's (see ``evaluate_tables.CONVENTIONS``).
        labels: label values to score (default: every label present, see ``evaluate_tables.CONVENTIONS``).
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


def evaluate_fields(source: str | Path, fields: Path, *, output: Path, learn2reg: bool = False,
                    subset: str | None = None, labels: Sequence[int] | None = None,
                    progress: Progress | None = None) -> Evaluation:
    """Score displacement fields from any tool against the label maps and keypoints of a pair list.

    Args:
        source: pair list read by :func:`rlreg.data.pairs.read_pairs` (CSV/TSV or Learn2Reg ``dataset.json``).
        fields: folder with one field per pair (see :func:`find_field`). ITK fields are LPS-mm pull-back
            displacements (``rlreg.transforms.read_transform``: vector NIfTI/NRRD/MHA or ``.h5``); Learn2Reg fields
            are ``(X, Y, Z, 3)`` voxel displacements in nibabel order on the fixed grid, read as
            ``moving(x + u(x))``.
        output: folder for ``per_pair.csv``, ``per_label.csv`` and ``evaluation.json``.
        learn2reg: use the Learn2Reg challenge's conventions (see ``evaluate_tables.CONVENTIONS``).
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


def evaluate(input: Path, fields: Path | None = None, *, output: Path | None = None, learn2reg: bool = False,
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
    return evaluate_fields(input, Path(fields), output=Path(output) if output else Path(fields) / _EVALUATION_DIR,
                           learn2reg=learn2reg, subset=subset, labels=labels, progress=progress)
