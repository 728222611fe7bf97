"""Instance optimisation recovers a known smooth deformation on a small synthetic pair."""

from __future__ import annotations

import pytest
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


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_downsample_smooths_with_the_full_box_inside_the_image(factor: int) -> None:
    """Wide boxes run one axis at a time; the mean must still be the full box's, over voxels inside the image."""
    image = torch.rand(2, 3, 17, 20, 9, dtype=torch.float64)
    kernel = 2 * (factor // 2) + 1
    box = F.avg_pool3d(image, kernel, stride=1, padding=kernel // 2, count_include_pad=False)
    size = [-(-n // factor) for n in image.shape[2:]]
    expected = F.interpolate(box, size=size, mode="trilinear", align_corners=True)
    assert torch.allclose(downsample(image, factor), expected, atol=1e-12)


def _large_deformation_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """48 x 48 blobs and their warp by a smooth random field of up to 6 pixels."""
    shape = (48, 48)
    fixed = blobs(shape, seed=3)
    gen = torch.Generator().manual_seed(4)
    truth = F.interpolate(torch.randn(1, 2, 5, 5, generator=gen), size=shape, mode="bilinear", align_corners=True)
    return fixed, warp(fixed, -6.0 * truth / truth.abs().max())


def test_diffeomorphic_mode_folds_far_less_than_the_displacement() -> None:
    """A large deformation and a weak regulariser: the displacement folds (1 %), the velocity field does not.

    Without any regulariser the velocity folds too (1.4 % vs 9.6 %): scaling and squaring is only diffeomorphic
    for velocities smooth at the scale of ``2**-steps``, which is what the docstring promises."""
    fixed, moving = _large_deformation_pair()
    base = InstanceConfig(levels=(2, 1), iterations=(60, 60), learning_rate=0.2, smoothness=0.1, windows=(5,))
    plain = optimise_displacement(fixed, moving, base)
    svf = optimise_displacement(fixed, moving, InstanceConfig(**{**base.__dict__, "diffeomorphic": True}))
    assert float(folding_percent(plain)) > 0.5
    assert float(folding_percent(svf)) == 0.0
    assert float(lncc(fixed, warp(moving, svf))) > float(lncc(fixed, moving)) + 0.1


def test_diffeomorphic_mode_continues_from_an_initial_field() -> None:
    shape = (40, 40)
    fixed = blobs(shape, seed=5)
    shift = torch.zeros(1, 2, *shape)
    shift[:, 0] = 2.0
    moving = warp(fixed, -shift)
    config = InstanceConfig(levels=(1,), iterations=(1,), learning_rate=1e-6, diffeomorphic=True)
    out = optimise_displacement(fixed, moving, config, initial=shift)
    assert torch.allclose(out, shift, atol=1e-3)  # one tiny step: the initial field comes back composed with ~identity


def test_coarse_velocity_grid_gives_a_full_size_folding_free_field() -> None:
    """``velocity_factor=2``: the velocity lives on the half grid at the full-resolution level, its exponential is
    upsampled to the image, and the result still aligns the pair without folding."""
    fixed, moving = _large_deformation_pair()
    seen: list[tuple[int, ...]] = []
    config = InstanceConfig(levels=(2, 1), iterations=(60, 60), smoothness=0.1, windows=(5,), diffeomorphic=True,
                            velocity_factor=2)
    out = optimise_displacement(fixed, moving, config, field_callback=lambda lv, it, f: seen.append(f.shape[2:]))
    assert out.shape == (1, 2, 48, 48)
    assert seen[0] == (24, 24) and seen[-1] == (48, 48)  # the full-resolution level scores full-size fields
    assert float(folding_percent(out)) == 0.0
    assert float(lncc(fixed, warp(moving, out))) > float(lncc(fixed, moving)) + 0.1
    with pytest.raises(ValueError, match="factors"):
        InstanceConfig(velocity_factor=0)


def test_gradient_smoothing_spreads_each_update_over_a_neighbourhood() -> None:
    """With ``gradient_sigma`` the first Adam step moves the voxels around a local mismatch too, not only those
    whose own gradient is non-zero (Adam alone moves every voxel with any gradient by about the step size)."""
    fixed = torch.zeros(1, 1, 40, 40)
    fixed[..., 18:22, 18:22] = 1.0
    moving = torch.roll(fixed, 1, dims=3)
    moved = []
    for sigma in (0.0, 2.0):
        disp = optimise_displacement(fixed, moving, InstanceConfig(levels=(1,), iterations=(1,), windows=(3,),
                                                                   gradient_sigma=sigma))
        moved.append(int((disp.abs().amax(1) > 1e-6).sum()))
    assert moved[1] > 2 * moved[0] > 0, moved
    with pytest.raises(ValueError, match="gradient_sigma"):
        InstanceConfig(gradient_sigma=-1.0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_bending_keeps_an_affine_field_that_diffusion_flattens(ndim: int) -> None:
    """With nothing to match (a constant image pair, a shrinking field that samples inside it) only the regulariser
    moves the field. Bending energy is zero for an affine field: it keeps a 5 % scaling and removes a checkerboard
    added to it. Diffusion charges every gradient, so it flattens the scaling itself."""
    shape = (24, 22, 20)[:ndim]
    image = torch.full((1, 1, *shape), 0.5, dtype=torch.float64)
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij")
    scaling = -0.05 * torch.stack([g - (n - 1) / 2 for g, n in zip(grids, shape, strict=True)])[None]
    checker = 0.2 * (sum(grids).remainder(2) * 2 - 1)

    def error(initial: torch.Tensor, **weights: float) -> float:
        config = InstanceConfig(levels=(1,), iterations=(60,), learning_rate=0.02, **weights)
        given = initial.clone()
        disp = optimise_displacement(image, image, config, initial=given)
        assert torch.equal(given, initial)  # the caller's field is left alone
        return float((disp - scaling).abs().mean())

    assert error(scaling, smoothness=0.0, bending=1.0) < 0.01
    assert error(scaling + checker, smoothness=0.0, bending=1.0) < 0.02
    assert error(scaling, smoothness=1.0) > 0.1
    with pytest.raises(ValueError, match="bending"):
        InstanceConfig(bending=-1.0)


def _embedded_pair(ndim: int) -> tuple[torch.Tensor, torch.Tensor, tuple[slice, ...]]:
    """A blob pair inside a zero background: the moving blob is the fixed one shifted by a voxel and a half."""
    inner = (24,) * ndim
    whole = (40, 38) if ndim == 2 else (36, 34, 36)
    corner = (7, 6) if ndim == 2 else (6, 5, 6)
    box = tuple(slice(c, c + n) for c, n in zip(corner, inner, strict=True))
    fixed = torch.zeros(1, 1, *whole)
    blob = blobs(inner, seed=3) * torch.hann_window(inner[0], periodic=False).view(-1, *[1] * (ndim - 1))
    fixed[(..., *box)] = blob
    truth = torch.zeros(1, ndim, *whole)
    truth[:, -1] = 1.5
    return fixed, warp(fixed, -truth), box


@pytest.mark.parametrize("ndim", [2, 3])
def test_cropping_to_the_foreground_fits_the_same_field_there_and_extends_it(ndim: int) -> None:
    """With ``crop_margin`` only the non-zero box (plus margin) is optimised: inside it the fit matches the whole-grid
    fit (only the regulariser's boundary moves), outside it the field continues by its edge values, and a callback
    still sees whole-grid fields."""
    from rlreg.instance import foreground_box

    fixed, moving, _ = _embedded_pair(ndim)
    probe = torch.zeros(1, 2, 10, 12, 9)
    probe[0, 1, 2, 5, 3], probe[0, 0, 6, 7, 8] = 1.0, -2.0  # any channel, any sign
    assert foreground_box([probe, torch.zeros_like(probe)], 0) == (slice(2, 7), slice(5, 8), slice(3, 9))
    assert foreground_box([probe], 3) == (slice(0, 10), slice(2, 11), slice(0, 9))  # clipped to the grid
    assert foreground_box([torch.zeros_like(fixed)], 2) == tuple(slice(0, n) for n in fixed.shape[2:])
    residue = probe.clone()
    residue[0, 0, 9, 0, 0] = 1e-30  # resampling residue in a template's background is not anatomy
    assert foreground_box([residue], 0) == foreground_box([probe], 0)
    assert all(s.stop - s.start < n for s, n in zip(foreground_box([fixed, moving], 4), fixed.shape[2:], strict=True))
    config = InstanceConfig(levels=(2, 1), iterations=(30, 15), smoothness=0.25, bending=1.0, windows=(5,),
                            gradient_sigma=1.0)
    whole = optimise_displacement(fixed, moving, config)
    shapes: list[tuple[int, ...]] = []
    cropped = optimise_displacement(fixed, moving, InstanceConfig(**{**config.__dict__, "crop_margin": 4}),
                                    field_callback=lambda lv, it, f: shapes.append(tuple(f.shape)))
    assert set(shapes) == {tuple(whole.shape)}
    region = foreground_box([fixed], 0)
    core = (slice(None), slice(None), *region)
    before, fitted = float(lncc(fixed, moving)), float(lncc(fixed, warp(moving, whole)))
    assert float(lncc(fixed, warp(moving, cropped))) > fitted - 0.1 * (fitted - before)
    assert (cropped[core][:, -1] - whole[core][:, -1]).abs().mean() < 0.15 * whole[core][:, -1].abs().mean()
    crop = foreground_box([fixed, moving], 4)
    edge = cropped.narrow(2, crop[0].stop - 1, 1)
    assert torch.equal(cropped[:, :, crop[0].stop:], edge.expand_as(cropped[:, :, crop[0].stop:]))


def test_cropping_continues_an_initial_field_and_leaves_it_alone() -> None:
    from rlreg.instance import foreground_box

    fixed, moving, _ = _embedded_pair(3)
    initial = torch.zeros(1, 3, *fixed.shape[2:])
    initial[:, 0] = 0.25 + 0.01 * torch.arange(fixed.shape[2]).view(-1, 1, 1)  # a ramp the fit keeps outside the box
    kept = initial.clone()
    out = optimise_displacement(fixed, moving, InstanceConfig(levels=(1,), iterations=(10,), windows=(5,),
                                                              crop_margin=3), initial=initial)
    assert torch.equal(initial, kept)
    start = foreground_box([fixed, moving], 3)[0].start
    assert start > 0
    update = out - initial  # the fitted change, continued outside the box by its value on the box's first slice
    assert torch.allclose(update[:, :, :start], update[:, :, start:start + 1].expand_as(update[:, :, :start]))
    assert update[:, :, start:].abs().max() > 0.05
