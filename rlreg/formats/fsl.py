"""FSL's relative warp (``convertwarp --relout``): mm in FSL's scaled-voxel frame; writer and reader."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rlreg.formats.common import (
    check_field,
    itk_index_matrix,
    load_nifti_field,
    nibabel_order,
    ras_affine,
    save_nifti,
    tensor_order,
)
from rlreg.io import Geometry, InputError

__all__ = ["read_fsl", "write_fsl"]


def write_fsl(u: np.ndarray, geometry: Geometry, path: str | os.PathLike[str]) -> Path:
    """Write an FSL relative warp (as from ``convertwarp --relout``): ``(X, Y, Z, 3)`` float32, intent 2006.

    FSL displacements are mm in its *scaled-voxel* frame (origin at voxel 0, axes along the voxel axes, x mirrored
    when the sform has a positive determinant; regtricks "FSL" docs, nitransforms ``io/fsl.py``). Per voxel::

        u_fsl = diag(s) F A^-1 u,    F = diag(-1, 1, 1) if det(RAS sform) > 0 else I

    with ``A^-1 u`` the displacement in ITK index steps ``(i, j, k)``. Use with ``applywarp --rel``.

    Args:
        u: ``(*S, 3)`` LPS mm pull-back displacements on ``geometry``.
        geometry: the fixed (FSL ``--ref``) grid; 3D only.
        path: output ``.nii``/``.nii.gz`` file.

    Returns:
        The written path.

    Raises:
        ValueError: for a 2D field (FSL warps are 3D volumes).
    """
    if geometry.ndim != 3:
        raise ValueError(f"FSL warps are 3D volumes; got a {geometry.ndim}-D grid of size {geometry.size} "
                         "(use --format l2r or the default warp.nii.gz for 2D images)")
    u = check_field(u, geometry)
    matrix = itk_index_matrix(geometry)
    steps = nibabel_order(u, geometry) @ np.linalg.inv(matrix).T
    flip = np.array([-1.0, 1.0, 1.0]) if np.linalg.det(ras_affine(geometry)[:3, :3]) > 0 else np.ones(3)
    fsl = steps * (flip * np.asarray(geometry.spacing[::-1]))
    return save_nifti(fsl, geometry, path, intent=2006)

def read_fsl(path: str | os.PathLike[str], geometry: Geometry) -> np.ndarray:
    """Read a relative FSL warp written by :func:`write_fsl` on ``geometry`` back as ``(*S, 3)`` LPS mm (float64).

    The inverse of :func:`write_fsl`: ``u = A F diag(s)^-1 u_fsl`` per voxel, then nibabel -> tensor order.

    Raises:
        InputError: not a readable NIfTI file, or not a ``(X, Y, Z, 3)`` field on ``geometry`` (3D only).
    """
    if geometry.ndim != 3:
        raise InputError(f"{path}: FSL warps are 3D volumes but the grid is {geometry.ndim}-D; give the 3D fixed "
                         "image the warp was written for")
    data = load_nifti_field(path, geometry, (*(int(n) for n in geometry.size[::-1]), 3), "FSL")
    flip = np.array([-1.0, 1.0, 1.0]) if np.linalg.det(ras_affine(geometry)[:3, :3]) > 0 else np.ones(3)
    steps = data / (flip * np.asarray(geometry.spacing[::-1]))
    return tensor_order(steps @ itk_index_matrix(geometry).T, geometry)
