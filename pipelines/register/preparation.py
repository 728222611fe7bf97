"""Stages 1-2 of ``rlreg register``: read and check a pair, normalise it, fit the affine, build the working grids.

:func:`prepare` turns :class:`~rlreg.pipelines.register.options.RegisterOptions` into a :class:`Prepared` pair
(picklable, CPU), which :func:`rlreg.pipelines.register.deformation.deform` registers and
:func:`rlreg.pipelines.register.finishing.finish` writes. Every input problem is a one-line
:class:`~rlreg.io.InputError` raised before any heavy work.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from torch import Tensor

from rlreg import models
from rlreg.affine import affine_register, index_map, positions_to_displacement
from rlreg.instance import InstanceConfig, foreground_box
from rlreg.intensity import normalise_intensity
from rlreg.io import Geometry, Image, InputError, check_same_grid, read_image, read_label_map
from rlreg.metrics import label_values
from rlreg.models import NO_MODEL, sha256
from rlreg.pipelines.register.options import FORMATS, Progress, RegisterOptions
from rlreg.pipelines.register.outputs import check_output_dir, check_writable
from rlreg.slices import SlicePlane
from rlreg.spatial import orientation_axes, resize, warp

__all__ = ["DICE_SKIPPED_NO_FIXED", "DICE_SKIPPED_NO_MOVING", "Prepared", "describe_image", "label_overlap_warning",
           "prepare", "segmentation_notes", "sitk_image", "working_size"]


@dataclass
class Prepared:
    """A pair read, checked and affinely aligned: what the deformable and write stages need (picklable, CPU).

    Produced by :func:`prepare` (in a worker process during a batch), consumed by
    :func:`~rlreg.pipelines.register.deformation.deform` (on the device, possibly batched with other pairs of the same
    :attr:`batch_key`) and :func:`~rlreg.pipelines.register.finishing.finish`.
    """

    options: RegisterOptions
    fixed: Image
    moving: Image
    fixed_seg: Image | None
    moving_seg: Image | None
    fixed_mask: Image | None
    model: str | None
    """The shipped agent that runs (``settings.model`` resolved for this input), ``None`` for instance optimisation."""
    card: dict[str, Any] | None
    fixed_norm: Tensor
    """(1, 1, *F) fixed intensities mapped to [0, 1]."""
    moving_norm: Tensor
    """(1, 1, *M) moving intensities mapped to [0, 1], on the moving grid."""
    transform: sitk.Transform | None
    """The affine (fixed LPS -> moving LPS), ``None`` with ``affine=False``."""
    to_moving: np.ndarray
    """Homogeneous fixed-index -> moving-index matrix through the affine."""
    moving_affine: Tensor
    """(1, 1, *F) normalised moving image resampled through the affine onto the fixed grid."""
    working_fixed: Tensor
    """(1, 1, *W) the deformable stage's fixed image."""
    working_moving: Tensor
    """(1, 1, *W) the deformable stage's moving image (affinely aligned)."""
    working_mask: Tensor | None
    """(1, 1, *W) similarity weights, from the fixed mask."""
    seconds: dict[str, float]
    refine_fixed: Tensor | None = None
    """(1, 1, *R) fixed image on the instance-optimisation grid, for ``options.settings.refine`` (agents only)."""
    refine_moving: Tensor | None = None
    """(1, 1, *R) affinely aligned moving image on that grid."""
    refine_mask: Tensor | None = None
    """(1, 1, *R) similarity weights of the refinement, from the fixed mask."""
    orientation: tuple[tuple[int, ...], tuple[bool, ...]] | None = None
    """Axis permutation and flips that bring the working grid to the orientation the agent was trained in (the
    card's ``orientation``; :func:`rlreg.spatial.orientation_axes`), ``None`` when the card has none."""
    warnings: list[str] = field(default_factory=list)
    """Input warnings found while reading (one line each), carried into
    :attr:`~rlreg.pipelines.register.RegisterResult.warnings`."""
    notes: list[str] = field(default_factory=list)
    """What was left out and why (one line each, e.g. Dice without both label maps), carried into
    :attr:`~rlreg.pipelines.register.RegisterResult.notes`."""

    @property
    def batch_key(self) -> tuple[Any, ...]:
        """Pairs with equal keys can share one device batch (:func:`rlreg.pipelines.register.deformation.deform`)."""
        settings = self.options.settings
        return (self.model, settings.steps, settings.instance, tuple(self.working_fixed.shape),
                self.working_mask is None, settings.save_steps, settings.refine, settings.refine_factor,
                self.orientation, None if self.refine_fixed is None else tuple(self.refine_fixed.shape),
                self.refine_mask is None, self.crop_box)

    @property
    def instance(self) -> InstanceConfig:
        """The instance optimisation (or the refinement's base config) that runs: ``options.settings.instance``,
        which :func:`prepare` resolves for the input's dimensionality.

        Raises:
            ValueError: ``options.settings.instance`` is ``None`` (these inputs were not built by :func:`prepare`).
        """
        config = self.options.settings.instance
        if config is None:
            raise ValueError("Prepared: options.settings.instance is unresolved; build the inputs with prepare()")
        return config

    @property
    def fitted_images(self) -> tuple[Tensor, Tensor]:
        """The fixed and moving images the instance optimisation fits its field to: the working grid's, or with an
        agent the refinement grid's.

        Raises:
            ValueError: an agent's inputs without the refinement-grid images (:func:`prepare` makes them for
                ``--refine``).
        """
        if self.model is None:
            return self.working_fixed, self.working_moving
        if self.refine_fixed is None or self.refine_moving is None:
            raise ValueError(f"Prepared: agent {self.model} has no refinement-grid images; prepare() makes them only "
                             "with settings.refine > 0")
        return self.refine_fixed, self.refine_moving

    @property
    def crop_box(self) -> tuple[tuple[int, int], ...] | None:
        """The box instance optimisation (or the refinement) crops to: a batch is cropped to its pairs' common box,
        so only pairs with equal boxes share one and each still gets the field it would get alone."""
        margin = self.instance.crop_margin
        if margin is None or (self.model is not None and not self.options.settings.refine):
            return None
        return tuple((cut.start, cut.stop) for cut in foreground_box(list(self.fitted_images), margin))


