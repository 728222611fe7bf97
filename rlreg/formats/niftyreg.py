"""NiftyReg's displacement field (``reg_transform -disp``): NIfTI intent 1007 ``NREG_TRANS``, RAS mm; writer and
reader."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rlreg.formats.common import LPS_TO_RAS, check_field, load_nifti_field, nibabel_order, save_nifti, tensor_order
from rlreg.io import Geometry

__all__ = ["read_niftyreg", "write_niftyreg"]


def write_niftyreg(u: np.ndarray, geometry: Geometry, path: str | os.PathLike[str]) -> Path:
    """Write a NiftyReg displacement field (``reg_transform -disp`` style), RAS mm.

    NiftyReg tags its transforms with ``intent_code = 1007`` (VECTOR), ``intent_name = "NREG_TRANS"`` and
    ``intent_p1 = DISP_FIELD = 1`` (KCL-BMEIS/niftyreg ``NREG_TRANS_TYPE``), and stores physical displacements in
    the NIfTI (RAS) world frame. So this file has the ITK layout and intent but RAS vectors: ITK-based tools read
    it wrongly (use the default ``warp.nii.gz`` for them).

    Args:
        u: ``(*S, ndim)`` LPS mm pull-back displacements on ``geometry``.
        geometry: the fixed (NiftyReg "reference") grid.
        path: output ``.nii``/``.nii.gz`` file.

    Returns:
        The written path: ``(X, Y, Z, 1, 3)`` float32 in 3D; in 2D ``(X, Y, 1, 1, 2)`` with x, y only, as NiftyReg
        itself allocates 2D fields (``nu = nz > 1 ? 3 : 2``).
    """
    u = check_field(u, geometry)
    ras = nibabel_order(u, geometry) * LPS_TO_RAS[: geometry.ndim]
    return save_nifti(ras[:, :, :, None, :], geometry, path, intent=1007, intent_name="NREG_TRANS", intent_p1=1.0)

def read_niftyreg(path: str | os.PathLike[str], geometry: Geometry) -> np.ndarray:
    """Read a field written by :func:`write_niftyreg` on ``geometry`` back as ``(*S, ndim)`` LPS mm (float64).

    The inverse of :func:`write_niftyreg`: RAS vectors -> LPS, nibabel -> tensor order.

    Raises:
        InputError: not a readable NIfTI file, or not a ``(X, Y, Z, 1, ndim)`` field on ``geometry``.
    """
    size = tuple(int(n) for n in geometry.size[::-1]) + ((1,) if geometry.ndim == 2 else ())
    data = load_nifti_field(path, geometry, (*size, 1, geometry.ndim), "NiftyReg")[:, :, :, 0, :]
    return tensor_order(data * LPS_TO_RAS[: geometry.ndim], geometry)
