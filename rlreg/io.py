"""Reading and writing images with their full geometry, and the voxel <-> world maps between grids.

Images are read with SimpleITK, which keeps size, spacing, origin and direction for every format it reads
(NIfTI, NRRD, MHA, DICOM series, ...). The pixel array comes back in SimpleITK's ``(k, j, i)`` order, which is the
tensor axis order used everywhere in rlreg (see :mod:`rlreg.spatial`). World coordinates are ITK's **LPS millimetres**.

Every write goes to a temporary file in the destination folder and is renamed into place, so an interrupted run
never leaves a half-written file where a finished one was expected.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch import Tensor

__all__ = ["Geometry", "Image", "InputError", "atomic_output", "atomic_path", "nibabel_to_sitk", "read_image",
           "save_sitk", "save_torch", "write_image"]


class InputError(ValueError):
    """A problem with a user's input file: the message names the file and says how to fix it (one line)."""


@dataclass(frozen=True)
class Geometry:
    """Where a voxel grid sits in the world (ITK conventions, LPS mm), given in **tensor axis order**.

    Attributes:
        size: voxels per tensor axis, e.g. ``(k, j, i)`` sizes for a 3D SimpleITK array.
        spacing: mm per voxel along each tensor axis.
        origin: LPS position (mm) of voxel index 0, in ITK ``(x, y, z)`` order.
        direction: ``(ndim, ndim)`` row-major ITK direction matrix (columns = LPS directions of ITK index axes i, j, k).
    """

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @property
    def ndim(self) -> int:
        return len(self.size)

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Geometry:
        return cls(size=tuple(image.GetSize())[::-1], spacing=tuple(image.GetSpacing())[::-1],
                   origin=tuple(image.GetOrigin()), direction=tuple(image.GetDirection()))

    def index_to_world(self) -> np.ndarray:
        """``(ndim+1, ndim+1)`` homogeneous matrix from a tensor index ``t`` (tensor axis order) to LPS mm.

        ITK maps its index ``(i, j, k)`` to ``origin + D diag(spacing) (i, j, k)``; tensor axes are ITK's reversed,
        so the columns of ``D diag(spacing)`` are reversed here.
        """
        n = self.ndim
        itk_cols = np.asarray(self.direction, dtype=np.float64).reshape(n, n) * np.asarray(self.spacing[::-1])
        matrix = np.eye(n + 1)
        matrix[:n, :n] = itk_cols[:, ::-1]
        matrix[:n, n] = self.origin
        return matrix

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Copy this geometry onto ``image`` (which must have the same size) and return it."""
        image.SetSpacing(self.spacing[::-1])
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


@dataclass
class Image:
    """A scalar image as a ``(1, 1, *S)`` tensor in tensor axis order, with its geometry and source path."""

    data: Tensor
    geometry: Geometry
    path: Path | None = None
    volume: Geometry | None = None
    """The 3-D grid of the one-slice volume this 2-D image was read from (``None`` for a 2-D or 3-D image): rlreg
    registers such a slice in its plane and writes its outputs on this grid (:mod:`rlreg.slices`)."""

    @property
    def ndim(self) -> int:
        return self.geometry.ndim


def _read_sitk(path: Path) -> sitk.Image:
    """One image file, or the single DICOM series in a directory."""
    if path.is_dir():
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise InputError(f"{path}: directory holds no DICOM series; give an image file or a DICOM series folder")
        if len(series) > 1:
            raise InputError(f"{path}: directory holds {len(series)} DICOM series ({', '.join(series[:3])}...); "
                             "put each series in its own folder")
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0]))
        return reader.Execute()
    return sitk.ReadImage(str(path))


def read_image(path: str | os.PathLike[str], dtype: torch.dtype = torch.float32, check_values: bool = True) -> Image:
    """Read a 2D or 3D scalar image with its geometry: any SimpleITK format, or a DICOM series directory.

    A singleton 4th dimension is dropped; a 3-D volume one voxel thick along one axis becomes a 2-D image in the
    frame of its plane, its 3-D grid kept in :attr:`Image.volume` (:mod:`rlreg.slices`); 2D RGB(A) pictures (PNG,
    TIFF, JPEG) are converted to luminance.

    Args:
        path: image file or DICOM series directory.
        dtype: tensor dtype of the returned data.
        check_values: reject NaN/Inf voxels and images whose voxels are all equal.

    Raises:
        InputError: the file is missing, unreadable, not 2D/3D, multi-component, holds NaN/Inf, or is empty; the
            one-line message names the file and says what to do.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found; check the path (relative paths are taken from {Path.cwd()})")
    try:
        image = _read_sitk(path)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown error"
        raise InputError(f"{path}: not a readable image ({first}); give a NIfTI/NRRD/MHA/PNG file or a DICOM "
                         "series folder") from None
    components = image.GetNumberOfComponentsPerPixel()
    if components in (3, 4) and image.GetDimension() == 2:
        rgb = sitk.GetArrayFromImage(image).astype(np.float32)[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
        image = _with_geometry(sitk.GetImageFromArray(rgb), image)
    elif components != 1:
        raise InputError(f"{path}: has {components} components per voxel; give a scalar image "
                         "(e.g. extract one channel first)")
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() == 4:
        raise InputError(f"{path}: is 4-D with {image.GetSize()[3]} volumes; pick one volume first, e.g. "
                         f"fslroi {path.name} volume0.nii.gz 0 1, or python -c \"import SimpleITK as s; "
                         f"s.WriteImage(s.ReadImage('{path.name}')[:,:,:,0], 'volume0.nii.gz')\"")
    if image.GetDimension() not in (2, 3):
        raise InputError(f"{path}: is {image.GetDimension()}-D with size {image.GetSize()}; "
                         "rlreg registers 2D or 3D images")
    geometry, volume = Geometry.from_sitk(image), None
    if image.GetDimension() == 3:
        from rlreg.slices import in_plane_geometry, singleton_axis

        if singleton_axis(image.GetSize()) is not None:  # one slice: registered in its plane (rlreg.slices)
            geometry, volume = in_plane_geometry(geometry), geometry
    array = sitk.GetArrayFromImage(image).reshape(geometry.size)
    if check_values:
        _check_values(path, _nifti_raw(path) if path.name.endswith((".nii", ".nii.gz")) else array)
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    tensor = tensor.to(dtype) if dtype is not None else tensor
    return Image(data=tensor[None, None], geometry=geometry, path=path, volume=volume)


def _with_geometry(image: sitk.Image, like: sitk.Image) -> sitk.Image:
    image.SetSpacing(like.GetSpacing())
    image.SetOrigin(like.GetOrigin())
    image.SetDirection(like.GetDirection())
    return image


def _nifti_raw(path: Path) -> np.ndarray:
    """The voxels of a floating-point NIfTI as stored: ITK's reader silently turns NaN into 0, hiding bad data."""
    import nibabel as nib

    image = nib.load(str(path))
    if not np.issubdtype(image.get_data_dtype(), np.floating):
        return np.asarray(image.dataobj)
    return np.asarray(image.dataobj, dtype=np.float32)


def _check_values(path: Path, array: np.ndarray) -> None:
    if array.size == 0:
        raise InputError(f"{path}: has no voxels; check that it is the right file")
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputError(f"{path}: has {bad} NaN/Inf voxels; replace them first (e.g. fslmaths {path.name} "
                             "-nan fixed.nii.gz, or numpy.nan_to_num)")
    if array.min() == array.max():
        raise InputError(f"{path}: is empty (every voxel is {array.flat[0]}); check that it is the right file")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_path(path: Path) -> Path:
    """A temporary sibling of ``path`` with the same suffixes (so writers pick the right format)."""
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    return Path(tmp)


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Write through a temporary sibling: ``with atomic_output(p) as tmp: save(tmp)`` renames ``tmp`` onto ``p``
    only when the block succeeds, so ``p`` is never half-written and an earlier ``p`` survives a failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    try:
        yield tmp
        if tmp.exists():  # mkstemp makes the file owner-only; give it the permissions a plain open() would
            os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_torch(obj: object, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` atomically and byte-reproducibly: the same ``obj`` always gives the same file (and checksum).

    Saved to a path, torch names the archive's root folder after the file, here a random temporary name; saved
    through an open handle it is always ``archive``.
    """
    with atomic_output(path) as tmp, tmp.open("wb") as handle:
        torch.save(obj, handle)
    return Path(path)


def write_image(data: Tensor | np.ndarray, geometry: Geometry, path: str | os.PathLike[str],
                dtype: np.dtype | type | None = None) -> Path:
    """Write a ``(*S)`` / ``(1, 1, *S)`` array on ``geometry``'s grid to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = data.detach().cpu().numpy() if isinstance(data, Tensor) else np.asarray(data)
    if array.size == int(np.prod(geometry.size)):  # (1, 1, *S) data, or a slice's 2-D data on its one-slice grid
        array = array.reshape(geometry.size)
    if tuple(array.shape) != geometry.size:
        raise ValueError(f"array of shape {array.shape} does not match the grid {geometry.size}")
    if dtype is not None:
        array = array.astype(dtype)
    return save_sitk(geometry.apply_to(sitk.GetImageFromArray(array)), path)


def _fast_gzip():
    """ISA-L's gzip module, or None where the ``isal`` wheel is missing (then SimpleITK compresses)."""
    try:
        from isal import igzip
    except ImportError:  # pragma: no cover - isal is a dependency; exotic platforms may lack a wheel
        return None
    return igzip


def save_sitk(image: sitk.Image, path: str | os.PathLike[str]) -> Path:
    """Write a SimpleITK image to ``path`` atomically, compressed where the format allows; returns the path.

    ``.nii.gz`` is written by SimpleITK uncompressed and then gzipped by ISA-L at level 1 (Intel's ``igzip``): on
    float fields, whose low mantissa bits barely compress, zlib ran at about 25 MB/s, so a 1 mm displacement field
    (73 MiB) took 2.7 s to write and ISA-L takes 0.35 s, for a file 5 % larger (62 vs 59 MiB). The result is a plain
    gzip stream: every NIfTI reader opens it. Other formats go through SimpleITK's own compression.
    """
    path = Path(path)
    igzip = _fast_gzip()
    if igzip is None or not path.name.endswith(".nii.gz"):
        with atomic_output(path) as tmp:
            sitk.WriteImage(image, str(tmp), useCompression=True)
        return path
    with atomic_output(path) as tmp:
        raw = tmp.with_name(tmp.name[: -len(".gz")])
        try:
            sitk.WriteImage(image, str(raw), useCompression=False)
            with raw.open("rb") as source, igzip.open(tmp, "wb", compresslevel=1) as target:
                shutil.copyfileobj(source, target, 1 << 22)
        finally:
            raw.unlink(missing_ok=True)
    return path


def nibabel_to_sitk(image) -> sitk.Image:
    """A nibabel image (RAS affine, ``(x, y, z)`` array) as a float32 SimpleITK image with the same geometry (LPS).

    The affine must be a rotation times a diagonal scaling (no shear), which holds for every image used here.
    """
    array = np.asarray(image.dataobj, dtype=np.float32)
    out = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))  # SimpleITK arrays are (z, y, x)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(image.affine, dtype=np.float64)  # RAS -> LPS
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    out.SetSpacing(spacing.tolist())
    out.SetOrigin(affine[:3, 3].tolist())
    out.SetDirection((affine[:3, :3] / spacing).flatten().tolist())
    return out