def prepare(options: RegisterOptions, progress: Progress | None = None) -> Prepared:
    """Stages 1-2: read and check the inputs, normalise, fit the affine, build the working-grid images (CPU).

    Raises:
        InputError: a problem with an input or the output folder (one line, names the file and the fix).
    """
    say = progress or (lambda *_: None)
    opts, settings = options, options.settings
    unknown = [f for f in settings.formats if f not in FORMATS]
    if unknown:
        raise InputError(f"--format {','.join(unknown)}: unknown; choose from {', '.join(FORMATS)}")
    check_output_dir(opts.output)
    check_writable(opts.output)
    seconds: dict[str, float] = {}

    # 1. read ------------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    say("read", 0, 1)
    fixed = read_image(opts.fixed)
    moving = read_image(opts.moving)
    if fixed.ndim != moving.ndim:
        raise InputError(f"{opts.moving}: is {moving.ndim}-D but the fixed image {opts.fixed} is {fixed.ndim}-D; "
                         "register images of the same dimensionality (extract a slice or stack the series first)")
    settings = replace(settings, instance=settings.instance_for(fixed.ndim))  # from here on, the config that runs
    opts = replace(opts, settings=settings)
    if fixed.volume is not None and moving.volume is not None:  # two slices: the moving one in the fixed plane
        moving = replace(moving, geometry=SlicePlane(fixed.volume).geometry_of(moving.volume, opts.moving))
    fixed_seg = read_companion(opts.fixed_seg, fixed, role="segmentation", dtype=torch.int64)
    moving_seg = read_companion(opts.moving_seg, moving, role="segmentation", dtype=torch.int64)
    notes = segmentation_notes(fixed_seg is not None, moving_seg is not None)
    input_warnings = []
    if fixed_seg is not None and moving_seg is not None:
        overlap = label_overlap_warning(fixed_seg.data, moving_seg.data, fixed_path=opts.fixed_seg,
                                        moving_path=opts.moving_seg)
        input_warnings += [overlap] if overlap else []
    fixed_mask = read_companion(opts.fixed_mask, fixed, role="mask", dtype=torch.float32)
    moving_mask = read_companion(opts.moving_mask, moving, role="mask", dtype=torch.float32)
    try:
        model = None if settings.affine_only else models.resolve(settings.model, fixed.ndim)
        cards = models.available()
    except ValueError as err:
        raise InputError(str(err)) from None
    card = None
    if model is not None:
        if model not in cards:
            raise InputError(f"--model {model}: no shipped model of that name; available: "
                             f"{', '.join(sorted(cards)) or 'none'} (or none, for instance optimisation)")
        card = cards[model]
        if int(card["ndim"]) != fixed.ndim:
            raise InputError(f"{opts.fixed}: is {fixed.ndim}-D but --model {model} registers {card['ndim']}-D "
                             f"images; pick a {fixed.ndim}-D model (rlreg models list) or omit --model")
        limit = card.get("max_steps")
        if settings.steps is not None and limit is not None and settings.steps > int(limit):
            raise InputError(f"--steps {settings.steps}: model {model} was trained on episodes of {limit} steps, and "
                             "longer runs are not validated (they can fold or drift); give --steps 0-"
                             f"{limit} (default {card.get('recommended_steps', limit)}), or add --refine N for a "
                             "closer fit")
    elif settings.refine:
        why = "--model none asks for it" if settings.model == NO_MODEL else (
            f"no default agent ships for {fixed.ndim}-D inputs")
        raise InputError(f"--refine {settings.refine}: refines an agent's field, but the instance optimisation runs "
                         f"here ({why}); drop --refine (--steps sets its iterations) or pick an agent with --model")
    check_outputs(opts, fixed, moving=moving, segmentation=moving_seg is not None, card=card)
    seconds["read"] = time.perf_counter() - t0
    say("read", 1, 1)

    fixed_norm = normalise_intensity(fixed.data, None if fixed_mask is None else fixed_mask.data > 0)
    moving_norm = normalise_intensity(moving.data, None if moving_mask is None else moving_mask.data > 0)

    # 2. affine ----------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    say("affine", 0, 1)
    transform: sitk.Transform | None = None
    if settings.affine:
        transform = affine_register(
            sitk_image(fixed_norm, fixed.geometry), sitk_image(moving_norm, moving.geometry), settings.affine_config,
            None if fixed_mask is None else sitk_image(fixed_mask.data, fixed.geometry),
            None if moving_mask is None else sitk_image(moving_mask.data, moving.geometry))
    to_moving = index_map(fixed.geometry, moving.geometry, transform)
    moving_affine = warp(moving_norm, positions_to_displacement(to_moving, shape=fixed.geometry.size))
    instance_size = working_size(fixed.geometry, settings.max_working_voxels)
    size = instance_size if card is None else models.working_grid(card, fixed.geometry.size, fixed.geometry.spacing)
    fixed_binary = None if fixed_mask is None else (fixed_mask.data > 0).float()
    prepared = Prepared(opts, fixed, moving, fixed_seg, moving_seg, fixed_mask, model, card, fixed_norm, moving_norm,
                        transform, to_moving, moving_affine, resize(fixed_norm, size), resize(moving_affine, size),
                        None if fixed_binary is None or card is not None else resize(fixed_binary, size), seconds)
    prepared.warnings = input_warnings
    prepared.notes = notes
    if card is not None and card.get("orientation"):
        prepared.orientation = orientation_axes(fixed.geometry.direction, card["orientation"])
    if card is not None and settings.refine:
        prepared.refine_fixed = resize(fixed_norm, instance_size)
        prepared.refine_moving = resize(moving_affine, instance_size)
        prepared.refine_mask = None if fixed_binary is None else resize(fixed_binary, instance_size)
    seconds["affine"] = time.perf_counter() - t0
    say("affine", 1, 1)
    return prepared


