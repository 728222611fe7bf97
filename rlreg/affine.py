"""Affine pre-alignment, and the index-to-index matrix that lets torch resample in one step.

Two backends fit the same thing, a map ``T`` from fixed LPS mm to moving LPS mm:

* ``torch`` (default): the 12 parameters of ``T`` are fitted by Adam on local NCC over a two-level pyramid, in
  physical units, starting from the centres of mass (the gradient-descent affine stage of FireANTs, Jena et al.
  2024, and of the deep-learning-era tools). Faster and more accurate than the SimpleITK stage below on the
  development set (``docs/tuning.md``).
* ``simpleitk``: SimpleITK's registration framework, moments -> rigid -> affine, Mattes MI.

:func:`index_map` turns the fitted transform into one homogeneous matrix from *fixed tensor indices* to *moving
tensor indices*, so that an affine followed by a dense displacement is applied to the original moving image with a
single interpolation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
from torch import Tensor

from rlreg.instance import ROUNDING, downsample, level_factor
from rlreg.io import Geometry
from rlreg.losses import FixedLNCC
from rlreg.optim import TensorAdam
from rlreg.spatial import identity_grid, warp

MIN_SAMPLES = 50_000
"""Fewest fixed voxels the affine metric samples (at full resolution), whatever ``sampling_fraction`` says."""

__all__ = ["AffineConfig", "affine_register", "fit_affine", "index_map", "positions_to_displacement",
           "transform_matrix"]


@dataclass(frozen=True)
class AffineConfig:
    """Options of :func:`affine_register`."""

    backend: str = "torch"
    """``torch`` (:func:`fit_affine`: Adam on local NCC) or ``simpleitk`` (rigid then affine, Mattes MI)."""
    levels: tuple[int, ...] = (4, 2)
    """torch: downsampling factor per pyramid level, coarse to fine."""
    steps: tuple[int, ...] = (60, 10)
    """torch: Adam steps per level."""
    matrix_rate: float = 0.01
    """torch: Adam step size of the linear part (dimensionless: 0.01 = 1 % scaling or about 0.6 degree)."""
    shift_rate_mm: float = 0.5
    """torch: Adam step size of the translation, in mm."""
    window: int = 7
    """torch: local NCC window, in voxels of each level."""
    max_voxels: int = 200_000
    """torch: most voxels of the finest level. A larger fixed image doubles every level's factor until its finest
    level fits, so a 1 mm brain is fitted on the grids a 2 mm one is (finest 46 x 55 x 46): a 12-parameter map needs
    no 1 mm detail (docs/decisions.md#affine-fit-on-at-most-200-000-voxels)."""
    accept_if_better: bool = True
    """torch: keep a pyramid level's result only if it lowers ``1 - LNCC`` scored with the local NCC whose maximum
    is exactly ``moving o T == fixed`` (``FixedLNCC(stationary=True)``) against the map the level started from, as
    :attr:`rlreg.instance.InstanceConfig.accept_if_better` does. The optimised NCC's ``eps`` rewards raising the
    moving image's contrast, and Adam keeps stepping at its rates around a minimum: without the check a 2 mm brain
    registered to itself came back scaled by 0.989 along one axis."""
    shrink_factors: tuple[int, ...] = (8, 4, 2)
    """simpleitk: pyramid downsampling per level, coarse to fine."""
    smoothing_sigmas: tuple[float, ...] = (3.0, 2.0, 1.0)
    """simpleitk: Gaussian smoothing per level, in mm."""
    iterations: int = 100
    """simpleitk: optimiser iterations per level."""
    sampling_fraction: float = 0.2
    """simpleitk: random fraction of fixed voxels used by the metric."""
    metric: str = "mattes"
    """simpleitk: ``mattes`` (Mattes mutual information: any contrasts) or ``meansquares`` (same contrast only).
    Mattes is the default: it matched or beat mean squares on a T1 template against a label-derived image
    (``docs/register.md``, "How the default was chosen")."""
    seed: int = 1
    """simpleitk: seed of the metric's random sampling, >= 1 (deterministic results). SimpleITK reads 0 as "seed
    from the wall clock", which made every run differ."""

    threads: int = 1
    """Threads of the affine fit, whatever the rest of the registration runs with: torch's for the torch backend,
    SimpleITK's (registration and pyramid filters) for simpleitk. Sums split over threads add in another order, so
    the affine changes with the thread count, and the deformable stage then follows it: simpleitk with 2 threads
    differed between two runs by 0.04 voxel in the affine map (and the instance optimisation then by up to 0.4
    voxel); the torch backend repeats for a given count but differs between counts (docs/register.md, "Threads").
    One thread repeats bit for bit, so ``register``, ``batch`` and Ray workers agree on the affine whatever
    ``--threads`` they run with. The metric is sampled, so 1 thread costs simpleitk no measurable time
    (docs/decisions.md#one-thread-for-the-affine-stage)."""

    def __post_init__(self) -> None:
        if self.backend not in ("torch", "simpleitk"):
            raise ValueError(f"AffineConfig.backend must be 'torch' or 'simpleitk', got {self.backend!r}")
        if len(self.levels) != len(self.steps) or not self.levels or min(self.levels) < 1:
            raise ValueError(f"AffineConfig.levels {self.levels} and steps {self.steps}: same non-empty length, >= 1")
        if self.max_voxels < 1:
            raise ValueError(f"AffineConfig.max_voxels must be >= 1, got {self.max_voxels}")
        if self.threads < 1:
            raise ValueError(f"AffineConfig.threads must be >= 1, got {self.threads}")
        if self.seed < 1:
            raise ValueError(f"AffineConfig.seed must be >= 1 (SimpleITK treats 0 as the wall clock), got {self.seed}")


def affine_register(fixed: sitk.Image, moving: sitk.Image, config: AffineConfig = AffineConfig(),
                    fixed_mask: sitk.Image | None = None, moving_mask: sitk.Image | None = None) -> sitk.Transform:
    """Fit ``T`` (fixed LPS mm -> moving LPS mm, ITK's resampling direction) with ``config.backend``.

    Both backends start from the centres of mass, so inputs in different native spaces line up, and both shrink
    pyramid levels that would leave too few voxels, so small images (28x28 digits) work too.

    Args:
        fixed, moving: the images (any grids).
        config: backend, pyramid, iterations, metric.
        fixed_mask, moving_mask: optional binary masks on the images' grids restricting the metric.
    """
    if config.backend == "torch":
        def tensor(image: sitk.Image) -> Tensor:
            return torch.from_numpy(sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32)))[None, None]

        threads = torch.get_num_threads()
        torch.set_num_threads(config.threads)
        try:
            matrix = fit_affine(tensor(fixed), tensor(moving), Geometry.from_sitk(fixed), Geometry.from_sitk(moving),
                                config, None if fixed_mask is None else tensor(fixed_mask),
                                None if moving_mask is None else tensor(moving_mask))
        finally:
            torch.set_num_threads(threads)
        ndim = fixed.GetDimension()
        transform = sitk.AffineTransform(ndim)
        transform.SetMatrix(matrix[:ndim, :ndim].ravel().tolist())
        transform.SetTranslation(matrix[:ndim, ndim].tolist())
        return transform
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(config.threads)  # the pyramid filters too, not just the metric
    try:
        return _rigid_then_affine(fixed, moving, config, fixed_mask, moving_mask)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _centre_of_mass(image: Tensor, geometry: Geometry) -> Tensor:
    """Intensity-weighted centre of a ``(1, 1, *S)`` image in LPS mm, ``(ndim,)`` float64."""
    weights = image[0, 0].double().clamp_min(0.0)
    grid = identity_grid(weights.shape, torch.float64, weights.device)[0]
    total = weights.sum()
    centre = (grid * weights).flatten(1).sum(1) / total if total > 0 else grid.flatten(1).mean(1)
    world = torch.as_tensor(geometry.index_to_world(), dtype=torch.float64, device=weights.device)
    return world[:-1, :-1] @ centre + world[:-1, -1]


