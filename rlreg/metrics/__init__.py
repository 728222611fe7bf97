"""Registration quality metrics: label overlap (Dice), surface distance (HD95), landmark error (TRE), regularity.

Conventions follow :mod:`rlreg.spatial`: spatial axes are in the array's own order, displacements are
``(N, ndim, *S)`` voxel fields (channel ``c`` displaces tensor axis ``c``) in the pull-back direction, and
``spacing`` is the physical voxel size in mm **per tensor axis, in the same order as the array axes**.

* :mod:`rlreg.metrics.dice`: every Dice variant side by side (per label, mean, batched reward score, warped soft
  Dice), each with its semantics for absent labels and empty maps.
* :mod:`rlreg.metrics.distance`: :func:`hd95` (MONAI's percentile Hausdorff definition) and :func:`tre` in mm.
* :mod:`rlreg.metrics.jacobian`: :func:`jacobian_scores` (SDlogJ, % folding of a computed Jacobian);
  :func:`folding_percent`, :func:`sdlogj`, :func:`jacobian_determinant` come from :mod:`rlreg.spatial`.
* :mod:`rlreg.metrics.learn2reg`: the Learn2Reg challenge evaluation's own definitions, quirks included.
* :mod:`rlreg.metrics.image`: the image-to-image tasks' per-item :func:`psnr`, :func:`ssim` and :func:`l1`, over
  the whole image or inside a mask.
* :mod:`rlreg.metrics.temporal`: video temporal consistency: :func:`optical_flow` (OpenCV DIS),
  :func:`backward_warp`, the forward-backward :func:`consistency_mask` and Lai et al.'s :func:`warping_error`.
"""

from __future__ import annotations

from rlreg.metrics.dice import LabelScores, batch_dice, dice_per_label, label_values, mean_dice, warped_soft_dice
from rlreg.metrics.distance import hd95, tre
from rlreg.metrics.image import l1, psnr, ssim
from rlreg.metrics.jacobian import JacobianScores, jacobian_scores
from rlreg.metrics.learn2reg import (
    Learn2RegJacobianScores,
    learn2reg_jacobian_determinant,
    learn2reg_jacobian_scores,
    learn2reg_tre,
)
from rlreg.metrics.temporal import TemporalError, backward_warp, consistency_mask, optical_flow, warping_error
from rlreg.spatial import folding_percent, jacobian_determinant, sdlogj

__all__ = [
    "JacobianScores",
    "LabelScores",
    "Learn2RegJacobianScores",
    "TemporalError",
    "backward_warp",
    "batch_dice",
    "consistency_mask",
    "dice_per_label",
    "folding_percent",
    "hd95",
    "jacobian_determinant",
    "jacobian_scores",
    "l1",
    "label_values",
    "learn2reg_jacobian_determinant",
    "learn2reg_jacobian_scores",
    "learn2reg_tre",
    "mean_dice",
    "optical_flow",
    "psnr",
    "sdlogj",
    "ssim",
    "tre",
    "warped_soft_dice",
    "warping_error",
]
