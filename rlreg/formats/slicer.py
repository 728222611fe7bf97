"""3D Slicer's native displacement field: NIfTI intent 1006, RAS mm; writer and reader."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rlreg.formats.common import LPS_TO_RAS, check_field, load_nifti_field, nibabel_order, save_nifti, tensor_order
from rlreg.io import Geometry

__all__ = ["read_slicer", "write_slicer"]


def write_slicer(u: np.ndarray, geometry: Geometry, path: str | os.PathLike[str]) -> Path:
    """Write a 3D Slicer-native displacement field: NIfTI intent 1006 (``NIFTI_INTENT_DISPVECT``), **RAS** mm.

    Layout ``(X, Y, Z, 1, 3)`` float32 on the fixed grid (sform = qform = fixed RAS affine, codes 1, mm). The
    vectors are ``u`` with x and y negated (LPS -> RAS): Slicer writes 1006 files this way, and ITK >= 5.4 flips
    x, y back to LPS when it reads intent 1006 (ITK commit d007ee8, Slicer PR #6799). Older ITK/ANTs builds cannot
    read 1006; the default 1007 + LPS ``warp.nii.gz`` is the portable choice.

    Args:
        u: ``(*S, ndim)`` LPS mm pull-back displacements on ``geometry`` (components ``(x, y[, z])``).
        geometry: the fixed grid. A 2D grid is written as a single-slice 3D field with a zero z component,
            because Slicer transforms are 3D.
        path: output ``.nii``/``.nii.gz`` file.

    Returns:
        The written path.
    """
    u = check_field(u, geometry)
    if geometry.ndim == 2:
        u = np.concatenate([u, np.zeros((*u.shape[:-1], 1))], axis=-1)
    ras = nibabel_order(u, geometry) * LPS_TO_RAS
    return save_nifti(ras[:, :, :, None, :], geometry, path, intent=1006)

def read_slicer(path: str | os.PathLike[str], geometry: Geometry) -> np.ndarray:
    """Read a field written by :func:`write_slicer` on ``geometry`` back as ``(*S, ndim)`` LPS mm (float64).

    The inverse of :func:`write_slicer`: RAS vectors -> LPS, nibabel -> tensor order; a 2D grid drops the (zero)
    z component.

    Raises:
        InputError: not a readable NIfTI file, or not a ``(X, Y, Z, 1, 3)`` field on ``geometry``.
    """
    size = tuple(int(n) for n in geometry.size[::-1]) + ((1,) if geometry.ndim == 2 else ())
    data = load_nifti_field(path, geometry, (*size, 1, 3), "Slicer")[:, :, :, 0, :] * LPS_TO_RAS
    return tensor_order(data, geometry)[..., : geometry.ndim]
