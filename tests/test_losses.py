"""Closed forms, invariants, gradchecks and MONAI cross-checks for :mod:`rlreg.losses`."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from monai.losses import BendingEnergyLoss as MonaiBendingEnergyLoss
from monai.losses import DiffusionLoss as MonaiDiffusionLoss
from monai.losses import LocalNormalizedCrossCorrelationLoss

from rlreg.losses import (
    BendingEnergyLoss,
    DiffusionLoss,
    FixedLNCC,
    LNCCLoss,
    MultiScaleLNCCLoss,
    SoftDiceLoss,
    bending_energy,
    diffusion,
    lncc,
    lncc_loss,
    multiscale_lncc,
    multiscale_lncc_loss,
    regularise_,
    soft_dice,
    soft_dice_loss,
    total_variation,
)
from rlreg.spatial import identity_grid

SHAPES = {2: (20, 23), 3: (12, 14, 11)}
NDIMS = (2, 3)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Run on one intra-op thread: every tensor here is tiny, and on a busy 2-core machine OpenMP threads
    contending with other processes made gradcheck 100-1000x slower (seconds -> minutes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smooth_image(shape: tuple[int, ...], batch: int = 1, channels: int = 1, seed: int = 0,
                 dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Random smooth image ``(batch, channels, *shape)`` with values around 1 (no flat windows)."""
    gen = torch.Generator().manual_seed(seed)
    ndim = len(shape)
    coarse = torch.rand((batch, channels) + (6,) * ndim, generator=gen, dtype=torch.float64)
    mode = "bilinear" if ndim == 2 else "trilinear"
    return (4.0 * F.interpolate(coarse, size=shape, mode=mode, align_corners=True) + 1.0).to(dtype)


