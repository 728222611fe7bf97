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
* :func:`soft_dice` / :func:`soft_dice_loss`: mean soft Dice over labels of ``(N, L, *S)`` probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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

Reduction = Literal["mean", "batch", "none"]
"""``mean``: scalar; ``batch``: ``(N,)`` per-sample mean; ``none``: unreduced map (where supported)."""

_AVG_POOL = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)


# ------------------------------------------------------------------------------------------------- helpers
def _check_reduction(reduction: str, allowed: tuple[str, ...]) -> None:
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {allowed}, got {reduction!r}")


def _reduce(values: Tensor, reduction: str) -> Tensor:
    """``(N, ...)`` -> scalar (``mean``), ``(N,)`` (``batch``) or unchanged (``none``)."""
    if reduction == "mean":
        return values.mean()
    if reduction == "batch":
        return values.reshape(values.shape[0], -1).mean(1)
    return values


def _float_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype if dtype.is_floating_point else torch.get_default_dtype()


def _check_pair(a: Tensor, b: Tensor, names: tuple[str, str]) -> tuple[Tensor, Tensor]:
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
    dtype = _float_dtype(a, b)
    return a.to(dtype), b.to(dtype)


def _check_window(window: int) -> int:
    if isinstance(window, bool) or int(window) != window or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd integer, got {window!r}")
    return int(window)


def _box_sum_forward(x: Tensor, window: int) -> Tensor:
    # Per axis, sums of shifted views added in place, as exact as a direct sum (no running cumsum). On CPU 9x faster
    # than the equivalent 1-D convolutions (oneDNN handles 1-channel, 1-D kernels poorly: 0.35 s vs 0.04 s for 5 maps
    # of 96x90x93, window 7, one thread). Widths double (1, 2, 4, ...) and the binary digits of ``window`` pick
    # which to add: about ``2 log2(window)`` memory passes per axis instead of ``window`` (window 5: 3 instead of 5,
    # window 9: 4 instead of 9).
    for axis in range(2, x.ndim):
        valid = x.shape[axis] - window + 1
        out, start, block, width, rest = None, 0, x, 1, window  # block[i] = sum of x[i : i + width]
        while True:
            if rest & 1:
                part = block.narrow(axis, start, valid)
                out = part.clone() if out is None else out.add_(part)
                start += width
            rest >>= 1
            if not rest:
                break
            length = block.shape[axis] - width
            block = block.narrow(axis, 0, length) + block.narrow(axis, width, length)
            width *= 2
        assert out is not None  # window >= 1 has at least one set bit
        x = out
    return x


class _BoxSum(torch.autograd.Function):
    """Valid box sum whose backward is again a box sum (of the gradient zero padded by ``window - 1``).

    The adjoint of a valid all-ones correlation is the full one. Written out so the backward is as cheap as the
    forward (autograd through the in-place shifted adds would keep every intermediate). The backward is again this
    function, so double backward works.
    """

    @staticmethod
    def forward(ctx, x: Tensor, window: int) -> Tensor:
        ctx.window = window
        return _box_sum_forward(x, window)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        window = ctx.window
        return _BoxSum.apply(F.pad(grad, [window - 1] * (2 * (grad.ndim - 2))), window), None


def _box_sum(x: Tensor, window: int) -> Tensor:
    """Sum of ``x`` over every ``window**ndim`` box that fits inside it ("valid"): ``(B, 1, *S)`` ->
    ``(B, 1, *(S - window + 1))``.

    Separable: one pass per axis, so the cost is ``ndim * w`` per voxel instead of ``w**ndim``.
    """
    return _BoxSum.apply(x, window) if x.requires_grad else _box_sum_forward(x, window)


def _lncc_maps(fixed: Tensor, moving: Tensor, windows: Sequence[int], eps: float) -> list[Tensor]:
    """Per-channel squared local NCC ``(N, C, *S)`` for each window, of two validated tensors of one shape and dtype.

    The images are zero padded (the window sees zeros outside the image), then each is shifted by its own mean.
    The value is exactly invariant to shifting an image *together with its padding*, so the shift changes nothing
    but the rounding: ``sum f^2 - (sum f)^2 / n`` no longer cancels catastrophically for intensities far from 0
    (CT in HU in float32). The shift is a constant of the function, hence detached: the gradient stays exact.
    """
    return _moving_lncc_maps(_FixedStatistics.of(fixed, windows), moving, eps)


