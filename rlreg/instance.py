"""Classical instance optimisation: fit one displacement field to one image pair by gradient descent.

No learning: minimise ``(1 - LNCC(fixed, moving o u)) + smoothness * diffusion(u) + bending * bending_energy(u)``
with Adam over a coarse-to-fine pyramid, the recipe of optimisation-based deep-learning-era tools (e.g. the
instance optimisation stage of ConvexAdam, Siebert et al. 2021, and FireANTs' greedy stage, Jena et al. 2024).
With ``gradient_sigma`` each gradient is Gaussian-smoothed before the Adam step, as FireANTs does (the "fluid"
regularisation of SyN and demons). Bending energy (the thin-plate penalty of Rueckert et al. 1999's free-form
deformations) charges only curvature, so unlike diffusion it does not hold back large smooth deformations.
rlreg uses it as the baseline that needs no model, for test-time refinement, and as the default pipeline
while no shipped agent beats it.

With ``diffeomorphic=True`` the unknown is a stationary velocity field integrated by scaling and squaring
(Arsigny et al. 2006; as in VoxelMorph's diffeomorphic variant). The map is invertible as long as the velocity is
smooth at the scale of ``2**-integration_steps`` voxels: with a weak regulariser it folds far less than the
displacement does (tested: 0 % vs 1 % at weight 0.1; 1.4 % vs 9.6 % with none), at about 3x the cost per
iteration. Not the default: on the development set it bought no Dice that the full-resolution level did not.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from rlreg.filters import gaussian_blur
from rlreg.losses import FixedLNCC, regularise_
from rlreg.optim import TensorAdam
from rlreg.spatial import compose, integrate_velocity, resize, resize_displacement, warp

__all__ = ["MIN_LEVEL_SIZE", "ONE_THREAD_VOXELS", "ROUNDING", "InstanceConfig", "downsample", "foreground_box",
           "level_factor", "level_size", "optimise_displacement"]

ROUNDING = 1e-5
"""Loss decreases this small are rounding, not progress (``accept_if_better`` keeps a level's starting point unless
its result beats it by more): float32 sums over the level's voxels, and ``warp``'s normalised coordinates, which move
intensities by up to ~1e-5 even at zero displacement. On a brain registered to itself, maps 3.5e-6 "better" than the
identity were off it by 1e-3 in the matrix."""
MIN_LEVEL_SIZE = 16
"""Smallest number of voxels along an axis at which a pyramid level is still run at its own factor."""
ONE_THREAD_VOXELS = 1 << 18
"""CPU pyramid levels with fewer voxels (per pair) than this run on one thread: their tensors are so small that
handing each of an iteration's few hundred operations to a second thread costs more than it saves (a 2 mm
brain's level 4, 24 x 19 x 21 voxels: 7 ms an iteration on one thread, 10-14 ms on two; its level 2 about 21 and
25 ms; docs/decisions.md#small-pyramid-levels-on-one-thread)."""


