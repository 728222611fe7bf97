"""Oblique, anisotropic, axis-flipped phantom pairs (2D and 3D) for the interop and register tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


def rotation(ndim: int, angle: float, flip: tuple[int, ...]) -> np.ndarray:
    """An oblique direction matrix (rotation about the last axis in 3D) with the given axis flips."""
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]]) if ndim == 2 else np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    return rot @ np.diag(flip)


def phantom(size: tuple[int, ...], spacing: tuple[float, ...], origin: tuple[float, ...], direction: np.ndarray,
            centre: tuple[float, ...], radii: tuple[float, ...]) -> tuple[sitk.Image, sitk.Image]:
    """An ellipsoid with a brighter core and an off-centre bar (sharp edges) and its 3-label map, in world mm.

    ``size``/``spacing``/``origin`` are ITK order (x, y[, z]); the object is defined in LPS world coordinates, so
    two phantoms with different grids show the same object where their centres agree.
    """
    ndim = len(size)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij"), 0).reshape(ndim, -1)[::-1]
    points = (direction * np.asarray(spacing)) @ index + np.asarray(origin)[:, None]
    rel = (points - np.asarray(centre)[:, None]) / np.asarray(radii)[:, None]
    r = np.linalg.norm(rel, axis=0)
    bar = (np.abs(rel[0] - 0.35) < 0.15) & (r < 0.9)
    labels = (r < 1.0).astype(np.int16) + (r < 0.5)
    labels[bar] = 3
    intensity = 0.4 * (r < 1.0) + 0.3 * (r < 0.5) + 0.5 * bar
    shape = tuple(size[::-1])
    image = sitk.GetImageFromArray(intensity.reshape(shape).astype(np.float32))
    seg = sitk.GetImageFromArray(labels.reshape(shape).astype(np.int16))
    for item in (image, seg):
        item.SetSpacing(spacing)
        item.SetOrigin(origin)
        item.SetDirection(direction.ravel().tolist())
    return image, seg


def write_pair(folder: Path, ndim: int) -> dict[str, Path]:
    """Fixed and moving phantoms on different oblique, flipped, anisotropic grids, with a small shape change."""
    if ndim == 3:
        fixed = phantom((30, 28, 22), (1.2, 0.9, 1.5), (17.0, -13.0, -15.0), rotation(3, 0.3, (-1, 1, 1)),
                        (0.0, 0.0, 0.0), (11.0, 9.0, 10.0))
        moving = phantom((30, 30, 24), (1.0, 1.1, 1.3), (-14.0, 17.0, -14.0), rotation(3, -0.2, (1, -1, 1)),
                         (1.5, -1.0, 1.0), (12.0, 8.5, 10.0))
    else:
        fixed = phantom((40, 36), (1.2, 0.9), (23.0, -15.0), rotation(2, 0.3, (-1, 1)), (0.0, 0.0), (12.0, 10.0))
        moving = phantom((44, 38), (1.0, 1.1), (-20.0, 20.0), rotation(2, -0.2, (1, -1)), (1.5, -1.0), (13.0, 9.0))
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (image, seg) in (("fixed", fixed), ("moving", moving)):
        paths[name] = folder / f"{name}.nii.gz"
        paths[f"{name}_seg"] = folder / f"{name}_seg.nii.gz"
        sitk.WriteImage(image, str(paths[name]))
        sitk.WriteImage(seg, str(paths[f"{name}_seg"]))
    return paths
