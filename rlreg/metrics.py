"""Registration quality metrics: label overlap (Dice), surface distance (HD95), landmark error (TRE), regularity.

Conventions follow :mod:`rlreg.spatial`: spatial axes are in the array's own order, displacements are
``(N, ndim, *S)`` voxel fields (channel ``c`` displaces tensor axis ``c``) in the pull-back direction, and
``spacing`` is the physical voxel size in mm **per tensor axis, in the same order as the array axes**.

* :func:`dice_per_label` / :func:`mean_dice`: per-label Dice of two integer label maps, fully vectorised
  (counts by ``bincount``; no loop over labels, no one-hot), so a 1 mm brain with 100+ labels takes well under a
  second on CPU.
* :func:`hd95`: per-label percentile Hausdorff distance in mm, defined exactly as MONAI's
  ``compute_hausdorff_distance(percentile=95, directed=False, spacing=...)``.
* :func:`tre`: per-landmark target registration error in mm, as in Learn2Reg.
* :func:`folding_percent`, :func:`sdlogj`, :func:`jacobian_determinant`: re-exported from :mod:`rlreg.spatial`.
* :func:`jacobian_scores`: SDlogJ and % folding of an already computed Jacobian determinant (``jacdet.nii.gz``).
* :func:`learn2reg_jacobian_determinant`, :func:`learn2reg_jacobian_scores`, :func:`learn2reg_tre`: the Learn2Reg
  challenge evaluation's own definitions (``MDL-UzL/L2R:evaluation/utils.py`` and ``evaluation.py``, eval
  version 2.0), quirks included, for numbers comparable with its leaderboards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from rlreg.spatial import determinant_from_gradients, folding_percent, jacobian_determinant, sample_points, sdlogj

__all__ = [
    "JacobianScores",
    "LabelScores",
    "Learn2RegJacobianScores",
    "dice_per_label",
    "folding_percent",
    "hd95",
    "jacobian_determinant",
    "jacobian_scores",
    "learn2reg_jacobian_determinant",
    "learn2reg_jacobian_scores",
    "learn2reg_tre",
    "mean_dice",
    "sdlogj",
    "tre",
]

LabelsLike = Sequence[int] | Tensor | np.ndarray | None
SpacingLike = float | Sequence[float] | Tensor | np.ndarray


class LabelScores(NamedTuple):
    """Per-label scores: ``values`` ``(L,)`` float and the matching label values ``labels`` ``(L,)`` int64.

    A named tuple, so ``values, labels = dice_per_label(...)`` works.
    """

    values: Tensor
    labels: Tensor


# A label map whose values are all in ``[0, limit)`` is counted directly with ``bincount`` (one slot per value);
# anything else (negative values, huge sparse label ids) goes through ``unique`` + ``searchsorted``.
_DIRECT_LIMIT = 1 << 16


def _as_label_tensor(x: Tensor | np.ndarray) -> Tensor:
    """Flattened int64 view of a label map (float maps holding integer values are rounded)."""
    x = torch.as_tensor(x)
    if x.is_floating_point():
        x = x.round()
    return x.reshape(-1).long()


def _resolve_labels(labels: LabelsLike, device: torch.device) -> Tensor:
    return torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels,
                           device=device).reshape(-1).long()


def dice_per_label(pred: Tensor | np.ndarray, target: Tensor | np.ndarray, labels: LabelsLike = None) -> LabelScores:
    """Dice overlap ``2 |P ∩ T| / (|P| + |T|)`` of every label of two integer label maps.

    The whole tensor is treated as one image (for a batch, call once per item). Counting is vectorised: voxel
    counts per label and the counts of agreeing voxels (``pred == target``) come from ``torch.bincount``, with
    label values mapped to contiguous indices when they are negative or sparse, so the cost is a few passes over
    the voxels whatever the number of labels, and memory is ``O(voxels + labels)`` (no one-hot).

    Args:
        pred: integer label map of any shape (e.g. ``(X, Y, Z)`` or ``(1, 1, X, Y, Z)``).
        target: label map of the same shape.
        labels: label values to score, in the order wanted. ``None``: every value present in either map except
            the background ``0``, ascending.

    Returns:
        :class:`LabelScores` with ``values`` ``(L,)`` (default float dtype, on ``pred``'s device) and ``labels``
        ``(L,)`` int64. Dice is ``NaN`` for a label absent from both maps and ``0`` for a label in only one.
    """
    p, t = _as_label_tensor(pred), _as_label_tensor(target)
    if p.shape != t.shape:
        raise ValueError(f"pred and target differ in size: {tuple(torch.as_tensor(pred).shape)} vs "
                         f"{tuple(torch.as_tensor(target).shape)}")
    t = t.to(p.device)
    out_dtype = torch.get_default_dtype()
    if p.numel() == 0:
        lab = _resolve_labels(labels, p.device) if labels is not None else p.new_zeros(0)
        return LabelScores(torch.full(lab.shape, float("nan"), dtype=out_dtype, device=p.device), lab)
    lo = int(torch.minimum(p.min(), t.min()))
    hi = int(torch.maximum(p.max(), t.max()))
    agree = p[p == t]
    if lo >= 0 and hi < max(_DIRECT_LIMIT, p.numel()):
        # Direct counting: slot v holds the count of label value v.
        size = hi + 1
        n_pred = torch.bincount(p, minlength=size)
        n_target = torch.bincount(t, minlength=size)
        n_both = torch.bincount(agree, minlength=size)
        if labels is None:
            lab = torch.nonzero(n_pred + n_target).reshape(-1)
            lab = lab[lab != 0]
            slot = lab
        else:
            lab = _resolve_labels(labels, p.device)
            slot = lab.clamp(0, size)  # out-of-range labels read the extra (zero) slot below
        zero = n_pred.new_zeros(1)
        n_pred, n_target, n_both = (torch.cat([c, zero]) for c in (n_pred, n_target, n_both))
        slot = torch.where((lab >= 0) & (lab < size), slot, size)
    else:
        # Sparse or negative label values: map to contiguous indices 0..K-1 (K = "not scored").
        if labels is None:
            lab = torch.unique(torch.cat([p, t]))
            lab = lab[lab != 0]
            table = lab
        else:
            lab = _resolve_labels(labels, p.device)
            table = torch.unique(lab)
        k = table.numel()

        def index(v: Tensor) -> Tensor:
            pos = torch.searchsorted(table, v).clamp(max=max(k - 1, 0))
            return torch.where(table[pos] == v, pos, k) if k else torch.zeros_like(v)

        n_pred = torch.bincount(index(p), minlength=k + 1)
        n_target = torch.bincount(index(t), minlength=k + 1)
        n_both = torch.bincount(index(agree), minlength=k + 1)
        slot = index(lab)
    n_pred, n_target, n_both = (c[slot].to(out_dtype) for c in (n_pred, n_target, n_both))
    # 0 / 0 = NaN exactly when the label is absent from both maps.
    return LabelScores(2.0 * n_both / (n_pred + n_target), lab)


def mean_dice(pred: Tensor | np.ndarray, target: Tensor | np.ndarray, labels: LabelsLike = None) -> Tensor:
    """Mean of :func:`dice_per_label` over the labels, ignoring ``NaN`` (labels absent from both maps); 0-d tensor."""
    return torch.nanmean(dice_per_label(pred, target, labels).values)


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
    direct = lo >= 0 and hi < max(_DIRECT_LIMIT, a.size)  # small non-negative values: count/look up directly
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


# ---------------------------------------------------------------------------------------------------- regularity


class JacobianScores(NamedTuple):
    """Regularity of a map from its Jacobian determinant: ``sdlogj`` ``(N,)`` and ``folding_percent`` ``(N,)``."""

    sdlogj: Tensor
    folding_percent: Tensor


def jacobian_scores(jacobian: Tensor, mask: Tensor | None = None) -> JacobianScores:
    """SDlogJ and % folding of a Jacobian determinant that is already computed (e.g. read from ``jacdet.nii.gz``).

    The same definitions as :func:`rlreg.spatial.sdlogj` and :func:`rlreg.spatial.folding_percent`, which compute
    ``J`` from a voxel displacement first: ``sdlogj`` is the (unbiased) standard deviation of ``log J`` with ``J``
    clipped to ``[1e-9, 1e9]``, ``folding_percent`` the percentage of voxels with ``J <= 0``.

    Args:
        jacobian: ``(N, 1, *S)`` determinant of the map ``x -> x + u(x)`` (no offset).
        mask: optional ``(N, 1, *S)`` (or ``(1, 1, *S)``) region to score; non-zero = inside.

    Returns:
        :class:`JacobianScores`, each ``(N,)`` in ``jacobian``'s dtype (``NaN`` for an empty mask).
    """
    if jacobian.ndim < 3 or jacobian.shape[1] != 1:
        raise ValueError(f"jacobian must be (N, 1, *S), got {tuple(jacobian.shape)}")
    dtype = jacobian.dtype if jacobian.is_floating_point() else torch.get_default_dtype()
    values = jacobian.to(dtype)
    if mask is None:
        inside = [v.flatten() for v in values]
    else:
        inside = [v.flatten()[m.flatten() != 0] for v, m in zip(values, mask.expand_as(values), strict=True)]
    nan = torch.tensor(float("nan"), dtype=dtype, device=jacobian.device)
    sd = [v.clamp(1e-9, 1e9).log().std() if v.numel() > 1 else nan for v in inside]
    fold = [100.0 * (v <= 0).to(dtype).mean() if v.numel() else nan for v in inside]
    return JacobianScores(torch.stack(sd), torch.stack(fold))


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