@contextlib.contextmanager
def _level_threads(voxels: int, device: torch.device) -> Iterator[None]:
    """One torch thread for a CPU level of fewer than :data:`ONE_THREAD_VOXELS` voxels, restored afterwards."""
    before = torch.get_num_threads()
    if device.type != "cpu" or voxels >= ONE_THREAD_VOXELS or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class InstanceConfig:
    """Options of :func:`optimise_displacement`."""

    levels: tuple[int, ...] = (4, 2)
    """Downsampling factor of each pyramid level, coarse to fine (1 = full resolution)."""
    iterations: tuple[int, ...] = (100, 60)
    """Adam iterations at each level."""
    learning_rate: float = 0.2
    """Adam step size, in voxels of the current level."""
    smoothness: float = 1.0
    """Weight of the diffusion regulariser (squared voxel gradients of the displacement)."""
    bending: float = 0.0
    """Weight of the bending-energy regulariser (squared voxel second derivatives of the displacement)."""
    windows: tuple[int, ...] = (7,)
    """Local NCC window sizes (voxels of the current level). SPAC's auxiliary loss uses (9, 7, 5); one window is
    cheaper and scores as well (docs/decisions.md#one-lncc-window-for-instance-optimisation)."""
    window_weights: tuple[float, ...] = (1.0,)
    """Weight of each LNCC window."""
    diffeomorphic: bool = False
    """Optimise a stationary velocity field (its diffusion is the regulariser) and use its exponential; starting
    from ``initial``, the exponential is composed after it. False: the displacement itself is the unknown."""
    integration_steps: int = 6
    """Scaling-and-squaring steps of the velocity (``diffeomorphic`` only)."""
    velocity_factor: int = 1
    """The unknown lives on a grid at least this many times coarser than the image: pyramid levels finer than that
    fit the same coarse field against finer images. ``diffeomorphic``: the velocity is integrated there and its
    exponential upsampled to the level (2 makes a full-resolution level about 8x cheaper in 3-D; VoxelMorph's
    ``int_downsize``, Dalca et al., MICCAI 2018). Otherwise the displacement is upsampled to the level each
    iteration, so the regularisers, gradient smoothing and Adam act on the coarse grid (a B-spline-like
    parameterisation; at full resolution it cost Dice on three of four development sets, ``docs/register.md``, "How the
    default was chosen")."""

    crop_margin: int | None = None
    """Optimise only on the bounding box of the voxels where either image is non-zero (up to a relative
    :data:`FOREGROUND_TOLERANCE`), grown by this many voxels of the full grid on every side, and extend the fitted
    field beyond it by its edge values (None = the whole grid).
    Where both images are exactly zero (the background of skull-stripped or masked scans, clipped to 0 by
    rlreg's intensity normalisation) local NCC has no gradient, so only the regulariser acts there and the box
    changes little but the cost; images with a non-zero background give a box as large as the grid. The margin
    must cover the largest displacement, so that no voxel outside the box maps onto anatomy."""

    gradient_sigma: float = 0.0
    """Gaussian sigma, in voxels of the level, applied to the gradient before each Adam step (0 = off). Smoothing
    the update, not only penalising the field, is the "fluid" half of SyN's and demons' regularisation, and what
    FireANTs feeds Adam (Jena et al. 2024); each step then moves a neighbourhood coherently instead of every voxel
    by Adam's ~``learning_rate`` whatever its gradient's size (measured in ``docs/tuning.md``)."""

    accept_if_better: bool = True
    """Keep a pyramid level's result unless it is no better than the field the level started from in either
    respect: it neither raised the similarity, scored with the local NCC whose maximum is ``warped moving == fixed``
    (``FixedLNCC(stationary=True)``), by more than :data:`ROUNDING`, nor lowered the regularisers' energy; such a
    result is dominated by the start, which is kept. Adam with a constant step size does not settle at an optimum:
    it normalises whatever gradient is left, rounding noise included, into steps of about ``learning_rate`` (Kingma
    and Ba 2015, section 2), and the optimised NCC's ``eps`` pulls towards higher moving contrast. Together they
    moved an image registered to itself by up to 0.5 voxel (``docs/register.md``). The regularised loss itself is
    not the test: with gradient smoothing Adam does not descend it, and real pairs' levels raised it while improving
    Dice. Costs two similarity evaluations per level."""

    def __post_init__(self) -> None:
        if len(self.levels) != len(self.iterations) or not self.levels:
            raise ValueError(f"levels {self.levels} and iterations {self.iterations} must be non-empty, same length")
        if self.gradient_sigma < 0:
            raise ValueError(f"gradient_sigma must be >= 0 voxels, got {self.gradient_sigma}")
        if self.smoothness < 0 or self.bending < 0:
            raise ValueError(f"regulariser weights must be >= 0, got smoothness {self.smoothness}, "
                             f"bending {self.bending}")
        if self.crop_margin is not None and self.crop_margin < 0:
            raise ValueError(f"crop_margin must be >= 0 voxels or None, got {self.crop_margin}")
        if any(f < 1 for f in (*self.levels, self.velocity_factor)):
            raise ValueError(f"downsampling factors must be >= 1, got {self.levels} / {self.velocity_factor}")


