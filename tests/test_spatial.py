"""Golden values, invariants, gradchecks and cross-checks for :mod:`rlreg.spatial`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from rlreg.spatial import (
    SpatialTransformer,
    _vote_labels,
    compose,
    folding_percent,
    identity_grid,
    integrate_velocity,
    invert,
    jacobian_determinant,
    resize_displacement,
    sample_points,
    sdlogj,
    warp,
)

SHAPES = {2: (9, 11), 3: (7, 9, 8)}


def smooth_image(shape: tuple[int, ...], dtype=torch.float64) -> torch.Tensor:
    """A smooth, non-separable test image ``(1, 1, *shape)``."""
    grid = identity_grid(shape, dtype)
    val = torch.zeros(grid.shape[2:], dtype=dtype)
    for axis, n in enumerate(shape):
        x = grid[0, axis] / n
        val = val + torch.sin(2.3 * x + 0.4 * axis) * (axis + 1)
    return (val + 0.3 * (grid[0, 0] / shape[0]) * (grid[0, -1] / shape[-1])).view(1, 1, *shape)


def smooth_field(shape: tuple[int, ...], amplitude: float, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """A smooth random displacement ``(1, ndim, *shape)`` with max magnitude about ``amplitude`` voxels."""
    gen = torch.Generator().manual_seed(seed)
    ndim = len(shape)
    coarse = torch.randn((1, ndim) + (3,) * ndim, generator=gen, dtype=dtype)
    mode = "bilinear" if ndim == 2 else "trilinear"
    field = F.interpolate(coarse, size=shape, mode=mode, align_corners=True)
    return field / field.abs().max() * amplitude


def constant_field(values: list[float], shape: tuple[int, ...]) -> torch.Tensor:
    ndim = len(shape)
    return torch.tensor(values[:ndim], dtype=torch.float64).view(1, ndim, *[1] * ndim).expand(1, ndim, *shape)


def interior(t: torch.Tensor, margin: int) -> torch.Tensor:
    ndim = t.ndim - 2
    return t[(slice(None), slice(None)) + (slice(margin, -margin),) * ndim]


# ---------------------------------------------------------------------------------------------------- golden
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("mode", ["bilinear", "nearest", "label"])
def test_one_voxel_shift_along_each_axis(ndim: int, mode: str) -> None:
    """A +1 voxel displacement on channel c reads the voxel one step further along tensor axis c."""
    shape = SHAPES[ndim]
    centre = tuple(n // 2 for n in shape)
    image = torch.zeros(1, 1, *shape)
    image[(0, 0, *centre)] = 5.0
    for axis in range(ndim):
        disp = torch.zeros(1, ndim, *shape)
        disp[:, axis] = 1.0
        out = warp(image, disp, mode)
        expected = torch.zeros_like(image)
        target = list(centre)
        target[axis] -= 1  # out(x) = image(x + e_axis): the spike moves one voxel towards index 0
        expected[(0, 0, *target)] = 5.0
        if mode == "bilinear":  # float32 normalised coordinates round to ~1e-7 of a voxel
            assert torch.allclose(out, expected, atol=1e-5), f"axis {axis}"
        else:
            assert torch.equal(out, expected), f"axis {axis}"


def test_half_voxel_shift_averages_neighbours_2d() -> None:
    image = torch.tensor([[0.0, 2.0, 4.0, 6.0]]).view(1, 1, 1, 4)
    disp = torch.zeros(1, 2, 1, 4)
    disp[:, 1] = 0.5
    out = warp(image, disp)
    # last sample reads x = 3.5, half outside: linear blend with zero padding -> 0.5 * 6
    assert torch.allclose(out.flatten(), torch.tensor([1.0, 3.0, 5.0, 3.0]))


# ---------------------------------------------------------------------------------------------------- identity
@pytest.mark.parametrize("ndim", [2, 3])
def test_identity_invariants(ndim: int) -> None:
    shape = SHAPES[ndim]
    image = smooth_image(shape)
    labels = torch.randint(0, 6, (1, 1, *shape))
    zero = torch.zeros(1, ndim, *shape, dtype=torch.float64)
    field = smooth_field(shape, 1.5)
    assert torch.allclose(warp(image, zero), image, atol=1e-12)
    assert torch.equal(warp(labels, zero, "label"), labels)
    assert torch.equal(warp(labels, zero.float(), "nearest"), labels)
    assert torch.allclose(compose(field, zero), field, atol=1e-12)
    assert torch.allclose(compose(zero, field), field, atol=1e-12)
    assert torch.equal(invert(zero), zero)
    assert torch.allclose(integrate_velocity(zero), zero)
    assert torch.allclose(jacobian_determinant(zero), torch.ones(1, 1, *shape, dtype=torch.float64))
    assert folding_percent(zero).item() == 0.0
    assert sdlogj(zero).item() == pytest.approx(0.0, abs=1e-12)


def test_identity_grid_is_cached_and_indexed() -> None:
    grid = identity_grid((3, 4, 5))
    assert grid.shape == (1, 3, 3, 4, 5)
    assert grid[0, 0, 2, 0, 0] == 2 and grid[0, 1, 0, 3, 0] == 3 and grid[0, 2, 0, 0, 4] == 4
    assert identity_grid((3, 4, 5)) is grid
    assert identity_grid((3, 4, 5), torch.float64).dtype == torch.float64


# ---------------------------------------------------------------------------------------------------- compose
@pytest.mark.parametrize("ndim", [2, 3])
def test_constant_translations_compose_additively(ndim: int) -> None:
    shape = SHAPES[ndim]
    a = constant_field([0.7, -1.2, 2.5], shape)
    b = constant_field([-0.3, 0.9, 1.1], shape)
    assert torch.allclose(compose(a, b), a + b, atol=1e-12)  # exact everywhere thanks to border padding


@pytest.mark.parametrize("ndim", [2, 3])
def test_warp_with_composition_matches_sequential_warps(ndim: int) -> None:
    shape = (40, 44) if ndim == 2 else (24, 26, 22)
    image = smooth_image(shape)
    first = smooth_field(shape, 2.0, seed=1)
    then = smooth_field(shape, 1.0, seed=2)
    then[:, 0] += 1.5  # a drift makes the order matter at first order: first(x + then) vs first(x)
    sequential = warp(warp(image, first), then)
    composed = warp(image, compose(first, then))
    margin = 5
    err = (interior(sequential, margin) - interior(composed, margin)).abs().max().item()
    # Both resample linearly; the difference is the double-interpolation error of a smooth image, not a bug.
    assert err < 0.02, err
    # Wrong order is clearly worse: pins the argument convention.
    wrong = warp(image, compose(then, first))
    wrong_err = (interior(sequential, margin) - interior(wrong, margin)).abs().max().item()
    assert wrong_err > 3 * err


def test_compose_follows_agent_rule_pointwise() -> None:
    """u_t(x) = a(x) + u_prev(x + a(x)) with an integer step reads u_prev exactly one voxel away."""
    shape = (6, 7)
    prev = torch.randn(1, 2, *shape, dtype=torch.float64)
    step = torch.zeros(1, 2, *shape, dtype=torch.float64)
    step[:, 1] = 1.0
    out = compose(prev, step)
    assert torch.allclose(out[..., :-1], step[..., :-1] + prev[..., 1:])
    assert torch.allclose(out[..., -1], step[..., -1] + prev[..., -1])  # border padding


# ---------------------------------------------------------------------------------------------------- inverse / SVF
@pytest.mark.parametrize("ndim", [2, 3])
def test_invert_then_forward_is_identity(ndim: int) -> None:
    shape = (32, 36) if ndim == 2 else (20, 22, 18)
    field = smooth_field(shape, 2.5, seed=3)
    inverse = invert(field, iterations=50, tolerance=1e-8)
    residual = interior(compose(field, inverse), 4).abs().max().item()
    assert residual < 1e-3, residual
    # The other side carries the interpolation error of a resampled inverse (~4% of the amplitude here).
    other_side = interior(compose(inverse, field), 4).abs().max().item()
    assert other_side < 0.15, other_side


@pytest.mark.parametrize("ndim", [2, 3])
def test_scaling_and_squaring(ndim: int) -> None:
    shape = SHAPES[ndim]
    const = constant_field([1.5, -0.5, 0.25], shape)
    assert torch.allclose(integrate_velocity(const), const, atol=1e-10)
    big = (24, 26) if ndim == 2 else (18, 20, 16)
    velocity = smooth_field(big, 3.0, seed=4)
    forward, backward = integrate_velocity(velocity), integrate_velocity(-velocity)
    assert interior(compose(forward, backward), 4).abs().max().item() < 0.1  # discretisation error, 3 voxel field
    assert (jacobian_determinant(forward) > 0).all()


# ---------------------------------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("ndim", [2, 3])
def test_gradcheck_warp(ndim: int) -> None:
    shape = (5, 6) if ndim == 2 else (4, 5, 3)
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 2, *shape, generator=gen, dtype=torch.float64, requires_grad=True)
    # keep sample points away from integer positions, where linear interpolation has kinks
    disp = (0.25 + 0.5 * torch.rand(1, ndim, *shape, generator=gen, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda i, d: warp(i, d, padding="border"), (image, disp))
    assert torch.autograd.gradcheck(lambda a, b: compose(a, b), (disp.detach().clone().requires_grad_(),
                                                             (0.3 * disp).detach().clone().requires_grad_()))


# ---------------------------------------------------------------------------------------------------- jacobian
@pytest.mark.parametrize("ndim", [2, 3])
def test_jacobian_of_affine_maps(ndim: int) -> None:
    shape = SHAPES[ndim]
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        matrix = torch.eye(ndim, dtype=torch.float64)
        matrix += 0.3 * torch.randn(ndim, ndim, generator=gen, dtype=torch.float64)
        shift = torch.randn(ndim, generator=gen, dtype=torch.float64)
        grid = identity_grid(shape, torch.float64)
        # x -> M x + t, so u(x) = (M - I) x + t
        disp = torch.einsum("ij,njk->nik", matrix - torch.eye(ndim, dtype=torch.float64), grid.flatten(2))
        disp = (disp + shift.view(1, ndim, 1)).view(1, ndim, *shape)
        det = jacobian_determinant(disp)
        assert torch.allclose(det, torch.full_like(det, torch.linalg.det(matrix).item()), atol=1e-10)


def test_jacobian_folding_and_sdlogj_golden() -> None:
    shape = (8, 10)
    grid = identity_grid(shape, torch.float64)
    flip = torch.zeros(1, 2, *shape, dtype=torch.float64)
    flip[:, 1] = -2.0 * grid[:, 1]  # x1 -> -x1: det = -1 everywhere
    assert torch.allclose(jacobian_determinant(flip), -torch.ones(1, 1, *shape, dtype=torch.float64))
    assert folding_percent(flip).item() == 100.0
    half = torch.zeros(1, 2, *shape, dtype=torch.float64)
    half[..., :5] = 0.0
    scale = torch.zeros(1, 2, *shape, dtype=torch.float64)
    scale[:, 0] = grid[:, 0]  # det = 2 everywhere -> log J constant -> SDlogJ 0
    assert sdlogj(scale).item() == pytest.approx(0.0, abs=1e-12)
    mask = torch.zeros(1, 1, *shape, dtype=torch.bool)
    mask[..., :3, :] = True
    assert folding_percent(flip, mask).item() == 100.0
    # Learn2Reg's +3 quirk changes the value for a non-trivial field
    field = smooth_field((16, 16), 1.0)
    assert sdlogj(field, learn2reg_offset=True).item() < sdlogj(field).item()
    # A determinant the caller already has is used as given, not recomputed.
    det = jacobian_determinant(field)
    assert sdlogj(field, determinant=det).item() == sdlogj(field).item()
    assert folding_percent(field, determinant=-det).item() == 100.0


def test_jacobian_matches_sitk_on_identity_geometry() -> None:
    """ITK's filter is correct for identity direction; compare on the interior (borders use other stencils)."""
    shape = (12, 14, 10)
    field = smooth_field(shape, 2.0, seed=6)
    arr = field[0].permute(1, 2, 3, 0).numpy()[..., ::-1].copy()  # tensor (k,j,i) channels -> ITK (i,j,k) vector
    image = sitk.GetImageFromArray(arr, isVector=True)
    ref = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(image))
    ours = jacobian_determinant(field)[0, 0].numpy()
    assert np.allclose(ours[1:-1, 1:-1, 1:-1], ref[1:-1, 1:-1, 1:-1], atol=1e-5)