class _FixedStatistics:
    """What the local NCC needs of the fixed image alone, per window: its padded, mean-shifted copy, the box sums of
    it and the box variances. Computed once, they serve every moving image compared with it (:class:`FixedLNCC`)."""

    def __init__(self, padded: Tensor, windows: list[int], sums: list[Tensor], variances: list[Tensor]) -> None:
        self.padded, self.windows, self.sums, self.variances = padded, windows, sums, variances

    @classmethod
    def of(cls, fixed: Tensor, windows: Sequence[int]) -> _FixedStatistics:
        n, c, *spatial = fixed.shape
        ndim = len(spatial)
        windows = list(windows)
        radius = max(windows) // 2
        dims = tuple(range(2, 2 + ndim))
        f = F.pad(fixed, [radius] * (2 * ndim)) - fixed.detach().mean(dims, keepdim=True)
        fixed_stats = torch.stack([f, f * f]).reshape(2 * n * c, 1, *f.shape[2:])
        sums, variances = [], []
        for window in windows:
            f_sum, ff_sum = _box_sum(fixed_stats[_crop(f, window, radius)], window).reshape(2, n, c, *spatial).unbind(0)
            sums.append(f_sum)
            # Variances are >= 0 in exact arithmetic; clamp the rounding error so the denominator stays >= eps.
            variances.append((ff_sum - f_sum * f_sum / float(window**ndim)).clamp_min(0.0))
        return cls(f, windows, sums, variances)


def _crop(padded: Tensor, window: int, radius: int) -> tuple:
    """Index of the part of a ``radius``-padded ``(B, 1, *S)`` stack a ``window``-wide valid box sum needs."""
    margin = radius - window // 2
    return (Ellipsis, *[slice(margin, padded.shape[a] - margin) for a in range(2, padded.ndim)])


def _moving_lncc_maps(fixed: _FixedStatistics, moving: Tensor, eps: float, stationary: bool = False) -> list[Tensor]:
    """:func:`_lncc_maps` with the fixed image's part already computed (``stationary``: see :class:`FixedLNCC`)."""
    n, c, *spatial = moving.shape
    ndim = len(spatial)
    radius = max(fixed.windows) // 2
    f = fixed.padded
    m = F.pad(moving, [radius] * (2 * ndim)) - moving.detach().mean(tuple(range(2, 2 + ndim)), keepdim=True)
    moving_stats = torch.stack([m, m * m, f * m]).reshape(3 * n * c, 1, *m.shape[2:])
    maps = []
    for window, f_sum, var_f in zip(fixed.windows, fixed.sums, fixed.variances, strict=True):
        m_sum, mm_sum, fm_sum = _box_sum(moving_stats[_crop(m, window, radius)], window).reshape(
            3, n, c, *spatial).unbind(0)
        size = float(window**ndim)
        # Sums, not means, over the window (VoxelMorph, MONAI): cross = sum (f - mean f)(m - mean m), same for the
        # variances. The padded zeros count as window values, so Cauchy-Schwarz holds and cc <= 1 everywhere.
        cross = fm_sum - f_sum * m_sum / size
        var_m = (mm_sum - m_sum * m_sum / size).clamp_min(0.0)
        if stationary:
            maps.append((var_f * var_f / (var_f * var_f + eps) * cross * cross / (var_f * var_m + eps * eps))
                        .clamp_max(1.0))
        else:
            maps.append(cross * cross / (var_f * var_m + eps))
    return maps


