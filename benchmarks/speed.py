"""rlreg's default 3-D registration against ANTs SyN and Greedy, side by side, at 1 and 2 CPU threads.

``python -m benchmarks.speed --datasets abagen2,mni2 --pairs 4 --threads 1,2`` registers the first ``pairs`` pairs
of each dataset with every method at every thread count, each method in a fresh child process
(:func:`benchmarks.models.run_dataset`: ``rlreg batch --workers 0 --model none`` for rlreg, whose 3-D default is the
instance optimisation; :mod:`benchmarks.peers` for the others), scores them all with ``rlreg evaluate`` and writes
``docs/benchmarks.md``'s section between ``<!-- speed:begin -->`` and ``<!-- speed:end -->`` (raw numbers in
``docs/benchmarks_speed.json``).

Columns: Dice and HD95 over the labels both maps share; folding over the whole fixed grid and **inside the brain**
(voxels where the fixed image exceeds 1 % of its maximum, the Jacobian of the written ``warp.nii.gz``); seconds
per pair = each method's own in-process record, inputs read to outputs written (tool loading excluded); the ratio
of rlreg's seconds to each peer's at the same thread count, from the same invocation. The targets the section
checks: rlreg at most half of every peer's seconds, Dice at least every peer's + 0.01, folding in the brain under
0.1 %.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import describe_machine, fmt_value, load_average, write_section
from benchmarks.models import DATASETS, VXM_MODEL, dataset_csv, row_key, run_dataset

__all__ = ["BEGIN", "END", "brain_folding", "main", "render"]

BEGIN, END = "<!-- speed:begin -->", "<!-- speed:end -->"
MODULE = "benchmarks.speed"
RLREG = "rlreg-instance"
PEERS = ("syn", "greedy")
BRAIN_FRACTION = 0.01
"""Voxels of the fixed image above this fraction of its maximum count as brain for the folding column."""
TARGET_RATIO, TARGET_MARGIN, TARGET_FOLDING = 0.5, 0.01, 0.1


def brain_folding(folder: Path, pairs_csv: Path) -> list[float]:
    """Per finished pair of a method's output ``folder``, the percentage of brain voxels of the fixed image whose
    Jacobian determinant (of the written ``warp.nii.gz``, physical space) is ``<= 0``."""
    import torch

    from rlreg.data.pairs import read_pairs
    from rlreg.io import read_image
    from rlreg.transforms import read_transform, world_jacobian

    values = []
    for pair in read_pairs(pairs_csv):
        warp_path = folder / pair.id / "warp.nii.gz"
        if not warp_path.exists():
            continue
        fixed = read_image(pair.fixed)
        field = read_transform(warp_path, fixed.geometry)
        brain = fixed.data > BRAIN_FRACTION * fixed.data.max()
        jac = world_jacobian(field, fixed.geometry)
        values.append(float(100.0 * (jac[brain] <= 0).to(torch.float64).mean()))
    return values


def render(store: dict[str, Any], environment: dict[str, Any], command: str) -> str:
    """The section: one table per dataset, rows per (method, threads), with rlreg's ratios and the targets."""
    lines = [BEGIN, "## Speed side by side: rlreg's default against ANTs SyN and Greedy (1 and 2 threads)", "",
             f"`python -m {MODULE}` (its command and machine under each table).", "",
             "* **rlreg**: `rlreg batch --model none` (the 3-D default: affine, then instance optimisation); "
             "**syn**: `ants.registration(f, m, \"SyN\")` (seed 1); **greedy**: Greedy's documented brain recipe "
             "(`-a -dof 12 -ia-image-centers -n 100x50x10 -m NCC 2x2x2`, then `-it affine -n 100x50x10 -m NCC "
             "2x2x2`, seed 1). Each (method, threads) ran in its own child process, one after the other, on an "
             "otherwise idle machine.",
             "* *s/pair*: the method's own in-process record, inputs read to every output written (loading the tool "
             "excluded); *vs syn* / *vs greedy*: rlreg's s/pair over the peer's at the same thread count. *folding % "
             "brain*: Jacobian <= 0 inside the fixed image's brain (> 1 % of its maximum).",
             f"* Targets: rlreg at most {TARGET_RATIO}x every peer's seconds, Dice >= every peer's + "
             f"{TARGET_MARGIN}, folding in the brain < {TARGET_FOLDING} %.", ""]
    for name, data in store.items():
        env = data.get("environment", environment)
        lines += [f"### {name}: {DATASETS[name]}, first {data['pairs']} pairs", "",
                  f"Command: `{data.get('command', command)}`. {env.get('cpu', '')}; torch {env.get('torch', '')}; "
                  f"{env.get('date', '')}; load {env.get('load', '')}.", "",
                  "| method | threads | Dice mean ± sd | HD95 (mm) | folding % grid | folding % brain | s/pair | "
                  "deformable s/pair | vs syn | vs greedy |", "|---|---|---|---|---|---|---|---|---|---|"]
        verdicts = []
        for threads in data["threads"]:
            rows = data["rows"]
            own = rows.get(row_key(RLREG, threads))
            for method in (RLREG, *PEERS):
                r = rows.get(row_key(method, threads))
                if r is None:
                    continue
                ratios = ["", ""]
                if method == RLREG:
                    ratios = [fmt_value(r["seconds_per_pair"] / rows[row_key(p, threads)]["seconds_per_pair"], 2) + "x"
                              if row_key(p, threads) in rows else "n/a" for p in PEERS]
                lines.append(f"| {'rlreg' if method == RLREG else method} | {threads} | {fmt_value(r['dice_mean'])} ± "
                             f"{fmt_value(r['dice_sd'])} | {fmt_value(r['hd95_mm'], 2)} | "
                             f"{fmt_value(r['folding_percent'])} | "
                             f"{fmt_value(r.get('brain_folding_percent'))} | {fmt_value(r['seconds_per_pair'], 2)} | "
                             f"{fmt_value(r['model_seconds_per_pair'], 2)} | {ratios[0]} | {ratios[1]} |")
            if own is not None:
                peers = [rows[row_key(p, threads)] for p in PEERS if row_key(p, threads) in rows]
                fast = all(own["seconds_per_pair"] <= TARGET_RATIO * p["seconds_per_pair"] for p in peers)
                accurate = all(own["dice_mean"] >= p["dice_mean"] + TARGET_MARGIN for p in peers)
                smooth = (own.get("brain_folding_percent") or 0.0) < TARGET_FOLDING
                verdicts.append(f"{threads} thread(s): speed {'met' if fast else 'missed'}, Dice margin "
                                f"{'met' if accurate else 'missed'}, folding {'met' if smooth else 'missed'}")
        lines += ["", "Targets: " + "; ".join(verdicts) + ".", ""]
    lines.append(END)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="abagen2,mni2")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--methods", default=",".join((RLREG, *PEERS)))
    parser.add_argument("--root", type=Path, default=Path("out"), help="datasets and work folders")
    parser.add_argument("--results", type=Path, default=Path("docs/benchmarks_speed.json"))
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--render-only", action="store_true", help="rewrite the section from --results, run nothing")
    args = parser.parse_args(argv)
    command = " ".join(["python -m", MODULE, *(argv if argv is not None else sys.argv[1:])])
    load = load_average()
    store = json.loads(args.results.read_text()) if args.results.exists() else {}
    if args.render_only:
        write_section(args.output, render(store, describe_machine(load, args.root), command), BEGIN, END)
        return
    methods = [m for m in args.methods.split(",") if m]
    for dataset in args.datasets.split(","):
        counts = [int(t) for t in args.threads.split(",")]
        rows: dict[str, Any] = {}
        for threads in counts:
            result = run_dataset(dataset, methods, args.pairs, args.root, 0, VXM_MODEL, threads)
            subset = args.root / "benchmark_models" / dataset / f"pairs_{args.pairs}.csv"
            for key, record in result["methods"].items():
                folder = args.root / "benchmark_models" / dataset / f"{record['method']}-{threads}t"
                folding = brain_folding(folder, subset)
                record["brain_folding_percent"] = statistics.fmean(folding) if folding else None
                record["brain_folding_percent_max"] = max(folding) if folding else None
                record.pop("dice", None)
                rows[key] = record
        dataset_csv(dataset, args.root)
        store[dataset] = {"pairs": args.pairs, "threads": counts, "rows": rows, "command": command,
                          "environment": describe_machine(load, args.root)}
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(store, indent=1) + "\n")
    write_section(args.output, render(store, describe_machine(load, args.root), command), BEGIN, END)


if __name__ == "__main__":
    main()
