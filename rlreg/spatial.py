"""Dense spatial transforms for 2D and 3D images: one code path, the dimension taken from the tensor.

Conventions (pinned by ``tests/test_spatial.py``; see ``docs/conventions.md`` for the mapping to ITK)
------------------------------------------------------------------------------------------------------
* **Layout.** Images are ``(N, C, *S)`` with ``S = (X0, X1)`` in 2D or ``(X0, X1, X2)`` in 3D, in the axis order of
  the array they came from (for SimpleITK arrays that is ``(k, j, i)``). ``ndim = len(S)``.
* **Displacements** are ``(N, ndim, *S)`` tensors in **voxel units**. Channel ``c`` displaces spatial tensor axis
  ``c`` ("ij"/array order, as in MONAI ``Warp`` and VoxelMorph), *not* grid_sample's reversed x-y-z order.
* **Direction: pull-back.** A field ``u`` lives on the *fixed* grid and maps a fixed voxel ``x`` to the moving
  position ``x + u(x)``: ``warp(m, u)(x) = m(x + u(x))``. This is the resampling convention of ITK, ANTs
  (forward warp), Slicer ("from parent"), DICOM DSRO and Learn2Reg.
* **Voxel centres** sit at integer indices ``0 .. n-1``; normalised coordinates use ``align_corners=True``
  (index 0 is -1, index n-1 is +1), so a voxel displacement converts exactly and independently of image size.
* **Outside the grid** images read as ``padding`` (zeros by default); displacement fields read as their nearest
  border value when they are themselves resampled (``compose``, ``invert``), so constant fields compose exactly.

Everything here is a pure function of its tensors: device and dtype follow the inputs, and identity grids are
built per call (cached by shape, dtype and device, never stored as size-locked buffers).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from enum import Enum
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "InterpMode",
    "ResizeKind",
    "SpatialTransformer",
    "compose",
    "folding_percent",
    "identity_grid",
    "integrate_velocity",
    "inverse_consistency",
    "invert",
    "jacobian_determinant",
    "orientation_axes",
    "reorient",
    "reorient_field_back",
    "resize",
    "resize_displacement",
    "sample_points",
    "sdlogj",
    "warp",
]


class InterpMode(str, Enum):
    """How :func:`warp` reads between voxels.

    ``bilinear`` (linear in any dimension) for intensities and fields; ``nearest`` for a quick label lookup;
    ``label`` for label maps: each output voxel takes the label with the largest summed linear weight among the
    ``2**ndim`` neighbours (ANTs' "GenericLabel" idea), so labels are never invented or averaged and boundaries
    stay smooth instead of the jagged nearest-neighbour result.
    """

    BILINEAR = "bilinear"
    NEAREST = "nearest"
    LABEL = "label"


PaddingMode = Literal["zeros", "border", "reflection"]


def _check_field(displacement: Tensor, image: Tensor | None = None) -> int:
    """Validate a ``(N, ndim, *S)`` displacement (and an image on its grid); return ``ndim``."""
    ndim = displacement.ndim - 2
    if ndim not in (2, 3):
        raise ValueError("displacement must be (N, ndim, *S) with 2 or 3 spatial dims, "
                         f"got shape {tuple(displacement.shape)}")
    if displacement.shape[1] != ndim:
        raise ValueError(f"displacement has {displacement.shape[1]} channels but {ndim} spatial dims; "
                         f"expected (N, {ndim}, *S)")
    if image is not None:
        if image.ndim != displacement.ndim:
            raise ValueError(f"image {tuple(image.shape)} and displacement {tuple(displacement.shape)} differ in rank")
        if image.shape[0] not in (displacement.shape[0], 1) and displacement.shape[0] != 1:
            raise ValueError(f"batch sizes differ: image {image.shape[0]}, displacement {displacement.shape[0]}")
    return ndim


@functools.lru_cache(maxsize=32)
def _identity_cached(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    axes = [torch.arange(n, dtype=dtype, device=device) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).unsqueeze(0)


def identity_grid(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> Tensor:
    """Voxel coordinates of a grid: a ``(1, ndim, *shape)`` tensor whose channel ``c`` holds the index along axis ``c``.

    Cached by ``(shape, dtype, device)``; the returned tensor is shared, so treat it as read-only.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    return _identity_cached(tuple(int(n) for n in shape), dtype, device)


def _sampling_grid(displacement: Tensor) -> Tensor:
    """grid_sample grid ``(N, *S, ndim)`` (x-y-z order, align_corners=True) for the pull-back ``x + u(x)``."""
    ndim = displacement.ndim - 2
    shape = displacement.shape[2:]
    coords = []
    for axis, n in enumerate(shape):
        # Normalised coordinate of voxel index p along this axis: 2 p / (n - 1) - 1. A one-voxel axis maps to 0.
        scale = 2.0 / (n - 1) if n > 1 else 0.0
        index = torch.arange(n, dtype=displacement.dtype, device=displacement.device)
        index = index.view((n,) + (1,) * (ndim - 1 - axis)) * scale - (1.0 if n > 1 else 0.0)
        coords.append(torch.add(index, displacement[:, axis], alpha=scale))
    # grid_sample wants the last spatial axis first in the coordinate vector.
    return torch.stack(coords[::-1], dim=-1)


def warp(image: Tensor, displacement: Tensor, mode: InterpMode | str = InterpMode.BILINEAR,
         padding: PaddingMode = "zeros") -> Tensor:
    """Resample ``image`` at ``x + u(x)``: ``out(x) = image(x + displacement(x))`` (pull-back).

    Args:
        image: ``(N, C, *S_in)`` moving image (or ``(1, C, *S_in)`` shared across the batch). In ``label`` mode any
            integer or float label values.
        displacement: ``(N, ndim, *S)`` voxel displacements on the output (fixed) grid. When ``S_in != S`` the
            positions ``x + u(x)`` are read as voxel indices of ``image`` in the same index frame.
        mode: ``bilinear``, ``nearest`` or ``label`` (see :class:`InterpMode`).
        padding: value outside the input grid: ``zeros``, ``border`` or ``reflection``. ``label`` mode treats the
            outside as label 0 for ``zeros`` and as the nearest border label otherwise.

    Returns:
        ``(N, C, *S)`` warped image, same dtype as ``image``.
    """
    _check_field(displacement, image)
    mode = InterpMode(mode)
    if image.shape[0] != displacement.shape[0]:
        batch = max(image.shape[0], displacement.shape[0])
        image = image.expand(batch, *image.shape[1:])
        displacement = displacement.expand(batch, *displacement.shape[1:])
    if mode is InterpMode.LABEL:
        return _warp_labels(image, displacement, padding)
    dtype = image.dtype if image.is_floating_point() else displacement.dtype
    displacement = displacement.to(dtype)
    if image.shape[2:] == displacement.shape[2:]:
        grid = _sampling_grid(displacement)
    else:  # positions are voxel indices of the *input* grid: normalise with the input size
        grid = _normalised_positions(displacement, image.shape[2:])
    out = _grid_sample(image.to(dtype), grid, mode.value, padding)
    return out if image.is_floating_point() else out.round().to(image.dtype)


def _grid_sample(image: Tensor, grid: Tensor, mode: str, padding: str) -> Tensor:
    """``F.grid_sample(image, grid, align_corners=True)``, its output rows shared among the CPU threads.

    PyTorch's CPU kernel for 3-D grids parallelises over the batch only, so one registration's warp (and its
    backward) runs on one core whatever ``torch.get_num_threads()`` says. A single-image call on several threads
    is therefore cut along the output's first spatial axis into one chunk per thread, given to the kernel as a
    batch reading the same (expanded, not copied) input. Every output value and grid gradient is computed by the
    same arithmetic as in one call, so the result is bit for bit the same; measured in
    docs/decisions.md#warp-rows-shared-among-threads.
    """
    chunks = torch.get_num_threads() if image.device.type == "cpu" and grid.ndim == 5 else 1
    rows = grid.shape[1]
    if image.shape[0] != 1 or chunks < 2 or rows < 2 * chunks:
        return F.grid_sample(image, grid, mode=mode, padding_mode=padding, align_corners=True)
    per = -(-rows // chunks)
    if per * chunks != rows:  # pad with copies of the last row; their outputs are cut off below
        grid = torch.cat([grid, grid[:, -1:].expand(-1, per * chunks - rows, -1, -1, -1)], dim=1)
    out = F.grid_sample(image.expand(chunks, *image.shape[1:]), grid.reshape(chunks, per, *grid.shape[2:]),
                        mode=mode, padding_mode=padding, align_corners=True)
    # (chunks, C, per, H, W) -> (1, C, chunks * per, H, W), then drop the padding rows
    out = out.transpose(0, 1).reshape(1, image.shape[1], chunks * per, *out.shape[3:])
    return out[:, :, :rows]


def _grid_coordinates(positions: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """Voxel positions ``(..., ndim)`` of a grid of size ``shape`` -> grid_sample coordinates ``(..., ndim)``
    (align_corners=True, reversed to x-y-z order). A one-voxel axis maps to 0."""
    scale = torch.tensor([2.0 / (n - 1) if n > 1 else 0.0 for n in shape], dtype=positions.dtype,
                         device=positions.device)
    offset = torch.tensor([1.0 if n > 1 else 0.0 for n in shape], dtype=positions.dtype, device=positions.device)
    return (positions * scale - offset).flip(-1)


def _normalised_positions(displacement: Tensor, in_shape: torch.Size) -> Tensor:
    """grid_sample grid ``(N, *S, ndim)`` reading ``x + u(x)`` as voxel indices of an input of size ``in_shape``."""
    pos = identity_grid(displacement.shape[2:], displacement.dtype, displacement.device) + displacement
    return _grid_coordinates(pos.movedim(1, -1), in_shape)


def _warp_labels(labels: Tensor, displacement: Tensor, padding: PaddingMode) -> Tensor:
    """Label-safe resampling by linear-weight voting among the ``2**ndim`` neighbours of ``x + u(x)``.

    grid_sample has no such mode and MONAI offers only nearest, so it is written here. For each corner ``c`` the
    score is the summed linear weight of all corners carrying the same label as ``c``; the output is the label of
    the best corner. This equals "one-hot, interpolate linearly, argmax" without materialising one channel per
    label, so memory is ``O(2**ndim * voxels)`` whatever the number of labels.

    Most positions fall in a cell (the ``2**ndim`` voxels around them) whose corners all carry one label: region
    interiors and background. Those cells are found once on the input grid, so such a position costs two gathers.
    With zero padding a position whose corners are all off the grid is label 0 without a vote. Only the others
    (boundaries, and cells straddling the grid's edge) are voted on (:func:`_vote_labels`); the saving is measured
    in docs/decisions.md#label-warps-vote-only-on-mixed-cells.
    """
    ndim = displacement.ndim - 2
    n, ch = labels.shape[:2]
    in_shape = labels.shape[2:]
    if padding == "reflection":
        raise ValueError("label warping supports padding 'zeros' or 'border', not 'reflection'")
    pos = (identity_grid(displacement.shape[2:], displacement.dtype, displacement.device) + displacement).flatten(2)
    low = pos.floor()
    frac = (pos - low).transpose(0, 1)  # (ndim, N, V)
    low = low.long().transpose(0, 1)  # (ndim, N, V)
    cells = [max(size - 1, 0) for size in in_shape]  # cell c spans voxels c .. c + 1 along each axis
    inside = torch.ones_like(low[0], dtype=torch.bool)
    outside = torch.zeros_like(low[0], dtype=torch.bool)  # every corner off the grid: label 0 under zero padding
    cell_index = torch.zeros_like(low[0])
    stride = 1
    for axis in reversed(range(ndim)):
        inside &= (low[axis] >= 0) & (low[axis] < cells[axis])
        if padding == "zeros":
            outside |= (low[axis] < -1) | (low[axis] > in_shape[axis] - 1)
        cell_index += low[axis].clamp(0, max(cells[axis] - 1, 0)) * stride
        stride *= cells[axis]
    out = []
    for c in range(ch):
        volume = labels[:, c]
        if min(cells) > 0:
            origin = volume[(slice(None), *(slice(0, k) for k in cells))]
            uniform = torch.ones_like(origin, dtype=torch.bool)
            for offsets in itertools.product((0, 1), repeat=ndim):
                if any(offsets):
                    corner = volume[(slice(None), *(slice(o, o + k) for o, k in zip(offsets, cells, strict=True)))]
                    uniform &= corner == origin
            result = torch.gather(origin.reshape(n, -1), 1, cell_index)
            vote = ~(inside & torch.gather(uniform.reshape(n, -1), 1, cell_index))
        else:  # a one-voxel axis has no cells: vote everywhere
            result = torch.zeros(cell_index.shape, dtype=labels.dtype, device=labels.device)
            vote = torch.ones_like(cell_index, dtype=torch.bool)
        result.masked_fill_(outside, 0)
        vote &= ~outside
        if vote.any():
            batch = torch.arange(n, device=labels.device).view(n, 1).expand_as(vote)[vote]
            result[vote] = _vote_labels(volume.reshape(-1), batch, low[:, vote], frac[:, vote], in_shape, padding)
        out.append(result)
    return torch.stack(out, dim=1).reshape(n, ch, *displacement.shape[2:])


def _vote_labels(flat: Tensor, batch: Tensor, low: Tensor, frac: Tensor, in_shape: torch.Size,
                 padding: PaddingMode) -> Tensor:
    """The linear-weight vote of :func:`_warp_labels` at ``M`` positions.

    Args:
        flat: ``(N * prod(in_shape),)`` labels of one channel, batch-major.
        batch: ``(M,)`` batch row of each position.
        low: ``(ndim, M)`` integer corner below each position; frac: ``(ndim, M)`` its offset from it in ``[0, 1)``.
        in_shape: the input grid; padding: ``zeros`` (outside is label 0) or ``border`` (nearest border label).

    Returns:
        ``(M,)`` labels, dtype of ``flat``.
    """
    ndim = low.shape[0]
    # Per corner (a tuple of 0/1 offsets), its flat index, in-grid mask and linear weight, built axis by axis so that
    # corners sharing a prefix share its work (14 index sums in 3-D instead of 32).
    strides = [math.prod(in_shape[axis + 1:]) for axis in range(ndim)]
    index: dict[tuple[int, ...], Tensor] = {(): batch * math.prod(in_shape)}
    inside: dict[tuple[int, ...], Any] = {(): None}  # None before the first axis, then Tensors
    weight: dict[tuple[int, ...], Any] = {(): None}
    for axis in range(ndim):
        size, corner = in_shape[axis], [low[axis], low[axis] + 1]
        factor = [1.0 - frac[axis], frac[axis]]
        grow_index, grow_inside, grow_weight = {}, {}, {}
        for prefix in index:
            for off in (0, 1):
                key = (*prefix, off)
                grow_index[key] = index[prefix] + corner[off].clamp(0, size - 1) * strides[axis]
                grow_weight[key] = factor[off] if weight[prefix] is None else weight[prefix] * factor[off]
                if padding == "zeros":
                    ok = (corner[off] >= 0) & (corner[off] < size)
                    grow_inside[key] = ok if inside[prefix] is None else inside[prefix] & ok
        index, inside, weight = grow_index, grow_inside, grow_weight
    corners = list(itertools.product((0, 1), repeat=ndim))
    values = [flat[index[c]] if padding != "zeros" else flat[index[c]].masked_fill_(~inside[c], 0) for c in corners]
    weights = [weight[c] for c in corners]
    # score[k] = sum_j w_j [label_j == label_k], each unordered pair compared once; the first best corner wins ties.
    score = [w.clone() for w in weights]
    for k, j in itertools.combinations(range(len(corners)), 2):
        same = values[k] == values[j]
        score[k] += weights[j] * same
        score[j] += weights[k] * same
    best, label = score[0], values[0]
    for k in range(1, len(corners)):  # a running argmax: cheaper than argmax over the short first axis
        better = score[k] > best
        best, label = torch.where(better, score[k], best), torch.where(better, values[k], label)
    return label


def compose(first: Tensor, then: Tensor) -> Tensor:
    """Displacement of "warp by ``first``, then warp the result by ``then``": ``w(x) = then(x) + first(x + then(x))``.

    So ``warp(warp(m, first), then) ≈ warp(m, compose(first, then))`` with a single resampling of ``m``. This is
    the agent's accumulation rule (method.md): ``u_t = compose(u_{t-1}, a_t)``, i.e.
    ``u_t(x) = a_t(x) + u_{t-1}(x + a_t(x))``, and the *original* moving image is then warped by ``u_t``.

    Args:
        first: ``(N, ndim, *S)`` voxel displacement applied first (e.g. the accumulated field).
        then: ``(N, ndim, *S)`` voxel displacement applied second (e.g. the new step).

    Returns:
        ``(N, ndim, *S)`` composed displacement. ``first`` is read with border padding outside the grid.
    """
    _check_field(first)
    _check_field(then)
    return then + warp(first, then, InterpMode.BILINEAR, padding="border")


def invert(displacement: Tensor, iterations: int = 20, tolerance: float = 1e-4) -> Tensor:
    """Inverse of a displacement by fixed-point iteration ``v <- -u(x + v(x))`` (Chen et al., Med. Phys. 2008).

    The result ``v`` satisfies ``compose(u, v) ≈ 0`` (``v(x) + u(x + v(x)) = 0``): warping by ``u`` then by ``v``
    returns the original image. Converges when ``u`` is a contraction (|∇u| < 1, i.e. no folding).

    Args:
        displacement: ``(N, ndim, *S)`` voxel displacement ``u``.
        iterations: maximum number of fixed-point iterations.
        tolerance: stop when the largest update (voxels) falls below this.

    Returns:
        ``(N, ndim, *S)`` inverse displacement ``v``.
    """
    _check_field(displacement)
    inverse = -displacement
    for _ in range(iterations):
        updated = -warp(displacement, inverse, padding="border")
        delta = (updated - inverse).abs().max()
        inverse = updated
        if delta < tolerance:
            break
    return inverse


def inverse_consistency(forward: Tensor, inverse: Tensor, *, to_forward_grid: Tensor) -> tuple[Tensor, Tensor]:
    """How far a field and its inverse are from composing to the identity, on the inverse's grid.

    For a forward map ``p -> p + u(p)`` (``u`` on grid ``F``) and an inverse ``q -> q + v(q)`` (``v`` on grid
    ``R``), the round trip ``q -> q + v(q) + u(q + v(q))`` should return to ``q``: the error at ``q`` is
    ``|v(q) + u(q + v(q))|``, with ``u`` read at the preimages (border values outside ``F``). Both fields share any
    vector units (e.g. LPS mm); the preimages come as voxel positions on ``F``.

    Args:
        forward: ``(1, ndim, *F)`` field ``u``.
        inverse: ``(1, ndim, *R)`` field ``v``, same units as ``u``.
        to_forward_grid: ``(1, ndim, *R)`` voxel displacement from each index ``q`` of ``R`` to its preimage's
            position on ``F`` (the preimage is at index ``q + to_forward_grid(q)``).

    Returns:
        ``(*R)`` error (units of the fields) and the ``(*R)`` boolean mask of the voxels whose preimage lies inside
        ``F`` (where ``u`` is known rather than continued).
    """
    error = (inverse + warp(forward, to_forward_grid, padding="border")).norm(dim=1)[0]
    positions = to_forward_grid[0] + torch.stack(torch.meshgrid(
        *[torch.arange(n, dtype=to_forward_grid.dtype) for n in to_forward_grid.shape[2:]], indexing="ij"))
    inside = torch.ones_like(error, dtype=torch.bool)
    for axis, n in enumerate(forward.shape[2:]):
        inside &= (positions[axis] >= 0) & (positions[axis] <= n - 1)
    return error, inside


def integrate_velocity(velocity: Tensor, steps: int = 7) -> Tensor:
    """Displacement of ``exp(v)`` for a stationary velocity field by scaling and squaring (Arsigny et al., 2006).

    ``u_0 = v / 2**steps``, then ``steps`` times ``u <- compose(u, u)``. ``integrate_velocity(-v)`` is the inverse of
    ``integrate_velocity(v)`` up to discretisation error.

    Args:
        velocity: ``(N, ndim, *S)`` stationary velocity in voxels per unit time.
        steps: number of squarings.

    Returns:
        ``(N, ndim, *S)`` voxel displacement.
    """
    _check_field(velocity)
    disp = velocity / (2**steps)
    for _ in range(steps):
        disp = compose(disp, disp)
    return disp


ResizeKind = Literal["image", "field", "labels"]


def resize(tensor: Tensor, size: tuple[int, ...] | torch.Size, *, kind: ResizeKind = "image",
           align_corners: bool = True) -> Tensor:
    """Resample an image, a voxel displacement or a label map onto a grid of another size covering the same field of
    view; the one resize of rlreg's 2-D and 3-D grids.

    * ``"image"``: linear interpolation (bilinear in 2-D, trilinear in 3-D).
    * ``"field"``: linear interpolation, and the vectors rescaled to the new voxel size: with ``align_corners=True``
      (corner voxel centres coincide, the convention of this module) axis ``a`` is scaled by
      ``(n'_a - 1) / (n_a - 1)``; with ``False`` (voxel edges coincide, as ``F.interpolate(align_corners=False)``
      resizes images) by ``n'_a / n_a``.
    * ``"labels"``: nearest neighbour (``F.interpolate``'s ``nearest``, which ignores ``align_corners``), so no label
      is invented or averaged; the dtype is kept.

    Args:
        tensor: ``(N, C, *S)`` image or label map, or ``(N, ndim, *S)`` voxel displacement.
        size: target spatial size ``S'`` (as many entries as ``S``).
        kind: what ``tensor`` holds, see above.
        align_corners: grid correspondence of the linear kinds.

    Returns:
        ``(N, C, *S')``; ``tensor`` itself when ``S' == S``.
    """
    size = tuple(int(s) for s in size)
    ndim = _check_field(tensor) if kind == "field" else tensor.dim() - 2
    if len(size) != ndim:
        raise ValueError(f"size {size} has {len(size)} dims, the {kind} has {ndim}")
    old = tensor.shape[2:]
    if tuple(old) == size:
        return tensor
    if kind == "labels":
        return F.interpolate(tensor.float(), size=size, mode="nearest").to(tensor.dtype)
    mode = "bilinear" if ndim == 2 else "trilinear"
    out = F.interpolate(tensor, size=size, mode=mode, align_corners=align_corners)
    if kind == "image":
        return out
    if align_corners:
        factors = [(new - 1) / (o - 1) if o > 1 else 1.0 for new, o in zip(size, old, strict=True)]
    else:
        factors = [new / o for new, o in zip(size, old, strict=True)]
    return out * torch.tensor(factors, dtype=out.dtype, device=out.device).view(1, ndim, *([1] * ndim))


def resize_displacement(displacement: Tensor, size: tuple[int, ...] | torch.Size, align_corners: bool = True) -> Tensor:
    """:func:`resize` of a ``(N, ndim, *S)`` voxel displacement (``kind="field"``) onto ``size``."""
    return resize(displacement, size, kind="field", align_corners=align_corners)


def sample_points(field: Tensor, points: Tensor) -> Tensor:
    """Linearly interpolate a ``(1, C, *S)`` tensor at voxel positions ``points`` ``(P, ndim)`` (border padding).

    Returns:
        ``(P, C)`` values.
    """
    ndim = field.ndim - 2
    if points.ndim != 2 or points.shape[1] != ndim:
        raise ValueError(f"points must be (P, {ndim}) voxel coordinates, got {tuple(points.shape)}")
    grid = _grid_coordinates(points.to(field), field.shape[2:]).view(1, -1, *([1] * (ndim - 1)), ndim)
    values = F.grid_sample(field[:1], grid, mode="bilinear", padding_mode="border", align_corners=True)
    return values.reshape(field.shape[1], -1).T


def jacobian_determinant(displacement: Tensor) -> Tensor:
    """Jacobian determinant of the map ``x -> x + u(x)``, in voxel space.

    Derivatives are central differences inside and one-sided at the borders (``torch.gradient``), so affine maps
    come out exact everywhere. The determinant in voxel space equals the physical one for any spacing and
    direction (``det(A (I + ∇u) A^-1) = det(I + ∇u)``), so no geometry is needed (docs/conventions.md). ITK's
    ``DisplacementFieldJacobianDeterminantFilter`` is not used: it is wrong for non-identity directions (ITK#5358).

    Args:
        displacement: ``(N, ndim, *S)`` voxel displacement, each axis with at least 2 voxels.

    Returns:
        ``(N, 1, *S)`` determinant; values ``<= 0`` mark folding.
    """
    ndim = _check_field(displacement)
    if min(displacement.shape[2:]) < 2:
        raise ValueError(f"jacobian_determinant needs >= 2 voxels per axis, got {tuple(displacement.shape[2:])}")
    dims = tuple(range(2, 2 + ndim))
    return determinant_from_gradients(torch.gradient(displacement, dim=dims))


def determinant_from_gradients(grads: list[Tensor] | tuple[Tensor, ...]) -> Tensor:
    """``det(I + ∇u)`` from the displacement's derivatives: ``grads[a][:, c] = d u_c / d x_a``, each ``(N, ndim, *S)``.

    Returns ``(N, 1, *S)``. Shared by :func:`jacobian_determinant` and the Learn2Reg Jacobian in
    :mod:`rlreg.metrics`, which differ only in how they take the derivatives.
    """
    ndim = len(grads)
    jac = [[grads[a][:, c] + (1.0 if a == c else 0.0) for a in range(ndim)] for c in range(ndim)]
    if ndim == 2:
        det = jac[0][0] * jac[1][1] - jac[0][1] * jac[1][0]
    else:
        det = (jac[0][0] * (jac[1][1] * jac[2][2] - jac[1][2] * jac[2][1])
               - jac[0][1] * (jac[1][0] * jac[2][2] - jac[1][2] * jac[2][0])
               + jac[0][2] * (jac[1][0] * jac[2][1] - jac[1][1] * jac[2][0]))
    return det.unsqueeze(1)


def _masked(values: Tensor, mask: Tensor | None) -> list[Tensor]:
    if mask is None:
        return [v.flatten() for v in values]
    return [v.flatten()[m.flatten().bool()] for v, m in zip(values, mask.expand_as(values), strict=True)]


def folding_percent(displacement: Tensor, mask: Tensor | None = None, determinant: Tensor | None = None) -> Tensor:
    """Percentage of voxels (within ``mask``, ``(N, 1, *S)``) with Jacobian determinant ``<= 0``. Returns ``(N,)``.

    ``determinant``: ``jacobian_determinant(displacement)`` when the caller has it already (not recomputed).
    """
    det = jacobian_determinant(displacement) if determinant is None else determinant
    return torch.stack([100.0 * (d <= 0).to(det.dtype).mean() for d in _masked(det, mask)])


def sdlogj(displacement: Tensor, mask: Tensor | None = None, learn2reg_offset: bool = False,
           determinant: Tensor | None = None) -> Tensor:
    """Standard deviation of ``log J`` (within ``mask``), with ``J`` clipped to ``[1e-9, 1e9]``. Returns ``(N,)``.

    Args:
        learn2reg_offset: reproduce the official Learn2Reg evaluation, which adds 3 to ``J`` before the log
            (a known quirk of its script); off by default.
        determinant: ``jacobian_determinant(displacement)`` when the caller has it already (not recomputed).
    """
    det = jacobian_determinant(displacement) if determinant is None else determinant
    if learn2reg_offset:
        det = det + 3.0
    logs = [d.clamp(1e-9, 1e9).log() for d in _masked(det, mask)]
    return torch.stack([v.std() for v in logs])


class SpatialTransformer(nn.Module):
    """Thin module around :func:`warp` (no buffers: works at any image size)."""

    def __init__(self, mode: InterpMode | str = InterpMode.BILINEAR, padding: PaddingMode = "zeros") -> None:
        super().__init__()
        self.mode = InterpMode(mode)
        self.padding = padding

    def forward(self, image: Tensor, displacement: Tensor) -> Tensor:
        """``(N, C, *S)`` image, ``(N, ndim, *S)`` voxel displacement -> ``(N, C, *S)`` warped image."""
        return warp(image, displacement, self.mode, self.padding)


def orientation_axes(direction: Sequence[float], target: Sequence[float]) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """The axis permutation and flips that bring an image grid closest to a target orientation (no resampling).

    A network trained on images in one array orientation (e.g. the MNI152 template's) sees a grid stored another
    way (LIP, RAS, ...) as a rotated, mirrored brain. Permuting and flipping the array axes is exact and cheap;
    for oblique grids it gives the nearest axis-aligned orientation.

    Args:
        direction: the grid's row-major ``ndim x ndim`` direction cosines (column ``j`` = world direction of index
            axis ``j``, ITK/SimpleITK order: x first).
        target: the target grid's direction, same layout.

    Returns:
        ``(perm, flips)`` over **tensor** axes (``(z, y, x)`` order in 3-D): canonical tensor axis ``b`` is source
        axis ``perm[b]``, reversed when ``flips[b]``. Use with :func:`reorient` and :func:`reorient_field_back`.
    """
    ndim = round(len(direction) ** 0.5)
    source = np.asarray(direction, dtype=np.float64).reshape(ndim, ndim)[:, ::-1]  # columns in tensor-axis order
    goal = np.asarray(target, dtype=np.float64).reshape(ndim, ndim)[:, ::-1]
    dots = goal.T @ source  # [b, a] = target axis b . source axis a
    best = max(itertools.permutations(range(ndim)), key=lambda p: sum(abs(dots[b, p[b]]) for b in range(ndim)))
    return tuple(int(a) for a in best), tuple(bool(dots[b, best[b]] < 0) for b in range(ndim))


def reorient(image: Tensor, perm: Sequence[int], flips: Sequence[bool]) -> Tensor:
    """``(N, C, *S)`` image in the canonical orientation of :func:`orientation_axes` (a view-like copy)."""
    out = image.permute(0, 1, *(2 + a for a in perm))
    dims = [2 + b for b, flip in enumerate(flips) if flip]
    return out.flip(dims) if dims else out.contiguous()


def reorient_field_back(field: Tensor, perm: Sequence[int], flips: Sequence[bool]) -> Tensor:
    """Bring a ``(N, ndim, *S_canonical)`` voxel displacement back to the source grid's axes.

    Undoes :func:`reorient` on the spatial axes and maps the vector components: a flipped axis negates its
    component, and canonical component ``b`` becomes source component ``perm[b]``.
    """
    ndim = len(perm)
    dims = [2 + b for b, flip in enumerate(flips) if flip]
    signs = torch.tensor([-1.0 if flip else 1.0 for flip in flips], dtype=field.dtype, device=field.device)
    out = field.flip(dims) if dims else field
    out = out * signs.view(1, ndim, *([1] * ndim))
    inverse = [perm.index(a) for a in range(ndim)]
    return out[:, inverse].permute(0, 1, *(2 + b for b in inverse)).contiguous()
