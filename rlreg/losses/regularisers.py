"""Smoothness of a displacement: diffusion, total variation and bending energy, and their fused gradient."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from rlreg.losses.reduction import Reduction, apply_reduction, as_float, check_reduction

__all__ = ["bending_energy", "diffusion", "regularise_", "total_variation"]


# ------------------------------------------------------------------------------------------------- smoothness
def _check_displacement(displacement: Tensor, min_size: int) -> int:
    ndim = displacement.ndim - 2
    if ndim not in (2, 3) or displacement.shape[1] != ndim:
        raise ValueError(f"displacement must be (N, ndim, *S) with ndim 2 or 3, got shape {tuple(displacement.shape)}")
    if min(displacement.shape[2:]) < min_size:
        raise ValueError(f"needs at least {min_size} voxels per axis, got {tuple(displacement.shape[2:])}")
    return ndim


def diffusion(displacement: Tensor, reduction: Reduction = "mean") -> Tensor:
    """Diffusion regulariser: squared forward differences summed over axes, averaged over channels and voxels.

    ``sum_i mean_{c, x} (u_c(x + e_i) - u_c(x))**2``, each axis' mean over the ``S_i - 1`` positions where its
    difference exists. For an affine field ``u(x) = A x + b`` this is exactly ``||A||_F**2 / ndim`` (the channel mean
    of ``|grad u_c|**2``). VoxelMorph's ``Grad('l2')`` also averages over the axes, so it equals this value
    divided by ``ndim``.

    Args:
        displacement: ``(N, ndim, *S)`` voxel displacement, at least 2 voxels per axis.
        reduction: ``mean`` -> scalar; ``batch`` -> ``(N,)``.

    Returns:
        The energy in voxel units (voxels**2 per voxel**2).
    """
    check_reduction(reduction, ("mean", "batch"))
    _check_displacement(displacement, 2)
    return apply_reduction(_QuadraticEnergy.apply(as_float(displacement), _diffusion_terms), reduction)


def _diffusion_terms(u: Tensor, gradient: Tensor | None = None, scale: float = 1.0) -> Tensor:
    """Per-sample diffusion energy ``(N,)`` of :func:`diffusion`; with ``gradient``, also adds ``scale`` times the
    gradient of its batch sum into it in place.

    The gradient of ``mean (u(x + e_i) - u(x))**2`` is the difference field itself, scattered back with opposite
    signs to both ends of each difference, so it is built while each difference is at hand.
    """
    total = u.new_zeros(u.shape[0])
    buffer = u.new_empty(u.numel())  # one allocation for the three differences: fresh memory costs page faults
    for axis in range(2, u.ndim):
        length = u.shape[axis] - 1
        d = torch.sub(u.narrow(axis, 1, length), u.narrow(axis, 0, length),
                      out=_shaped(buffer, (*u.shape[:axis], length, *u.shape[axis + 1:])))
        count = d[0].numel()
        total += torch.linalg.vecdot(d.flatten(1), d.flatten(1)) / count
        if gradient is not None:
            alpha = scale * 2.0 / count
            gradient.narrow(axis, 1, length).add_(d, alpha=alpha)
            gradient.narrow(axis, 0, length).sub_(d, alpha=alpha)
    return total


class _QuadraticEnergy(torch.autograd.Function):
    """Per-sample energy ``(N,)`` of a quadratic regulariser with its gradient written out by ``terms``
    (:func:`_diffusion_terms` or :func:`_bending_terms`, which build it while each difference is at hand), faster
    than autograd (docs/decisions.md#fused-regulariser-gradient). The
    gradient is built in the forward pass when the input needs one, and the backward pass only scales it. Not twice
    differentiable."""

    @staticmethod
    def forward(ctx, u: Tensor, terms: Callable[..., Tensor]) -> Tensor:
        gradient = torch.zeros_like(u) if ctx.needs_input_grad[0] else None
        energy = terms(u, gradient)
        ctx.save_for_backward(gradient)
        return energy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (gradient,) = ctx.saved_tensors
        return gradient * grad.view(-1, *[1] * (gradient.ndim - 1)), None


def total_variation(displacement: Tensor, reduction: Reduction = "mean") -> Tensor:
    """Anisotropic total variation: as :func:`diffusion` with absolute instead of squared differences.

    ``sum_i mean_{c, x} |u_c(x + e_i) - u_c(x)|``; for an affine field ``u(x) = A x + b`` it is
    ``sum_{c, i} |A_ci| / ndim``.

    Args:
        displacement: ``(N, ndim, *S)`` voxel displacement, at least 2 voxels per axis.
        reduction: ``mean`` -> scalar; ``batch`` -> ``(N,)``.
    """
    check_reduction(reduction, ("mean", "batch"))
    ndim = _check_displacement(displacement, 2)
    u = as_float(displacement)
    per_sample = sum(u.diff(dim=2 + axis).abs().flatten(1).mean(1) for axis in range(ndim))
    assert isinstance(per_sample, Tensor)  # ndim is 2 or 3, so the sum has terms
    return apply_reduction(per_sample, reduction)


def _interior(u: Tensor, shifts: dict[int, int] | None = None, whole: tuple[int, ...] = ()) -> Tensor:
    """The view of ``u`` on its interior (every spatial axis cropped by 1 each side, except the axes in ``whole``),
    moved by ``shifts`` voxels."""
    shifts = shifts or {}
    for axis in range(u.ndim - 2):
        if axis not in whole:
            u = u.narrow(2 + axis, 1 + shifts.get(axis, 0), u.shape[2 + axis] - 2)
    return u


def _second_difference_stencil(axis_a: int, axis_b: int) -> tuple[list[tuple[dict[int, int], float]], float]:
    """The central second difference ``d2u / dx_a dx_b`` on the interior as ``(shift, tap)`` terms and a factor
    ``c``: ``c * sum(tap * u(x + shift))``.

    Pure: ``u(x+1) - 2 u(x) + u(x-1)`` (``c = 1``); mixed: ``(u(+,+) - u(+,-) - u(-,+) + u(-,-)) / 4``
    (``c = 1/4``). Both are exact for quadratics, and the compact pure stencil (unlike differentiating a central
    gradient twice, which has width 5) also penalises a one-voxel checkerboard.
    """
    if axis_a == axis_b:
        return [({axis_a: 1}, 1.0), ({}, -2.0), ({axis_a: -1}, 1.0)], 1.0
    return [({axis_a: sa, axis_b: sb}, float(sa * sb)) for sa in (1, -1) for sb in (1, -1)], 0.25


def _shaped(buffer: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """A contiguous ``shape`` view of the start of the flat ``buffer``."""
    return buffer[:math.prod(shape)].view(shape)


def _second_differences(u: Tensor) -> Iterator[tuple[int, int, Tensor]]:
    """``(a, b, raw)`` for every axis pair ``a <= b``, ``raw`` being ``sum(tap * u(x + shift))`` of
    :func:`_second_difference_stencil` on the interior (the second difference divided by its factor ``c``).

    Each is two shifted subtractions: a pure term is a forward difference of a forward difference, a mixed one a
    central difference of a central difference. Two buffers serve every term, so ``raw`` is only valid until the
    next one is produced.
    """
    ndim = u.ndim - 2
    inner = (*u.shape[:2], *(n - 2 for n in u.shape[2:]))
    step_buffer, out_buffer = u.new_empty(u.numel()), u.new_empty(math.prod(inner))
    for a in range(ndim):
        for b in range(a, ndim):
            if a == b:
                x = _interior(u, whole=(a,))
                length = u.shape[2 + a] - 1
                step = torch.sub(x.narrow(2 + a, 1, length), x.narrow(2 + a, 0, length),
                                 out=_shaped(step_buffer, (*x.shape[:2 + a], length, *x.shape[3 + a:])))
                raw = torch.sub(step.narrow(2 + a, 1, length - 1), step.narrow(2 + a, 0, length - 1),
                                out=_shaped(out_buffer, inner))
            else:
                x = _interior(u, whole=(a, b))
                length = u.shape[2 + b] - 2
                central = torch.sub(x.narrow(2 + b, 2, length), x.narrow(2 + b, 0, length),
                                    out=_shaped(step_buffer, (*x.shape[:2 + b], length, *x.shape[3 + b:])))
                length = u.shape[2 + a] - 2
                raw = torch.sub(central.narrow(2 + a, 2, length), central.narrow(2 + a, 0, length),
                                out=_shaped(out_buffer, inner))
            yield a, b, raw


def _bending_terms(u: Tensor, gradient: Tensor | None = None, scale: float = 1.0) -> Tensor:
    """Per-sample bending energy ``(N,)`` of :func:`bending_energy`; with ``gradient``, also adds ``scale`` times the
    gradient of its batch sum into it in place.

    Each term is ``w mean (D u)**2`` for a linear stencil ``D = c * sum(tap * shift)``, so its gradient is
    ``2 w D^T (D u) / count``: the raw second difference scattered back through the stencil's shifts and taps
    (times ``2 w c**2 / count``), while it is at hand.
    """
    count = u[0].numel() // math.prod(u.shape[2:]) * math.prod(n - 2 for n in u.shape[2:])
    total = u.new_zeros(u.shape[0])
    for a, b, raw in _second_differences(u):
        taps, factor = _second_difference_stencil(a, b)
        weight = (1.0 if a == b else 2.0) * factor**2
        total += weight * torch.linalg.vecdot(raw.flatten(1), raw.flatten(1))
        if gradient is not None:
            alpha = scale * 2.0 * weight / count
            for shift, tap in taps:
                _interior(gradient, shift).add_(raw, alpha=tap * alpha)
    return total / count


def bending_energy(displacement: Tensor, reduction: Reduction = "mean") -> Tensor:
    """Bending energy: ``sum_i (d2u/dx_i2)**2 + 2 sum_{i<j} (d2u/dx_i dx_j)**2``, averaged over channels and voxels.

    Central differences on the interior voxels (see :func:`_second_difference_stencil`), so the per-channel term is
    ``||Hessian(u_c)||_F**2``. Closed forms: zero for any affine field; for a quadratic field it is the channel
    mean of ``||H_c||_F**2``, e.g. ``u_c = x_c**2`` on every channel gives ``4`` and on one channel only
    ``4 / ndim``. Identical to ``monai.losses.BendingEnergyLoss()`` (MONAI >= 1.5 stencils, ``normalize=False``).

    Args:
        displacement: ``(N, ndim, *S)`` voxel displacement, at least 3 voxels per axis.
        reduction: ``mean`` -> scalar; ``batch`` -> ``(N,)``.
    """
    check_reduction(reduction, ("mean", "batch"))
    _check_displacement(displacement, 3)
    return apply_reduction(_QuadraticEnergy.apply(as_float(displacement), _bending_terms), reduction)


@torch.no_grad()
def regularise_(displacement: Tensor, gradient: Tensor, diffusion_weight: float = 0.0,
                bending_weight: float = 0.0) -> Tensor:
    """Weighted diffusion plus bending energy per sample, its gradient added into ``gradient`` in place.

    ``diffusion_weight * diffusion(u, "batch") + bending_weight * bending_energy(u, "batch")``, whose gradient (of
    the sum over the batch) is accumulated into ``gradient``: the same numbers as putting both regularisers in the
    loss and calling ``backward``, without the zero-filled buffers and gradient accumulation of autograd. For
    optimisers that own their parameter (:mod:`rlreg.instance`: after ``backward`` of the similarity alone, pass
    ``param.grad``).

    Args:
        displacement: ``(N, ndim, *S)`` voxel displacement (at least 3 voxels per axis with bending).
        gradient: tensor of ``displacement``'s shape, updated in place.
        diffusion_weight, bending_weight: the weights, ``>= 0`` (a zero weight costs nothing).

    Returns:
        ``(N,)`` weighted energies.
    """
    ndim = _check_displacement(displacement, 3 if bending_weight else 2)
    if gradient.shape != displacement.shape:
        raise ValueError(f"gradient {tuple(gradient.shape)} must have the displacement's shape "
                         f"{tuple(displacement.shape)} ({ndim}-D)")
    u = as_float(displacement)
    total = u.new_zeros(u.shape[0])
    if diffusion_weight:
        total += diffusion_weight * _diffusion_terms(u, gradient, diffusion_weight)
    if bending_weight:
        total += bending_weight * _bending_terms(u, gradient, bending_weight)
    return total

