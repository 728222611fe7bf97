"""``rlreg apply`` and ``rlreg invert``: resample an image through a saved transform, and invert a saved field.

Both read any ITK displacement field or transform file (``warp.nii.gz``, ``transform.h5``, ANTs' and Slicer's) and
handle one-slice volumes (:mod:`rlreg.slices`) as ``rlreg register`` writes them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rlreg.io import Image, InputError, check_output_image, picture_array, read_image, read_label_map, write_image
from rlreg.slices import SlicePlane
from rlreg.spatial import inverse_consistency, warp
from rlreg.transforms import chain_from_world, invert_world, read_transform, write_itk_warp

__all__ = ["INTERPOLATIONS", "apply_transform", "invert_transform"]


def _slice_pair(reference: Image, other: Image, path: Path) -> tuple[Image, SlicePlane | None, float]:
    """For a one-slice ``reference`` (:mod:`rlreg.slices`): ``other`` in the frame of its plane (when ``other`` is a
    one-slice volume too), that plane, and the distance between the planes; else ``(other, None, 0)``."""
    if reference.volume is None:
        return other, None, 0.0
    plane = SlicePlane(reference.volume)
    if other.volume is None:
        return other, plane, 0.0
    return replace(other, geometry=plane.geometry_of(other.volume, path)), plane, plane.offset(other.volume)


def _read_field(transform: Path, reference: Image, plane: SlicePlane | None) -> Tensor:
    """A transform file as the LPS-mm field on ``reference``'s grid; for a one-slice reference, read on its 3-D grid
    and brought into the frame of its plane."""
    if plane is None:
        return read_transform(transform, reference.geometry)
    return plane.flatten(read_transform(transform, plane.volume), reference.geometry)


INTERPOLATIONS = {"linear": "bilinear", "nearest": "nearest", "label": "label"}


def apply_transform(transform: Path, reference: Path, *, input_image: Path, output: Path,
                    interp: str = "linear") -> dict[str, Any]:
    """Resample ``input_image`` onto ``reference``'s grid through ``transform`` (``antsApplyTransforms``'s job).

    Args:
        transform: ``warp.nii.gz``/``transform.h5`` or any ITK displacement field or transform file.
        reference: image whose grid the output takes (the fixed image of the registration).
        input_image: image or label map in the moving space.
        output: output image (written atomically).
        interp: ``linear``, ``nearest`` or ``label`` (label-safe: labels never mix).

    Returns:
        A summary (paths and the interpolation).
    """
    if interp not in INTERPOLATIONS:
        raise InputError(f"--interp {interp}: unknown; choose linear, nearest or label")
    ref = read_image(reference, check_values=False)
    labels = interp != "linear"
    image = (read_label_map(input_image, check_values=False) if interp == "label" else
             read_image(input_image, dtype=torch.int64 if labels else torch.float32, check_values=False))
    if image.ndim != ref.ndim:
        raise InputError(f"{input_image}: is {image.ndim}-D but the reference {reference} is {ref.ndim}-D; give an "
                         "image of the same dimensionality")
    check_output_image(output, ref.ndim)
    image, plane, _ = _slice_pair(ref, image, input_image)
    chain = chain_from_world(_read_field(transform, ref, plane), ref.geometry, image.geometry)
    resampled = warp(image.data, chain, INTERPOLATIONS[interp])
    if output.name.lower().endswith(".png"):
        write_image(picture_array(resampled, labels, input_image), ref.volume or ref.geometry, output)
    else:
        write_image(resampled, ref.volume or ref.geometry, output, np.int32 if labels else np.float32)
    return {"output": str(output), "transform": str(transform), "reference": str(reference),
            "input": str(input_image), "interp": interp}


def invert_transform(transform: Path, fixed: Path, *, reference: Path, output: Path) -> dict[str, Any]:
    """Write the inverse of a fixed-grid field on ``reference``'s grid (the moving image), with its consistency.

    Returns:
        A summary with the inverse-consistency error ``|ψ(q) + u(q + ψ(q))|`` over the reference grid, in mm
        (median and 95th percentile, where the preimage lies inside the fixed grid), from
        :func:`rlreg.spatial.inverse_consistency`.
    """
    fixed_image = read_image(fixed, check_values=False)
    ref = read_image(reference, check_values=False)
    if fixed_image.ndim != ref.ndim:
        raise InputError(f"{reference}: is {ref.ndim}-D but {fixed} is {fixed_image.ndim}-D; give the moving image "
                         "of this registration")
    check_output_image(output, ref.ndim, pictures=False)
    ref, plane, offset = _slice_pair(fixed_image, ref, reference)
    field = _read_field(transform, fixed_image, plane)
    inverse = invert_world(field, fixed_image.geometry, ref.geometry)
    if plane is not None and ref.volume is not None:
        write_itk_warp(plane.field(inverse, -offset, grid=ref.volume), ref.volume, output)
    else:
        write_itk_warp(inverse, ref.geometry, output)
    chain = chain_from_world(inverse, ref.geometry, fixed_image.geometry)
    error, inside = inverse_consistency(field, inverse, to_forward_grid=chain)
    values = error[inside] if inside.any() else error.flatten()
    return {"output": str(output), "transform": str(transform), "fixed": str(fixed), "reference": str(reference),
            "consistency_median_mm": float(values.median()), "consistency_p95_mm": float(values.quantile(0.95))}
