"""What the field formats share: the field check, the fixed grid's NIfTI affine, the axis orders, NIfTI I/O.

Notation: ITK maps an index ``(i, j, k)`` to ``p = o + A (i, j, k)`` with ``A = R diag(s)``, ``R`` the direction
matrix and ``s`` the spacing in ITK order. NIfTI files store the RAS affine ``diag(-1, -1, 1) [A | o]`` (sform =
qform, codes 1), as ITK itself writes it. Fields are ``(*S, C)`` in rlreg's tensor order in memory and
``(X, Y, Z, ...)`` in nibabel (ITK index) order on disk.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.dataobj_images import DataobjImage

from rlreg.io import Geometry, InputError, atomic_output

__all__ = ["LPS_TO_RAS", "check_field", "itk_index_matrix", "load_nifti_field", "nibabel_order", "nifti_voxels",
           "ras_affine", "save_nifti", "tensor_order"]

LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])
"""Sign flips between the LPS (ITK, DICOM) and RAS (NIfTI) world frames."""


def check_field(u: np.ndarray, geometry: Geometry) -> np.ndarray:
    """``u`` as a float64 array after checking it is ``(*geometry.size, ndim)`` for a 2D or 3D grid."""
    u = np.asarray(u)
    if geometry.ndim not in (2, 3):
        raise ValueError(f"expected a 2D or 3D grid, got a {geometry.ndim}-D geometry of size {geometry.size}")
    expected = (*geometry.size, geometry.ndim)
    if u.shape != expected:
        raise ValueError(f"displacement of shape {u.shape} does not match the grid: expected {expected} "
                         "(tensor-order grid size, then one LPS component per dimension)")
    return u.astype(np.float64)


def itk_index_matrix(geometry: Geometry) -> np.ndarray:
    """``A = R diag(s)`` (``ndim x ndim``): ITK index ``(i, j, k)`` steps to LPS mm."""
    n = geometry.ndim
    return np.asarray(geometry.direction, dtype=np.float64).reshape(n, n) * np.asarray(geometry.spacing[::-1])


def _embed_3d(geometry: Geometry) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """``(A, origin, size_ijk)`` of the grid as a 3D one (a 2D grid becomes one slice at z = 0, 1 mm thick)."""
    matrix = itk_index_matrix(geometry)
    origin = np.asarray(geometry.origin, dtype=np.float64)
    size = tuple(int(n) for n in geometry.size[::-1])
    if geometry.ndim == 2:
        matrix = np.block([[matrix, np.zeros((2, 1))], [np.zeros((1, 2)), np.ones((1, 1))]])
        origin = np.append(origin, 0.0)
        size = (*size, 1)
    return matrix, origin, size


def ras_affine(geometry: Geometry) -> np.ndarray:
    """The ``4 x 4`` NIfTI (RAS) affine of the grid, from ITK index ``(i, j, k)`` to RAS mm (2D: one slice)."""
    matrix, origin, _ = _embed_3d(geometry)
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS[:, None] * matrix
    affine[:3, 3] = LPS_TO_RAS * origin
    return affine


def nibabel_order(u: np.ndarray, geometry: Geometry) -> np.ndarray:
    """``(*S, C)`` tensor-order array -> ``(X, Y, Z, C)`` nibabel (ITK index) order; 2D gains ``Z = 1``."""
    out = np.moveaxis(u, range(geometry.ndim), range(geometry.ndim)[::-1])
    return out[:, :, None, :] if geometry.ndim == 2 else out


def save_nifti(data: np.ndarray, geometry: Geometry, path: str | os.PathLike[str], intent: int | None = None,
                intent_name: str = "", intent_p1: float | None = None) -> Path:
    """Write float32 ``data`` (nibabel axis order) with the fixed RAS affine as sform = qform (codes 1), mm units."""
    affine = ras_affine(geometry)
    image = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    header = image.header
    header.set_xyzt_units("mm")
    if intent is not None:
        header.set_intent(intent, name=intent_name)
    if intent_p1 is not None:
        header["intent_p1"] = intent_p1
    with atomic_output(path) as tmp:
        nib.save(image, tmp)
    return Path(path)


# ---------------------------------------------------------------------------------------------------------------
# NIfTI family: Slicer, NiftyReg, FSL, Learn2Reg
# ---------------------------------------------------------------------------------------------------------------


def tensor_order(data: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The inverse of :func:`nibabel_order`: ``(X, Y, Z, C)`` (2D: ``Z = 1``) -> ``(*S, C)`` tensor order."""
    if geometry.ndim == 2:
        data = data[:, :, 0]
    return np.moveaxis(data, range(geometry.ndim), range(geometry.ndim)[::-1])


def nifti_voxels(path: str | os.PathLike[str]) -> np.ndarray:
    """The float64 voxel array of a NIfTI file, in nibabel order.

    Raises:
        OSError, ValueError: the file is unreadable, or nibabel reads it as an image without voxels (e.g. GIFTI).
    """
    image = nib.load(str(path))
    if not isinstance(image, DataobjImage):
        raise ValueError(f"a {type(image).__name__}, which holds no voxel array")
    return np.asarray(image.get_fdata(dtype=np.float64))


def load_nifti_field(path: str | os.PathLike[str], geometry: Geometry, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """The float64 voxels of a NIfTI field written on ``geometry``, checked to have ``shape`` (nibabel order).

    Raises:
        InputError: the file is not readable NIfTI or its voxel array does not have ``shape`` (one line naming the
            file and the fix).
    """
    try:
        data = nifti_voxels(path)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable {kind} field ({err}); give the .nii/.nii.gz file it wrote") \
            from None
    if data.shape != shape:
        raise InputError(f"{path}: {kind} field of shape {data.shape}, expected {shape} on the fixed grid of size "
                         f"{tuple(geometry.size)}; give the field written for this fixed image")
    return data
