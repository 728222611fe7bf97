"""Whole transforms in world space: ITK/ANTs displacement fields, composite ``.h5`` files, inversion, Jacobians.

rlreg computes in voxels (:mod:`rlreg.spatial`); other tools exchange transforms in **LPS millimetres**. This
module is the one audited bridge between the two (``docs/conventions.md``):

* A **chain** is a ``(N, ndim, *S)`` voxel field on the fixed grid whose value at fixed tensor index ``x`` is the
  *moving-grid tensor index* read by ``x`` minus ``x`` (what :func:`rlreg.affine.positions_to_displacement`
  returns). ``warp(moving, chain)`` resamples the original moving image once, whatever its grid.
* A **world field** is a ``(N, ndim, *S)`` tensor on a grid with known :class:`~rlreg.io.Geometry`, channel ``c``
  = LPS axis ``c`` (ITK ``x, y, z`` order), in mm: fixed point ``p`` maps to moving point ``p + u(p)``. This is
  what ``warp.nii.gz`` stores (ITK vector image, 5-D ``(X, Y, Z, 1, 3)`` NIfTI, intent 1007), and what
  ``antsApplyTransforms -t warp.nii.gz`` and SimpleITK's ``DisplacementFieldTransform`` read.

With ``W`` the tensor-index -> LPS matrix of a grid (``Geometry.index_to_world``), the two are related by
``p + u(p) = W_m (x + chain(x))`` with ``p = W_f x``.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch import Tensor

from rlreg.affine import transform_matrix
from rlreg.io import Geometry, InputError, atomic_output, check_complete, save_sitk
from rlreg.slices import singleton_axis
from rlreg.spatial import identity_grid, invert, jacobian_determinant, sample_points

__all__ = [
    "affine_transform",
    "chain_from_world",
    "composite_transform",
    "deformable_part",
    "invert_world",
    "read_transform",
    "sitk_field",
    "world_displacement",
    "world_jacobian",
    "write_itk_transform",
    "write_itk_warp",
]

TRANSFORM_SUFFIXES = (".h5", ".hdf5", ".tfm", ".txt", ".mat")


def _matrix(geometry: Geometry, like: Tensor) -> tuple[Tensor, Tensor]:
    """Linear part ``(ndim, ndim)`` and offset ``(ndim,)`` of ``geometry.index_to_world()`` as tensors like ``like``."""
    w = geometry.index_to_world()
    n = geometry.ndim
    return (torch.as_tensor(w[:n, :n], dtype=like.dtype, device=like.device),
            torch.as_tensor(w[:n, n], dtype=like.dtype, device=like.device))


def _apply(matrix: Tensor, field: Tensor) -> Tensor:
    """``matrix @ field`` for every voxel of a ``(N, ndim, *S)`` field."""
    return torch.einsum("ij,nj...->ni...", matrix, field)


def _column(vector: Tensor, ndim: int) -> Tensor:
    return vector.view(1, ndim, *[1] * ndim)


def world_displacement(chain: Tensor, fixed: Geometry, moving: Geometry) -> Tensor:
    """LPS-mm displacement on the fixed grid of a chain (see the module docstring).

    Args:
        chain: ``(N, ndim, *S)`` moving tensor positions minus fixed tensor indices, ``S = fixed.size``.
        fixed, moving: the two grids.

    Returns:
        ``(N, ndim, *S)`` displacement in LPS mm, channel ``c`` = LPS axis ``c``.
    """
    ndim = chain.ndim - 2
    lin_f, off_f = _matrix(fixed, chain)
    lin_m, off_m = _matrix(moving, chain)
    grid = identity_grid(chain.shape[2:], chain.dtype, chain.device)
    # W_m (x + c) - W_f x, arranged so large absolute positions cancel before rounding.
    return _apply(lin_m - lin_f, grid) + _apply(lin_m, chain) + _column(off_m - off_f, ndim)


def chain_from_world(displacement: Tensor, reference: Geometry, moving: Geometry) -> Tensor:
    """Inverse of :func:`world_displacement`: the chain that reads ``moving`` at ``p + u(p)``.

    Args:
        displacement: ``(N, ndim, *S)`` LPS-mm field on the ``reference`` grid.
        reference: the grid the field lives on (the output grid of a resampling).
        moving: the grid of the image to resample.

    Returns:
        ``(N, ndim, *S)`` chain for ``warp(moving_image, chain)``.
    """
    ndim = displacement.ndim - 2
    lin_r, off_r = _matrix(reference, displacement)
    lin_m, off_m = _matrix(moving, displacement)
    inv_m = torch.linalg.inv(lin_m)
    grid = identity_grid(displacement.shape[2:], displacement.dtype, displacement.device)
    # x + c = W_m^-1 (W_r x + u)  =>  c = (L_m^-1 L_r - I) x + L_m^-1 (u + o_r - o_m)
    eye = torch.eye(ndim, dtype=displacement.dtype, device=displacement.device)
    return _apply(inv_m @ lin_r - eye, grid) + _apply(inv_m, displacement + _column(off_r - off_m, ndim))


def world_jacobian(displacement: Tensor, geometry: Geometry) -> Tensor:
    """Jacobian determinant of ``p -> p + u(p)`` in physical space, ``(N, 1, *S)``.

    Computed in voxel space: with ``u = L Δ`` (``L`` the grid's linear index -> LPS map), ``det(I + ∂u/∂p) =
    det(I + ∇Δ)`` (interop.md §1h), so no ITK filter is involved (ITK#5358).
    """
    lin, _ = _matrix(geometry, displacement)
    return jacobian_determinant(_apply(torch.linalg.inv(lin), displacement))


# ---------------------------------------------------------------------------------------------------- SimpleITK
def sitk_field(displacement: Tensor, geometry: Geometry, dtype: int = sitk.sitkVectorFloat32) -> sitk.Image:
    """A SimpleITK vector image (the ITK displacement-field layout) from a ``(1, ndim, *S)`` LPS-mm field."""
    array = displacement[0].detach().cpu().numpy()
    image = sitk.GetImageFromArray(np.moveaxis(array, 0, -1).astype(np.float64), isVector=True)
    return geometry.apply_to(sitk.Cast(image, dtype))


def _field_tensor(image: sitk.Image) -> Tensor:
    return torch.from_numpy(np.moveaxis(sitk.GetArrayFromImage(image), -1, 0).astype(np.float32))[None]


def write_itk_warp(displacement: Tensor, geometry: Geometry, path: str | os.PathLike[str]) -> Path:
    """Write an ANTs/ITK ``warp.nii.gz``: vector image of float32 LPS mm on ``geometry`` (5-D, intent 1007).

    A grid one voxel thick along one axis (a one-slice volume, :mod:`rlreg.slices`) is written with that slice twice,
    one spacing apart: ITK's NIfTI reader turns a one-slice *vector* image into a 2-D image, dropping the slice's
    position and, for a slice not parallel to the x-y plane, failing on the then singular direction; with two equal
    slices the field reads as 3-D and gives the slice's vectors at every point of its plane.
    """
    axis = singleton_axis(geometry.size[::-1]) if geometry.ndim == 3 else None
    if axis is not None:
        tensor_axis = 2 - axis
        displacement = displacement.repeat_interleave(2, dim=2 + tensor_axis)
        size = list(geometry.size)
        size[tensor_axis] = 2
        geometry = replace(geometry, size=tuple(size))
    return save_sitk(sitk_field(displacement, geometry), path)


def affine_transform(affine: sitk.Transform | None, ndim: int,
                     matrix: np.ndarray | None = None) -> sitk.AffineTransform:
    """Any linear SimpleITK transform (or a homogeneous ``(ndim+1, ndim+1)`` ``matrix``, or neither: the identity)
    as one plain ``AffineTransform`` (LPS mm, centre 0): the form ANTs writes as ``0GenericAffine.mat`` and ITK's
    MATLAB transform IO reads and writes."""
    linear = sitk.AffineTransform(ndim)
    if affine is not None:
        matrix = transform_matrix(affine, ndim)
    if matrix is not None:
        linear.SetMatrix(matrix[:ndim, :ndim].ravel().tolist())
        linear.SetTranslation(matrix[:ndim, ndim].tolist())
    return linear


def composite_transform(affine: sitk.Transform | None, deformable: Tensor, geometry: Geometry) -> sitk.Transform:
    """ITK composite "deformable, then affine" as ITK applies it to fixed points: ``p -> A(p + u_def(p))``.

    Args:
        affine: the pre-alignment (fixed -> moving, LPS mm) or ``None`` for the identity.
        deformable: ``(1, ndim, *S)`` LPS-mm displacement on the fixed grid (``geometry``).
    """
    field = sitk.DisplacementFieldTransform(sitk_field(deformable, geometry, sitk.sitkVectorFloat64))
    linear = affine_transform(affine, geometry.ndim)
    # ITK's composite is a stack: the transform added last is applied to the point first.
    return sitk.CompositeTransform([linear, field])


def deformable_part(total: np.ndarray, geometry: Geometry, affine_lps: np.ndarray | list | None) -> np.ndarray:
    """The deformable part ``d`` of a total world field ``u`` whose map is ``φ(p) = T(p + d(p))``.

    ``rlreg register`` composes the displacement first, then the affine ``T(q) = L q + t`` (``transform.h5``); the
    total field is ``u(p) = φ(p) - p``, so ``d(p) = L⁻¹ u(p) + (L⁻¹ - I) p - L⁻¹ t``. With ``p = W x + o`` affine in
    the tensor index ``x``, the last two terms are an affine function of ``x``, added axis by axis (no full
    coordinate grid, so 1 mm brains stay cheap).

    Args:
        total: ``(ndim, *S)`` float32 LPS-mm total field on ``geometry`` (channel ``c`` = LPS axis ``c``).
        geometry: the fixed grid.
        affine_lps: ``(ndim+1, ndim+1)`` homogeneous ``T`` in LPS mm, or ``None``/empty for no affine (``d = u``).

    Returns:
        ``(ndim, *S)`` float32 LPS-mm deformable part on ``geometry``.
    """
    if affine_lps is None or len(affine_lps) == 0:
        return total
    n = geometry.ndim
    affine = np.asarray(affine_lps, dtype=np.float64)
    inverse = np.linalg.inv(affine[:n, :n])
    world = geometry.index_to_world()
    slope = (inverse - np.eye(n)) @ world[:n, :n]  # mm of d per tensor index step, (channel, tensor axis)
    offset = (inverse - np.eye(n)) @ world[:n, n] - inverse @ affine[:n, n]
    d = np.einsum("ij,j...->i...", inverse.astype(np.float32), total)
    for channel in range(n):
        d[channel] += np.float32(offset[channel])
        for axis, size in enumerate(geometry.size):
            shape = [1] * n
            shape[axis] = size
            d[channel] += (slope[channel, axis] * np.arange(size)).astype(np.float32).reshape(shape)
    return d


def write_itk_transform(transform: sitk.Transform, path: str | os.PathLike[str]) -> Path:
    """Write an ITK transform file (``.h5`` for dense fields) atomically."""
    path = Path(path)
    with atomic_output(path) as tmp:
        sitk.WriteTransform(transform, str(tmp))
    return path


def _reference_field(transform: sitk.Transform, reference: Geometry) -> Tensor:
    size = reference.size[::-1]
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, size, reference.origin,
                                              reference.spacing[::-1], reference.direction)
    return _field_tensor(field)


def _same_grid(image: sitk.Image, geometry: Geometry, tol: float = 1e-4) -> bool:
    other = Geometry.from_sitk(image)
    return (other.size == geometry.size and np.allclose(other.spacing, geometry.spacing, atol=tol)
            and np.allclose(other.origin, geometry.origin, atol=tol)
            and np.allclose(other.direction, geometry.direction, atol=tol))


def read_transform(path: str | os.PathLike[str], reference: Geometry) -> Tensor:
    """Read any ITK-style transform and return its LPS-mm displacement on the ``reference`` grid ``(1, ndim, *S)``.

    Accepts displacement-field images (``warp.nii.gz``, NRRD, MHA: vector images in LPS mm, as ANTs writes them)
    and ITK transform files (``.h5``, ``.tfm``, ``.txt``, ``.mat``: affine, displacement or composite). A field
    on another grid is resampled through ITK (zero displacement outside it, ITK's convention).

    Raises:
        InputError: missing or unreadable file, or a field whose dimension does not match ``reference``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: transform file not found; give the warp.nii.gz or transform.h5 that rlreg wrote")
    ndim = reference.ndim
    name = path.name.lower()
    try:
        if name.endswith(TRANSFORM_SUFFIXES):
            return _reference_field(sitk.ReadTransform(str(path)), reference)
        check_complete(path)  # ITK reads a cut .nii.gz as zero displacements
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        detail = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown error"
        raise InputError(f"{path}: not a readable transform ({detail}); give an ITK displacement field "
                         "(.nii.gz, .nrrd, .mha) or an ITK transform file (.h5, .tfm, .mat)") from None
    if image.GetNumberOfComponentsPerPixel() != ndim or image.GetDimension() != ndim:
        raise InputError(f"{path}: is a {image.GetDimension()}-D image with {image.GetNumberOfComponentsPerPixel()} "
                         f"components, not a {ndim}-D displacement field; give a 5-D (X,Y,Z,1,3) vector NIfTI "
                         "(intent 1007) such as rlreg's warp.nii.gz")
    if _same_grid(image, reference):
        return _field_tensor(image)
    transform = sitk.DisplacementFieldTransform(sitk.Cast(image, sitk.sitkVectorFloat64))
    return _reference_field(transform, reference)


# ---------------------------------------------------------------------------------------------------- inversion
def _affine_fit(source: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Least-squares affine map ``target ≈ source @ L.T + t`` of ``(P, ndim)`` point sets; returns ``L (ndim, ndim)``
    and ``t (ndim,)``.

    Solved by the normal equations on centred points, their sums taken elementwise: LAPACK's least-squares drivers
    gave last-bit differences between calls on identical inputs, which the fixed-point inversion downstream turned
    into different inverse fields (docs/decisions.md, "A repeatable affine fit for inversion").
    """
    centre = source.mean(dim=0)
    design = torch.cat([source - centre, torch.ones_like(source[:, :1])], dim=1)
    gram = (design[:, :, None] * design[:, None, :]).sum(dim=0)
    moment = (design[:, :, None] * target[:, None, :]).sum(dim=0)
    solution = torch.linalg.solve(gram, moment)
    lin = solution[:-1].T
    return lin, solution[-1] - lin @ centre


def invert_world(displacement: Tensor, geometry: Geometry, target: Geometry, iterations: int = 50) -> Tensor:
    """Inverse of a world field, sampled on another grid (e.g. the moving image's).

    A total field usually contains a large affine part, for which plain fixed-point inversion does not converge.
    So the map ``φ(p) = p + u(p)`` is split as ``φ = A ∘ (id + r)``: ``A`` is the least-squares affine fit of
    ``φ`` over the grid, ``r`` the small residual in fixed voxels. Then ``φ⁻¹ = (id + r)⁻¹ ∘ A⁻¹``, with
    ``(id + r)⁻¹`` from :func:`rlreg.spatial.invert` (converges where ``φ`` does not fold).

    Args:
        displacement: ``(1, ndim, *S)`` LPS-mm field on ``geometry``.
        geometry: the field's grid.
        target: grid on which to return the inverse (points of the moving space).
        iterations: fixed-point iterations for the residual.

    Returns:
        ``(1, ndim, *S_target)`` LPS-mm displacement ``v`` with ``φ(q + v(q)) ≈ q``. Points whose preimage lies
        outside ``geometry`` use the residual's border value.
    """
    ndim = geometry.ndim
    work = displacement.to(torch.float64)
    lin, off = _matrix(geometry, work)
    grid = identity_grid(work.shape[2:], work.dtype, work.device)
    points = _apply(lin, grid) + _column(off, ndim)
    mapped = points + work
    stride = max(1, round((points[0, 0].numel() / 200_000) ** (1 / ndim)))
    sub = (slice(None), slice(None), *[slice(None, None, stride)] * ndim)
    source = points[sub].reshape(ndim, -1).T
    a_lin, a_off = _affine_fit(source, mapped[sub].reshape(ndim, -1).T)
    # Residual in fixed voxels: x + r(x) = W^-1 A^-1 φ(W x).
    to_index = torch.linalg.inv(lin)
    unaffine = _apply(torch.linalg.inv(a_lin), mapped - _column(a_off, ndim))
    residual = _apply(to_index, unaffine - _column(off, ndim)) - grid
    residual_inv = invert(residual, iterations=iterations, tolerance=1e-5)
    # For a target point q: x' = W^-1 A^-1 q, then φ^-1(q) = W (x' + r^-1(x')).
    t_lin, t_off = _matrix(target, work)
    t_grid = identity_grid(target.size, work.dtype, work.device)
    q = _apply(t_lin, t_grid) + _column(t_off, ndim)
    x_prime = _apply(to_index, _apply(torch.linalg.inv(a_lin), q - _column(a_off, ndim)) - _column(off, ndim))
    flat = x_prime.reshape(ndim, -1).T
    x = flat + sample_points(residual_inv, flat)
    preimage = (x @ lin.T + off).T.reshape(1, ndim, *target.size)
    return (preimage - q).to(displacement.dtype)
