"""Stage 4 of ``rlreg register`` and the whole run: resample, measure, write every output, then ``rlreg.json``.

Stages (each timed and reported in ``rlreg.json``):

1. **read** (:func:`~rlreg.pipelines.register.preparation.prepare`): both images (any SimpleITK format, DICOM series
   folders, PNG/TIFF in 2D) with their full geometry, optional label maps and masks; every input problem is a
   one-line :class:`~rlreg.io.InputError`.
2. **affine**: centres of mass -> affine by Adam on local NCC (:func:`rlreg.affine.fit_affine`; or SimpleITK's
   rigid -> affine with ``AffineConfig(backend="simpleitk")``; ``affine=False`` skips it).
3. **deformable** (:func:`~rlreg.pipelines.register.deformation.deform`), on a working grid: a shipped RL agent run for
   T steps, optionally refined by instance optimisation; or classical instance optimisation (LNCC + diffusion and
   bending energy), named as such in ``rlreg.json``.
4. **write** (:func:`finish`): the original moving image resampled *once* through the whole chain, the total field
   in ITK/ANTs form, the composite ``transform.h5``, the Jacobian, QC numbers; each file atomically, ``rlreg.json``
   last (:mod:`rlreg.pipelines.register.outputs`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rlreg import __version__
from rlreg.affine import index_map, positions_to_displacement, transform_matrix
from rlreg.io import Geometry, Image, atomic_output, write_image
from rlreg.losses import FixedLNCC
from rlreg.metrics import mean_dice
from rlreg.models import NO_MODEL, sha256
from rlreg.pipelines.register.deformation import Deformable, deform
from rlreg.pipelines.register.options import Progress, RegisterOptions
from rlreg.pipelines.register.outputs import (
    CONVENTIONS,
    ERROR_RECORD,
    SIDECAR,
    abandon_outputs,
    ants_command,
    begin_outputs,
    end_outputs,
    export_formats,
    planned_outputs,
    unwritable,
)
from rlreg.pipelines.register.preparation import Prepared, describe_image, prepare
from rlreg.pipelines.register.results import MethodRecord, QualityRecord, RegisterResult, TimingRecord
from rlreg.pipelines.threads import cpu_threads
from rlreg.slices import SlicePlane
from rlreg.spatial import folding_percent, jacobian_determinant, resize_displacement, sdlogj, warp
from rlreg.transforms import (
    affine_transform,
    composite_transform,
    invert_world,
    world_displacement,
    world_jacobian,
    write_itk_transform,
    write_itk_warp,
)

__all__ = ["AFFINE_VOLUME_WARNING", "FOLDING_WARNING_PERCENT", "MIN_GRID_WARNING", "finish", "fitted_region",
           "qc_similarity", "quality_warnings", "register", "step_scores"]


AFFINE_VOLUME_WARNING = 3.0
"""An affine that scales the volume by more than this factor (or less than its inverse) is warned about: it matches
noise or a wrong field of view rather than anatomy (``docs/register.md``, "How the default was chosen")."""
MIN_GRID_WARNING = 8
"""A fixed grid with fewer voxels than this along an axis is warned about (``docs/register.md``, "How the default was
chosen")."""
FOLDING_WARNING_PERCENT = 1.0
"""Folding (of the deformable part) above this percentage of the fixed grid (or mask) is warned about, as the batch
report flags it (``rlreg.pipelines.report.FOLDING_LIMIT``)."""


def quality_warnings(qc: QualityRecord, *, affine_volume_ratio: float | None = None,
                     grid: tuple[int, ...] | None = None) -> list[str]:
    """One-line warnings about a finished registration: the deformable stage lowered the similarity the affine stage
    reached, or its field folds more than :data:`FOLDING_WARNING_PERCENT` of the voxels; the affine stage changed
    the volume by more than :data:`AFFINE_VOLUME_WARNING` either way (``affine_volume_ratio``, the determinant of
    its LPS matrix); or the fixed ``grid`` (voxels per axis) is smaller than :data:`MIN_GRID_WARNING` along an axis.
    Each means the result should not be trusted as is (degenerate inputs: tiny grids, images without structure)."""
    warnings = []
    if qc.lncc_after < qc.lncc_affine:
        warnings.append(f"the deformable stage lowered the similarity (LNCC {qc.lncc_affine:.3f} after the affine "
                        f"-> {qc.lncc_after:.3f}); check the inputs, or use the affine alone")
    if qc.folding_percent > FOLDING_WARNING_PERCENT:
        warnings.append(f"the field folds {qc.folding_percent:.2f} % of the voxels (Jacobian <= 0, more than "
                        f"{FOLDING_WARNING_PERCENT:g} %); raise --smoothness or use --diffeomorphic")
    if affine_volume_ratio is not None and not (
            1 / AFFINE_VOLUME_WARNING <= abs(affine_volume_ratio) <= AFFINE_VOLUME_WARNING):
        warnings.append(f"the affine stage scales the volume by {abs(affine_volume_ratio):.3g} (more than "
                        f"{AFFINE_VOLUME_WARNING:g}x either way); check that both images show the same anatomy and "
                        "field of view, or register with --no-affine")
    if grid is not None and min(grid) < MIN_GRID_WARNING:
        warnings.append(f"the fixed grid is only {'x'.join(map(str, grid[::-1]))} voxels; local NCC compares "
                        f"windows of 5-9 voxels, so grids under {MIN_GRID_WARNING} voxels along an axis hold too "
                        "little structure to register reliably")
    return warnings


def _dice(pred: Tensor | None, target: Tensor | None) -> float | None:
    return None if pred is None or target is None else float(mean_dice(pred, target))


def qc_similarity(fixed: Tensor) -> Callable[[Tensor], float]:
    """The QC similarity to ``fixed``: squared LNCC, window 9 (the fixed image's statistics computed once)."""
    score = FixedLNCC(fixed, (9,), (1.0,))
    return lambda warped: float(score(warped))



def finish(prepared: Prepared, result: Deformable, *, progress: Progress | None = None,
           started: float | None = None) -> RegisterResult:
    """Stage 4: :func:`_finish`, leaving no outputs without an ``rlreg.json`` when it fails (:func:`abandon_outputs`);
    a failed write (disk full, read-only folder) is a one-line :class:`InputError`."""
    try:
        return _finish(prepared, result, progress, started)
    except Exception as err:
        abandon_outputs(prepared.options.output)
        if isinstance(err, OSError):
            raise unwritable(prepared.options.output, err) from None
        raise


def _finish(prepared: Prepared, result: Deformable, progress: Progress | None = None,
            started: float | None = None) -> RegisterResult:
    """Stage 4 (CPU): resample the original moving image once through the whole chain, measure, write every output.

    Each file is written atomically; ``rlreg.json`` is removed first and written last, so a folder holding it holds a
    finished registration. ``seconds.total`` is the wall time since ``started`` (a ``time.perf_counter()`` value)
    when given, else the sum of the stages (a batch overlaps pairs, so its wall time is not one pair's).
    """
    say = progress or (lambda *_: None)
    p, opts, settings = prepared, prepared.options, prepared.options.settings
    fixed, moving, moving_seg, fixed_mask = p.fixed, p.moving, p.moving_seg, p.fixed_mask
    fixed_norm, moving_norm, moving_affine = p.fixed_norm, p.moving_norm, p.moving_affine
    seconds = dict(p.seconds, deformable=result.seconds)
    t0 = time.perf_counter()
    say("write", 0, 1)
    shape = fixed.geometry.size
    disp = resize_displacement(result.field, shape)
    chain = positions_to_displacement(p.to_moving, disp)
    identity_map = index_map(fixed.geometry, moving.geometry)
    same_grid = moving.geometry.size == shape and np.allclose(identity_map, np.eye(fixed.ndim + 1), atol=1e-6)
    identity_chain = None if same_grid else positions_to_displacement(identity_map, shape=shape)

    def unaligned(image: Tensor, mode: str = "bilinear") -> Tensor:  # the moving image as it lies on the fixed grid
        return image if identity_chain is None else warp(image, identity_chain, mode)

    affine_chain = positions_to_displacement(p.to_moving, shape=shape)
    warped = warp(moving.data, chain)
    warped_norm = warp(moving_norm, chain)
    warped_seg = None if moving_seg is None else warp(moving_seg.data, chain, "label")
    total = world_displacement(chain, fixed.geometry, moving.geometry)
    jac = world_jacobian(total, fixed.geometry)
    qc_mask = None if fixed_mask is None else fixed_mask.data > 0
    fseg = None if p.fixed_seg is None else p.fixed_seg.data
    similarity = qc_similarity(fixed_norm)
    deformable_jac = jacobian_determinant(disp)  # the deformable part's, shared by the QC numbers and the overview
    dice = {} if moving_seg is None or fseg is None else {
        "dice_before": _dice(unaligned(moving_seg.data, "label"), fseg),
        "dice_affine": _dice(warp(moving_seg.data, affine_chain, "label"), fseg),
        "dice_after": _dice(warped_seg, fseg)}
    qc = QualityRecord(
        lncc_before=similarity(unaligned(moving_norm)), lncc_affine=similarity(moving_affine),
        lncc_after=similarity(warped_norm),
        folding_percent=float(folding_percent(disp, qc_mask, determinant=deformable_jac)[0]),
        sdlogj=float(sdlogj(disp, qc_mask, determinant=deformable_jac)[0]),
        jacobian_min=float(jac.min()), jacobian_max=float(jac.max()), **dice)
    volume_ratio = (None if p.transform is None else
                    float(np.linalg.det(transform_matrix(p.transform, fixed.ndim)[:fixed.ndim, :fixed.ndim])))
    warnings = quality_warnings(qc, affine_volume_ratio=volume_ratio, grid=fixed.geometry.size)

    out = opts.output
    earlier = begin_outputs(out, planned_outputs(opts, affine=p.transform is not None,
                                                 segmentation=moving_seg is not None))
    geometry, plane, offset = fixed.geometry, None, 0.0
    linear, deformable_world = p.transform, world_displacement(disp, geometry, geometry)
    out_total, out_chain, ndim = total, chain, fixed.ndim
    if fixed.volume is not None:  # a one-slice volume, registered in its plane: outputs on its 3-D grid
        plane, geometry, ndim = SlicePlane(fixed.volume), fixed.volume, 3
        offset = 0.0 if moving.volume is None else plane.offset(moving.volume)
        out_total, out_chain, deformable_world = plane.field(total, offset), plane.chain(chain), plane.field(
            deformable_world)
        linear = None if p.transform is None else affine_transform(
            None, 3, plane.matrix(transform_matrix(p.transform, 2), offset))
    written = {
        "warped": write_image(warped, geometry, out / "warped.nii.gz", np.float32),
        "warp": write_itk_warp(out_total, geometry, out / "warp.nii.gz"),
        # On one grid a chain is the voxel field itself, so this is the deformable part alone in LPS mm.
        "transform": write_itk_transform(
            affine_transform(linear, ndim) if settings.affine_only else
            composite_transform(linear, deformable_world, geometry),
            out / "transform.h5"),
        "jacdet": write_image(jac, geometry, out / "jacdet.nii.gz", np.float32),
    }
    if linear is not None:
        written["affine"] = write_itk_transform(affine_transform(linear, ndim), out / "affine.mat")
    if warped_seg is not None:
        written["warped_seg"] = write_image(warped_seg, geometry, out / "warped_seg.nii.gz", np.int32)
    if settings.save_inverse:
        inverse = invert_world(total, fixed.geometry, moving.geometry)
        if plane is not None and moving.volume is not None:
            inverse_grid, inverse = moving.volume, plane.field(inverse, -offset, grid=moving.volume)
        else:
            inverse_grid = moving.geometry
        written["inverse_warp"] = write_itk_warp(inverse, inverse_grid, out / "inverse_warp.nii.gz")
    written.update(export_formats(opts, out_total, chain=out_chain, geometry=geometry))
    if settings.save_steps:
        written.update(_save_steps(out, result, p.to_moving, moving, fixed_norm, moving_norm, moving_affine,
                                   fixed.geometry, moving_seg, fseg, plane, offset))
    written["overview"] = _overview(out / "overview.png", fixed_norm, moving_affine, warped_norm, deformable_jac, fseg,
                                    qc, fixed.geometry, fitted_region(p))
    seconds["write"] = time.perf_counter() - t0
    seconds["total"] = (time.perf_counter() - started if started is not None else
                        sum(seconds[k] for k in ("read", "affine", "deformable", "write")))

    affine_method = ("centres of mass -> affine, Adam on local NCC (rlreg.affine.fit_affine)"
                     if settings.affine_config.backend == "torch" else
                     "SimpleITK moments -> rigid -> affine (Mattes MI)")
    note = None
    if settings.affine_only:
        note = ("--steps 0: affine only, no deformable stage; warp.nii.gz is the affine as a displacement "
                "field, transform.h5 and affine.mat hold the affine alone")
    elif p.model is None:
        why = "--model none" if settings.model == NO_MODEL else f"no default agent ships for {fixed.ndim}-D inputs"
        note = (f"{why}: the field is fitted to this pair by Adam on local NCC + diffusion and "
                "bending energy; no learning is involved")
    method = MethodRecord(affine=affine_method if settings.affine else "none (--no-affine)", device=settings.device,
                          cpu_threads=torch.get_num_threads(), model_asked=settings.model or "default",
                          stage=dict(result.method), note=note,
                          affine_matrix_lps=None if linear is None else transform_matrix(linear, ndim).tolist())
    inputs = {"fixed": describe_image(fixed), "moving": describe_image(moving)}
    for key, item in (("fixed_seg", p.fixed_seg), ("moving_seg", moving_seg), ("fixed_mask", fixed_mask),
                      ("moving_mask", opts.moving_mask)):
        if isinstance(item, Path):
            inputs[key] = {"path": str(item), "sha256": sha256(item)}
        elif item is not None:
            if item.path is None:  # prepare() reads every input from a file
                raise ValueError(f"{key}: the report records each input's file, but this image has no path")
            inputs[key] = {"path": str(item.path), "sha256": sha256(item.path)}
    report = RegisterResult(
        tool="rlreg", version=__version__, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        conventions=CONVENTIONS, inputs=inputs, method=method, seconds=TimingRecord(**seconds), qc=qc,
        steps=result.curve, outputs={k: str(v) for k, v in written.items()} | {"report": str(out / SIDECAR)},
        ants_command=ants_command(ndim, opts.fixed, moving=opts.moving, out=out), warnings=[*p.warnings, *warnings],
        notes=list(p.notes))
    (out / ERROR_RECORD).unlink(missing_ok=True)
    with atomic_output(out / SIDECAR) as tmp:
        tmp.write_text(json.dumps(report.to_json(), indent=2))
    end_outputs(out, earlier, written=report.outputs, steps=len(result.history) if settings.save_steps else 0)
    say("write", 1, 1)
    return report


def register(options: RegisterOptions, progress: Progress | None = None) -> RegisterResult:
    """Run the whole registration and write every output under ``options.output``; returns what ``rlreg.json`` says.

    :func:`~rlreg.pipelines.register.preparation.prepare` -> :func:`~rlreg.pipelines.register.deformation.deform` (on
    ``options.settings.device``) -> :func:`finish`; ``seconds.total`` is wall time.

    Raises:
        InputError: a problem with an input or the output folder (one line, names the file and the fix).
    """
    started = time.perf_counter()
    with cpu_threads(options.settings.threads):
        prepared = prepare(options, progress)
        result = deform([prepared], options.settings.device, progress=progress)[0]
        return finish(prepared, result, progress=progress, started=started)


def step_scores(working: Tensor, to_moving: np.ndarray, *, size: tuple[int, ...], moving_norm: Tensor,
                similarity: Callable[[Tensor], float], moving_seg: Tensor | None = None,
                fixed_seg: Tensor | None = None) -> tuple[Tensor, Tensor, dict[str, float | None]]:
    """Score one working-grid field as ``rlreg register`` scores each step (``steps/steps.json``).

    Args:
        working: ``(1, ndim, *W)`` voxel displacement on the deformable stage's grid.
        to_moving: homogeneous fixed-index -> moving-index matrix of the affine stage.
        size: the fixed grid ``F``.
        moving_norm: ``(1, 1, *M)`` normalised moving image on its own grid.
        similarity: the QC similarity to the fixed image (:func:`qc_similarity`).
        moving_seg, fixed_seg: ``(1, 1, *M)`` and ``(1, 1, *F)`` labels: with both the scores hold a Dice.

    Returns:
        The fixed-grid chain into the moving grid ``(1, ndim, *F)``, the warped normalised moving image
        ``(1, 1, *F)`` and ``{"lncc": ..., "dice": ...}``.
    """
    chain = positions_to_displacement(to_moving, resize_displacement(working.cpu(), size))
    warped = warp(moving_norm, chain)
    scores: dict[str, float | None] = {"lncc": similarity(warped)}
    if moving_seg is not None and fixed_seg is not None:
        scores["dice"] = _dice(warp(moving_seg, chain, "label"), fixed_seg)
    return chain, warped, scores


def _save_steps(out: Path, result: Deformable, to_moving: np.ndarray, moving: Image, fixed_norm: Tensor,
                moving_norm: Tensor, moving_affine: Tensor, geometry: Geometry, moving_seg: Image | None,
                fixed_seg: Tensor | None, plane: SlicePlane | None = None, offset: float = 0.0) -> dict[str, Path]:
    """The field and image after each step, a table of the scores, and an animated GIF (``out/steps/``); a one-slice
    volume's (``plane``, through-plane ``offset``) written on its 3-D grid."""
    from rlreg.pipelines.figures import save_step_gif

    folder = out / "steps"
    frames = [moving_affine]
    table, similarity = [], qc_similarity(fixed_norm)
    for index, working in enumerate(result.history, start=1):
        chain, frame, scores = step_scores(working, to_moving, size=geometry.size, moving_norm=moving_norm,
                                           similarity=similarity,
                                           moving_seg=None if moving_seg is None else moving_seg.data,
                                           fixed_seg=fixed_seg)
        step_field, grid = world_displacement(chain, geometry, moving.geometry), geometry
        if plane is not None:
            step_field, grid = plane.field(step_field, offset), plane.volume
        write_image(warp(moving.data, chain), grid, folder / f"step_{index:03d}_warped.nii.gz", np.float32)
        write_itk_warp(step_field, grid, folder / f"step_{index:03d}_warp.nii.gz")
        frames.append(frame)
        table.append({"step": index, **scores})
    with atomic_output(folder / "steps.json") as tmp:
        tmp.write_text(json.dumps(table, indent=2))
    gif = save_step_gif(folder / "registration.gif", fixed_norm, frames=frames, geometry=geometry)
    return {"steps": folder, "gif": gif}


def fitted_region(p: Prepared) -> np.ndarray | None:
    """``(*F)`` boolean mask of the fixed grid inside the box where the deformable stage fitted its field, ``None``
    when it fitted the whole grid.

    With ``crop_margin`` the field is fitted inside a box around the foreground and continued by its edge values
    outside (:func:`rlreg.instance.optimise_displacement`); the determinant of that continuation draws stripes, which
    ``overview.png`` leaves out. The box lies on the working (or refinement) grid ``W`` and maps to the fixed grid
    ``F`` as :func:`rlreg.spatial.resize_displacement` does (corner voxel centres coincide).
    """
    box = p.crop_box
    if box is None:
        return None
    working = p.fitted_images[0].shape[2:]
    size = p.fixed.geometry.size
    region = np.zeros(size, dtype=bool)
    cuts = []
    for (start, stop), w, f in zip(box, working, size, strict=True):
        scale = (f - 1) / (w - 1) if w > 1 else 1.0
        cuts.append(slice(int(np.floor(start * scale)), min(f, int(np.ceil((stop - 1) * scale)) + 1)))
    region[tuple(cuts)] = True
    return region


def _overview(path: Path, fixed: Tensor, moving_affine: Tensor, warped: Tensor, deformable_jac: Tensor,
              fixed_seg: Tensor | None, qc: QualityRecord, geometry: Geometry,
              fitted: np.ndarray | None = None) -> Path:
    """``overview.png``; the Jacobian row is drawn inside ``fitted`` (:func:`fitted_region`) only."""
    from rlreg.pipelines.figures import save_registration_overview

    def plane(t: Tensor) -> np.ndarray:
        return t[0, 0].cpu().numpy()

    title = f"LNCC {qc.lncc_affine:.3f} (affine) -> {qc.lncc_after:.3f}"
    if qc.dice_after is not None:
        title += f"; Dice {qc.dice_affine:.3f} -> {qc.dice_after:.3f}"
    panels = {"fixed": plane(fixed), "moving (affine)": plane(moving_affine), "warped": plane(warped),
              "|fixed - warped|": plane((fixed - warped).abs())}
    return save_registration_overview(path, panels, contours=None if fixed_seg is None else plane(fixed_seg),
                                      title=title, jacobian=plane(deformable_jac), geometry=geometry,
                                      jacobian_support=fitted)

