"""Similarity, smoothness and overlap losses for 2D and 3D registration: pure functions, then thin modules.

Conventions follow :mod:`rlreg.spatial`: images are ``(N, C, *S)``, displacements ``(N, ndim, *S)`` in voxel
units (channel ``c`` displaces tensor axis ``c``), ``ndim = x.ndim - 2`` is 2 or 3 and one code path serves both.
Every function follows the device and dtype of its inputs (integer inputs are promoted to the default float
dtype) and raises ``ValueError`` for shapes it cannot use.

Reductions: ``"mean"`` gives a scalar; ``"batch"`` gives one value per sample, ``(N,)`` (per-pair RL rewards);
``"none"`` (where offered) gives the unreduced map. ``"mean"`` always equals the mean of ``"batch"``.

* :func:`lncc` / :func:`multiscale_lncc`: squared local normalised cross-correlation in ``[0, 1]`` (1 = perfect),
  and ``lncc_loss = 1 - lncc``. The multi-scale form is the auxiliary similarity of SPAC / RL-I2IT.
* :func:`diffusion`, :func:`total_variation`, :func:`bending_energy`: regularisers of a displacement, in voxel
  units, all "per channel, summed over derivative terms, averaged over channels and voxels", so for an affine
  field ``u(x) = A x + b`` diffusion is ``||A||_F^2 / ndim``, and for a quadratic field bending energy is the
  channel mean of ``||Hessian(u_c)||_F^2`` (``u_c = x_c^2`` on every channel gives 4).
* :func:`soft_dice` / :func:`soft_dice_loss`: mean soft Dice over labels of ``(N, L, *S)`` probabilities (the
  other Dice variants, with their semantics side by side, are in :mod:`rlreg.metrics.dice`).

Modules: :mod:`~rlreg.losses.similarity`, :mod:`~rlreg.losses.regularisers`, :mod:`~rlreg.losses.overlap`,
:mod:`~rlreg.losses.modules` (``nn.Module`` wrappers) and :mod:`~rlreg.losses.reduction` (what they share).
"""


from __future__ import annotations

from rlreg.losses.modules import BendingEnergyLoss, DiffusionLoss, LNCCLoss, MultiScaleLNCCLoss, SoftDiceLoss
from rlreg.losses.overlap import soft_dice, soft_dice_loss
from rlreg.losses.reduction import Reduction
from rlreg.losses.regularisers import bending_energy, diffusion, regularise_, total_variation
from rlreg.losses.similarity import FixedLNCC, lncc, lncc_loss, multiscale_lncc, multiscale_lncc_loss

__all__ = [
    "BendingEnergyLoss",
    "DiffusionLoss",
    "FixedLNCC",
    "LNCCLoss",
    "MultiScaleLNCCLoss",
    "Reduction",
    "SoftDiceLoss",
    "bending_energy",
    "diffusion",
    "lncc",
    "lncc_loss",
    "multiscale_lncc",
    "multiscale_lncc_loss",
    "regularise_",
    "soft_dice",
    "soft_dice_loss",
    "total_variation",
]