def _level_scale(full: torch.Size, level: torch.Size, device: torch.device) -> Tensor:
    """Per-axis factor from a pyramid level's indices to the full grid's (align_corners grids)."""
    return torch.tensor([(n - 1) / max(m - 1, 1) for n, m in zip(full, level, strict=True)], dtype=torch.float64,
                        device=device)


def fit_affine(fixed: Tensor, moving: Tensor, fixed_geometry: Geometry, moving_geometry: Geometry,
               config: AffineConfig = AffineConfig(), fixed_mask: Tensor | None = None,
               moving_mask: Tensor | None = None) -> np.ndarray:
    """Fit an affine map by Adam on local NCC (the ``torch`` backend of :func:`affine_register`).

    ``T(p) = (I + L)(p - c_f) + c_m + t`` in LPS mm, with ``c_f``, ``c_m`` the images' intensity centres of mass
    and ``L``, ``t`` starting at zero, so the optimiser works in physical units whatever the grids' spacing and
    direction. Each pyramid level samples the moving image at ``T`` of every fixed-level voxel centre and takes
    Adam steps on ``1 - LNCC`` (averaged over the fixed mask where one is given; the moving mask, warped along,
    weights it too). Runs on the tensors' device; deterministic there.

    Args:
        fixed, moving: ``(1, 1, *S)`` images, intensities roughly in ``[0, 1]`` and >= 0 (the centres of mass
            weight by intensity), on their own grids.
        fixed_geometry, moving_geometry: the grids' geometry.
        config: levels, steps, step sizes, window.
        fixed_mask, moving_mask: optional ``(1, 1, *S)`` masks (> 0 inside) on the images' grids.

    Returns:
        ``(ndim+1, ndim+1)`` homogeneous matrix of ``T`` (fixed LPS mm -> moving LPS mm).
    """
    ndim, device = fixed.ndim - 2, fixed.device
    fixed, moving = fixed.float(), moving.float().to(device)
    centre_f, centre_m = _centre_of_mass(fixed, fixed_geometry), _centre_of_mass(moving, moving_geometry)
    linear = torch.zeros(ndim, ndim, dtype=torch.float64, device=device, requires_grad=True)
    shift = torch.zeros(ndim, dtype=torch.float64, device=device, requires_grad=True)
    fixed_world = torch.as_tensor(fixed_geometry.index_to_world(), dtype=torch.float64, device=device)
    to_moving = torch.as_tensor(np.linalg.inv(moving_geometry.index_to_world()), dtype=torch.float64, device=device)
    eye = torch.eye(ndim, dtype=torch.float64, device=device)
    extra = 1  # doubles every level's factor until the finest level fits config.max_voxels
    while math.prod(math.ceil(n / (min(config.levels) * extra)) for n in fixed.shape[2:]) > config.max_voxels:
        extra *= 2
    for factor, steps in zip(config.levels, config.steps, strict=True):
        factor = level_factor(factor * extra, (*fixed.shape[2:], *moving.shape[2:]))
        fixed_l, moving_l = downsample(fixed, factor), downsample(moving, factor)
        scale_f = _level_scale(fixed.shape[2:], fixed_l.shape[2:], device).view(ndim, 1)
        scale_m = _level_scale(moving.shape[2:], moving_l.shape[2:], device).view(ndim, 1)
        weights = None if fixed_mask is None else (downsample((fixed_mask > 0).float(), factor) > 0.5).float()
        moving_weights = None if moving_mask is None else downsample((moving_mask > 0).float().to(device), factor)
        grid = identity_grid(fixed_l.shape[2:], torch.float64, device).flatten(2)[0]  # (ndim, V) level indices
        points = fixed_world[:-1, :-1] @ (grid * scale_f) + fixed_world[:-1, -1:] - centre_f.view(ndim, 1)
        optimisers = (TensorAdam(linear, config.matrix_rate), TensorAdam(shift, config.shift_rate_mm))
        similarity_to_fixed = FixedLNCC(fixed_l, (config.window,), (1.0,))
        exact = FixedLNCC(fixed_l, (config.window,), (1.0,), stationary=True)
        start = (linear.detach().clone(), shift.detach().clone())
        start_loss = math.inf  # replaced by the first pass's loss before the last pass compares with it
        # The first pass (accept_if_better) scores the starting map, the last one the final map; the rest step.
        for step in range(-config.accept_if_better, steps + config.accept_if_better):
            moved = (eye + linear) @ points + (centre_m + shift).view(ndim, 1)
            index = (to_moving[:-1, :-1] @ moved + to_moving[:-1, -1:]) / scale_m
            displacement = (index - grid).to(fixed.dtype).view(1, ndim, *fixed_l.shape[2:])
            score = exact if step < 0 or step == steps else similarity_to_fixed
            similarity = score(warp(moving_l, displacement), "none")
            mask = weights
            if moving_weights is not None:
                inside = warp(moving_weights, displacement)
                mask = inside if mask is None else mask * inside
            loss = 1.0 - (similarity.mean() if mask is None else (similarity * mask).sum() / mask.sum().clamp_min(1))
            if step < 0:
                start_loss = loss.item()
                continue
            if step == steps:
                if loss.item() > start_loss - ROUNDING:  # no real improvement: keep the starting map
                    with torch.no_grad():
                        linear.copy_(start[0])
                        shift.copy_(start[1])
                break
            loss.backward()
            for optimiser in optimisers:
                optimiser.step()
    matrix = np.eye(ndim + 1)
    linear_part = (eye + linear.detach()).cpu().numpy()
    matrix[:ndim, :ndim] = linear_part
    matrix[:ndim, ndim] = (centre_m + shift.detach()).cpu().numpy() - linear_part @ centre_f.cpu().numpy()
    return matrix