def check_outputs(opts: RegisterOptions, fixed: Image, *, moving: Image, segmentation: bool,
                  card: dict[str, Any] | None) -> None:
    """Everything the write stage could refuse, checked before the affine stage: formats the grid cannot take, DICOM
    inputs a DSRO cannot refer to, and the disk space the outputs need (uncompressed, an upper bound)."""
    ndim, settings = fixed.ndim, opts.settings
    three_d_only = [name for name in settings.formats if name in ("fsl", "dicom")]
    if ndim == 2 and three_d_only and fixed.volume is None:  # a one-slice volume's fields are 3-D
        raise InputError(f"--format {','.join(three_d_only)}: writes 3-D fields only, but {opts.fixed} is 2-D; drop "
                         f"it (slicer, niftyreg and l2r take 2-D fields)")
    if "dicom" in settings.formats:
        from rlreg import formats

        # dicom_series_ref raises the one-line error (e.g. no FrameOfReferenceUID)
        series = [path for path in (opts.fixed, opts.moving) if path.is_dir()]
        refs = [formats.dicom_series_ref(path) for path in series]
        if settings.body_part is None and not any(ref.body_part_examined for ref in refs):
            where = (f"{opts.fixed} does not say" if not series else
                     f"the DICOM series {series[0]} does not name" if len(series) == 1 else
                     "neither DICOM series names")
            raise InputError(f"--format dicom: {where} which body part the images show, which the DICOM "
                             "registration must state; give --body-part, e.g. BRAIN, HEAD, CHEST, ABDOMEN or "
                             "PELVIS (with --laterality R or L for a paired part such as KNEE)")
    fixed_voxels, moving_voxels = math.prod(fixed.geometry.size), math.prod(moving.geometry.size)
    field_bytes = 4 * ndim
    per_voxel = 4 + field_bytes + 8 * ndim + 4 + field_bytes  # warped, warp, transform.h5, jacdet, a gzip copy
    per_voxel += 4 if segmentation else 0
    per_voxel += field_bytes * len(settings.formats)
    if settings.save_steps:
        recommended = 10 if card is None else int(card.get("recommended_steps", 10))
        steps = 10 if card is None else (settings.steps or recommended) + bool(settings.refine)
        per_voxel += (4 + field_bytes) * steps
    needed = fixed_voxels * per_voxel + (moving_voxels * field_bytes if settings.save_inverse else 0)
    check_writable(opts.output, needed)


