"""The Learn2Reg challenge evaluation's own definitions, quirks included, for numbers comparable with its leaderboards.

Each function reproduces one piece of ``MDL-UzL/L2R:evaluation/utils.py`` and ``evaluation.py`` (eval version 2.0,
commit 8847509), written independently from their description (no code copied) and pinned by tests against closed
forms. rlreg's own definitions are in :mod:`rlreg.metrics.distance` and :mod:`rlreg.metrics.jacobian`.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Sequence
from types import ModuleType
from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from rlreg.metrics.distance import SpacingLike
from rlreg.spatial import determinant_from_gradients

__all__ = ["LEARN2REG_JACOBIAN_CROP", "LEARN2REG_JACOBIAN_OFFSET", "Learn2RegJacobianScores",
           "learn2reg_hd95", "learn2reg_jacobian_determinant", "learn2reg_jacobian_scores", "learn2reg_tre",
           "learn2reg_warp_labels", "surface_distance_module"]


LEARN2REG_JACOBIAN_OFFSET = 3.0
"""What the Learn2Reg evaluation adds to ``J`` before ``log`` and before counting foldings (its "+3" quirk)."""
LEARN2REG_JACOBIAN_CROP = 2
"""Voxels the Learn2Reg Jacobian drops at each end of every axis."""


def learn2reg_jacobian_determinant(displacement: Tensor) -> Tensor:
    """Jacobian determinant exactly as the Learn2Reg evaluation computes it (its ``utils.jacobian_determinant``).

    Reproduces ``MDL-UzL/L2R:evaluation/utils.py`` (``jacobian_determinant``, commit 8847509, used by
    ``evaluation.py`` eval version 2.0): derivatives by correlation with the central-difference kernel
    ``[-0.5, 0, 0.5]`` along each axis (zero padding outside the grid), ``I`` added, and the result cropped by
    :data:`LEARN2REG_JACOBIAN_CROP` = 2 voxels at both ends of every axis, so the zero padding never reaches the
    returned values. Unlike :func:`rlreg.spatial.jacobian_determinant` (one-sided differences at the borders, same
    size as the input) the output is smaller than the field. No offset is added here (see
    :func:`learn2reg_jacobian_scores`).

    The determinant is invariant under a common permutation of the spatial axes and the channels, so the result is
    the same for rlreg's tensor order ``(k, j, i)`` as for Learn2Reg's nibabel order ``(i, j, k)`` (transposed).
    Written independently from the description above (no code copied); pinned by tests against closed forms.

    Args:
        displacement: ``(N, ndim, *S)`` voxel displacement, channel ``c`` along spatial axis ``c`` (both rlreg's and
            Learn2Reg's convention), 2D or 3D, at least 5 voxels per axis.

    Returns:
        ``(N, 1, *(S - 4))`` determinant, dtype and device of ``displacement``.
    """
    ndim = displacement.ndim - 2
    if ndim not in (2, 3) or displacement.shape[1] != ndim:
        raise ValueError(f"displacement must be (N, ndim, *S) with ndim 2 or 3, got {tuple(displacement.shape)}")
    crop = LEARN2REG_JACOBIAN_CROP
    if min(displacement.shape[2:]) < 2 * crop + 1:
        raise ValueError(f"the Learn2Reg Jacobian needs >= {2 * crop + 1} voxels per axis, got "
                         f"{tuple(displacement.shape[2:])}")
    inner = tuple(slice(crop, n - crop) for n in displacement.shape[2:])

    def derivative(axis: int) -> Tensor:
        # 0.5 * (u[x + 1] - u[x - 1]) at the kept voxels, along spatial axis `axis`
        ahead = list(inner)
        behind = list(inner)
        n = displacement.shape[2 + axis]
        ahead[axis] = slice(crop + 1, n - crop + 1)
        behind[axis] = slice(crop - 1, n - crop - 1)
        return 0.5 * (displacement[(slice(None), slice(None), *ahead)]
                      - displacement[(slice(None), slice(None), *behind)])

    return determinant_from_gradients([derivative(axis) for axis in range(ndim)])


class Learn2RegJacobianScores(NamedTuple):
    """Learn2Reg's regularity numbers, each ``(N,)``.

    Attributes:
        sdlogj: population standard deviation of ``log(clip(J + 3, 1e-9, 1e9))`` (the "+3" quirk).
        num_foldings: Learn2Reg's ``num_foldings``: voxels with ``clip(J + 3, 1e-9, 1e9) <= 0``. The clip makes
            this **always 0**; it is reproduced as the script computes it, not as its name suggests.
        folding_percent: what ``num_foldings`` was meant to count: the percentage of the cropped voxels with
            ``J <= 0`` (no offset), on the same Jacobian.
    """

    sdlogj: Tensor
    num_foldings: Tensor
    folding_percent: Tensor


def learn2reg_jacobian_scores(displacement: Tensor, mask: Tensor | None = None) -> Learn2RegJacobianScores:
    """SDlogJ and foldings exactly as the Learn2Reg evaluation reports them (``evaluation.py``, eval version 2.0).

    Reproduces the ``sdlogj`` branch of ``MDL-UzL/L2R:evaluation/evaluation.py``: ``J`` from
    :func:`learn2reg_jacobian_determinant`, then ``log(clip(J + 3, 1e-9, 1e9))`` and its numpy ``std()``
    (population, ``ddof=0``), over the mask cropped like ``J`` when one is given (their ``masked_evaluation``).

    The "+3" is a quirk of that script: it is not ``std(log J)``. With ``J = 1 + e`` for a small deformation,
    ``log(J + 3) ≈ log 4 + e / 4``, so the quirk's SDlogJ is about **a quarter** of the plain one, and a folded
    voxel (``J <= 0``) is not an outlier (``log`` of a number in ``(0, 3]``) unless ``J <= -3``.

    Args:
        displacement: ``(N, ndim, *S)`` voxel displacement (channel ``c`` along spatial axis ``c``).
        mask: optional ``(N, 1, *S)`` (or ``(1, 1, *S)``) region on the *uncropped* grid; non-zero = inside.

    Returns:
        :class:`Learn2RegJacobianScores`.
    """
    det = learn2reg_jacobian_determinant(displacement)
    shifted = (det + LEARN2REG_JACOBIAN_OFFSET).clamp(1e-9, 1e9)
    logs = shifted.log()
    n = det.shape[0]
    if mask is None:
        keep = [torch.ones(det.shape[2:], dtype=torch.bool, device=det.device)] * n
    else:
        crop = LEARN2REG_JACOBIAN_CROP
        inner = tuple(slice(crop, s - crop) for s in mask.shape[2:])
        cropped = mask[(slice(None), slice(None), *inner)].expand(n, 1, *det.shape[2:])
        keep = [m[0] != 0 for m in cropped]
    sd = torch.stack([logs[i, 0][keep[i]].std(correction=0) for i in range(n)])
    folds = torch.stack([(shifted[i, 0][keep[i]] <= 0).sum().to(det.dtype) for i in range(n)])
    percent = torch.stack([100.0 * (det[i, 0][keep[i]] <= 0).to(det.dtype).mean() for i in range(n)])
    return Learn2RegJacobianScores(sd, folds, percent)


def learn2reg_tre(fixed_points: Tensor | np.ndarray, moving_points: Tensor | np.ndarray,
                  displacement: Tensor | np.ndarray, moving_spacing: SpacingLike) -> Tensor:
    """Target registration error per landmark, in mm, exactly as the Learn2Reg evaluation computes it.

    Reproduces ``compute_tre`` of ``MDL-UzL/L2R:evaluation/utils.py`` (commit 8847509): every displacement
    component is read at the fixed landmarks by ``scipy.ndimage.map_coordinates`` with its defaults (**cubic**
    spline, ``order=3``; ``mode='constant'``, zero outside the grid), then
    ``|| (p_f + u(p_f) - p_m) * spacing_moving ||``. :func:`tre` differs in reading ``u`` linearly with border
    padding and in taking the spacing as an argument; both agree for fields that are linear near the landmarks.

    Args:
        fixed_points: ``(P, ndim)`` voxel coordinates in the fixed image, in the field's axis order.
        moving_points: ``(P, ndim)`` corresponding voxel coordinates in the moving image.
        displacement: ``(ndim, *S)`` or ``(1, ndim, *S)`` voxel displacement on the fixed grid (pull-back, channel
            ``c`` along axis ``c``).
        moving_spacing: moving voxel size in mm per axis, in the same order (a single number means isotropic).

    Returns:
        ``(P,)`` float64 errors in mm (on the CPU).
    """
    field = displacement.detach().cpu().numpy() if isinstance(displacement, Tensor) else np.asarray(displacement)
    if field.ndim >= 4 and field.shape[0] == 1 and field.shape[1] == field.ndim - 2:
        field = field[0]
    ndim = field.shape[0]
    if field.ndim != ndim + 1:
        raise ValueError(f"displacement must be (ndim, *S) or (1, ndim, *S), got {tuple(np.shape(displacement))}")
    fixed = np.asarray(fixed_points.detach().cpu() if isinstance(fixed_points, Tensor) else fixed_points,
                       dtype=np.float64)
    moving = np.asarray(moving_points.detach().cpu() if isinstance(moving_points, Tensor) else moving_points,
                        dtype=np.float64)
    if fixed.shape != moving.shape or fixed.ndim != 2 or fixed.shape[1] != ndim:
        raise ValueError(f"fixed and moving points must both be (P, {ndim}); got {fixed.shape} and {moving.shape}")
    spacing = np.asarray(moving_spacing.detach().cpu() if isinstance(moving_spacing, Tensor) else moving_spacing,
                         dtype=np.float64).reshape(-1)
    if spacing.size == 1:
        spacing = np.full(ndim, spacing[0])
    if spacing.size != ndim:
        raise ValueError(f"moving_spacing needs {ndim} values (one per axis), got {spacing.size}")
    sampled = np.stack([ndimage.map_coordinates(field[c].astype(np.float64), fixed.T) for c in range(ndim)], axis=1)
    return torch.from_numpy(np.linalg.norm((fixed + sampled - moving) * spacing, axis=1))


def learn2reg_warp_labels(moving_seg: Tensor, chain: Tensor) -> Tensor:
    """Learn2Reg's label warping: ``map_coordinates(moving, identity + disp, order=0)`` (nearest, zero outside).

    Args:
        moving_seg: ``(1, 1, *S)`` integer labels on the fixed grid's shape (CPU).
        chain: ``(1, ndim, *S)`` voxel displacement on the fixed grid (channel ``c`` along axis ``c``).

    Returns:
        ``(1, 1, *S)`` warped labels, dtype of ``moving_seg``.
    """
    field = chain[0].double().numpy()
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in field.shape[1:]], indexing="ij"))
    warped = ndimage.map_coordinates(moving_seg[0, 0].numpy(), grid + field, order=0)
    return torch.from_numpy(warped)[None, None]


def surface_distance_module() -> ModuleType | None:
    """DeepMind's ``surface_distance`` package (what Learn2Reg's HD95 calls), or ``None`` when not installed."""
    try:
        import surface_distance
    except ImportError:
        return None
    return surface_distance


def learn2reg_hd95(warped: Tensor, fixed: Tensor, labels: Sequence[int], scored: Collection[int]) -> np.ndarray | None:
    """Per-label HD95 in **voxels** exactly as Learn2Reg's ``compute_hd95`` (``compute_robust_hausdorff(..., 95)`` of
    ``compute_surface_distances(fixed == l, warped == l, ones)``), or ``None`` without the ``surface-distance``
    package (then :func:`rlreg.metrics.hd95` with unit spacing is the closest definition).

    Args:
        warped: ``(1, 1, *S)`` warped moving labels (CPU).
        fixed: ``(1, 1, *S)`` fixed labels.
        labels: label values, in the order wanted.
        scored: labels Learn2Reg scores (present in the fixed and the unwarped moving map); others are ``NaN``.

    Returns:
        ``(L,)`` float64: ``NaN`` for a label not scored, ``inf`` for a label the warp lost, as Learn2Reg.
    """
    surface = surface_distance_module()
    if surface is None:
        return None
    f, w = fixed[0, 0].numpy().T, warped[0, 0].numpy().T  # nibabel axis order, as Learn2Reg loads them
    ones = np.ones(f.ndim)

    def robust_hausdorff(v: int) -> float:
        if v not in scored:
            return np.nan
        if not (w == v).any():  # a lost label: inf, as surface-distance gives (its code for it fails on numpy 2)
            return np.inf
        with warnings.catch_warnings():  # it imports from scipy namespaces that SciPy has deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            distances = surface.compute_surface_distances(f == v, w == v, ones)
        return float(surface.compute_robust_hausdorff(distances, 95.0))

    return np.array([robust_hausdorff(v) for v in labels], dtype=np.float64)
