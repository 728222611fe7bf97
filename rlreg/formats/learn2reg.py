"""Learn2Reg's conventions: the submission field ``disp_{fix}_{mov}.nii.gz`` (voxels, nibabel order; writer and
reader), its file names, and its keypoint CSVs (reader).

Learn2Reg ``evaluation.py`` warps a nibabel-loaded moving image with
``scipy.ndimage.map_coordinates(moving, identity + disp.transpose(3, 0, 1, 2))``; spatial axes and components are
both in ITK index order ``(i, j, k)``, the reverse of rlreg's tensor order.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rlreg.formats.common import nifti_voxels, save_nifti
from rlreg.io import Geometry, InputError, split_image_name

__all__ = ["l2r_name", "read_keypoints", "read_l2r", "write_l2r"]

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".npz", ".npy", ".hdr", ".img",
                   ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_L2R_PATTERN = re.compile(r"^.+_(?P<case>\d{4})_(?P<modality>\d{4})\.nii(\.gz)?$")


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def write_l2r(chain: np.ndarray, geometry: Geometry, path: str | os.PathLike[str]) -> Path:
    """Write a Learn2Reg submission field: voxel units, nibabel axis order, ``map_coordinates`` convention.

    With ``disp = nib.load(path).get_fdata()`` and a moving image loaded with nibabel (``(X, Y, Z)``, on the fixed
    grid), ``scipy.ndimage.map_coordinates(moving, identity + disp.transpose(3, 0, 1, 2), order=1)`` is the warped
    image (Learn2Reg ``evaluation.py``; LUMIR "Validation Submission guidelines"). Spatial axes and components are
    both in ITK index order ``(i, j, k)``: the reverse of ``chain``'s tensor order.

    Args:
        chain: ``(ndim, *S)`` pull-back displacement in voxels, channel ``c`` along tensor axis ``c``.
        geometry: the fixed grid (only the affine is used; Learn2Reg ignores it).
        path: output ``.nii``/``.nii.gz`` file, usually named with :func:`l2r_name`.

    Returns:
        The written path: float32 ``(X, Y, Z, 3)`` in 3D, ``(X, Y, 2)`` in 2D (the same convention for a 2D
        ``(X, Y)`` moving array; Learn2Reg itself has only 3D tasks).
    """
    chain = np.asarray(chain)
    if geometry.ndim not in (2, 3) or chain.shape != (geometry.ndim, *geometry.size):
        raise ValueError(f"voxel field of shape {chain.shape} does not match the grid: expected "
                         f"{(geometry.ndim, *geometry.size)} (channels in tensor axis order, then the grid)")
    components_last = np.moveaxis(chain[::-1], 0, -1)
    disp = np.moveaxis(components_last, range(geometry.ndim), range(geometry.ndim)[::-1])
    return save_nifti(disp, geometry, path)


def _case_id(path: str | os.PathLike[str]) -> str:
    name = Path(path).name
    match = _L2R_PATTERN.match(name)
    if match:
        return match.group("case")
    return split_image_name(name, _IMAGE_SUFFIXES)[0]


def l2r_name(fixed_path: str | os.PathLike[str], moving_path: str | os.PathLike[str]) -> str:
    """Learn2Reg file name ``disp_{fix}_{mov}.nii.gz`` for a pair.

    ``{fix}``/``{mov}`` is the 4-digit case id when the file follows Learn2Reg's ``<TASK>_<case>_<modality>.nii.gz``
    pattern (``NLST_0101_0000.nii.gz`` -> ``0101``); otherwise the file (or DICOM folder) name without its image
    extension (``.nii.gz``, ``.nrrd``, ``.mha``, ``.png``, ...), so ``sub-1.v2.nii.gz`` gives ``sub-1.v2``.
    """
    return f"disp_{_case_id(fixed_path)}_{_case_id(moving_path)}.nii.gz"


# ---------------------------------------------------------------------------------------------------------------
# DICOM Deformable Spatial Registration (DSRO)
# ---------------------------------------------------------------------------------------------------------------



def read_l2r(path: str | os.PathLike[str], fixed: Geometry) -> Tensor:
    """Read a Learn2Reg field (``.nii.gz`` as :func:`write_l2r` writes it, or a single-array ``.npz``) on the fixed
    grid as rlreg's voxel chain.

    The inverse of :func:`write_l2r`: spatial axes and components are both reversed to tensor order.

    Returns:
        ``(1, ndim, *S)`` float64 pull-back displacement in voxels, channel ``c`` along tensor axis ``c``.

    Raises:
        InputError: unreadable, several arrays in an ``.npz``, or not ``(*fixed grid in nibabel order, ndim)``.
    """
    path = Path(path)
    try:
        if path.name.lower().endswith(".npz"):
            with np.load(path, allow_pickle=False) as archive:
                if len(archive.files) != 1:
                    raise InputError(f"{path}: holds {len(archive.files)} arrays; a Learn2Reg .npz field holds one")
                disp = np.asarray(archive[archive.files[0]], dtype=np.float64)
        else:
            disp = nifti_voxels(path)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable Learn2Reg field ({_one_line(err)}); give a (X,Y,Z,3) voxel "
                         "displacement as .nii.gz or .npz") from None
    expected = (*fixed.size[::-1], fixed.ndim)
    if disp.shape != expected:
        raise InputError(f"{path}: field of shape {disp.shape}, expected {expected} (the fixed grid in nibabel "
                         f"order, then {fixed.ndim} voxel components); give the field computed for this fixed image")
    ndim = disp.ndim - 1
    tensor_axes = np.moveaxis(disp, range(ndim), range(ndim)[::-1])
    chain = np.moveaxis(tensor_axes, -1, 0)[::-1]
    return torch.from_numpy(np.ascontiguousarray(chain, dtype=np.float64))[None]


def read_keypoints(path: str | os.PathLike[str], ndim: int) -> np.ndarray:
    """Learn2Reg keypoints ``(P, ndim)`` float64: voxel coordinates in nibabel (= ITK index) order, comma-separated,
    one point per row, no header.

    Raises:
        InputError: missing file, not numeric CSV, or not ``ndim`` columns.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: keypoint file not found; give a CSV of voxel coordinates i,j,k (no header)")
    try:
        points = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
    except ValueError as err:
        raise InputError(f"{path}: not a keypoint CSV ({_one_line(err)}); give comma-separated voxel coordinates "
                         "i,j,k, one point per row, no header") from None
    if points.shape[1] != ndim:
        raise InputError(f"{path}: has {points.shape[1]} columns; give {ndim} voxel coordinates per row "
                         f"({'i,j,k' if ndim == 3 else 'i,j'}, nibabel index order)")
    return points