# ---------------------------------------------------------------------------------------------------- labels
@pytest.mark.parametrize("ndim", [2, 3])
def test_label_warp_never_invents_values_and_matches_onehot_reference(ndim: int) -> None:
    shape = (14, 15) if ndim == 2 else (9, 10, 11)
    gen = torch.Generator().manual_seed(7)
    values = torch.tensor([0, 3, 17, 250])
    labels = values[torch.randint(0, 4, (1, 1, *shape), generator=gen)]
    disp = 2.0 * torch.randn(1, ndim, *shape, generator=gen, dtype=torch.float64)
    out = warp(labels, disp, "label")
    assert out.dtype == labels.dtype
    assert set(out.unique().tolist()) <= set(values.tolist())
    onehot = torch.stack([(labels[:, 0] == v).double() for v in values], dim=1)
    probs = warp(onehot, disp)  # zero padding: outside counts for nobody, except ...
    probs[:, 0] += 1.0 - probs.sum(1)  # ... the missing mass, which belongs to background label 0
    reference = values[probs.argmax(1, keepdim=True)]
    ties = (probs.topk(2, dim=1).values.diff(dim=1).abs() < 1e-9)
    assert torch.equal(out[~ties], reference[~ties])


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_label_warp_shortcut_of_uniform_cells_equals_the_vote_everywhere(padding: str) -> None:
    """Positions in one-label cells, and with zero padding those whose corners are all off the grid, skip the vote;
    the result must be what voting at every position gives, also for positions outside the grid, batches, several
    channels, float labels and one-voxel axes (no cells at all)."""
    gen = torch.Generator().manual_seed(3)
    for shape, n, ch, scale in [((12, 9, 7), 2, 2, 3.0), ((15, 11), 1, 1, 0.4), ((6, 1, 5), 1, 1, 1.0)]:
        ndim = len(shape)
        blocks = torch.randint(0, 5, (n, ch, *[max(k // 3, 1) for k in shape]), generator=gen).float() * 1.5
        labels = F.interpolate(blocks, size=shape, mode="nearest")  # regions, so most cells are uniform
        disp = scale * torch.randn(n, ndim, *shape, generator=gen)
        out = warp(labels, disp, "label", padding=padding)
        pos = (identity_grid(shape) + disp).flatten(2)
        low = pos.floor()
        frac, low = (pos - low).transpose(0, 1).flatten(1), low.long().transpose(0, 1).flatten(1)
        batch = torch.arange(n).repeat_interleave(pos.shape[-1])
        if scale > 1:  # some positions lie wholly off the grid
            assert ((low < -1) | (low > torch.tensor(shape).view(-1, 1) - 1)).any(0).sum() > 10
        everywhere = torch.stack([_vote_labels(labels[:, c].reshape(-1), batch, low, frac, labels.shape[2:], padding)
                                  for c in range(ch)]).view(ch, n, *shape).transpose(0, 1)
        assert torch.equal(out, everywhere)


def test_label_warp_float_labels_and_border_padding() -> None:
    labels = torch.tensor([[1.0, 1.0, 2.0, 2.0]]).view(1, 1, 1, 4)
    disp = torch.zeros(1, 2, 1, 4)
    disp[:, 1] = 0.6  # x + 0.6: the heavier neighbour is the next voxel, or the outside at the end
    assert warp(labels, disp, "label").flatten().tolist() == [1.0, 2.0, 2.0, 0.0]
    assert warp(labels, disp, "label", padding="border").flatten().tolist() == [1.0, 2.0, 2.0, 2.0]


# ---------------------------------------------------------------------------------------------------- resize / points
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("align_corners", [True, False])
def test_resize_displacement_is_exact_for_linear_maps(ndim: int, align_corners: bool) -> None:
    """Resizing a linear map's field and warping on the new grid reads the same physical positions."""
    old, new = ((10, 12), (19, 6)) if ndim == 2 else ((6, 8, 5), (11, 4, 9))
    matrix = 0.1 * torch.arange(1, ndim * ndim + 1, dtype=torch.float64).view(ndim, ndim)

    def physical(shape: tuple[int, ...]) -> torch.Tensor:
        """Voxel centres in a common physical frame [0, 1] per axis for the chosen grid correspondence."""
        grid = identity_grid(shape, torch.float64)
        if align_corners:
            scale = torch.tensor([1.0 / (n - 1) for n in shape], dtype=torch.float64)
            return grid * scale.view(1, ndim, *[1] * ndim)
        scale = torch.tensor([1.0 / n for n in shape], dtype=torch.float64)
        return (grid + 0.5) * scale.view(1, ndim, *[1] * ndim)

    def field_for(shape: tuple[int, ...]) -> torch.Tensor:
        phys_disp = torch.einsum("ij,njk->nik", matrix, physical(shape).flatten(2)).view(1, ndim, *shape)
        per_voxel = torch.tensor([(n - 1) if align_corners else n for n in shape], dtype=torch.float64)
        return phys_disp * per_voxel.view(1, ndim, *[1] * ndim)  # physical -> voxels of this grid

    resized = resize_displacement(field_for(old), new, align_corners=align_corners)
    expected = field_for(new)
    if align_corners:
        assert torch.allclose(resized, expected, atol=1e-10)
    else:  # edge voxels extrapolate by clamping in F.interpolate; the interior is exact
        assert torch.allclose(interior(resized, 1), interior(expected, 1), atol=1e-10)


def test_sample_points_reads_linear_field_exactly() -> None:
    field = identity_grid((5, 6, 7), torch.float64) * 2.0 + 1.0
    points = torch.tensor([[0.0, 0.0, 0.0], [1.5, 2.25, 6.0], [4.0, 5.0, 3.3]], dtype=torch.float64)
    assert torch.allclose(sample_points(field, points), points * 2.0 + 1.0)


# ---------------------------------------------------------------------------------------------------- cross-checks
@pytest.mark.parametrize("ndim", [2, 3])
def test_warp_matches_monai_warp(ndim: int) -> None:
    from monai.networks.blocks import Warp

    shape = SHAPES[ndim]
    image = smooth_image(shape).float()
    disp = smooth_field(shape, 3.0, seed=8).float()
    ours = warp(image, disp)
    theirs = Warp(mode="bilinear", padding_mode="zeros")(image, disp)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_warp_matches_simpleitk_resample() -> None:
    """SimpleITK index (i, j, k) is tensor axis (2, 1, 0); with unit spacing and identity direction mm = voxels."""
    shape = (10, 12, 9)
    image = smooth_image(shape)
    disp = smooth_field(shape, 2.5, seed=9)
    moving = sitk.GetImageFromArray(image[0, 0].numpy())
    vec = disp[0].permute(1, 2, 3, 0).numpy()[..., ::-1].copy()
    field = sitk.GetImageFromArray(vec, isVector=True)
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    ref = sitk.GetArrayFromImage(sitk.Resample(moving, moving, transform, sitk.sitkLinear, 0.0))
    ours = warp(image, disp)[0, 0].numpy()
    inside = (identity_grid(shape, torch.float64) + disp)
    bounds = torch.tensor(shape, dtype=torch.float64).view(1, 3, 1, 1, 1) - 1
    valid = ((inside >= 0) & (inside <= bounds)).all(1)[0].numpy()
    assert valid.mean() > 0.5
    assert np.allclose(ours[valid], ref[valid], atol=1e-6)


def test_dtype_follows_input_and_module_wrapper() -> None:
    for dtype in (torch.float32, torch.float64):
        image = torch.rand(2, 1, 6, 7, dtype=dtype)
        disp = torch.rand(2, 2, 6, 7, dtype=dtype)
        assert warp(image, disp).dtype == dtype
        assert compose(disp, disp).dtype == dtype
        assert jacobian_determinant(disp).dtype == dtype
    module = SpatialTransformer("bilinear")
    image = torch.rand(3, 2, 5, 6, 7)
    disp = torch.zeros(3, 3, 5, 6, 7)
    assert torch.allclose(module(image, disp), image, atol=1e-6)
    assert not list(module.buffers())


def test_broadcast_single_moving_over_batch_and_bad_shapes() -> None:
    image = torch.rand(1, 1, 6, 7)
    disp = torch.zeros(4, 2, 6, 7)
    disp[1:, 0] = 1.0
    out = warp(image, disp)
    assert out.shape == (4, 1, 6, 7)
    assert torch.allclose(out[0], image[0], atol=1e-6)
    assert torch.allclose(out[1, :, :-1], image[0, :, 1:], atol=1e-6)
    with pytest.raises(ValueError, match="channels"):
        warp(image, torch.zeros(1, 3, 6, 7))
    with pytest.raises(ValueError, match="rank"):
        warp(torch.rand(1, 1, 6, 7, 8), disp)


def test_warp_into_a_different_grid_reads_input_voxel_indices() -> None:
    moving = torch.arange(20.0).view(1, 1, 4, 5)
    disp = torch.zeros(1, 2, 2, 3)
    disp[:, 0] = 2.0  # output (r, c) reads input (r + 2, c)
    assert torch.equal(warp(moving, disp), moving[..., 2:4, 0:3])
    assert torch.equal(warp(moving.long(), disp, "label"), moving.long()[..., 2:4, 0:3])
    assert torch.equal(warp(moving.long(), disp, "nearest"), moving.long()[..., 2:4, 0:3])
    assert warp(moving.double(), disp).dtype == torch.float64


def test_math_sanity() -> None:
    assert math.isclose(float(identity_grid((1, 3))[0, 1, 0, 2]), 2.0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_resize_kinds(ndim: int) -> None:
    """Images resize linearly (a linear ramp stays exact), label maps keep their labels and dtype, fields rescale
    their vectors (as :func:`resize_displacement`), and an equal size returns the input itself."""
    from rlreg.spatial import resize

    old, new = SHAPES[ndim], tuple(2 * n - 1 for n in SHAPES[ndim])
    ramp = torch.arange(old[0], dtype=torch.float32).view(1, 1, -1, *([1] * (ndim - 1))).expand(1, 1, *old)
    resized = resize(ramp, new)
    assert resized.shape[2:] == new
    torch.testing.assert_close(resized[0, 0].select(0, 3), torch.full(new[1:], 1.5))  # halfway between rows 1 and 2
    labels = torch.randint(0, 5, (1, 1, *old), generator=torch.Generator().manual_seed(0))
    resized_labels = resize(labels, new, kind="labels")
    assert resized_labels.dtype == labels.dtype and set(resized_labels.unique().tolist()) <= set(range(5))
    field = torch.ones(1, ndim, *old)
    torch.testing.assert_close(resize(field, new, kind="field"), torch.full((1, ndim, *new), 2.0))
    torch.testing.assert_close(resize(field, new, kind="field"), resize_displacement(field, new))
    assert resize(ramp, old) is ramp
    with pytest.raises(ValueError, match="dims"):
        resize(ramp, new[:-1])


@pytest.mark.parametrize("ndim", [2, 3])
def test_inverse_consistency_of_a_translation_and_its_inverse(ndim: int) -> None:
    """A constant shift and its negation compose to the identity: zero error, and the preimage mask marks exactly
    the voxels shifted back inside the grid."""
    from rlreg.spatial import inverse_consistency

    shape = SHAPES[ndim]
    shift = torch.zeros(1, ndim, *shape)
    shift[:, 0] = 2.0
    error, inside = inverse_consistency(shift, -shift, to_forward_grid=-shift)
    assert torch.allclose(error, torch.zeros(shape), atol=1e-6)
    assert (~inside).sum() == 2 * math.prod(shape[1:])  # the first two rows map outside the grid
    wrong, _ = inverse_consistency(shift, torch.zeros_like(shift), to_forward_grid=torch.zeros_like(shift))
    torch.testing.assert_close(wrong, torch.full(shape, 2.0))
