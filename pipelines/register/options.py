"""The options of ``rlreg register``: which pair (:class:`RegisterOptions`) and how (:class:`RegisterSettings`).

The tuned instance optimisations (:data:`DEFAULT_INSTANCE`, :data:`DIFFEOMORPHIC_INSTANCE`,
:data:`DEFAULT_INSTANCE_2D`) were chosen on development sets; the measurements are in ``docs/register.md`` ("How the
default was chosen") and ``docs/tuning.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from rlreg.affine import AffineConfig
from rlreg.formats.dicom import check_body_part
from rlreg.instance import InstanceConfig
from rlreg.io import InputError
from rlreg.models import NO_MODEL

__all__ = ["DEFAULT_BENDING", "DEFAULT_INSTANCE", "DEFAULT_INSTANCE_2D", "DEFAULT_SMOOTHNESS", "DIFFEOMORPHIC_INSTANCE",
           "DIFFEOMORPHIC_SMOOTHNESS", "FORMATS", "Progress", "RegisterOptions", "RegisterSettings",
           "instance_settings"]

DEFAULT_INSTANCE = InstanceConfig(levels=(4, 2, 1), iterations=(30, 40, 12), smoothness=1.0, bending=1.0,
                                  windows=(5,), gradient_sigma=1.0, crop_margin=8)
"""Instance optimisation of ``rlreg register`` on 3-D inputs (variant ``g1-s1-b1-c8-i30-40-12`` of ``docs/tuning.md``):
LNCC (window 5) with diffusion 1 and bending energy 1, gradient smoothing of 1 voxel, pyramid 4-2-1 with 30, 40 and
12 Adam iterations (fewer full-resolution ones, which cost 8x those of level 2, for a little Dice:
``docs/register.md``, "How the default was chosen") and a crop to the foreground grown by 8 voxels. Bending energy
charges only curvature (as a B-spline grid does by construction), so it holds back large smooth deformations less
than diffusion and still stops voxel-scale noise. Chosen on development sets: ``docs/register.md``, "How the default
was chosen"."""
DEFAULT_SMOOTHNESS = DEFAULT_INSTANCE.smoothness
DEFAULT_BENDING = DEFAULT_INSTANCE.bending
DIFFEOMORPHIC_INSTANCE = InstanceConfig(levels=(4, 2, 1), iterations=(60, 30, 15), smoothness=0.5, windows=(5,),
                                        gradient_sigma=1.0, crop_margin=8, diffeomorphic=True)
"""``--diffeomorphic`` (3-D; variant ``svf-g1-s0.5-b0-c8`` of ``docs/tuning.md``): a stationary velocity field with
:data:`DEFAULT_INSTANCE`'s pyramid, gradient smoothing and crop, diffusion 0.5 on the velocity and no bending
energy (``docs/register.md``, "How the default was chosen")."""
DIFFEOMORPHIC_SMOOTHNESS = DIFFEOMORPHIC_INSTANCE.smoothness
DEFAULT_INSTANCE_2D = InstanceConfig(levels=(4, 2, 1), iterations=(60, 30, 15), smoothness=0.25, windows=(5,),
                                     gradient_sigma=1.0, crop_margin=8, diffeomorphic=True)
"""Instance optimisation of ``rlreg register`` on 2-D inputs (variant ``svf-g1-s0.25-b0-c8`` of ``docs/tuning.md``):
a stationary velocity field with diffusion 0.25 on the velocity, gradient smoothing as in 3-D. Small images run
every pyramid level at full resolution (:func:`rlreg.instance.level_factor`), where the velocity's 3x cost per
iteration is a fraction of a second. Chosen on the 2-D development set (``docs/register.md``, "How the default was
chosen")."""
FORMATS = ("slicer", "l2r", "fsl", "niftyreg", "dicom")
"""The ``--format`` exports (:data:`rlreg.pipelines.register.outputs.FORMAT_FILES`)."""
Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: called as each stage advances."""


@dataclass(frozen=True)
class RegisterSettings:
    """How ``rlreg register`` registers a pair, whatever the pair: one value serves every pair of a batch.

    Every numeric setting is range-checked on construction (and by :func:`dataclasses.replace`), so the command
    line, ``rlreg batch`` and the Python API refuse the same values before any work starts.
    """

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
    """CPU threads of torch and SimpleITK during :func:`~rlreg.pipelines.register.register` (``None``: as the
    process has them). Results repeat bit for bit for a given count; float32 sums split over another count round
    differently (the affine stage excepted: it runs on ``affine_config.threads``). ``rlreg batch`` uses it per worker
    process."""
    formats: tuple[str, ...] = ()
    save_inverse: bool = False
    save_steps: bool = False
    instance: InstanceConfig | None = None
    """The instance optimisation, for any dimensionality; ``None`` = the tuned one for the input's dimensionality
    (:func:`instance_settings` with the three requests below: :data:`DEFAULT_INSTANCE` in 3-D,
    :data:`DEFAULT_INSTANCE_2D` in 2-D). :func:`~rlreg.pipelines.register.prepare` resolves it."""
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
    body_part: str | None = None
    """``--format dicom``: ``BodyPartExamined`` of the DSRO (a PS3.16 Annex L term such as ``BRAIN``), replacing the
    input series'; required when neither input is a DICOM series that names one (``rlreg.formats.write_dicom``)."""
    laterality: str | None = None
    """``--format dicom``: ``R`` or ``L``, the side of a paired ``body_part`` (``KNEE``, ``BREAST``, ``EYE``...)."""

    def __post_init__(self) -> None:
        """Range-check every numeric setting and refuse contradicting requests (one-line :class:`InputError`)."""
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
        check_body_part(self.body_part, self.laterality)
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
        return instance_settings(self.smoothness, self.diffeomorphic, bending=self.bending, ndim=ndim)


@dataclass(frozen=True)
class RegisterOptions:
    """Which pair ``rlreg register`` registers (the files it reads and the folder it writes), and how."""

    fixed: Path
    moving: Path
    output: Path
    fixed_seg: Path | None = None
    moving_seg: Path | None = None
    fixed_mask: Path | None = None
    moving_mask: Path | None = None
    settings: RegisterSettings = field(default_factory=RegisterSettings)


def instance_settings(smoothness: float | None = None, diffeomorphic: bool = False, *,
                      bending: float | None = None, ndim: int = 3) -> InstanceConfig:
    """The instance optimisation the command line asks for on ``ndim``-D inputs: the tuned default (in 3-D
    :data:`DEFAULT_INSTANCE`, or :data:`DIFFEOMORPHIC_INSTANCE` with ``diffeomorphic``; in 2-D
    :data:`DEFAULT_INSTANCE_2D`, a velocity field already), with ``smoothness`` (the diffusion weight) and ``bending``
    (the bending-energy weight) overriding the tuned weights when given."""
    config = DEFAULT_INSTANCE_2D if ndim == 2 else DIFFEOMORPHIC_INSTANCE if diffeomorphic else DEFAULT_INSTANCE
    if smoothness is not None:
        config = replace(config, smoothness=smoothness)
    return config if bending is None else replace(config, bending=bending)