def level_factor(factor: int, sizes: tuple[int, ...] | torch.Size) -> int:
    """The pyramid factor actually used for ``factor`` on grids whose smallest axis is ``min(sizes)`` voxels.

    A level coarser than :data:`MIN_LEVEL_SIZE` voxels along an axis has no structure left to match, so the work
    is done at the finest such factor instead (small images, e.g. 28x28 digits or thin slabs).
    """
    while factor > 1 and min(sizes) / factor < MIN_LEVEL_SIZE:
        factor //= 2
    return factor


def level_size(sizes: Sequence[int], factor: int) -> tuple[int, ...]:
    """Voxels per axis of a pyramid level ``factor`` times coarser than a grid of ``sizes``: ``ceil(sizes /
    factor)``, the grid :func:`downsample` resamples to."""
    return tuple(math.ceil(n / factor) for n in sizes)


def downsample(image: Tensor, factor: int) -> Tensor:
    """Box-smooth then resample a ``(N, C, *S)`` image to ``ceil(S / factor)`` (align_corners=True grids).

    The box is ``k = 2 * (factor // 2) + 1`` voxels wide and averages only voxels inside the image. Wider than 3 it
    is applied one axis at a time: the same mean at ``3k`` instead of ``k**3`` reads per voxel in 3-D (at 3 the full
    box is cheaper; docs/decisions.md#separable-box-above-factor-2).
    """
    if factor == 1:
        return image
    ndim = image.ndim - 2
    pool = F.avg_pool2d if ndim == 2 else F.avg_pool3d
    kernel = 2 * (factor // 2) + 1
    boxes = [(kernel,) * ndim] if kernel <= 3 else [tuple(kernel if a == axis else 1 for a in range(ndim))
                                                    for axis in range(ndim)]
    smooth = image
    for box in boxes:
        smooth = pool(smooth, box, stride=1, padding=tuple(k // 2 for k in box), count_include_pad=False)
    return resize(smooth, level_size(image.shape[2:], factor))


def _similarity(score: FixedLNCC, warped: Tensor, mask: Tensor | None) -> Tensor:
    """``(N,)`` similarity of warped moving images, weighted by the ``(N, 1, *S)`` weights ``mask`` when given.

    The weighted sum is divided by the number of voxels, as the unweighted mean is, not by the sum of the weights:
    a voxel inside the mask then pulls exactly as hard as without a mask, against regularisers that are means over
    every voxel. Dividing by the weights scaled the similarity up by the grid-to-mask volume ratio (about 3 for a
    brain mask on a 2 mm brain), which is a weaker regulariser: the field folded 100 times more (``docs/register.md``).
    """
    similarity = score(warped, "batch" if mask is None else "none")
    if mask is None:
        return similarity
    return (similarity * mask).mean(tuple(range(1, similarity.ndim)))


@torch.no_grad()
def _scores(score: FixedLNCC, moving: Tensor, param: Tensor, base: Tensor | None, config: InstanceConfig,
            size: torch.Size, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(N,)`` ``1 - similarity`` and ``(N,)`` regulariser energy of the unknown ``param`` at one level."""
    energy = regularise_(param, torch.zeros_like(param), config.smoothness, config.bending)
    return 1.0 - _similarity(score, warp(moving, _field(param, base, config, size)), mask), energy


def _field(unknown: Tensor, base: Tensor | None, config: InstanceConfig, size: torch.Size) -> Tensor:
    """A level's ``(N, ndim, *size)`` displacement from its unknown: the displacement itself, or
    ``compose(base, exp(velocity))`` with the exponential upsampled from the velocity's grid to ``size``."""
    if not config.diffeomorphic:
        return unknown if unknown.shape[2:] == size else resize_displacement(unknown, size)
    exp = resize_displacement(integrate_velocity(unknown, config.integration_steps), size)
    return exp if base is None else compose(base, exp)


FOREGROUND_TOLERANCE = 1e-6
"""Voxels within this fraction of an image's largest magnitude of 0 count as background in :func:`foreground_box`:
resampled templates carry residue down to 1e-45 in their background (nilearn's MNI152), which is not anatomy."""


def foreground_box(images: Sequence[Tensor], margin: int) -> tuple[slice, ...]:
    """Per spatial axis, the slice of the bounding box of every non-zero voxel of any ``(N, C, *S)`` image (beyond
    :data:`FOREGROUND_TOLERANCE` of its largest magnitude), grown by ``margin`` voxels and clipped to the grid; the
    whole grid where all images are zero."""
    spatial = images[0].shape[2:]
    occupied = torch.zeros(spatial, dtype=torch.bool, device=images[0].device)
    for image in images:
        magnitude = image.abs()
        occupied |= (magnitude > FOREGROUND_TOLERANCE * magnitude.max()).flatten(0, 1).any(0)
    box = []
    for axis, size in enumerate(spatial):
        others = tuple(a for a in range(len(spatial)) if a != axis)
        hits = torch.nonzero(occupied.any(others) if others else occupied).flatten().tolist()
        if not hits:
            return tuple(slice(0, n) for n in spatial)
        box.append(slice(max(0, hits[0] - margin), min(size, hits[-1] + 1 + margin)))
    return tuple(box)


def _uncrop(update: Tensor, box: tuple[slice, ...], size: torch.Size) -> Tensor:
    """Place an ``(N, ndim, *box)`` field on the whole ``size`` grid, continued outside the box by its edge values."""
    pads = []
    for cut, n in reversed(list(zip(box, size, strict=True))):
        pads += [cut.start, n - cut.stop]
    if not any(pads):
        return update
    return F.pad(update, pads, mode="replicate")


def optimise_displacement(fixed: Tensor, moving: Tensor, config: InstanceConfig = InstanceConfig(),
                          initial: Tensor | None = None,
                          callback: Callable[[int, int, Tensor], None] | None = None,
                          field_callback: Callable[[int, int, Tensor], None] | None = None,
                          mask: Tensor | None = None) -> Tensor:
    """Fit a displacement so that ``warp(moving, u) ≈ fixed``.

    With ``config.crop_margin`` a batch is cropped to one box around the non-zero voxels of all its pairs, so a pair
    gets exactly the field it gets alone only when its own box is that box (``rlreg.pipelines.register`` batches
    only such pairs together).

    Args:
        fixed: ``(N, C, *S)`` fixed images, intensities roughly in ``[0, 1]``. The ``N`` pairs are independent:
            each is fitted exactly as it would be alone (the batch only shares the device's work; with
            ``crop_margin``, see above).
        moving: ``(N, C, *S)`` moving images on the same grid (e.g. after affine pre-alignment).
        config: pyramid, iterations and loss weights.
        initial: optional ``(N, ndim, *S)`` starting displacement in voxels.
        callback: called as ``callback(level, iteration, losses)`` after each step with the ``(N,)`` loss of each
            pair (CPU tensor; progress bars, logging).
        field_callback: called as ``field_callback(level, iteration, field)`` after each step with the current
            ``(N, ndim, *S_level)`` displacement (detached; e.g. to save the registration step by step). With
            ``config.crop_margin`` the field comes on the whole ``(N, ndim, *S)`` grid instead.
        mask: optional ``(N, 1, *S)`` weights in ``[0, 1]`` on the fixed grid: the similarity is weighted by
            them, so regions outside (e.g. anatomy the moving image lacks) do not pull the field, while voxels inside
            pull as hard as without a mask (the weighted sum is divided by the voxel count, see :func:`_similarity`).

    Returns:
        ``(N, ndim, *S)`` voxel displacement on the fixed grid (detached).
    """
    if fixed.shape != moving.shape:
        raise ValueError(f"fixed {tuple(fixed.shape)} and moving {tuple(moving.shape)} must share a grid")
    if config.crop_margin is not None:
        whole = fixed.shape[2:]
        box = foreground_box([fixed, moving], config.crop_margin)
        if tuple(cut.stop - cut.start for cut in box) != tuple(whole):
            index = (slice(None), slice(None), *box)
            start = None if initial is None else initial.detach()[index]

            def whole_field(field: Tensor) -> Tensor:  # a field fitted inside the box, on the whole grid
                field = resize_displacement(field, fixed[index].shape[2:])
                update = _uncrop(field if start is None else field - start, box, whole)
                return update if initial is None else initial.detach() + update

            on_field = None if field_callback is None else (
                lambda level, it, field: field_callback(level, it, whole_field(field)))
            return whole_field(optimise_displacement(fixed[index], moving[index], replace(config, crop_margin=None),
                                                     start, callback, on_field, None if mask is None else mask[index]))
    ndim = fixed.ndim - 2
    full = fixed.shape[2:]
    base, disp, velocity = initial, initial, None  # diffeomorphic: disp = compose(base, exp(velocity))
    for level, (factor, iterations) in enumerate(zip(config.levels, config.iterations, strict=True)):
        factor = level_factor(factor, full)
        fixed_l, moving_l = downsample(fixed, factor), downsample(moving, factor)
        mask_l = None if mask is None else downsample(mask.to(fixed.dtype), factor)
        size = fixed_l.shape[2:]
        base_l = None if base is None or not config.diffeomorphic else resize_displacement(base, size)
        # the unknown's grid: this level's, or coarser (velocity_factor)
        coarse = level_factor(max(factor, config.velocity_factor), full)
        grid = torch.Size(level_size(full, coarse))
        start = velocity if config.diffeomorphic else disp
        with _level_threads(math.prod(size), fixed.device):
            param = (torch.zeros(fixed.shape[0], ndim, *grid, dtype=fixed.dtype, device=fixed.device) if start is None
                     else resize_displacement(start, grid).detach().clone()).requires_grad_(True)  # never the caller's
            optimiser = TensorAdam(param, config.learning_rate)
            similarity_to_fixed = FixedLNCC(fixed_l, config.windows, config.window_weights)
            if config.accept_if_better:
                exact = FixedLNCC(fixed_l, config.windows, config.window_weights, stationary=True)
                start_param = param.detach().clone()
                start_scores = _scores(exact, moving_l, start_param, base_l, config, size, mask_l)
            for it in range(iterations):
                current = _field(param, base_l, config, size)
                similarity = _similarity(similarity_to_fixed, warp(moving_l, current), mask_l)
                # The sum, not the mean: each pair's gradient is then exactly what it would be alone, and Adam acts per
                # element, so a batch of pairs is optimised as each pair would be on its own. The regularisers' gradient
                # is written out and added in place (autograd's numbers; docs/decisions.md#fused-regulariser-gradient).
                (1.0 - similarity).sum().backward()
                assert param.grad is not None
                losses = (1.0 - similarity.detach()) + regularise_(param, param.grad, config.smoothness, config.bending)
                if config.gradient_sigma > 0:
                    param.grad = gaussian_blur(param.grad, config.gradient_sigma)
                optimiser.step()
                if callback is not None:
                    callback(level, it, losses.detach().cpu())
                if field_callback is not None:
                    field_callback(level, it, current.detach())
            if config.accept_if_better:
                dissimilarity, energy = _scores(exact, moving_l, param, base_l, config, size, mask_l)
                worse = (dissimilarity > start_scores[0] - ROUNDING) & (energy >= start_scores[1])
                if worse.any():
                    param = torch.where(worse.view(-1, *[1] * (param.ndim - 1)), start_param, param.detach())
            velocity = param.detach() if config.diffeomorphic else None
            with torch.no_grad():
                disp = _field(param.detach(), base_l, config, size)
    assert disp is not None  # the pyramid has at least one level
    return resize_displacement(disp, full)
