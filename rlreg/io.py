"""Reading and writing images with their full geometry, and the voxel <-> world maps between grids.

Images are read with SimpleITK, which keeps size, spacing, origin and direction for every format it reads
(NIfTI, NRRD, MHA, DICOM series, ...). The pixel array comes back in SimpleITK's ``(k, j, i)`` order, which is the
tensor axis order used everywhere in rlreg (see :mod:`rlreg.spatial`). World coordinates are ITK's **LPS millimetres**.

Every write goes to a temporary file in the destination folder and is renamed into place, so an interrupted run
never leaves a half-written file where a finished one was expected.
"""

from __future__ import annotations

import gzip
import os
import shlex
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import SimpleITK as sitk
import torch
from torch import Tensor

__all__ = ["COORDINATE_TOLERANCE", "DIRECTION_TOLERANCE", "Geometry", "Image", "InputError", "atomic_output",
           "atomic_path", "check_complete", "check_output_image", "check_same_grid", "grid_difference",
           "nibabel_to_sitk", "picture_array", "read_image", "read_label_map", "save_sitk", "save_torch",
           "split_image_name", "write_image"]

COORDINATE_TOLERANCE = 1e-3
"""Two grids agree when their origins and spacings differ by at most this fraction of the smaller voxel size.

ITK compares grids with 1e-6 voxel (``ImageToImageFilter``'s default coordinate tolerance). rlreg allows 1e-3:
a NIfTI header stores the origin in float32, so an image converted from NRRD, MHA or DICOM (double precision)
moves by up to ``|origin| x 6e-8`` mm, which is 1.5e-4 of a 0.2 mm voxel at 1000 mm (measured in
``docs/register.md``). A thousandth of a voxel is still far below any registration error."""
DIRECTION_TOLERANCE = 1e-5
"""Two grids agree when their direction matrices differ by at most this much in any entry (ITK's default is
1e-6). NIfTI's float32 quaternion or sform rounds directions by about 7e-8 (``docs/register.md``); 1e-5 moves a
voxel 256 voxels from the origin by 0.003 voxel."""


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
        # ITK's GDCM scanner prints a WARNING for a folder without DICOM files; rlreg's own line says it better.
        shown = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        try:
            series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
        finally:
            sitk.ProcessObject.SetGlobalWarningDisplay(shown)
        if not series:
            raise InputError(f"{path}: directory holds no DICOM series; give an image file or a DICOM series folder")
        if len(series) > 1:
            raise InputError(f"{path}: directory holds {len(series)} DICOM series ({', '.join(series[:3])}...); "
                             "put each series in its own folder")
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0]))
        return reader.Execute()
    check_complete(path)
    return sitk.ReadImage(str(path))


def _cut_short(path: Path, reason: str) -> InputError:
    return InputError(f"{path}: is cut short or corrupt ({reason}); it was probably copied or downloaded only in "
                      "part: copy it again from its source")


def check_complete(path: str | os.PathLike[str]) -> None:
    """Refuse a ``.nii.gz`` whose gzip stream is cut short: the usual result of a partly copied or downloaded file.

    ITK's NIfTI reader reads such a file without complaint and fills the missing voxels with zeros, so the check
    is made here. It is cheap for a whole file: a gzip stream ends with the uncompressed size modulo 2**32 (RFC
    1952), compared with the size the NIfTI header implies. Only when they differ (a cut file, or a legitimate
    multi-member stream) is the whole stream decompressed to decide.

    Raises:
        InputError: the stream ends early or is corrupt (one line, names the file and the fix).
    """
    path = Path(path)
    if not path.name.lower().endswith(".nii.gz") or not path.is_file():
        return
    import nibabel as nib

    try:
        proxy = cast("nib.arrayproxy.ArrayProxy", cast("nib.Nifti1Image", nib.load(str(path))).dataobj)
        expected = int(proxy.offset) + int(np.prod(proxy.shape)) * np.dtype(proxy.dtype).itemsize
        with path.open("rb") as handle:
            handle.seek(-4, os.SEEK_END)
            stored = int.from_bytes(handle.read(4), "little")
    except Exception:  # not a NIfTI that nibabel parses: SimpleITK's reader gives the verdict
        return
    if stored == expected % 2**32:
        return
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 24):
                pass
    except (EOFError, OSError, zlib.error) as err:
        raise _cut_short(path, str(err) or type(err).__name__) from None


