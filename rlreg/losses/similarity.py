"""Similarity of two images: squared local normalised cross-correlation (LNCC), single- and multi-scale."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rlreg.losses.reduction import Reduction, apply_reduction, as_float, check_pair, check_reduction, check_window

__all__ = ["FixedLNCC", "lncc", "lncc_loss", "multiscale_lncc", "multiscale_lncc_loss"]

_AVG_POOL = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)

def _box_sum_forward(x: Tensor, window: int) -> Tensor:
    # Per axis, sums of shifted views added in place, as exact as a direct sum (no running cumsum), and faster on CPU
    # than the equivalent 1-D convolutions (docs/decisions.md#box-sums-as-shifted-views). Widths double (1, 2, 4, ...)
    # and the binary digits of ``window`` pick
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
        assert out is not None  # window >= 1 has a set binary digit, so some part was added
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
        self.windows = [check_window(w) for w in windows]
        self.weights = _check_weights(self.windows, weights)
        if fixed.ndim not in (4, 5):
            raise ValueError(f"fixed must be (N, C, *S) with 2 or 3 spatial dims, got shape {tuple(fixed.shape)}")
        fixed = as_float(fixed)
        self.shape, self.eps, self.stationary = fixed.shape, eps, stationary
        with torch.no_grad():
            self.statistics = _FixedStatistics.of(fixed, self.windows)

    def __call__(self, moving: Tensor, reduction: Reduction = "mean") -> Tensor:
        """Similarity of ``(N, C, *S)`` ``moving`` (the fixed image's shape) to the fixed image, in ``[0, 1]``;
        ``reduction`` as in :func:`multiscale_lncc`."""
        check_reduction(reduction, ("mean", "batch", "none"))
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
    total = sum(w * apply_reduction(cc.mean(1, keepdim=True), reduction) for w, cc in zip(weights, maps, strict=True))
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
    check_reduction(reduction, ("mean", "batch", "none"))
    fixed, moving = check_pair(fixed, moving, ("fixed", "moving"))
    (cc,) = _lncc_maps(fixed, moving, [check_window(window)], eps)
    return apply_reduction(cc.mean(1, keepdim=True), reduction)


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
    check_reduction(reduction, ("mean", "batch", "none"))
    if downsample and reduction == "none":
        raise ValueError("reduction='none' is not available with downsample=True (scales differ in grid size)")
    windows = [check_window(w) for w in windows]
    weights = _check_weights(windows, weights)
    fixed, moving = check_pair(fixed, moving, ("fixed", "moving"))
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