def describe_image(image: Image) -> dict[str, Any]:
    """``rlreg.json``'s record of an input image: path, SHA-256 and its geometry as on disk (x, y, z order)."""
    g = image.volume or image.geometry  # a one-slice volume as it is on disk
    return {"path": str(image.path), "sha256": sha256(image.path) if image.path else None,
            "size_xyz": list(g.size[::-1]), "spacing_xyz_mm": list(g.spacing[::-1]), "origin_lps_mm": list(g.origin),
            "direction": list(g.direction)}


def read_companion(path: Path | None, image: Image, *, role: str, dtype: torch.dtype) -> Image | None:
    """Read a segmentation (``int64``: integer labels only) or mask and check it lies on its image's grid: size,
    spacing, origin and direction (:func:`rlreg.io.check_same_grid`); ``None`` when ``path`` is."""
    if path is None:
        return None
    other = read_label_map(path) if dtype == torch.int64 else read_image(path, dtype=dtype)
    if other.volume is not None or image.volume is not None:
        # One-slice volumes: the grids on disk must agree; the map then takes its image's in-plane frame, which for a
        # moving slice is the fixed slice's plane (:func:`prepare`), not the frame its own file gives.
        check_same_grid(path, other.volume or other.geometry, image.path, image.volume or image.geometry, role)
        return replace(other, geometry=image.geometry, volume=image.volume)
    check_same_grid(path, other.geometry, image.path, image.geometry, role)
    return other