def noise(shape: tuple[int, ...], batch: int = 1, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((batch, 1, *shape), generator=gen, dtype=dtype)


def interior(t: torch.Tensor, margin: int) -> torch.Tensor:
    return t[(slice(None), slice(None)) + (slice(margin, -margin),) * (t.ndim - 2)]


def coords(shape: tuple[int, ...]) -> torch.Tensor:
    """``(ndim, *shape)`` float64 voxel coordinates."""
    return identity_grid(shape, torch.float64)[0]


def affine_field(shape: tuple[int, ...], matrix: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """``u_c(x) = sum_j A_cj x_j + b_c`` as ``(1, ndim, *shape)``."""
    x = coords(shape)
    return (torch.einsum("cj,j...->c...", matrix, x) + offset.view(-1, *[1] * len(shape))).unsqueeze(0)


# ---------------------------------------------------------------------------------------------------- LNCC
@pytest.mark.parametrize("ndim", NDIMS)
def test_lncc_of_image_with_itself_is_one(ndim: int) -> None:
    image = smooth_image(SHAPES[ndim])
    exact = lncc(image, image, window=5, eps=0.0, reduction="none")
    assert exact.shape == (1, 1, *SHAPES[ndim])
    assert float((exact - 1).abs().max()) < 1e-12
    # With eps the value is var^2 / (var^2 + eps): just below 1 where the window is not flat.
    cc_map = lncc(image, image, window=5, reduction="none")
    assert float(cc_map.min()) > 1 - 1e-3 and float(cc_map.max()) < 1.0
    assert float(lncc_loss(image, image)) == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("ndim", NDIMS)
@pytest.mark.parametrize(("scale", "shift"), [(2.5, 0.3), (-0.7, 4.0)])
def test_lncc_invariant_to_affine_intensity_change_in_interior(ndim: int, scale: float, shift: float) -> None:
    image = smooth_image(SHAPES[ndim], seed=1)
    window = 5
    cc_map = lncc(image, scale * image + shift, window=window, eps=0.0, reduction="none")
    assert float((interior(cc_map, window // 2) - 1).abs().max()) < 1e-10
    # Within window // 2 of the border the padded zeros are not shifted with the image: documented break.
    assert float(cc_map.min()) < 1 - 1e-5
    assert float(lncc(image, scale * image + shift, window=window, reduction="none").min()) >= 0.0


@pytest.mark.parametrize("ndim", NDIMS)
def test_lncc_of_independent_noise_is_near_zero(ndim: int) -> None:
    shape = (48, 48) if ndim == 2 else (24, 24, 24)
    a, b = noise(shape, seed=2), noise(shape, seed=3)
    window = 9
    cc_map = lncc(a, b, window=window, reduction="none")
    assert float(cc_map.min()) >= 0.0 and float(cc_map.max()) <= 1.0
    # Squared correlation of n independent pairs has mean about 1 / (n - 1): 0.0125 (2D, n=81), 0.0014 (3D).
    bound = 0.03 if ndim == 2 else 0.005
    assert 0.0 < float(interior(cc_map, window // 2).mean()) < bound
    # Near the border both windows share the padded zeros, which correlate two positive-mean images (documented);
    # zero-mean noise has no such artefact.
    assert float(cc_map.mean()) > 2 * bound
    assert 0.0 < float(lncc(a - 0.5, b - 0.5, window=window)) < bound
    assert float(lncc(a, a)) > 0.999


@pytest.mark.parametrize("ndim", NDIMS)
def test_lncc_is_symmetric(ndim: int) -> None:
    a, b = smooth_image(SHAPES[ndim], seed=4), smooth_image(SHAPES[ndim], seed=5)
    ab, ba = lncc(a, b, reduction="none"), lncc(b, a, reduction="none")
    assert torch.allclose(ab, ba, rtol=1e-12, atol=1e-14)
    assert 0.05 < float(ab.mean()) < 0.95  # a non-trivial value, so symmetry is not vacuous


@pytest.mark.parametrize("ndim", NDIMS)
def test_lncc_reductions_and_per_sample_values(ndim: int) -> None:
    shape = SHAPES[ndim]
    a, b = smooth_image(shape, batch=3, channels=2, seed=6), smooth_image(shape, batch=3, channels=2, seed=7)
    mean, per_sample, cc_map = (lncc(a, b, reduction=r) for r in ("mean", "batch", "none"))
    assert mean.shape == () and per_sample.shape == (3,) and cc_map.shape == (3, 1, *shape)
    assert torch.allclose(mean, per_sample.mean()) and torch.allclose(per_sample, cc_map.flatten(1).mean(1))
    for i in range(3):  # each sample on its own gives the same value: no mixing across the batch
        assert torch.allclose(per_sample[i], lncc(a[i:i + 1], b[i:i + 1]))
    # Channels are averaged.
    per_channel = [lncc(a[:, c:c + 1], b[:, c:c + 1], reduction="none") for c in range(2)]
    assert torch.allclose(cc_map, (per_channel[0] + per_channel[1]) / 2)
    # A batch of 1 broadcasts against N.
    assert torch.allclose(lncc(a[:1], b, reduction="batch"), lncc(a[:1].expand_as(b), b, reduction="batch"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lncc_dtype_and_device_follow_inputs(dtype: torch.dtype) -> None:
    a, b = smooth_image(SHAPES[3], seed=8, dtype=dtype), smooth_image(SHAPES[3], seed=9, dtype=dtype)
    for value in (lncc(a, b), multiscale_lncc(a, b, reduction="none"), lncc_loss(a, b, reduction="batch")):
        assert value.dtype == dtype
    # Built on the "meta" device only if every helper tensor follows the input's device.
    meta = torch.empty(1, 1, 8, 9, 7, device="meta", dtype=dtype)
    assert lncc(meta, meta).device.type == "meta"
    assert multiscale_lncc(meta, meta, downsample=True).device.type == "meta"


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_lncc_float32_matches_float64(offset: float) -> None:
    """Also for intensities far from 0 (CT in HU), where uncentred ``sum f^2 - (sum f)^2 / n`` loses all digits."""
    a = smooth_image(SHAPES[3], seed=10)
    a[..., 3:9, 4:10, 2:8] = 0.3  # a flat block: variance 0 in the windows inside it
    b = smooth_image(SHAPES[3], seed=11)
    reference = lncc(a + offset, b, reduction="none")
    single = lncc((a + offset).float(), b.float(), reduction="none")
    assert float((single.double() - reference).abs().max()) < 1e-4


@pytest.mark.parametrize("ndim", NDIMS)
def test_lncc_gradcheck(ndim: int) -> None:
    shape = (6, 7) if ndim == 2 else (5, 4, 6)
    fixed = smooth_image(shape, seed=12) + 0.1 * noise(shape, seed=13)
    moving = (smooth_image(shape, seed=14) + 0.1 * noise(shape, seed=15)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m: lncc(fixed, m, window=3, reduction="none"), (moving,))
    assert torch.autograd.gradcheck(lambda m: multiscale_lncc(fixed, m, (5, 3), (1.0, 0.5)), (moving,))
    assert torch.autograd.gradcheck(
        lambda m: multiscale_lncc(fixed, m, (3, 3), (1.0, 0.5), reduction="batch", downsample=True), (moving,))
    # Both arguments at once, and second order (the box sum has a hand-written, differentiable backward).
    fixed.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f, m: lncc(f, m, window=3, reduction="batch"), (fixed, moving))
    assert torch.autograd.gradgradcheck(lambda m: lncc(fixed, m, window=3), (moving,))


@pytest.mark.parametrize("ndim", NDIMS)
@pytest.mark.parametrize("window", [3, 5, 9])
def test_lncc_matches_monai(ndim: int, window: int) -> None:
    """MONAI returns ``-mean(cross^2 / (max(var_t, dr) * max(var_p, dr)))`` with the same zero-padded box sums.

    With ``eps = 0`` and ``smooth_dr = 0`` both compute ``cross^2 / (var_f var_m)`` (variances clamped at 0), so
    the maps agree to rounding. With the defaults (ours ``+ eps``, MONAI ``max(., 1e-5)``), when every variance
    exceeds 1e-5, ``monai - ours = monai * eps / (var_f var_m + eps) <= eps / min(var_f var_m)``.
    """
    shape = SHAPES[ndim]
    fixed, moving = smooth_image(shape, batch=2, seed=16), smooth_image(shape, batch=2, seed=17)
    kwargs = {"kernel_type": "rectangular", "kernel_size": window, "spatial_dims": ndim}
    monai_map = -LocalNormalizedCrossCorrelationLoss(**kwargs, reduction="none", smooth_dr=0.0)(moving, fixed)
    ours_map = lncc(fixed, moving, window=window, eps=0.0, reduction="none")
    assert torch.allclose(ours_map, monai_map, rtol=1e-9, atol=1e-12)

    # Default eps: bound the difference by eps over the smallest variance product (box sums via avg_pool).
    pool = (F.avg_pool2d, F.avg_pool3d)[ndim - 2]
    size = window**ndim

    def variance(x: torch.Tensor) -> torch.Tensor:
        mean = pool(x, window, stride=1, padding=window // 2, count_include_pad=True)
        return (pool(x * x, window, stride=1, padding=window // 2, count_include_pad=True) - mean * mean) * size

    var_product = variance(fixed) * variance(moving)
    assert float(var_product.min()) > 1e-5
    bound = 1e-5 / float(var_product.min())
    monai_mean = -LocalNormalizedCrossCorrelationLoss(**kwargs)(moving, fixed)
    ours_mean = lncc(fixed, moving, window=window)
    assert 0.0 <= float(monai_mean - ours_mean) <= bound + 1e-12


@pytest.mark.parametrize("ndim", NDIMS)
def test_multiscale_lncc_is_the_normalised_weighted_mean(ndim: int) -> None:
    a, b = smooth_image(SHAPES[ndim], batch=2, seed=18), smooth_image(SHAPES[ndim], batch=2, seed=19)
    windows, weights = (9, 7, 5), (1.0, 0.5, 0.25)
    for reduction in ("mean", "batch", "none"):
        expected = sum(w * lncc(a, b, win, reduction=reduction) for win, w in zip(windows, weights, strict=True))
        assert torch.allclose(multiscale_lncc(a, b, reduction=reduction), expected / sum(weights))
    assert float(multiscale_lncc(a, a)) == pytest.approx(1.0, abs=1e-6)
    assert float(multiscale_lncc_loss(a, a)) == pytest.approx(0.0, abs=1e-6)
    # Scaling all weights changes nothing (normalised); changing their ratio does.
    assert torch.allclose(multiscale_lncc(a, b, weights=(4.0, 2.0, 1.0)), multiscale_lncc(a, b))
    assert not torch.allclose(multiscale_lncc(a, b, weights=(1.0, 0.0, 0.0)), multiscale_lncc(a, b))


@pytest.mark.parametrize("ndim", NDIMS)
def test_fixed_lncc_equals_multiscale_lncc_values_and_gradients(ndim: int) -> None:
    fixed = smooth_image(SHAPES[ndim], batch=2, seed=22) * 3.0 + 100.0  # far from 0: the mean shift matters
    moving = smooth_image(SHAPES[ndim], batch=2, seed=23)
    windows, weights = (7, 3), (1.0, 0.5)
    cached = FixedLNCC(fixed, windows, weights)
    for reduction in ("mean", "batch", "none"):
        direct_input = moving.clone().requires_grad_(True)
        cached_input = moving.clone().requires_grad_(True)
        direct = multiscale_lncc(fixed, direct_input, windows, weights, reduction=reduction)
        ours = cached(cached_input, reduction)
        assert torch.allclose(ours, direct, atol=1e-6)
        direct.sum().backward()
        ours.sum().backward()
        assert torch.allclose(cached_input.grad, direct_input.grad, atol=1e-6)
    assert float(cached(fixed)) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="shape"):
        cached(moving[:1])
    with pytest.raises(ValueError, match="spatial"):
        FixedLNCC(fixed[0, 0])


@pytest.mark.parametrize("ndim", NDIMS)
def test_multiscale_lncc_downsample_is_an_image_pyramid(ndim: int) -> None:
    a, b = smooth_image(SHAPES[ndim], seed=20), smooth_image(SHAPES[ndim], seed=21)
    pool = (F.avg_pool2d, F.avg_pool3d)[ndim - 2]
    expected, x, y = 0.0, a, b
    for k, (window, weight) in enumerate(zip((9, 7, 5), (1.0, 0.5, 0.25), strict=True)):
        if k:
            x = pool(x, 3, stride=2, padding=1, count_include_pad=False)
            y = pool(y, 3, stride=2, padding=1, count_include_pad=False)
        expected = expected + weight * lncc(x, y, window)
    assert torch.allclose(multiscale_lncc(a, b, downsample=True), expected / 1.75)
    assert not torch.allclose(multiscale_lncc(a, b, downsample=True), multiscale_lncc(a, b))
    with pytest.raises(ValueError, match="downsample"):
        multiscale_lncc(a, b, reduction="none", downsample=True)


def test_lncc_modules_match_functions() -> None:
    a, b = smooth_image(SHAPES[2], batch=2, seed=22), smooth_image(SHAPES[2], batch=2, seed=23)
    assert torch.equal(LNCCLoss(window=7, reduction="batch")(a, b), lncc_loss(a, b, 7, reduction="batch"))
    assert torch.allclose(lncc_loss(a, b), 1 - lncc(a, b))
    module = MultiScaleLNCCLoss(windows=(5, 3), weights=(1.0, 1.0), downsample=True)
    assert torch.equal(module(a, b), multiscale_lncc_loss(a, b, (5, 3), (1.0, 1.0), downsample=True))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: lncc(torch.rand(1, 1, 8), torch.rand(1, 1, 8)), "2 or 3 spatial dims"),
        (lambda: lncc(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9)), "same shape"),
        (lambda: lncc(torch.rand(2, 1, 8, 8), torch.rand(3, 1, 8, 8)), "same shape"),
        (lambda: lncc(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), window=4), "odd"),
        (lambda: lncc(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), reduction="sum"), "reduction"),
        (lambda: multiscale_lncc(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), (9, 7), (1.0,)), "one weight"),
        (lambda: multiscale_lncc(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), (9,), (-1.0,)), "non-negative"),
        (lambda: LNCCLoss(window=0), "odd"),
    ],
)
def test_lncc_rejects_bad_arguments(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------------------------------------- regularisers
@pytest.mark.parametrize("ndim", NDIMS)
def test_regularisers_vanish_for_translations(ndim: int) -> None:
    shape = SHAPES[ndim]
    field = torch.tensor([1.5, -2.0, 0.25][:ndim], dtype=torch.float64).view(1, ndim, *[1] * ndim)
    field = field.expand(2, ndim, *shape)
    for regulariser in (diffusion, total_variation, bending_energy):
        assert float(regulariser(field)) == 0.0
    assert float(diffusion(field + 1e-3 * noise(shape, batch=2).expand_as(field))) > 0  # and can be non-zero


@pytest.mark.parametrize("ndim", NDIMS)
def test_regularisers_of_a_linear_field_along_one_axis(ndim: int) -> None:
    """``u_0 = a x_0``, other channels 0: diffusion ``a^2 / ndim``, TV ``|a| / ndim``, bending 0."""
    shape, a = SHAPES[ndim], -0.8
    field = torch.zeros(1, ndim, *shape, dtype=torch.float64)
    field[:, 0] = a * coords(shape)[0]
    assert float(diffusion(field)) == pytest.approx(a * a / ndim, rel=1e-12)
    assert float(total_variation(field)) == pytest.approx(abs(a) / ndim, rel=1e-12)
    assert float(bending_energy(field)) == pytest.approx(0.0, abs=1e-20)


@pytest.mark.parametrize("ndim", NDIMS)
def test_regularisers_of_random_affine_fields(ndim: int) -> None:
    """``u = A x + b``: diffusion ``||A||_F^2 / ndim``, TV ``sum |A_ci| / ndim``, bending 0; MONAI agrees."""
    gen = torch.Generator().manual_seed(24)
    shape = SHAPES[ndim]
    matrix = torch.randn(ndim, ndim, generator=gen, dtype=torch.float64) * 0.3
    field = affine_field(shape, matrix, torch.randn(ndim, generator=gen, dtype=torch.float64))
    assert float(diffusion(field)) == pytest.approx(float(matrix.square().sum()) / ndim, rel=1e-10)
    assert float(total_variation(field)) == pytest.approx(float(matrix.abs().sum()) / ndim, rel=1e-10)
    assert float(bending_energy(field)) == pytest.approx(0.0, abs=1e-20)
    # MONAI uses central instead of forward differences: identical on affine fields.
    assert float(diffusion(field)) == pytest.approx(float(MonaiDiffusionLoss()(field)), rel=1e-10)


@pytest.mark.parametrize("ndim", NDIMS)
def test_bending_energy_golden_quadratics(ndim: int) -> None:
    shape = SHAPES[ndim]
    x = coords(shape)
    one_channel = torch.zeros(1, ndim, *shape, dtype=torch.float64)
    one_channel[:, 0] = x[0] ** 2
    assert float(bending_energy(one_channel)) == pytest.approx(4.0 / ndim, rel=1e-12)
    every_channel = (x**2).unsqueeze(0)  # u_c = x_c^2: d2u_c/dx_c^2 = 2 on every channel
    assert float(bending_energy(every_channel)) == pytest.approx(4.0, rel=1e-12)
    # A general quadratic u_c = x^T H_c x / 2 + affine: the channel mean of ||H_c||_F^2 (cross terms counted twice).
    gen = torch.Generator().manual_seed(25)
    hessians = torch.randn(ndim, ndim, ndim, generator=gen, dtype=torch.float64)
    hessians = (hessians + hessians.transpose(1, 2)) / 2
    field = 0.5 * torch.einsum("i...,cij,j...->c...", x, hessians, x).unsqueeze(0)
    field = field + affine_field(shape, torch.randn(ndim, ndim, generator=gen, dtype=torch.float64),
                                 torch.zeros(ndim, dtype=torch.float64))
    expected = float(hessians.square().sum()) / ndim
    assert float(bending_energy(field)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("ndim", NDIMS)
def test_bending_energy_sees_a_checkerboard(ndim: int) -> None:
    """The compact ``[1, -2, 1]`` stencil gives ``(-4)^2 = 16`` for ``(-1)^x``; a width-5 stencil would give 0."""
    shape = SHAPES[ndim]
    field = torch.zeros(1, ndim, *shape, dtype=torch.float64)
    field[:, 0] = (-1.0) ** coords(shape)[0]
    assert float(bending_energy(field)) == pytest.approx(16.0 / ndim, rel=1e-12)


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")
@pytest.mark.parametrize("ndim", NDIMS)
def test_bending_energy_matches_monai(ndim: int) -> None:
    field = torch.randn(2, ndim, *SHAPES[ndim], generator=torch.Generator().manual_seed(26), dtype=torch.float64)
    assert float(bending_energy(field)) == pytest.approx(float(MonaiBendingEnergyLoss()(field)), rel=1e-10)


@pytest.mark.parametrize("ndim", NDIMS)
def test_regulariser_reductions_and_dtype(ndim: int) -> None:
    shape = SHAPES[ndim]
    field = torch.randn(3, ndim, *shape, generator=torch.Generator().manual_seed(27), dtype=torch.float64)
    for regulariser, module in ((diffusion, DiffusionLoss), (total_variation, None),
                                (bending_energy, BendingEnergyLoss)):
        per_sample = regulariser(field, reduction="batch")
        assert per_sample.shape == (3,) and per_sample.dtype == torch.float64
        assert torch.allclose(regulariser(field), per_sample.mean())
        for i in range(3):
            assert torch.allclose(per_sample[i], regulariser(field[i:i + 1]))
        assert regulariser(field.float()).dtype == torch.float32
        assert regulariser(torch.empty_like(field, device="meta")).device.type == "meta"
        if module is not None:
            assert torch.equal(module(reduction="batch")(field), per_sample)


@pytest.mark.parametrize("ndim", NDIMS)
def test_regularise_in_place_matches_autograd(ndim: int) -> None:
    """``regularise_`` returns the weighted energies and adds exactly the gradient autograd gives for their sum."""
    field = torch.randn(2, ndim, *SHAPES[ndim], generator=torch.Generator().manual_seed(31), dtype=torch.float64)
    start = torch.randn(field.shape, generator=torch.Generator().manual_seed(32), dtype=torch.float64)
    for weights in ((0.25, 1.0), (1.0, 0.0), (0.0, 2.0)):
        leaf = field.clone().requires_grad_(True)
        expected = weights[0] * diffusion(leaf, "batch") + weights[1] * bending_energy(leaf, "batch")
        (grad,) = torch.autograd.grad(expected.sum(), leaf)
        gradient = start.clone()
        energies = regularise_(field, gradient, *weights)
        torch.testing.assert_close(energies, expected.detach(), rtol=1e-12, atol=0)
        torch.testing.assert_close(gradient, start + grad, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="shape"):
        regularise_(field, start[:1], 1.0)


def test_regularisers_gradcheck() -> None:
    for shape in ((5, 4), (4, 3, 5)):
        ndim = len(shape)
        field = torch.randn(1, ndim, *shape, generator=torch.Generator().manual_seed(28), dtype=torch.float64)
        field.requires_grad_(True)
        for regulariser in (diffusion, total_variation, bending_energy):
            assert torch.autograd.gradcheck(lambda u, r=regulariser: r(u, reduction="batch"), (field,))
    # Two samples, both reductions: each sample's energy has its own gradient.
    field = torch.randn(2, 3, 4, 3, 5, generator=torch.Generator().manual_seed(29), dtype=torch.float64)
    for reduction in ("batch", "mean"):
        for regulariser in (diffusion, bending_energy):
            assert torch.autograd.gradcheck(lambda u, f=regulariser, r=reduction: f(u, reduction=r),
                                            (field.requires_grad_(True),))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: diffusion(torch.rand(1, 3, 5, 5)), "channels|ndim"),
        (lambda: diffusion(torch.rand(1, 1, 5)), "ndim"),
        (lambda: diffusion(torch.rand(1, 2, 1, 5)), "at least 2"),
        (lambda: bending_energy(torch.rand(1, 2, 2, 5)), "at least 3"),
        (lambda: diffusion(torch.rand(1, 2, 5, 5), reduction="none"), "reduction"),
    ],
)
def test_regularisers_reject_bad_arguments(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------------------------------------- Dice
def one_hot(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """``(N, *S)`` integer labels -> ``(N, L, *S)`` float64 one-hot."""
    return F.one_hot(labels, num_labels).movedim(-1, 1).to(torch.float64)


@pytest.mark.parametrize("ndim", NDIMS)
def test_soft_dice_identical_and_disjoint(ndim: int) -> None:
    labels = torch.randint(0, 3, (2, *SHAPES[ndim]), generator=torch.Generator().manual_seed(29))
    target = one_hot(labels, 3)
    assert torch.allclose(soft_dice(target, target, reduction="none"), torch.ones(2, 3, dtype=torch.float64))
    assert float(soft_dice_loss(target, target)) == pytest.approx(0.0, abs=1e-12)
    disjoint = one_hot((labels + 1) % 3, 3)  # every voxel gets another label
    assert float(soft_dice(disjoint, target, reduction="none").max()) < 1e-6


def test_soft_dice_hand_computed_overlap() -> None:
    pred = one_hot(torch.tensor([[[1, 1], [0, 0]]]), 2)
    target = one_hot(torch.tensor([[[1, 0], [0, 0]]]), 2)
    # Background: pred {(1,0),(1,1)}, target {(0,1),(1,0),(1,1)}: 2*2 / (2+3). Foreground: 2*1 / (2+1).
    expected = torch.tensor([[4 / 5, 2 / 3]], dtype=torch.float64)
    assert torch.allclose(soft_dice(pred, target, eps=0.0, reduction="none"), expected)
    assert float(soft_dice(pred, target, eps=0.0)) == pytest.approx(11 / 15)
    assert float(soft_dice(pred, target, eps=0.0, include_background=False)) == pytest.approx(2 / 3)
    assert float(soft_dice_loss(pred, target, eps=0.0)) == pytest.approx(4 / 15)
    # Probabilities: 0.5 everywhere against one foreground voxel: 2*0.5 / (2 + 1).
    soft = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    assert float(soft_dice(soft, target[:, 1:], eps=0.0)) == pytest.approx(1 / 3)


def test_soft_dice_reductions_empty_labels_and_module() -> None:
    labels = torch.randint(0, 2, (3, *SHAPES[3]), generator=torch.Generator().manual_seed(30))
    target = torch.cat([one_hot(labels, 2), torch.zeros(3, 1, *SHAPES[3], dtype=torch.float64)], dim=1)
    pred = target.clone()
    pred[0, :2] = pred[0, :2].flip(0)  # sample 0 swaps its two labels, samples 1 and 2 are perfect
    values = soft_dice(pred, target, reduction="none")
    assert values.shape == (3, 3)
    assert torch.allclose(values[:, 2], torch.ones(3, dtype=torch.float64))  # absent from both: 1
    per_sample = soft_dice(pred, target, reduction="batch")
    assert per_sample.shape == (3,) and float(per_sample[0]) == pytest.approx(1 / 3, abs=1e-6)
    assert torch.allclose(per_sample[1:], torch.ones_like(per_sample[1:]))
    assert soft_dice(pred, target, include_background=False, reduction="none").shape == (3, 2)
    assert torch.equal(SoftDiceLoss(reduction="batch")(pred, target), soft_dice_loss(pred, target, reduction="batch"))
    assert soft_dice(pred.float(), target.bool()).dtype == torch.float32


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: soft_dice(torch.rand(1, 2, 4, 4), torch.rand(1, 3, 4, 4)), "same shape"),
        (lambda: soft_dice(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), include_background=False), "2 label"),
        (lambda: soft_dice(torch.rand(1, 1, 4), torch.rand(1, 1, 4)), "2 or 3 spatial dims"),
    ],
)
def test_soft_dice_rejects_bad_arguments(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_every_loss_is_differentiable() -> None:
    """Each loss passes a finite, non-zero gradient back to its prediction."""
    fixed = smooth_image(SHAPES[3], seed=31)
    moving = smooth_image(SHAPES[3], seed=32).requires_grad_(True)
    field = (0.1 * torch.randn(1, 3, *SHAPES[3], generator=torch.Generator().manual_seed(33), dtype=torch.float64))
    field.requires_grad_(True)
    probs = torch.softmax(torch.randn(1, 3, *SHAPES[3], dtype=torch.float64), 1).requires_grad_(True)
    target = one_hot(torch.randint(0, 3, (1, *SHAPES[3])), 3)
    losses = [(multiscale_lncc_loss(fixed, moving), moving), (diffusion(field), field),
              (bending_energy(field), field), (total_variation(field), field), (soft_dice_loss(probs, target), probs)]
    for value, leaf in losses:
        (grad,) = torch.autograd.grad(value, leaf)
        assert torch.isfinite(grad).all() and float(grad.abs().max()) > 0
    assert list(itertools.chain(*[m.parameters() for m in (LNCCLoss(), DiffusionLoss(), SoftDiceLoss())])) == []
