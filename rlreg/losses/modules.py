"""The losses as thin ``nn.Module`` wrappers of the functions (options fixed at construction)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from rlreg.losses.overlap import soft_dice_loss
from rlreg.losses.reduction import Reduction, check_reduction, check_window
from rlreg.losses.regularisers import bending_energy, diffusion
from rlreg.losses.similarity import lncc_loss, multiscale_lncc_loss

__all__ = ["BendingEnergyLoss", "DiffusionLoss", "LNCCLoss", "MultiScaleLNCCLoss", "SoftDiceLoss"]


class LNCCLoss(nn.Module):
    """:func:`lncc_loss` as a module: ``forward(fixed, moving)`` -> ``1 - lncc``."""

    def __init__(self, window: int = 9, eps: float = 1e-5, reduction: Reduction = "mean") -> None:
        super().__init__()
        self.window = check_window(window)
        self.eps = eps
        check_reduction(reduction, ("mean", "batch", "none"))
        self.reduction: Reduction = reduction

    def forward(self, fixed: Tensor, moving: Tensor) -> Tensor:
        """``(N, C, *S)`` images -> loss reduced as configured."""
        return lncc_loss(fixed, moving, self.window, self.eps, self.reduction)


class MultiScaleLNCCLoss(nn.Module):
    """:func:`multiscale_lncc_loss` as a module: ``forward(fixed, moving)`` -> ``1 - multiscale_lncc``."""

    def __init__(self, windows: Sequence[int] = (9, 7, 5), weights: Sequence[float] = (1.0, 0.5, 0.25),
                 eps: float = 1e-5, reduction: Reduction = "mean", downsample: bool = False) -> None:
        super().__init__()
        self.windows = tuple(check_window(w) for w in windows)
        self.weights = tuple(float(w) for w in weights)
        self.eps = eps
        check_reduction(reduction, ("mean", "batch", "none"))
        self.reduction: Reduction = reduction
        self.downsample = downsample

    def forward(self, fixed: Tensor, moving: Tensor) -> Tensor:
        """``(N, C, *S)`` images -> loss reduced as configured."""
        return multiscale_lncc_loss(fixed, moving, self.windows, self.weights, self.eps, self.reduction,
                                    self.downsample)


class DiffusionLoss(nn.Module):
    """:func:`diffusion` as a module: ``forward(displacement)``."""

    def __init__(self, reduction: Reduction = "mean") -> None:
        super().__init__()
        check_reduction(reduction, ("mean", "batch"))
        self.reduction: Reduction = reduction

    def forward(self, displacement: Tensor) -> Tensor:
        """``(N, ndim, *S)`` voxel displacement -> energy reduced as configured."""
        return diffusion(displacement, self.reduction)


class BendingEnergyLoss(nn.Module):
    """:func:`bending_energy` as a module: ``forward(displacement)``."""

    def __init__(self, reduction: Reduction = "mean") -> None:
        super().__init__()
        check_reduction(reduction, ("mean", "batch"))
        self.reduction: Reduction = reduction

    def forward(self, displacement: Tensor) -> Tensor:
        """``(N, ndim, *S)`` voxel displacement -> energy reduced as configured."""
        return bending_energy(displacement, self.reduction)


class SoftDiceLoss(nn.Module):
    """:func:`soft_dice_loss` as a module: ``forward(pred, target)`` -> ``1 - soft_dice``."""

    def __init__(self, eps: float = 1e-5, include_background: bool = True, reduction: Reduction = "mean") -> None:
        super().__init__()
        self.eps = eps
        self.include_background = include_background
        check_reduction(reduction, ("mean", "batch", "none"))
        self.reduction: Reduction = reduction

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """``(N, L, *S)`` probabilities and one-hot target -> loss reduced as configured."""
        return soft_dice_loss(pred, target, self.eps, self.include_background, self.reduction)

