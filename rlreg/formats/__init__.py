"""Displacement-field file formats, each module holding one format's writer beside its reader.

Every function takes or returns the field in rlreg's conventions:

* ``geometry`` (:class:`rlreg.io.Geometry`) is the **fixed** grid, ``size``/``spacing`` in tensor axis order
  (``(k, j, i)`` in 3D), ``origin`` and ``direction`` in ITK LPS terms.
* ``u`` is a ``(*S, ndim)`` array, ``S = geometry.size``, of **LPS millimetre** displacements in ITK ``(x, y, z)``
  component order: the *total pull-back* field, fixed point ``p`` maps to moving point ``p + u(p)``. It is what
  ``sitk.GetArrayFromImage`` returns for an ITK displacement field on the fixed grid.
* ``chain`` (Learn2Reg only) is the same transform in voxel units, ``(ndim, *S)``, channel ``c`` = tensor axis ``c``.

Modules: :mod:`~rlreg.formats.slicer` (intent 1006, RAS), :mod:`~rlreg.formats.niftyreg` (``NREG_TRANS``, RAS),
:mod:`~rlreg.formats.fsl` (relative warp, scaled-voxel mm), :mod:`~rlreg.formats.learn2reg` (voxels, plus its file
names and keypoints), :mod:`~rlreg.formats.dicom` (DSRO), and :mod:`~rlreg.formats.common` (what they share). The
default output, an ITK/ANTs ``warp.nii.gz`` (intent 1007, LPS mm), and ITK transform files are written and read by
:mod:`rlreg.transforms`. These writers are behind ``rlreg register --format``; each writer's docstring names the
sources of its convention. Every file is written through :func:`rlreg.io.atomic_output`, so an interrupted run
never leaves half a file.
"""

from __future__ import annotations

from rlreg.formats.dicom import DSRO_SOP_CLASS_UID, DicomSeriesRef, dicom_series_ref, read_dicom_field, write_dicom
from rlreg.formats.fsl import read_fsl, write_fsl
from rlreg.formats.learn2reg import l2r_name, read_keypoints, read_l2r, write_l2r
from rlreg.formats.niftyreg import read_niftyreg, write_niftyreg
from rlreg.formats.slicer import read_slicer, write_slicer

__all__ = [
    "DSRO_SOP_CLASS_UID",
    "DicomSeriesRef",
    "dicom_series_ref",
    "l2r_name",
    "read_dicom_field",
    "read_fsl",
    "read_keypoints",
    "read_l2r",
    "read_niftyreg",
    "read_slicer",
    "write_dicom",
    "write_fsl",
    "write_l2r",
    "write_niftyreg",
    "write_slicer",
]
