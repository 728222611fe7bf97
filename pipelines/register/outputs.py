"""The output folder of ``rlreg register``: its file names, conventions and writers, and how runs share a folder.

A folder holding ``rlreg.json`` (:data:`SIDECAR`) holds a finished registration: every file is written atomically,
``rlreg.json`` last. A run records what it is writing (:data:`WRITING_RECORD`) so that the files of a killed run are
known to be rlreg's and the next run removes them; a folder holding files rlreg did not write is refused. ``rlreg
batch`` writes :data:`ERROR_RECORD` in the folder of a pair that failed. :func:`read_pair_record` reads a folder's
state back.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from rlreg.io import Geometry, InputError, atomic_output
from rlreg.pipelines.register.options import RegisterOptions

__all__ = ["CONVENTIONS", "ERROR_RECORD", "FORMAT_FILES", "OUTPUT_NAMES", "SIDECAR", "WRITING_RECORD", "PairRecord",
           "abandon_outputs", "ants_command", "begin_outputs", "check_output_dir", "check_writable", "end_outputs",
           "export_formats", "planned_outputs", "read_pair_record", "recorded_outputs", "remove_temporary_files",
           "step_files", "unwritable"]

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


def unwritable(output: Path, err: OSError) -> InputError:
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


def planned_outputs(opts: RegisterOptions, *, affine: bool, segmentation: bool) -> set[Path]:
    """The files (relative to the output folder) a run with ``opts`` writes; ``steps`` stands for that folder."""
    names = {"warped.nii.gz", "warp.nii.gz", "transform.h5", "jacdet.nii.gz", "overview.png"}
    names |= {"affine.mat"} if affine else set()
    names |= {"warped_seg.nii.gz"} if segmentation else set()
    names |= {"inverse_warp.nii.gz"} if opts.settings.save_inverse else set()
    names |= {"steps"} if opts.settings.save_steps else set()
    for name in opts.settings.formats:
        if name == "l2r":
            from rlreg import formats

            names.add(formats.l2r_name(opts.fixed, opts.moving))
        elif name in FORMAT_FILES:
            names.add(FORMAT_FILES[name])
    return {Path(name) for name in names}


def step_files(count: int) -> set[Path]:
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
        raise unwritable(output, err) from None
    return earlier


def end_outputs(output: Path, earlier: set[Path], *, written: dict[str, str], steps: int) -> None:
    """After ``rlreg.json`` is written: remove the earlier runs' files this run did not rewrite (the outputs of
    other options, ``disp_*`` of other pairs, surplus step files), then :data:`WRITING_RECORD`.

    ``written`` is ``rlreg.json``'s ``outputs`` (paths by role), ``steps`` the number of steps ``--save-steps``
    wrote (0 without it)."""
    kept = {Path(path).relative_to(output) for key, path in written.items() if key != "steps"}
    _remove_outputs(output, earlier - kept - (step_files(steps) if steps else set()))
    (output / WRITING_RECORD).unlink(missing_ok=True)


def abandon_outputs(output: Path) -> None:
    """A failed write stage: remove every file :data:`WRITING_RECORD` lists (this run's and the earlier runs', whose
    ``rlreg.json`` is gone) and the record, so that no outputs stay without an ``rlreg.json``. Does nothing unless a
    write stage began and did not finish."""
    if (output / SIDECAR).exists() or not (output / WRITING_RECORD).exists():
        return
    _remove_outputs(output, recorded_outputs(output) | {Path(WRITING_RECORD)})
    remove_temporary_files(output)


def ants_command(ndim: int, fixed: Path, *, moving: Path, out: Path) -> str:
    """The ``antsApplyTransforms`` call that reproduces ``warped.nii.gz`` from the written field, each path quoted
    for a POSIX shell (spaces, quotes and non-ASCII names paste as they are)."""
    import shlex

    return (f"antsApplyTransforms -d {ndim} -i {shlex.quote(str(moving))} -r {shlex.quote(str(fixed))} "
            f"-t {shlex.quote(str(out / 'warp.nii.gz'))} -o {shlex.quote(str(out / 'warped_ants.nii.gz'))}")


def export_formats(opts: RegisterOptions, total: Tensor, *, chain: Tensor, geometry: Geometry) -> dict[str, Path]:
    """Write the ``--format`` exports of a field into ``opts.output`` (:data:`FORMAT_FILES`); returns them by format.

    Args:
        opts: the run's options (``settings.formats``, the output folder, the pair's paths for names and DICOM).
        total: ``(1, ndim, *F)`` total fixed -> moving displacement in LPS mm on ``geometry``.
        chain: ``(1, ndim, *F)`` the same map as a voxel displacement into the moving grid (Learn2Reg's form).
        geometry: the grid both fields lie on.
    """
    if not opts.settings.formats:
        return {}
    from rlreg import formats

    u = np.moveaxis(total[0].numpy(), 0, -1)
    out, written = opts.output, {}
    for name in opts.settings.formats:
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
            written["dicom"] = formats.write_dicom(u, geometry, out / "registration.dcm", refs[0], refs[1],
                                                   body_part=opts.settings.body_part,
                                                   laterality=opts.settings.laterality)
    return written


@dataclass
class PairRecord:
    """What an output folder says about its registration (read by batch, evaluate and the report alike)."""

    status: str
    """``done`` (``rlreg.json`` readable), ``failed`` (``error.json``), ``unfinished`` (a folder with neither, or a
    cut ``rlreg.json``: killed while writing it) or ``todo`` (no folder)."""
    record: dict[str, Any] | None = None
    """``rlreg.json`` when done."""
    error: dict[str, Any] | None = None
    """``error.json`` when failed (``{"error": ...}`` naming the problem when it is unreadable)."""

    @property
    def message(self) -> str | None:
        """The failure's one-line message."""
        return None if self.error is None else " ".join(str(self.error.get("error") or "failed").split())


def read_pair_record(folder: Path) -> PairRecord:
    """The status and records of one output folder (in a batch, ``OUTDIR/<pair-id>``)."""
    if (folder / SIDECAR).exists():
        try:
            record = json.loads((folder / SIDECAR).read_text())
        except (OSError, json.JSONDecodeError):
            return PairRecord("unfinished")
        return PairRecord("done", record=record) if isinstance(record, dict) else PairRecord("unfinished")
    if (folder / ERROR_RECORD).exists():
        try:
            error = json.loads((folder / ERROR_RECORD).read_text())
        except (OSError, json.JSONDecodeError):
            error = None
        return PairRecord("failed", error=error if isinstance(error, dict) else
                          {"error": f"failed ({ERROR_RECORD} unreadable)"})
    return PairRecord("unfinished" if folder.exists() else "todo")
