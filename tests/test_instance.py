"""Instance optimisation recovers a known smooth deformation on a small synthetic pair."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlreg.instance import InstanceConfig, downsample, optimise_displacement
from rlreg.losses import lncc
from rlreg.spatial import folding_percent, warp


def blobs(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ndim = len(shape)
    coarse = torch.rand((1, 1, *tuple(max(n // 6, 2) for n in shape)), generator=gen)
    mode = "bilinear" if ndim == 2 else "trilinear"
    return F.interpolate(coarse, size=shape, mode=mode, align_corners=True)


def test_recovers_smooth_2d_deformation() -> None:
    shape = (64, 64)
    fixed = blobs(shape)
    gen = torch.Generator().manual_seed(1)
    truth = F.interpolate(torch.randn(1, 2, 4, 4, generator=gen), size=shape, mode="bilinear", align_corners=True)
    truth = 2.5 * truth / truth.abs().max()
    moving = warp(fixed, -truth)  # roughly the inverse, so the optimiser must find ~truth
    before = float(lncc(fixed, moving))
    disp = optimise_displacement(fixed, moving, InstanceConfig(levels=(2, 1), iterations=(80, 40), learning_rate=0.2,
                                                               smoothness=0.5))
    after = float(lncc(fixed, warp(moving, disp)))
    assert disp.shape == (1, 2, *shape)
    assert after > before + 0.1, (before, after)
    assert float(folding_percent(disp)) < 0.5
    mse_before = float(((fixed - moving) ** 2).mean())
    mse_after = float(((fixed - warp(moving, disp)) ** 2).mean())
    assert mse_after < 0.5 * mse_before


def test_runs_in_3d_and_follows_dtype() -> None:
    fixed = blobs((12, 14, 10)).double()
    moving = torch.roll(fixed, 1, dims=2)
    disp = optimise_displacement(fixed, moving, InstanceConfig(levels=(1,), iterations=(5,)))
    assert disp.dtype == torch.float64 and disp.shape == (1, 3, 12, 14, 10)


def test_downsample_sizes() -> None:
    assert downsample(torch.rand(1, 1, 9, 10, 11), 2).shape == (1, 1, 5, 5, 6)
    assert downsample(torch.rand(1, 1, 9, 10), 1).shape == (1, 1, 9, 10)