def read_image(path: str | os.PathLike[str], dtype: torch.dtype | None = torch.float32,
               check_values: bool = True) -> Image:
    """Read a 2D or 3D scalar image with its geometry: any SimpleITK format, or a DICOM series directory.

    A singleton 4th dimension is dropped; a 3-D volume one voxel thick along one axis becomes a 2-D image in the
    frame of its plane, its 3-D grid kept in :attr:`Image.volume` (:mod:`rlreg.slices`); 2D RGB(A) pictures (PNG,
    TIFF, JPEG) are converted to luminance.

    Args:
        path: image file or DICOM series directory.
        dtype: tensor dtype of the returned data; None keeps the type the voxels are stored in.
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
        try:
            raw = _nifti_raw(path) if path.name.endswith((".nii", ".nii.gz")) else array
        except (EOFError, zlib.error) as err:
            raise _cut_short(path, str(err) or type(err).__name__) from None
        _check_values(path, raw)
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    tensor = tensor.to(dtype) if dtype is not None else tensor
    return Image(data=tensor[None, None], geometry=geometry, path=path, volume=volume)


_AXES = "xyz"


def grid_difference(geometry: Geometry, reference: Geometry, name: str = "the reference") -> str | None:
    """How ``geometry``'s grid differs from ``reference``'s (called ``name``), in words, or ``None`` if they agree.

    Size must match exactly; spacing and origin within :data:`COORDINATE_TOLERANCE` of the smaller voxel size, the
    direction within :data:`DIRECTION_TOLERANCE` per entry: ITK's test of "the same physical space"
    (``ImageToImageFilter::VerifyInputInformation``), with tolerances that accept NIfTI's float32 header round-off.
    Origin differences are named along LPS ``x, y, z``; size and spacing in ITK's ``(i, j, k)`` order.
    """
    if geometry.size != reference.size:
        return (f"grid {'x'.join(map(str, geometry.size[::-1]))} does not match {name}'s "
                f"({'x'.join(map(str, reference.size[::-1]))})")
    voxel = min(min(geometry.spacing), min(reference.spacing))
    tolerance = COORDINATE_TOLERANCE * voxel
    spacing, ref_spacing = np.asarray(geometry.spacing[::-1]), np.asarray(reference.spacing[::-1])
    if np.abs(spacing - ref_spacing).max() > tolerance:
        shown, ref_shown = ("x".join(f"{v:g}" for v in values) for values in (spacing, ref_spacing))
        return f"spacing {shown} mm differs from {name}'s ({ref_shown} mm)"
    shift = np.asarray(geometry.origin) - np.asarray(reference.origin)
    off = np.abs(shift) > tolerance
    if off.any():
        if off.sum() == 1:
            axis = int(np.argmax(off))
            return f"origin differs by {shift[axis]:g} mm along {_AXES[axis]} from {name}'s"
        return (f"origin differs by ({', '.join(f'{v:g}' for v in shift)}) mm along ({', '.join(_AXES[:len(shift)])}) "
                f"from {name}'s")
    n = geometry.ndim
    direction = np.asarray(geometry.direction).reshape(n, n)
    ref_direction = np.asarray(reference.direction).reshape(n, n)
    if np.abs(direction - ref_direction).max() > DIRECTION_TOLERANCE:
        flipped = ["ijk"[i] for i in range(n) if np.abs(direction[:, i] + ref_direction[:, i]).max()
                   <= DIRECTION_TOLERANCE]
        if flipped:
            return (f"direction differs from {name}'s (index axis {', '.join(flipped)} points the other way)")
        cosines = np.clip(np.sum(direction * ref_direction, axis=0), -1.0, 1.0)
        return (f"direction differs from {name}'s (an index axis turned by "
                f"{np.degrees(np.arccos(cosines)).max():.3g} degrees)")
    return None


def check_same_grid(path: str | os.PathLike[str], geometry: Geometry, reference: str | os.PathLike[str] | None,
                    reference_geometry: Geometry, what: str = "label map") -> None:
    """Refuse ``path`` (a label map or mask) unless it lies on ``reference``'s grid (:func:`grid_difference`).

    Raises:
        InputError: one line naming both files, the difference and how to resample onto the right grid.
    """
    difference = grid_difference(geometry, reference_geometry, str(reference or "its image"))
    if difference is None:
        return
    name = shlex.quote(str(reference)) if reference is not None else "image.nii.gz"
    raise InputError(f"{path}: {difference}; give the {what} on that image's grid (resample it "
                     f"with nearest-neighbour labels, e.g. antsApplyTransforms -d {geometry.ndim} -i "
                     f"{shlex.quote(str(path))} -r {name} -o on_grid.nii.gz -n GenericLabel; or, if only its header "
                     "is wrong, copy the image's header onto it with SimpleITK's CopyInformation)")


def read_label_map(path: str | os.PathLike[str], check_values: bool = True) -> Image:
    """Read a label map (segmentation or mask) as a ``(1, 1, *S)`` int64 tensor, refusing non-integer values.

    The voxels are read in their stored type and checked before any cast: a cast would truncate 1.3 and 1.7 alike
    to 1 and make an intensity image look like a label map.

    Raises:
        InputError: as :func:`read_image`, or a value that is not an integer (NaN and Inf included).
    """
    image = read_image(path, dtype=torch.float64, check_values=check_values)  # exact for every integer type used
    data = image.data
    offset = (data - torch.round(data)).abs().nan_to_num(nan=1.0, posinf=1.0)  # 1 marks NaN/Inf
    count = int((offset > 0).sum())
    if count:
        example = float(data.flatten()[offset.flatten().argmax()])
        raise InputError(f"{image.path}: holds {count} non-integer values (e.g. {example:g}); a label "
                         "map holds integer labels: give the segmentation, not an intensity image (labels saved "
                         "as floats with round-off must be rounded first, e.g. with numpy.rint)")
    image.data = data.to(torch.int64)
    return image


def _with_geometry(image: sitk.Image, like: sitk.Image) -> sitk.Image:
    image.SetSpacing(like.GetSpacing())
    image.SetOrigin(like.GetOrigin())
    image.SetDirection(like.GetDirection())
    return image


def _nifti_raw(path: Path) -> np.ndarray:
    """The voxels of a floating-point NIfTI as stored: ITK's reader silently turns NaN into 0, hiding bad data."""
    import nibabel as nib

    image = cast("nib.Nifti1Image", nib.load(str(path)))  # a .nii or .nii.gz file (NIfTI-2 subclasses it)
    if not np.issubdtype(image.get_data_dtype(), np.floating):
        return np.asarray(image.dataobj)
    return np.asarray(image.dataobj, dtype=np.float32)


