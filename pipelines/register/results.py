"""What ``rlreg register`` returns: :class:`RegisterResult`, with typed QC, method and timing records.

:meth:`RegisterResult.to_json` is the content of ``rlreg.json``; each record serialises to the keys, in the order,
that file has always held (``docs/register.md``, "Outputs").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["MethodRecord", "QualityRecord", "RegisterResult", "TimingRecord"]


@dataclass(frozen=True)
class QualityRecord:
    """The QC numbers of a registration (``rlreg.json``'s ``qc``).

    LNCC is the squared local normalised cross-correlation (window 9) of the normalised images on the fixed grid;
    folding and SDlogJ are of the deformable part, inside the fixed mask when one is given; the Jacobian extremes
    are of the total map. Dice (mean over the labels of either map) is present with label maps only.
    """

    lncc_before: float
    """Before any registration (the moving image as it lies on the fixed grid)."""
    lncc_affine: float
    """After the affine stage."""
    lncc_after: float
    """After the whole chain."""
    folding_percent: float
    """Percentage of voxels whose deformable-part Jacobian determinant is <= 0."""
    sdlogj: float
    """Standard deviation of the log Jacobian determinant of the deformable part."""
    jacobian_min: float
    jacobian_max: float
    dice_before: float | None = None
    dice_affine: float | None = None
    dice_after: float | None = None

    @property
    def has_dice(self) -> bool:
        """Whether label maps were given (the Dice entries exist)."""
        return self.dice_after is not None or self.dice_affine is not None or self.dice_before is not None

    def to_json(self) -> dict[str, float | None]:
        """``rlreg.json``'s ``qc``: the Dice entries only with label maps."""
        record = asdict(self)
        if not self.has_dice:
            for key in ("dice_before", "dice_affine", "dice_after"):
                del record[key]
        return record


@dataclass(frozen=True)
class TimingRecord:
    """Seconds per stage (``rlreg.json``'s ``seconds``). ``deformable`` is the device time of the batch the pair ran
    in divided by its size; ``total`` is wall time for one pair, the sum of the stages in a batch."""

    read: float
    affine: float
    deformable: float
    write: float
    total: float

    def to_json(self) -> dict[str, float]:
        """``rlreg.json``'s ``seconds``."""
        return asdict(self)


@dataclass(frozen=True)
class MethodRecord:
    """What ran (``rlreg.json``'s ``method``): the affine stage, the device, and the deformable stage's own record.

    The deformable stage's record (:attr:`stage`) depends on the method: an agent names its model, checksum,
    parameters, orientation and per-phase seconds, the instance optimisation its configuration; it is kept with its
    keys in order, and its common entries are read through the properties below.
    """

    affine: str
    """How the affine stage ran, or ``"none (--no-affine)"``."""
    device: str
    """Torch device of the deformable stage."""
    cpu_threads: int
    """Torch CPU threads during the registration."""
    model_asked: str
    """The ``--model`` given, or ``"default"``."""
    stage: dict[str, Any]
    """The deformable stage's record: ``deformable`` (``rl-agent``, ``instance-optimisation`` or ``none``),
    ``model``, ``steps``, ``working_grid`` and the method's own entries."""
    note: str | None = None
    """Why this method ran when it was not an agent (affine only, or instance optimisation)."""
    affine_matrix_lps: list[list[float]] | None = None
    """Homogeneous fixed LPS -> moving LPS matrix of the affine stage (``None`` without one)."""

    @property
    def deformable(self) -> str:
        """The deformable method: ``rl-agent``, ``instance-optimisation`` or ``none``."""
        return str(self.stage["deformable"])

    @property
    def model(self) -> str | None:
        """The shipped agent that ran, ``None`` for instance optimisation."""
        return self.stage.get("model")

    @property
    def steps(self) -> int | None:
        """Agent steps, or instance-optimisation iterations."""
        return self.stage.get("steps")

    @property
    def refine(self) -> dict[str, Any] | None:
        """The refinement's record (iterations, grids, LNCC before and after), ``None`` without one."""
        return self.stage.get("refine")

    def to_json(self) -> dict[str, Any]:
        """``rlreg.json``'s ``method``: the affine and device entries, the stage's record, then the note and the
        affine matrix when present."""
        record = {"affine": self.affine, "device": self.device, "cpu_threads": self.cpu_threads,
                  "model_asked": self.model_asked, **self.stage}
        if self.note is not None:
            record["note"] = self.note
        if self.affine_matrix_lps is not None:
            record["affine_matrix_lps"] = self.affine_matrix_lps
        return record


@dataclass
class RegisterResult:
    """Everything ``rlreg.json`` holds (:meth:`to_json`), as :func:`rlreg.pipelines.register.register` returns it."""

    tool: str
    version: str
    created: str
    """UTC time the record was written (ISO 8601, seconds)."""
    conventions: dict[str, str]
    """How to read each output (:data:`rlreg.pipelines.register.outputs.CONVENTIONS`)."""
    inputs: dict[str, Any]
    """Each input's path and SHA-256 (images: also size, spacing, origin and direction)."""
    method: MethodRecord
    seconds: TimingRecord
    qc: QualityRecord
    steps: list[dict[str, float]]
    """The deformable stage's curve: similarity (agent) or loss (instance optimisation) per step."""
    outputs: dict[str, str]
    """Each written file by role (``warped``, ``warp``, ``transform``, ..., ``report``)."""
    ants_command: str
    warnings: list[str] = field(default_factory=list)
    """One line each: results that ran but may mislead (label maps that share few labels, a deformable stage that
    lowered the similarity or folds); the CLI prints them on stderr."""
    notes: list[str] = field(default_factory=list)
    """One line each: what was left out and why, not a problem with the result (Dice skipped with label maps for one
    image only: :func:`rlreg.pipelines.register.preparation.segmentation_notes`); the CLI prints them with the
    summary."""

    def to_json(self) -> dict[str, Any]:
        """The content of ``rlreg.json``."""
        record = {f: getattr(self, f) for f in self.__dataclass_fields__}
        record.update(method=self.method.to_json(), seconds=self.seconds.to_json(), qc=self.qc.to_json())
        return record
