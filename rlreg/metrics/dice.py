"""Every Dice overlap of rlreg, side by side, with the semantics each one states.

Hard Dice, ``2 |P ∩ T| / (|P| + |T|)`` of integer label maps (float maps holding integers are rounded); a label
present in only one map scores 0:

* :func:`dice_per_label`: one pair, any shape, torch or numpy; per label ``(L,)``. Labels: the given ones, or every
  value of either map except the background 0. A label absent from both maps (or any label of two empty maps)
  is ``NaN``.
* :func:`mean_dice`: the ``NaN``-ignoring mean of :func:`dice_per_label` (0-d); ``NaN`` when no label is scored
  (e.g. two maps of background only).
* :func:`batch_dice`: ``(B, 1, *S)`` torch batches, labels ``1..L`` (0 = background, other values ignored); per
  pair ``(B,)`` mean over the labels present in either map; a pair with no foreground in either map scores 1.

Soft Dice, ``(2 sum p t + eps) / (sum p + sum t + eps)``, differentiable; a label absent from both maps, and so an
empty pair, scores 1 through the ``eps`` smoothing:

* :func:`warped_soft_dice`: moving labels warped bilinearly by a displacement against the fixed labels, labels
  ``1..L``, ``(B,)`` mean over labels, without building one-hot maps.
* :func:`rlreg.losses.soft_dice`: ``(N, L, *S)`` probability maps, every channel (optionally without channel 0),
  reduced to a scalar, ``(N,)`` or ``(N, L)``; the loss form lives with the other losses.

:func:`dice_per_label` and :func:`mean_dice` are the evaluation's numbers (``rlreg evaluate``, QC in
``rlreg.json``), :func:`batch_dice` is the RL reward's score (SPAC's ``100 x (Dice_t - Dice_{t-1})``), and the
soft ones are differentiable auxiliary losses. None of them builds a one-hot map; they count with ``bincount`` or
``index_add`` on the device of their inputs, so 100+ labels cost a few passes over the voxels.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from rlreg.spatial import identity_grid

__all__ = ["DIRECT_COUNT_LIMIT", "LabelScores", "LabelsLike", "batch_dice", "dice_per_label", "label_values",
           "mean_dice", "warped_soft_dice"]

LabelsLike = Sequence[int] | Tensor | np.ndarray | None
"""Label values to score: a sequence, a tensor or an array of integers; ``None`` means "every non-zero value"."""


class LabelScores(NamedTuple):
    """Per-label scores: ``values`` ``(L,)`` float and the matching label values ``labels`` ``(L,)`` int64.

    A named tuple, so ``values, labels = dice_per_label(...)`` works.
    """

    values: Tensor
    labels: Tensor


DIRECT_COUNT_LIMIT = 1 << 16
"""A label map whose values all lie in ``[0, DIRECT_COUNT_LIMIT)`` (or below its voxel count) is counted directly,
one ``bincount`` slot per value; anything else (negative values, huge sparse label ids) goes through ``unique`` +
``searchsorted``."""


def label_values(labels: Tensor | np.ndarray) -> list[int]:
    """The distinct values of an integer label map, ascending (background ``0`` included when present).

    Counted with one ``bincount`` when the values lie in ``[0, DIRECT_COUNT_LIMIT)`` or below the voxel count, as
    :func:`dice_per_label` counts; ``torch.unique`` (a sort) otherwise. On a 1 mm brain's label map the count is
    about ten times faster than the sort.
    """
    flat = _as_label_tensor(labels)
    if flat.numel() == 0:
        return []
    lo, hi = int(flat.min()), int(flat.max())
    if _counts_directly(lo, hi, flat.numel()):
        return torch.nonzero(torch.bincount(flat, minlength=hi + 1)).reshape(-1).tolist()
    return torch.unique(flat).tolist()


def _counts_directly(lo: int, hi: int, voxels: int) -> bool:
    """Whether label values spanning ``[lo, hi]`` in a map of ``voxels`` voxels get one ``bincount`` slot each
    (:data:`DIRECT_COUNT_LIMIT`) rather than ``unique`` + ``searchsorted``."""
    return lo >= 0 and hi < max(DIRECT_COUNT_LIMIT, voxels)


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
    if _counts_directly(lo, hi, p.numel()):
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


# ------------------------------------------------------------------------------------------------- batched (torch)
def batch_dice(pred: Tensor, target: Tensor, num_labels: int) -> Tensor:
    """Mean per-label Dice of each pair of a batch of integer label maps, vectorised over pairs and labels.

    Voxel counts per ``(pair, label)`` for ``pred``, ``target`` and their agreement come from one ``index_add_``
    into ``B x (num_labels + 2)`` slots (pair offsets; no one-hot, no host sync), so the cost is a few passes over
    the voxels whatever the number of labels. Values outside ``0..num_labels`` are ignored (counted in a discarded
    slot). Labels absent from both maps of a pair are left out of that pair's mean; a pair with no foreground
    label in either map scores 1 (nothing to align, as a soft Dice with smoothing would say).

    Args:
        pred: ``(B, 1, *S)`` integer label map (float maps holding integers are rounded).
        target: ``(B, 1, *S)`` label map of the same shape.
        num_labels: ``L``: labels ``1..L`` are scored, ``0`` is background.

    Returns:
        ``(B,)`` mean Dice in ``[0, 1]``, default float dtype, on ``pred``'s device.
    """
    if pred.shape != target.shape or pred.ndim < 2:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must be (B, 1, *S) of one shape")
    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    batch = pred.shape[0]
    slots = num_labels + 2  # 0..L, then one slot for values out of range
    p, t = (_as_label_map(x).reshape(batch, -1) for x in (pred, target))
    p, t = (torch.where((x >= 0) & (x <= num_labels), x, num_labels + 1) for x in (p, t))
    offset = torch.arange(batch, device=p.device).mul_(slots).unsqueeze(1)
    index_pred = p + offset
    index_both = torch.where(p == t, index_pred, offset + num_labels + 1)
    index = torch.cat([index_pred, t + offset + batch * slots, index_both + 2 * batch * slots]).reshape(-1)
    counts = torch.zeros(3 * batch * slots, dtype=torch.long, device=p.device)
    counts.index_add_(0, index, torch.ones_like(index))
    n_pred, n_target, n_both = counts.view(3, batch, slots)[..., 1: num_labels + 1].to(torch.get_default_dtype())
    total = n_pred + n_target
    present = total > 0
    dice = 2.0 * n_both / total.clamp_min(1.0)
    n_present = present.sum(1)
    mean = (dice * present).sum(1) / n_present.clamp_min(1)
    return torch.where(n_present > 0, mean, torch.ones_like(mean))



def _as_label_map(x: Tensor) -> Tensor:
    """int64 view of a batched label map (float maps holding integer values are rounded)."""
    return x.round().long() if x.is_floating_point() else x.long()


def warped_soft_dice(fixed_labels: Tensor, moving_labels: Tensor, displacement: Tensor, num_labels: int,
                     eps: float = 1e-5) -> Tensor:
    """Soft Dice of the one-hot moving labels warped bilinearly by ``displacement`` against the one-hot fixed labels.

    Equals ``soft_dice(warp(onehot(moving), u), onehot(fixed), eps, reduction="batch")`` over labels ``1..L``
    (channels ``1..L`` of the one-hot maps; zero padding outside the grid), without building either one-hot map.
    Linear interpolation of a one-hot map gives label ``l`` the summed weight ``w_k(x)`` of the ``2**ndim`` corners
    ``c_k`` of ``x + u(x)`` that carry ``l``, so per pair and label

        intersection_l = sum_x [f(x) = l] sum_k w_k(x) [m(c_k) = l],     |P_l| = sum_x sum_k w_k(x) [m(c_k) = l],

    accumulated with ``index_add`` into ``B x (L + 1)`` slots. Cost and memory are ``O(2**ndim B V)`` whatever the
    number of labels (the one-hot route needs ``O(L B V)``; docs/decisions.md#warped-soft-dice-without-one-hot), and
    the result is differentiable in ``displacement`` through the weights.

    Args:
        fixed_labels: ``(B, 1, *S)`` integer labels (values outside ``0..L`` count as background).
        moving_labels: ``(B, 1, *S)`` integer labels on the same grid.
        displacement: ``(B, ndim, *S)`` voxel displacement (pull-back, conventions of :mod:`rlreg.spatial`).
        num_labels: ``L``.
        eps: smoothing of numerator and denominator; a label absent from both maps scores 1.

    Returns:
        ``(B,)`` mean soft Dice over labels ``1..L``, dtype of ``displacement``.
    """
    batch, ndim = displacement.shape[:2]
    shape = displacement.shape[2:]
    if fixed_labels.shape != moving_labels.shape or fixed_labels.shape != (batch, 1, *shape):
        raise ValueError(f"labels {tuple(fixed_labels.shape)}, {tuple(moving_labels.shape)} and displacement "
                         f"{tuple(displacement.shape)} must be (B, 1, *S) and (B, ndim, *S)")
    slots = num_labels + 1

    def flat_labels(x: Tensor) -> Tensor:
        x = _as_label_map(x).reshape(batch, -1)
        return torch.where((x >= 0) & (x <= num_labels), x, 0)

    fixed, moving = flat_labels(fixed_labels), flat_labels(moving_labels)
    position = (identity_grid(shape, displacement.dtype, displacement.device) + displacement).flatten(2)
    low = position.detach().floor()
    frac = position - low  # (B, ndim, V), carries the gradient
    low = low.long()
    agree: Tensor | None = None
    corner_slots, corner_weights = [], []
    offset = torch.arange(batch, device=fixed.device).mul_(slots).unsqueeze(1)
    for corner in itertools.product((0, 1), repeat=ndim):
        index = torch.zeros_like(fixed)
        inside = torch.ones_like(fixed, dtype=torch.bool)
        weight: Tensor | None = None
        for axis, step in enumerate(corner):
            coordinate = low[:, axis] + step
            size = shape[axis]
            inside = inside & (coordinate >= 0) & (coordinate < size)
            index = index * size + coordinate.clamp(0, size - 1)
            factor = frac[:, axis] if step else 1.0 - frac[:, axis]
            weight = factor if weight is None else weight * factor
        assert weight is not None
        weight = weight * inside  # zero padding: corners outside the grid carry no label
        label = moving.gather(1, index)
        term = weight * (label == fixed)
        agree = term if agree is None else agree + term
        corner_slots.append(label + offset)
        corner_weights.append(weight)
    assert agree is not None
    fixed_slots = (fixed + offset).reshape(-1)
    zeros = displacement.new_zeros(batch * slots)
    intersection = zeros.index_add(0, fixed_slots, agree.reshape(-1))
    predicted = zeros.index_add(0, torch.cat(corner_slots, 1).reshape(-1), torch.cat(corner_weights, 1).reshape(-1))
    target = zeros.index_add(0, fixed_slots, displacement.new_ones(fixed_slots.shape))
    intersection, predicted, target = (x.view(batch, slots)[:, 1:] for x in (intersection, predicted, target))
    return ((2.0 * intersection + eps) / (predicted + target + eps)).mean(1)