def _rigid_then_affine(fixed: sitk.Image, moving: sitk.Image, config: AffineConfig, fixed_mask: sitk.Image | None,
                       moving_mask: sitk.Image | None) -> sitk.Transform:
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    dim = fixed.GetDimension()
    rigid = sitk.Euler3DTransform() if dim == 3 else sitk.Euler2DTransform()
    rigid = sitk.CenteredTransformInitializer(fixed, moving, rigid,
                                              sitk.CenteredTransformInitializerFilter.MOMENTS).Downcast()
    smallest = min(min(fixed.GetSize()), min(moving.GetSize()))
    levels = [(f, s) for f, s in zip(config.shrink_factors, config.smoothing_sigmas, strict=True)
              if smallest / f >= 8] or [(1, min(config.smoothing_sigmas))]
    masks = (fixed_mask, moving_mask)
    _run(fixed, moving, rigid, config, levels, masks)
    affine = sitk.AffineTransform(dim)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    _run(fixed, moving, affine, config, levels, masks)
    return affine


def _run(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, config: AffineConfig,
         levels: list[tuple[int, float]], masks: tuple[sitk.Image | None, sitk.Image | None]) -> None:
    """Optimise ``transform`` in place."""
    method = sitk.ImageRegistrationMethod()
    if masks[0] is not None:
        method.SetMetricFixedMask(sitk.Cast(masks[0] > 0, sitk.sitkUInt8))
    if masks[1] is not None:
        method.SetMetricMovingMask(sitk.Cast(masks[1] > 0, sitk.sitkUInt8))
    if config.metric == "mattes":
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    elif config.metric == "meansquares":
        method.SetMetricAsMeanSquares()
    else:
        raise ValueError(f"unknown affine metric {config.metric!r}; use 'meansquares' or 'mattes'")
    method.SetMetricSamplingStrategy(method.RANDOM)
    # Small images keep at least MIN_SAMPLES samples: mutual information from a few hundred voxels is noise.
    fraction = min(1.0, max(config.sampling_fraction, MIN_SAMPLES / fixed.GetNumberOfPixels()))
    method.SetMetricSamplingPercentage(fraction, config.seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4,
                                                    numberOfIterations=config.iterations,
                                                    gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([f for f, _ in levels])
    method.SetSmoothingSigmasPerLevel([s for _, s in levels])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed, moving)


