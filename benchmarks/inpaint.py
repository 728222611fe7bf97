"""Inpainting benchmark: classical methods, a one-step network, the aux-only and the full RL agents side by side.

``python -m benchmarks.inpaint --dataset inpaint-photos --items 100 --model inpaint-photo --aux-only-model PATH
--onestep-budget-minutes M`` evaluates, on the same fixed held-out items (batch 1, CPU): OpenCV Telea and
Navier-Stokes, scikit-image biharmonic, mean fill, the task's push-pull fill, a one-step U-Net of the agent's
parameter count trained for the same wall time with the same L1 + SNGAN loss (:mod:`benchmarks.i2i_baselines`),
and the step-wise agents run with :func:`rlreg.rollout.rollout`. Columns: PSNR and SSIM inside the hole and over
the image, L1 in the hole, the uncalibrated VGG16 distance, seconds per image, parameters, peak memory. Writes the
dataset's section of ``docs/benchmarks.md`` and ``docs/img/bench_<dataset>.png``.

``python -m benchmarks.inpaint ablation --seeds 0 1 2 --budget-minutes M`` trains one-step, aux-only step-wise
(``agent.sac.rl_weight=0``) and full RL for ``M`` minutes each per seed and reports mean ± sd (resumable).
"""

from __future__ import annotations

from collections.abc import Sequence

from benchmarks.i2i_eval import main as _main

__all__ = ["DATASETS", "main"]

DATASETS = ("inpaint-photos", "inpaint-mri", "inpaint-faces")
"""The registered inpainting datasets (``rlreg.data.registry.DATASETS``)."""


def main(argv: Sequence[str] | None = None) -> None:
    _main("inpainting", "python -m benchmarks.inpaint", DATASETS, argv)


if __name__ == "__main__":
    main()
