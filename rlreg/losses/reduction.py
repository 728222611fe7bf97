"""Shared by the losses: the reductions they offer and the checks of their inputs.

Reductions: ``"mean"`` gives a scalar; ``"batch"`` gives one value per sample, ``(N,)`` (per-pair RL rewards);
``"none"`` (where offered) gives the unreduced map. ``"mean"`` always equals the mean of ``"batch"``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["Reduction", "apply_reduction", "as_float", "check_pair", "check_reduction", "check_window", "float_dtype"]

Reduction = Literal["mean", "batch", "none"]
"""``mean``: scalar; ``batch``: ``(N,)`` per-sample mean; ``none``: unreduced map (where supported)."""



def check_reduction(reduction: str, allowed: tuple[str, ...]) -> None:
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {allowed}, got {reduction!r}")


def apply_reduction(values: Tensor, reduction: str) -> Tensor:
    """``(N, ...)`` -> scalar (``mean``), ``(N,)`` (``batch``) or unchanged (``none``)."""
    if reduction == "mean":
        return values.mean()
    if reduction == "batch":
        return values.reshape(values.shape[0], -1).mean(1)
    return values


def float_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype if dtype.is_floating_point else torch.get_default_dtype()


def check_pair(a: Tensor, b: Tensor, names: tuple[str, str]) -> tuple[Tensor, Tensor]:
    """Validate two ``(N, C, *S)`` tensors of one shape (a batch of 1 broadcasts); cast to a common float dtype."""
    ndim = a.ndim - 2
    if ndim not in (2, 3):
        raise ValueError(f"{names[0]} must be (N, C, *S) with 2 or 3 spatial dims, got shape {tuple(a.shape)}")
    batch_ok = a.shape[0] == b.shape[0] or 1 in (a.shape[0], b.shape[0])
    if a.shape[1:] != b.shape[1:] or not batch_ok:
        raise ValueError(f"{names[0]} {tuple(a.shape)} and {names[1]} {tuple(b.shape)} must have the same shape "
                         "(a batch of 1 broadcasts)")
    if a.shape[0] != b.shape[0]:
        batch = max(a.shape[0], b.shape[0])
        a, b = a.expand(batch, *a.shape[1:]), b.expand(batch, *b.shape[1:])
    dtype = float_dtype(a, b)
    return a.to(dtype), b.to(dtype)


def check_window(window: int) -> int:
    """``window`` as an int, checked to be a positive odd number of voxels."""
    if isinstance(window, bool) or int(window) != window or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd integer, got {window!r}")
    return int(window)


def as_float(x: Tensor) -> Tensor:
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())
