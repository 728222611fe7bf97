"""Soft Dice of probability maps, as a score and as a loss (the other Dice variants: :mod:`rlreg.metrics.dice`)."""

from __future__ import annotations

from torch import Tensor

from rlreg.losses.reduction import Reduction, apply_reduction, check_pair, check_reduction

__all__ = ["soft_dice", "soft_dice_loss"]


# ------------------------------------------------------------------------------------------------- overlap
def soft_dice(pred: Tensor, target: Tensor, eps: float = 1e-5, include_background: bool = True,
              reduction: Reduction = "mean") -> Tensor:
    """Soft Dice per sample and label, ``(2 sum p t + eps) / (sum p + sum t + eps)``, then reduced.

    Args:
        pred: ``(N, L, *S)`` probabilities (or one-hot), 2 or 3 spatial dims.
        target: ``(N, L, *S)`` one-hot or probabilities (either batch may be 1 and broadcasts).
        eps: smoothing in numerator and denominator; a label absent from both scores 1.
        include_background: if false, channel 0 is left out (needs ``L >= 2``).
        reduction: ``mean`` -> scalar (mean over samples and labels); ``batch`` -> ``(N,)`` mean over labels;
            ``none`` -> ``(N, L)`` (``L - 1`` labels without background).

    Returns:
        Dice in ``[0, 1]``, 1 = identical.
    """
    check_reduction(reduction, ("mean", "batch", "none"))
    pred, target = check_pair(pred, target, ("pred", "target"))
    if not include_background:
        if pred.shape[1] < 2:
            raise ValueError(f"include_background=False needs at least 2 label channels, got {pred.shape[1]}")
        pred, target = pred[:, 1:], target[:, 1:]
    dims = tuple(range(2, pred.ndim))
    intersection = (pred * target).sum(dims)
    total = pred.sum(dims) + target.sum(dims)
    return apply_reduction((2.0 * intersection + eps) / (total + eps), reduction)


def soft_dice_loss(pred: Tensor, target: Tensor, eps: float = 1e-5, include_background: bool = True,
                   reduction: Reduction = "mean") -> Tensor:
    """``1 - soft_dice(...)``. Arguments as in :func:`soft_dice`."""
    return 1.0 - soft_dice(pred, target, eps, include_background, reduction)

