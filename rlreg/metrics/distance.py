"""Distances between registered structures, in mm: per-label percentile Hausdorff (HD95) and landmark error (TRE).

Conventions follow :mod:`rlreg.spatial`: spatial axes are in the array's own order, displacements are
``(N, ndim, *S)`` voxel fields (channel ``c`` displaces tensor axis ``c``) in the pull-back direction, and
``spacing`` is the physical voxel size in mm **per tensor axis, in the same order as the array axes**.

* :func:`hd95`: per-label percentile Hausdorff distance in mm, defined exactly as MONAI's
  ``compute_hausdorff_distance(percentile=95, directed=False, spacing=...)``.
* :func:`tre`: per-landmark target registration error in mm, as in Learn2Reg.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from rlreg.metrics.dice import DIRECT_COUNT_LIMIT, LabelScores, LabelsLike
from rlreg.spatial import sample_points

__all__ = ["SpacingLike", "hd95", "tre"]

SpacingLike = float | Sequence[float] | Tensor | np.ndarray
"""Voxel size in mm per tensor axis (a single number means isotropic)."""


def _spatial_array(x: Tensor | np.ndarray, ndim: int) -> np.ndarray:
    """Label map as a CPU numpy array of its last ``ndim`` axes (leading axes must be singletons)."""
    arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if arr.ndim < ndim or any(n != 1 for n in arr.shape[: arr.ndim - ndim]):
        raise ValueError(f"label map of shape {arr.shape} is not (*S) or (1, ..., 1, *S) with {ndim} spatial dims")
    arr = arr.reshape(arr.shape[arr.ndim - ndim:])
    return np.rint(arr).astype(np.int64) if np.issubdtype(arr.dtype, np.floating) else arr.astype(np.int64)


def _spacing_tuple(spacing: SpacingLike, pred: Tensor | np.ndarray) -> tuple[float, ...]:
    values = np.asarray(spacing.detach().cpu() if isinstance(spacing, Tensor) else spacing, dtype=np.float64)
    if values.size == 1:  # isotropic: spatial dims are the shape without a leading (1, 1) batch/channel
        shape = tuple(pred.shape)
        ndim = len(shape) - 2 if len(shape) >= 4 and shape[:2] == (1, 1) else len(shape)
        values = np.full(ndim, float(values.reshape(-1)[0]))
    if values.ndim != 1 or values.size not in (2, 3) or not np.all(values > 0):
        raise ValueError(f"spacing must be positive, one value per spatial axis; got {spacing!r}")
    return tuple(float(v) for v in values)


def _percentile(distances: np.ndarray, percentile: float) -> float:
    # Linear interpolation between order statistics, as torch.quantile (used by MONAI) and numpy's default.
    return float(np.percentile(distances, percentile))


def hd95(pred: Tensor | np.ndarray, target: Tensor | np.ndarray, spacing: SpacingLike,
         labels: LabelsLike = None, percentile: float = 95.0) -> LabelScores:
    """Per-label percentile Hausdorff distance in mm (the symmetric 95th-percentile surface distance by default).

    Same definition as MONAI's ``compute_hausdorff_distance(percentile=..., directed=False, spacing=...)``:

    1. the surface of a mask is its voxels removed by one binary erosion with the face-connected (cross)
       structuring element, the outside of the image counting as background;
    2. each surface voxel of one mask gets the Euclidean distance (in mm, via ``spacing``) to the nearest
       surface voxel of the other mask (``scipy.ndimage.distance_transform_edt(sampling=spacing)``);
    3. per direction, the ``percentile`` of those distances (linear interpolation); the result is the larger
       of the two directions.

    Distances are exact Euclidean distances between voxel centres; runs on CPU with numpy/scipy (tensors are
    copied to the host) and loops over labels, each one cropped to its own bounding box.

    Args:
        pred: integer label map ``(*S)`` or ``(1, 1, *S)`` (any leading singleton axes), 2D or 3D.
        target: label map of the same shape.
        spacing: voxel size in mm per spatial tensor axis, in the array's axis order (e.g. SimpleITK's
            ``GetSpacing()[::-1]`` for a ``GetArrayFromImage`` array); a single number means isotropic.
        labels: label values to score; ``None``: every value in either map except ``0``, ascending.
        percentile: in ``[0, 100]``; ``100`` gives the classical Hausdorff distance.

    Returns:
        :class:`LabelScores`: ``values`` ``(L,)`` in mm (default float dtype, on ``pred``'s device) and
        ``labels`` ``(L,)`` int64. ``NaN`` for a label absent from both maps, ``inf`` for one present in only one.

    Two deliberate differences from MONAI, both in its degenerate cases: MONAI returns ``NaN`` for a label present
    in only one map when a percentile is set (``torch.quantile`` of all-``inf`` distances), and it reads
    ``percentile=0`` as "no percentile" (the maximum) where this returns the minimum distance.
    """
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    sampling = _spacing_tuple(spacing, pred)
    ndim = len(sampling)
    a = _spatial_array(pred, ndim)
    b = _spatial_array(target, ndim)
    if a.shape != b.shape:
        raise ValueError(f"pred and target differ in spatial shape: {a.shape} vs {b.shape}")
    device = pred.device if isinstance(pred, Tensor) else torch.device("cpu")
    lo = min(int(a.min()), int(b.min())) if a.size else 0
    hi = max(int(a.max()), int(b.max())) if a.size else 0
    direct = lo >= 0 and hi < max(DIRECT_COUNT_LIMIT, a.size)  # small non-negative values: count/look up directly
    if labels is None:
        if direct:
            lab = np.flatnonzero(np.bincount(a.ravel(), minlength=hi + 1) + np.bincount(b.ravel(), minlength=hi + 1))
        else:
            lab = np.union1d(np.unique(a), np.unique(b))
        lab = lab[lab != 0]
    else:
        lab = np.asarray(labels.detach().cpu() if isinstance(labels, Tensor) else labels, dtype=np.int64).reshape(-1)
    # Index maps 1..K (0 = not scored) so that scipy's find_objects gives all bounding boxes in one pass each.
    table = np.unique(lab)
    ia, ib = _index_map(a, table, hi if direct else None), _index_map(b, table, hi if direct else None)
    boxes_a = ndimage.find_objects(ia, max_label=table.size)
    boxes_b = ndimage.find_objects(ib, max_label=table.size)
    structure = ndimage.generate_binary_structure(ndim, 1)
    scores = np.empty(table.size, dtype=np.float64)
    for k in range(table.size):
        box_a, box_b = boxes_a[k], boxes_b[k]
        if box_a is None or box_b is None:
            scores[k] = np.nan if box_a is None and box_b is None else np.inf
            continue
        # Crop to the bounding box of the union of the two masks plus a 1-voxel margin (clipped to the image), as
        # MONAI does. This is exact: every voxel of either mask keeps its whole erosion neighbourhood inside the
        # crop (or outside the image, which the erosion reads as background either way), so the surfaces are
        # unchanged; and every surface voxel of both masks lies inside the crop, so the nearest surface voxel
        # found by the distance transform on the crop is the global nearest one. Cost: O(box) per label
        # instead of O(image).
        box = tuple(slice(max(min(sa.start, sb.start) - 1, 0), min(max(sa.stop, sb.stop) + 1, n))
                    for sa, sb, n in zip(box_a, box_b, a.shape, strict=True))
        mask_a = ia[box] == k + 1
        mask_b = ib[box] == k + 1
        surf_a = mask_a & ~ndimage.binary_erosion(mask_a, structure=structure, border_value=0)
        surf_b = mask_b & ~ndimage.binary_erosion(mask_b, structure=structure, border_value=0)
        # EDT of the complement of a surface = distance to its nearest surface voxel.
        a_to_b = ndimage.distance_transform_edt(~surf_b, sampling=sampling)[surf_a]
        b_to_a = ndimage.distance_transform_edt(~surf_a, sampling=sampling)[surf_b]
        scores[k] = max(_percentile(a_to_b, percentile), _percentile(b_to_a, percentile))
    values = scores[np.searchsorted(table, lab)] if lab.size else scores[:0]
    return LabelScores(torch.as_tensor(values, dtype=torch.get_default_dtype(), device=device),
                       torch.as_tensor(lab, dtype=torch.int64, device=device))


def _index_map(arr: np.ndarray, table: np.ndarray, hi: int | None) -> np.ndarray:
    """Map label values to ``1..K`` by their position in the sorted ``table``; values not in it map to 0.

    ``hi``: when given, every value of ``arr`` is in ``[0, hi]`` and a lookup table of ``hi + 1`` entries is used.
    """
    k = table.size
    if k == 0:
        return np.zeros(arr.shape, dtype=np.int32)
    if hi is not None:
        lut = np.zeros(hi + 1, dtype=np.int32)
        inside = (table >= 0) & (table <= hi)
        lut[table[inside]] = np.flatnonzero(inside).astype(np.int32) + 1
        return lut[arr]
    pos = np.searchsorted(table, arr).clip(max=k - 1)
    return np.where(table[pos] == arr, pos + 1, 0).astype(np.int32)


def tre(fixed_points: Tensor, moving_points: Tensor, displacement: Tensor, spacing: SpacingLike) -> Tensor:
    """Target registration error per landmark, in mm: ``|| (p_f + u(p_f) - p_m) * spacing ||`` (Learn2Reg).

    ``u`` is read at the (possibly sub-voxel) fixed landmarks by linear interpolation
    (:func:`rlreg.spatial.sample_points`, border padding), so ``p_f + u(p_f)`` is where the registration sends the
    fixed landmark in the moving image, to be compared with the corresponding moving landmark.

    Args:
        fixed_points: ``(P, ndim)`` voxel coordinates in the fixed image, in tensor axis order.
        moving_points: ``(P, ndim)`` corresponding voxel coordinates in the moving image.
        displacement: ``(1, ndim, *S)`` voxel displacement on the fixed grid (pull-back convention).
        spacing: voxel size in mm per tensor axis (a single number means isotropic).

    Returns:
        ``(P,)`` errors in mm, dtype and device of ``displacement``.
    """
    ndim = displacement.ndim - 2
    if displacement.ndim not in (4, 5) or displacement.shape[:2] != (1, ndim):
        raise ValueError(f"displacement must be (1, ndim, *S), got {tuple(displacement.shape)}")
    if fixed_points.shape != moving_points.shape or fixed_points.ndim != 2 or fixed_points.shape[1] != ndim:
        raise ValueError(f"fixed and moving points must both be (P, {ndim}); got {tuple(fixed_points.shape)} "
                         f"and {tuple(moving_points.shape)}")
    sp = torch.as_tensor(spacing, dtype=displacement.dtype, device=displacement.device).reshape(-1)
    if sp.numel() == 1:
        sp = sp.expand(ndim)
    if sp.numel() != ndim:
        raise ValueError(f"spacing needs {ndim} values (one per tensor axis), got {sp.numel()}")
    p_f = fixed_points.to(displacement)
    p_m = moving_points.to(displacement)
    u = sample_points(displacement, p_f)
    return torch.linalg.vector_norm((p_f + u - p_m) * sp, dim=1)