class FixedLNCC:
    """:func:`multiscale_lncc` against one fixed image, whose part of the computation is done once.

    For loops that compare many moving images (or one moving image under many displacements) with the same fixed
    image, e.g. instance optimisation: each call then filters 3 moving-image maps per window instead of 5 maps.
    ``FixedLNCC(fixed, windows, weights)(moving)`` equals ``multiscale_lncc(fixed, moving, windows, weights)`` up to
    rounding, gradients included (the fixed image's statistics are constants of the call, so no gradient reaches
    ``fixed``).

    With ``stationary=True`` each window's value is ``w * cross**2 / (var_f * var_m + eps**2)`` with the weight
    ``w = var_f**2 / (var_f**2 + eps)`` of the fixed window alone (clamped to 1). The usual ``cross**2 / (var_f *
    var_m + eps)`` weights a window by ``var_f * var_m / (var_f * var_m + eps)``, which grows with the *moving*
    window's contrast (``s**2 v**2 / (s**2 v**2 + eps)`` for a window scaled by ``s``), so it is not maximised where
    the moving image equals the fixed one: wherever ``var_f * var_m`` is comparable to ``eps`` (low-contrast tissue,
    the edge of a zero background) it pulls an image registered to itself off the identity. Weighting by the fixed
    window alone, each window is largest (up to ``eps**2``) where the moving window equals the fixed one, and the
    value matches the usual form wherever both windows are alike. It is a score for checking an optimiser's result;
    its gradient is steep where the moving window is flat.

    Args:
        fixed: ``(N, C, *S)`` fixed image, 2 or 3 spatial dims.
        windows, weights, eps: as in :func:`multiscale_lncc` (no ``downsample``).
        stationary: the form above, whose maximum is ``moving == fixed``.
    """

    def __init__(self, fixed: Tensor, windows: Sequence[int] = (9, 7, 5), weights: Sequence[float] = (1.0, 0.5, 0.25),
                 eps: float = 1e-5, stationary: bool = False) -> None:
        self.windows = [_check_window(w) for w in windows]
        self.weights = _check_weights(self.windows, weights)
        if fixed.ndim not in (4, 5):
            raise ValueError(f"fixed must be (N, C, *S) with 2 or 3 spatial dims, got shape {tuple(fixed.shape)}")
        fixed = _as_float(fixed)
        self.shape, self.eps, self.stationary = fixed.shape, eps, stationary
        with torch.no_grad():
            self.statistics = _FixedStatistics.of(fixed, self.windows)

    def __call__(self, moving: Tensor, reduction: Reduction = "mean") -> Tensor:
        """Similarity of ``(N, C, *S)`` ``moving`` (the fixed image's shape) to the fixed image, in ``[0, 1]``;
        ``reduction`` as in :func:`multiscale_lncc`."""
        _check_reduction(reduction, ("mean", "batch", "none"))
        if moving.shape != self.shape:
            raise ValueError(f"moving {tuple(moving.shape)} must have the fixed image's shape {tuple(self.shape)}")
        maps = _moving_lncc_maps(self.statistics, moving.to(self.statistics.padded.dtype), self.eps,
                                 self.stationary)
        return _weighted(maps, self.weights, reduction)


def _check_weights(windows: list[int], weights: Sequence[float]) -> list[float]:
    weights = [float(w) for w in weights]
    if not windows or len(windows) != len(weights):
        raise ValueError(f"need one weight per window, got windows {windows} and weights {weights}")
    if min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
    return weights


def _weighted(maps: list[Tensor], weights: list[float], reduction: Reduction) -> Tensor:
    """``sum_k w_k reduce(mean over channels of maps[k]) / sum_k w_k``."""
    total = sum(w * _reduce(cc.mean(1, keepdim=True), reduction) for w, cc in zip(weights, maps, strict=True))
    assert isinstance(total, Tensor)
    return total / sum(weights)


# ------------------------------------------------------------------------------------------------- similarity
def lncc(fixed: Tensor, moving: Tensor, window: int = 9, eps: float = 1e-5, reduction: Reduction = "mean") -> Tensor:
    """Squared local normalised cross-correlation (VoxelMorph's ``NCC``), ``1`` = perfect, ``0`` = unrelated.

    At each voxel, over the ``window**ndim`` box centred on it (zero padding outside the image)::

        cc = cross**2 / (var_f * var_m + eps),   cross = sum (f - mean f)(m - mean m),   var_f = sum (f - mean f)**2

    with *sums* over the box (as VoxelMorph and MONAI), so ``eps`` is negligible unless a window is nearly flat.
    The value lies in ``[0, 1]`` (up to rounding) and is symmetric in its arguments. In the interior it is
    invariant to ``f -> a f + b`` (``a != 0``). Within ``window // 2`` of the border the padded zeros count as
    image values: they break that invariance and correlate any two images that are far from zero there (harmless
    for medical images with a zero background). A window flat in either image scores 0.

    Args:
        fixed: ``(N, C, *S)`` image, 2 or 3 spatial dims.
        moving: ``(N, C, *S)`` image (either batch may be 1 and broadcasts).
        window: odd box width in voxels, the same along every axis.
        eps: added to the denominator; with ``eps = 0`` a flat window gives NaN.
        reduction: ``mean`` -> scalar; ``batch`` -> ``(N,)``; ``none`` -> ``(N, 1, *S)`` map. Channels are averaged.

    Returns:
        The similarity in the dtype of the inputs.
    """
    _check_reduction(reduction, ("mean", "batch", "none"))
    fixed, moving = _check_pair(fixed, moving, ("fixed", "moving"))
    (cc,) = _lncc_maps(fixed, moving, [_check_window(window)], eps)
    return _reduce(cc.mean(1, keepdim=True), reduction)