def _check_values(path: Path, array: np.ndarray) -> None:
    if array.size == 0:
        raise InputError(f"{path}: has no voxels; check that it is the right file")
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputError(f"{path}: has {bad} NaN/Inf voxels; replace them first ({_nan_hint(path)})")
    if array.min() == array.max():
        what = "empty" if array.flat[0] == 0 else "constant"
        raise InputError(f"{path}: is {what} (every voxel is {array.flat[0]}); check that it is the right file")


def split_image_name(name: str, suffixes: tuple[str, ...]) -> tuple[str, str]:
    """``name`` as ``(stem, suffix)`` for the first of ``suffixes`` it ends with, compared case-insensitively (list
    ``.nii.gz`` before ``.nii``), or ``(name, "")`` when none matches or nothing would be left of the stem."""
    lower = name.lower()
    for suffix in suffixes:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    return name, ""


def _nan_hint(path: Path) -> str:
    """How to replace NaN/Inf in ``path``'s format: fslmaths reads only NIfTI; SimpleITK reads every format."""
    name = path.name
    stem, ext = split_image_name(name, (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"))
    if not ext:
        stem, ext = path.stem, path.suffix
    clean = f"{stem}_clean{ext}"
    python = (f"python -c \"import SimpleITK as s, numpy as n; i=s.ReadImage('{name}'); "
              f"o=s.GetImageFromArray(n.nan_to_num(s.GetArrayFromImage(i), posinf=0, neginf=0)); "
              f"o.CopyInformation(i); s.WriteImage(o, '{clean}')\"")
    if ext.lower().startswith(".nii"):
        return f"e.g. fslmaths {name} -nan {clean}, or {python}"
    return f"e.g. {python}"


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


WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".tif", ".tiff")
"""Output file names rlreg writes images to (SimpleITK picks the format from the name)."""


def check_output_image(path: str | os.PathLike[str], ndim: int, pictures: bool = True) -> None:
    """Refuse an output image name SimpleITK cannot write to, before any work is done.

    Args:
        path: the output file name.
        ndim: dimensionality of the image to be written (PNG holds 2-D pictures only).
        pictures: whether a ``.png`` is acceptable (not for displacement fields).

    Raises:
        InputError: a folder, a name without an image extension, JPEG (lossy: it would change intensities and
            labels), or PNG for a 3-D image or a field; one line with the fix.
    """
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give an output file name such as {path / 'warped.nii.gz'}")
    if name.endswith((".jpg", ".jpeg")):
        raise InputError(f"{path}: JPEG is lossy and would change intensities and labels; give a .png "
                         f"(2-D) or .nii.gz file name, e.g. {path.with_suffix('.png').name}")
    if not name.endswith(WRITABLE_SUFFIXES):
        raise InputError(f"{path}: has no image extension; give a file name ending in .nii.gz (or .nii, .nrrd, "
                         f".mha; .png for 2-D pictures), e.g. {path.name}.nii.gz")
    if name.endswith(".png") and (ndim != 2 or not pictures):
        what = f"this image is {ndim}-D" if pictures else "a displacement field is not a picture"
        raise InputError(f"{path}: PNG holds 2-D pictures and {what}; give a .nii.gz file name, e.g. "
                         f"{path.name[: -len('.png')]}.nii.gz")


def picture_array(data: Tensor | np.ndarray, labels: bool, source: str | os.PathLike[str] | None = None
                  ) -> np.ndarray:
    """An image as 8- or 16-bit unsigned integers for a PNG (which holds nothing else).

    Labels keep their values (8-bit when they fit, else 16-bit). Intensities read from an 8- or 16-bit file
    (``source``: a PNG, or any file SimpleITK reports as such) are rounded and clipped to that type, so a warped
    picture keeps its input's scale. Other intensities (float, signed, e.g. CT) are rescaled linearly from their
    minimum and maximum to 0-65535.

    Raises:
        InputError: labels below 0 or above 65535, which a PNG cannot hold.
    """
    array = data.detach().cpu().numpy() if isinstance(data, Tensor) else np.asarray(data)
    if labels:
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > 65535:
            raise InputError(f"{source}: labels {lo}..{hi} do not fit a PNG (0..65535); give a .nii.gz output name")
        return array.astype(np.uint8 if hi <= 255 else np.uint16)
    stored = None
    if source is not None and Path(source).is_file():
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(source))
        reader.ReadImageInformation()
        stored = reader.GetPixelID()
    for kind, dtype in (((sitk.sitkUInt8, sitk.sitkVectorUInt8), np.uint8),
                        ((sitk.sitkUInt16, sitk.sitkVectorUInt16), np.uint16)):
        if stored in kind:
            return np.clip(np.rint(array), 0, np.iinfo(dtype).max).astype(dtype)
    low, high = float(array.min()), float(array.max())
    scaled = (array.astype(np.float64) - low) / (high - low) if high > low else np.zeros(array.shape)
    return np.rint(scaled * 65535).astype(np.uint16)


def _fast_gzip():
    """ISA-L's gzip module, or None where the ``isal`` wheel is missing (then SimpleITK compresses)."""
    try:
        from isal import igzip
    except ImportError:  # pragma: no cover - isal is a dependency; exotic platforms may lack a wheel
        return None
    return igzip


def save_sitk(image: sitk.Image, path: str | os.PathLike[str]) -> Path:
    """Write a SimpleITK image to ``path`` atomically, compressed where the format allows; returns the path.

    ``.nii.gz`` is written by SimpleITK uncompressed and then gzipped by ISA-L at level 1 (Intel's ``igzip``), far
    faster than zlib on float fields for a slightly larger file (docs/decisions.md#gzip-nifti-with-isa-l). The result
    is a plain gzip stream: every NIfTI reader opens it. Other formats go through SimpleITK's own compression.
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
