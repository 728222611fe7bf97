"""Translation benchmark: a pix2pix-style one-step network, the aux-only and the full RL agents side by side.

``python -m benchmarks.translate --dataset translate-labels-t1 --items 100 --model translate-labels-t1
--aux-only-model PATH --onestep-budget-minutes M`` evaluates, on the same fixed held-out items (batch 1, CPU): a
pix2pix-style U-Net with a conditional spectrally normalised PatchGAN (L1 + SNGAN hinge), of the agent's parameter
count and trained for the same wall time (:mod:`benchmarks.i2i_baselines`), and the step-wise agents run with
:func:`rlreg.rollout.rollout`. Columns: PSNR and SSIM over the image, L1, the uncalibrated VGG16 distance, seconds per
image, parameters, peak memory. Writes the dataset's section of ``docs/benchmarks.md`` and
``docs/img/bench_<dataset>.png``.

``python -m benchmarks.translate ablation --seeds 0 1 2 --budget-minutes M`` trains one-step, aux-only step-wise
(``agent.sac.rl_weight=0``) and full RL for ``M`` minutes each per seed and reports mean ± sd (resumable).
"""

from __future__ import annotations

from collections.abc import Sequence

from benchmarks.i2i_eval import main as _main

__all__ = ["DATASETS", "main"]

DATASETS = ("translate-labels-t1", "translate-tissue-t1", "translate-edges-photo", "translate-superpixels-photo")
"""The registered translation datasets (``rlreg.data.registry.DATASETS``)."""


def main(argv: Sequence[str] | None = None) -> None:
    _main("translation", "python -m benchmarks.translate", DATASETS, argv)


if __name__ == "__main__":
    main()