def _downsample(x: Tensor) -> Tensor:
    """Halve the grid: 3-wide average, stride 2, padding excluded from the average (the authors' pyramid)."""
    return _AVG_POOL[x.ndim - 3](x, kernel_size=3, stride=2, padding=1, count_include_pad=False)


def multiscale_lncc(fixed: Tensor, moving: Tensor, windows: Sequence[int] = (9, 7, 5),
                    weights: Sequence[float] = (1.0, 0.5, 0.25), eps: float = 1e-5, reduction: Reduction = "mean",
                    downsample: bool = False) -> Tensor:
    """Weighted multi-window squared local NCC, **normalised by the sum of the weights**, so it stays in ``[0, 1]``.

    ``sum_k weights[k] * lncc(fixed, moving, windows[k]) / sum_k weights[k]``. The defaults (windows 9/7/5,
    weights 1, 1/2, 1/4) are the auxiliary similarity of SPAC / RL-I2IT. The public SPAC code differs in two
    ways: it evaluates scale ``k`` on images average-pooled ``k`` times (window 9 at full, 7 at half, 5 at quarter
    resolution: ``downsample=True``), and it adds the unnormalised terms ``sum_k w_k (1 - ncc_k)`` (range
    ``[0, 1.75]``): multiply :func:`multiscale_lncc_loss` by ``sum(weights)`` to match that scale relative to the
    smoothness weight.

    Args:
        fixed: ``(N, C, *S)`` image, 2 or 3 spatial dims.
        moving: ``(N, C, *S)`` image (either batch may be 1 and broadcasts).
        windows: odd box widths in voxels, one per scale.
        weights: non-negative weight per scale, with a positive sum.
        eps: see :func:`lncc`.
        reduction: ``mean`` -> scalar; ``batch`` -> ``(N,)``; ``none`` -> ``(N, 1, *S)`` map (not with
            ``downsample``, whose scales live on different grids).
        downsample: if true, scale ``k`` is computed on the images average-pooled ``k`` times (3-wide, stride 2),
            an image pyramid as in the authors' code; if false (default) every window sees the full resolution.

    Returns:
        The similarity in the dtype of the inputs.
    """
    _check_reduction(reduction, ("mean", "batch", "none"))
    if downsample and reduction == "none":
        raise ValueError("reduction='none' is not available with downsample=True (scales differ in grid size)")
    windows = [_check_window(w) for w in windows]
    weights = _check_weights(windows, weights)
    fixed, moving = _check_pair(fixed, moving, ("fixed", "moving"))
    if downsample:
        maps = []
        for k, window in enumerate(windows):
            if k > 0:
                fixed, moving = _downsample(fixed), _downsample(moving)
            maps += _lncc_maps(fixed, moving, [window], eps)
    else:
        maps = _lncc_maps(fixed, moving, windows, eps)  # one padding and one set of products for all windows
    return _weighted(maps, weights, reduction)


def lncc_loss(fixed: Tensor, moving: Tensor, window: int = 9, eps: float = 1e-5,
              reduction: Reduction = "mean") -> Tensor:
    """``1 - lncc(...)``: ``0`` for a perfect match, at most ``1``. Arguments as in :func:`lncc`."""
    return 1.0 - lncc(fixed, moving, window, eps, reduction)


def multiscale_lncc_loss(fixed: Tensor, moving: Tensor, windows: Sequence[int] = (9, 7, 5),
                         weights: Sequence[float] = (1.0, 0.5, 0.25), eps: float = 1e-5,
                         reduction: Reduction = "mean", downsample: bool = False) -> Tensor:
    """``1 - multiscale_lncc(...)``, in ``[0, 1]``. Arguments as in :func:`multiscale_lncc`."""
    return 1.0 - multiscale_lncc(fixed, moving, windows, weights, eps, reduction, downsample)


# ------------------------------------------------------------------------------------------------- smoothness
def _check_displacement(displacement: Tensor, min_size: int) -> int:
    ndim = displacement.ndim - 2
    if ndim not in (2, 3) or displacement.shape[1] != ndim:
        raise ValueError(f"displacement must be (N, ndim, *S) with ndim 2 or 3, got shape {tuple(displacement.shape)}")
    if min(displacement.shape[2:]) < min_size:
        raise ValueError(f"needs at least {min_size} voxels per axis, got {tuple(displacement.shape[2:])}")
    return ndim