def transform_matrix(transform: sitk.Transform, ndim: int) -> np.ndarray:
    """Homogeneous ``(ndim+1, ndim+1)`` matrix of a linear SimpleITK transform (LPS mm -> LPS mm).

    Works for any transform whose ``TransformPoint`` is affine (Euler, Similarity, Affine, composites of them):
    the matrix is recovered from the images of the origin and the unit vectors.
    """
    origin = np.asarray(transform.TransformPoint((0.0,) * ndim))
    matrix = np.eye(ndim + 1)
    for axis in range(ndim):
        unit = [0.0] * ndim
        unit[axis] = 1.0
        matrix[:ndim, axis] = np.asarray(transform.TransformPoint(tuple(unit))) - origin
    matrix[:ndim, ndim] = origin
    return matrix


def index_map(fixed: Geometry, moving: Geometry, transform: sitk.Transform | None = None) -> np.ndarray:
    """Matrix from fixed tensor indices to moving tensor indices: ``W_m^-1 T W_f`` (``T`` = identity if None)."""
    world = np.eye(fixed.ndim + 1) if transform is None else transform_matrix(transform, fixed.ndim)
    return np.linalg.inv(moving.index_to_world()) @ world @ fixed.index_to_world()


def positions_to_displacement(matrix: np.ndarray, displacement: Tensor | None = None,
                              shape: tuple[int, ...] | None = None) -> Tensor:
    """Voxel displacement that samples the moving grid at ``matrix @ (x + u(x))`` for every fixed voxel ``x``.

    The result is meant for :func:`rlreg.spatial.warp` with the *original* moving image as input (whose grid may
    differ from the fixed one): one interpolation for the whole affine + deformable chain.

    Args:
        matrix: ``(ndim+1, ndim+1)`` fixed-index -> moving-index matrix from :func:`index_map`.
        displacement: optional ``(N, ndim, *S)`` fixed-grid voxel displacement applied before the affine.
        shape: fixed grid size ``S``, needed when ``displacement`` is None.

    Returns:
        ``(N, ndim, *S)`` displacement (moving-grid voxel positions minus fixed voxel indices).
    """
    if displacement is None:
        if shape is None:
            raise ValueError("give either a displacement or the fixed grid shape")
        displacement = torch.zeros(1, len(shape), *shape)
    ndim = displacement.ndim - 2
    grid = identity_grid(displacement.shape[2:], displacement.dtype, displacement.device)
    points = grid + displacement
    lin = torch.as_tensor(matrix[:ndim, :ndim], dtype=displacement.dtype, device=displacement.device)
    shift = torch.as_tensor(matrix[:ndim, ndim], dtype=displacement.dtype, device=displacement.device)
    moved = torch.einsum("ij,nj...->ni...", lin, points) + shift.view(1, ndim, *[1] * ndim)
    return moved - grid