DICE_SKIPPED_NO_FIXED = ("Dice skipped: no --fixed-seg to compare with; warped_seg.nii.gz holds the moving labels on "
                         "the fixed grid (atlas label propagation)")
"""The note of a registration given moving labels only."""
DICE_SKIPPED_NO_MOVING = ("Dice skipped: no --moving-seg to warp; the fixed labels are drawn as outlines on "
                          "overview.png")
"""The note of a registration given fixed labels only."""


def segmentation_notes(fixed_seg: bool, moving_seg: bool) -> list[str]:
    """The notes of a registration given label maps for one image only: Dice needs both.

    Moving labels alone are warped onto the fixed grid (``warped_seg.nii.gz``): atlas label propagation, the atlas
    being the moving image. Fixed labels alone outline the fixed anatomy on ``overview.png``; nothing is warped.
    """
    if fixed_seg == moving_seg:
        return []
    return [DICE_SKIPPED_NO_FIXED if moving_seg else DICE_SKIPPED_NO_MOVING]


def label_overlap_warning(fixed_seg: Tensor, moving_seg: Tensor, *, fixed_path: Path | str | None,
                          moving_path: Path | str | None) -> str | None:
    """A warning when two label maps share no label, or fewer than half of either map's labels (0 = background).

    Dice averages over the labels of either map, and a label missing from one map scores 0: two maps numbered from
    different label tables give a meaningless Dice without any error.
    """
    fixed_labels = set(label_values(fixed_seg)) - {0}
    moving_labels = set(label_values(moving_seg)) - {0}
    shared = fixed_labels & moving_labels
    if fixed_labels and moving_labels and 2 * len(shared) >= max(len(fixed_labels), len(moving_labels)):
        return None

    def listed(labels: set[int]) -> str:
        return f"{len(labels)} labels" + (f" ({min(labels)}..{max(labels)})" if labels else "")

    what, effect = (("share no label", "every label scores Dice 0") if not shared else
                    (f"share only {len(shared)} labels", "labels present in one map only score Dice 0"))
    return (f"{fixed_path} and {moving_path} {what} (fixed: {listed(fixed_labels)}; moving: "
            f"{listed(moving_labels)}): {effect}; check that both maps use the same label table")


def sitk_image(data: Tensor, geometry: Geometry) -> sitk.Image:
    """A ``(1, 1, *S)`` tensor as a SimpleITK image on ``geometry``."""
    return geometry.apply_to(sitk.GetImageFromArray(data[0, 0].cpu().numpy()))


def working_size(geometry: Geometry, max_voxels: int) -> tuple[int, ...]:
    """Grid size for the deformable stage: the fixed grid, with its finest axes coarsened until it fits."""
    size = np.asarray(geometry.size, dtype=np.float64)
    if size.prod() <= max_voxels:
        return geometry.size
    extent = (size - 1) * np.asarray(geometry.spacing)
    lo, hi = float(min(geometry.spacing)), float(extent.max())
    for _ in range(50):  # bisect the target spacing
        mid = (lo + hi) / 2
        trial = np.minimum(size, np.round(extent / mid) + 1)
        lo, hi = (mid, hi) if trial.prod() > max_voxels else (lo, mid)
    return tuple(int(n) for n in np.minimum(size, np.round(extent / hi) + 1))