def _as_float(x: Tensor) -> Tensor:
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


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
    _check_reduction(reduction, ("mean", "batch"))
    _check_displacement(displacement, 2)
    return _reduce(_QuadraticEnergy.apply(_as_float(displacement), _diffusion_terms), reduction)


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
    (:func:`_diffusion_terms` or :func:`_bending_terms`, which build it while each difference is at hand): a third
    of autograd's time for diffusion, 2.5x faster for bending energy (85 -> 35 ms) on a 2 mm brain field. The
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
    _check_reduction(reduction, ("mean", "batch"))
    ndim = _check_displacement(displacement, 2)
    u = _as_float(displacement)
    per_sample = cast(Tensor, sum(u.diff(dim=2 + axis).abs().flatten(1).mean(1) for axis in range(ndim)))
    return _reduce(per_sample, reduction)


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
    _check_reduction(reduction, ("mean", "batch"))
    _check_displacement(displacement, 3)
    return _reduce(_QuadraticEnergy.apply(_as_float(displacement), _bending_terms), reduction)


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
    u = _as_float(displacement)
    total = u.new_zeros(u.shape[0])
    if diffusion_weight:
        total += diffusion_weight * _diffusion_terms(u, gradient, diffusion_weight)
    if bending_weight:
        total += bending_weight * _bending_terms(u, gradient, bending_weight)
    return total


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
    _check_reduction(reduction, ("mean", "batch", "none"))
    pred, target = _check_pair(pred, target, ("pred", "target"))
    if not include_background:
        if pred.shape[1] < 2:
            raise ValueError(f"include_background=False needs at least 2 label channels, got {pred.shape[1]}")
        pred, target = pred[:, 1:], target[:, 1:]
    dims = tuple(range(2, pred.ndim))
    intersection = (pred * target).sum(dims)
    total = pred.sum(dims) + target.sum(dims)
    return _reduce((2.0 * intersection + eps) / (total + eps), reduction)


def soft_dice_loss(pred: Tensor, target: Tensor, eps: float = 1e-5, include_background: bool = True,
                   reduction: Reduction = "mean") -> Tensor:
    """``1 - soft_dice(...)``. Arguments as in :func:`soft_dice`."""
    return 1.0 - soft_dice(pred, target, eps, include_background, reduction)


# ------------------------------------------------------------------------------------------------- modules
class LNCCLoss(nn.Module):
    """:func:`lncc_loss` as a module: ``forward(fixed, moving)`` -> ``1 - lncc``."""

    def __init__(self, window: int = 9, eps: float = 1e-5, reduction: Reduction = "mean") -> None:
        super().__init__()
        self.window = _check_window(window)
        self.eps = eps
        _check_reduction(reduction, ("mean", "batch", "none"))
        self.reduction: Reduction = reduction

    def forward(self, fixed: Tensor, moving: Tensor) -> Tensor:
        """``(N, C, *S)`` images -> loss reduced as configured."""
        return lncc_loss(fixed, moving, self.window, self.eps, self.reduction)


class MultiScaleLNCCLoss(nn.Module):
    """:func:`multiscale_lncc_loss` as a module: ``forward(fixed, moving)`` -> ``1 - multiscale_lncc``."""

    def __init__(self, windows: Sequence[int] = (9, 7, 5), weights: Sequence[float] = (1.0, 0.5, 0.25),
                 eps: float = 1e-5, reduction: Reduction = "mean", downsample: bool = False) -> None:
        super().__init__()
        self.windows = tuple(_check_window(w) for w in windows)
        self.weights = tuple(float(w) for w in weights)
        self.eps = eps
        _check_reduction(reduction, ("mean", "batch", "none"))
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
        _check_reduction(reduction, ("mean", "batch"))
        self.reduction: Reduction = reduction

    def forward(self, displacement: Tensor) -> Tensor:
        """``(N, ndim, *S)`` voxel displacement -> energy reduced as configured."""
        return diffusion(displacement, self.reduction)


class BendingEnergyLoss(nn.Module):
    """:func:`bending_energy` as a module: ``forward(displacement)``."""

    def __init__(self, reduction: Reduction = "mean") -> None:
        super().__init__()
        _check_reduction(reduction, ("mean", "batch"))
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
        _check_reduction(reduction, ("mean", "batch", "none"))
        self.reduction: Reduction = reduction

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """``(N, L, *S)`` probabilities and one-hot target -> loss reduced as configured."""
        return soft_dice_loss(pred, target, self.eps, self.include_background, self.reduction)
