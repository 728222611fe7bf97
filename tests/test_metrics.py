"""Tests for rlreg.metrics: Dice, HD95, TRE against hand-computed values and MONAI references."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric, compute_hausdorff_distance
from scipy import ndimage

from rlreg import spatial
from rlreg.losses import soft_dice
from rlreg.metrics import (
    LabelScores,
    batch_dice,
    dice_per_label,
    hd95,
    jacobian_scores,
    learn2reg_jacobian_determinant,
    learn2reg_jacobian_scores,
    learn2reg_tre,
    mean_dice,
    tre,
    warped_soft_dice,
)


def blobs(shape: tuple[int, ...], n_labels: int, seed: int, sigma: float = 2.0) -> np.ndarray:
    """Random smooth label map: argmax of smoothed noise over ``n_labels`` channels, background where weak."""
    rng = np.random.default_rng(seed)
    noise = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), sigma) for _ in range(n_labels)])
    lab = noise.argmax(0) + 1
    lab[noise.max(0) < np.quantile(noise.max(0), 0.3)] = 0
    return lab.astype(np.int64)


def dice_reference(pred: np.ndarray, target: np.ndarray, labels) -> np.ndarray:
    out = []
    for lab in labels:
        p, t = pred == lab, target == lab
        denom = p.sum() + t.sum()
        out.append(np.nan if denom == 0 else 2.0 * (p & t).sum() / denom)
    return np.array(out)


def monai_hd(pred: np.ndarray, target: np.ndarray, labels, spacing, percentile=95.0) -> np.ndarray:
    onehot_p = torch.from_numpy(np.stack([pred == lab for lab in labels])[None])
    onehot_t = torch.from_numpy(np.stack([target == lab for lab in labels])[None])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = compute_hausdorff_distance(onehot_p, onehot_t, include_background=True, percentile=percentile,
                                        directed=False, spacing=list(spacing))
    return hd[0].double().numpy()


# ----------------------------------------------------------------------------------------------------- Dice


def test_dice_hand_computed_2d():
    pred = torch.zeros(5, 5, dtype=torch.long)
    target = torch.zeros(5, 5, dtype=torch.long)
    pred[1, 1:5] = 1  # 4 pixels
    target[1, 2:5] = 1  # 3 overlapping pixels ...
    target[2, 2:4] = 1  # ... plus 2 more: 5 pixels
    res = dice_per_label(pred, target)
    assert isinstance(res, LabelScores)
    values, labels = res
    assert labels.tolist() == [1]
    assert values.tolist() == pytest.approx([2 * 3 / (4 + 5)])
    assert mean_dice(pred, target).item() == pytest.approx(2 / 3)


def test_dice_absent_present_and_identical():
    pred = torch.tensor([[0, 1, 1], [2, 2, 0]])
    target = torch.tensor([[0, 1, 1], [3, 3, 0]])
    values, labels = dice_per_label(pred, target, labels=[1, 2, 3, 7, 0])
    assert labels.tolist() == [1, 2, 3, 7, 0]
    assert values[0] == 1.0 and values[1] == 0.0 and values[2] == 0.0
    assert math.isnan(values[3])  # absent from both
    assert values[4] == 1.0  # background can be asked for explicitly
    # default: labels present in either map, background excluded
    values, labels = dice_per_label(pred, target)
    assert labels.tolist() == [1, 2, 3]
    assert mean_dice(pred, target, labels=[1, 7]).item() == 1.0  # NaN ignored
    same = torch.from_numpy(blobs((12, 13, 14), 6, seed=1))
    values, labels = dice_per_label(same, same.clone())
    assert labels.tolist() == list(range(1, 7))
    assert torch.all(values == 1.0)


def test_dice_shapes_and_dtypes():
    pred = blobs((10, 11, 12), 5, seed=2)
    target = blobs((10, 11, 12), 5, seed=3)
    ref = dice_per_label(torch.from_numpy(pred), torch.from_numpy(target))
    for p, t in [(pred[None, None], target[None, None]), (pred.astype(np.int16), target.astype(np.uint8)),
                 (pred.astype(np.float32), target.astype(np.float32))]:
        got = dice_per_label(torch.from_numpy(p), torch.from_numpy(t))
        torch.testing.assert_close(got.values, ref.values)
        assert torch.equal(got.labels, ref.labels)
    with pytest.raises(ValueError):
        dice_per_label(torch.zeros(3, 4, dtype=torch.long), torch.zeros(4, 3, dtype=torch.long)[:3])


def test_dice_multilabel_3d_matches_reference_and_monai():
    pred = blobs((20, 18, 16), 7, seed=4)
    target = blobs((20, 18, 16), 7, seed=5)
    values, labels = dice_per_label(torch.from_numpy(pred), torch.from_numpy(target))
    assert labels.tolist() == list(range(1, 8))
    np.testing.assert_allclose(values.numpy(), dice_reference(pred, target, range(1, 8)), rtol=1e-6)
    # MONAI on one-hot maps (all labels present in both, so its empty-handling does not matter)
    onehot_p = torch.from_numpy(np.stack([pred == lab for lab in range(8)])[None].astype(np.float32))
    onehot_t = torch.from_numpy(np.stack([target == lab for lab in range(8)])[None].astype(np.float32))
    monai_dice = DiceMetric(include_background=False, reduction="none")(onehot_p, onehot_t)[0]
    np.testing.assert_allclose(values.numpy(), monai_dice.numpy(), rtol=1e-6)


def test_dice_sparse_and_negative_label_values():
    pred = blobs((16, 16, 16), 5, seed=6)
    target = blobs((16, 16, 16), 5, seed=7)
    # remap to huge and negative ids: takes the unique/searchsorted path, must give the same numbers
    ids = np.array([0, -5, 10**9, 3, 2**40, 77])
    sp, st = ids[pred], ids[target]
    values, labels = dice_per_label(torch.from_numpy(sp), torch.from_numpy(st))
    assert labels.tolist() == sorted(ids[1:].tolist())
    np.testing.assert_allclose(values.numpy(), dice_reference(sp, st, labels.tolist()), rtol=1e-6)
    values, labels = dice_per_label(torch.from_numpy(sp), torch.from_numpy(st), labels=[2**40, 123, -5])
    ref = dice_reference(sp, st, [2**40, 123, -5])
    np.testing.assert_allclose(values.numpy(), ref, rtol=1e-6)
    assert math.isnan(values[1])


def test_dice_many_labels_matches_reference():
    # 120 labels on a (1, 1, 64, 64, 64) map: vectorised counting against a slow per-label loop
    rng = np.random.default_rng(8)
    coarse = rng.integers(0, 121, size=(16, 16, 16))
    pred = np.kron(coarse, np.ones((4, 4, 4), dtype=np.int64))
    target = pred.copy()
    flip = rng.random(pred.shape) < 0.2
    target[flip] = rng.integers(0, 121, size=int(flip.sum()))
    values, labels = dice_per_label(torch.from_numpy(pred)[None, None], torch.from_numpy(target)[None, None])
    present = np.union1d(pred, target)
    assert labels.tolist() == present[present != 0].tolist()
    assert len(labels) >= 100
    np.testing.assert_allclose(values.numpy(), dice_reference(pred, target, labels.tolist()), rtol=1e-6)


# ----------------------------------------------------------------------------------------------------- HD95


def test_hd95_single_voxel_anisotropic():
    pred = np.zeros((7, 7, 7), dtype=np.int64)
    target = np.zeros_like(pred)
    pred[3, 1, 3] = 1
    target[3, 3, 3] = 1  # 2 voxels along axis 1
    pred[3, 3, 1] = 2
    target[3, 3, 4] = 2  # 3 voxels along axis 2
    values, labels = hd95(torch.from_numpy(pred), torch.from_numpy(target), spacing=(1.0, 1.5, 2.0))
    assert labels.tolist() == [1, 2]
    np.testing.assert_allclose(values.numpy(), [3.0, 6.0])
    # the (1, 1, *S) layout and an isotropic scalar spacing
    values, _ = hd95(torch.from_numpy(pred)[None, None], torch.from_numpy(target)[None, None], spacing=0.5)
    np.testing.assert_allclose(values.numpy(), [1.0, 1.5])


def test_hd95_two_cubes_percentiles():
    # 3x3x3 cube and the same cube shifted by 3 voxels along axis 0: the 26 surface voxels of each lie 1, 2 and
    # 3 voxels (9, 8 and 9 of them) from the other surface along axis 0, in both directions.
    pred = np.zeros((12, 9, 9), dtype=np.int64)
    pred[2:5, 3:6, 3:6] = 1
    target = np.roll(pred, 3, axis=0)
    spacing = (0.8, 1.7, 2.5)
    s0 = spacing[0]
    for q, expected in [(95, 3 * s0), (100, 3 * s0), (50, 2 * s0), (0, s0), (34, 1.5 * s0), (30, s0)]:
        values, _ = hd95(torch.from_numpy(pred), torch.from_numpy(target), spacing, percentile=q)
        assert values.item() == pytest.approx(expected, abs=1e-6), q
        if q > 0:  # MONAI reads percentile=0 as "no percentile" and returns the maximum
            assert values.item() == pytest.approx(monai_hd(pred, target, [1], spacing, q)[0], abs=1e-5)


def test_hd95_2d_hand_computed():
    pred = torch.zeros(6, 8, dtype=torch.int32)
    target = torch.zeros(6, 8, dtype=torch.int32)
    pred[1, 1] = 4
    target[4, 5] = 4  # offset (3, 4) voxels
    values, labels = hd95(pred, target, spacing=(2.0, 1.5))
    assert labels.tolist() == [4]
    assert values.item() == pytest.approx(math.hypot(6.0, 6.0))


def test_hd95_empty_cases():
    pred = torch.zeros(8, 8, 8, dtype=torch.long)
    target = torch.zeros(8, 8, 8, dtype=torch.long)
    pred[2:4, 2:4, 2:4] = 1
    target[2:4, 2:4, 2:4] = 1
    pred[5, 5, 5] = 2  # only in pred
    target[6, 6, 6] = 3  # only in target
    values, labels = hd95(pred, target, spacing=(1.0, 1.0, 1.0), labels=[1, 2, 3, 9])
    assert labels.tolist() == [1, 2, 3, 9]
    assert values[0] == 0.0
    assert math.isinf(values[1]) and math.isinf(values[2])
    assert math.isnan(values[3])
    # MONAI agrees on the classical Hausdorff distance; its percentile of an all-inf list is NaN (inf - inf)
    ref = monai_hd(pred.numpy(), target.numpy(), [1, 2, 3, 9], (1, 1, 1), percentile=None)
    np.testing.assert_array_equal(hd95(pred, target, 1.0, labels=[1, 2, 3, 9], percentile=100).values.numpy(), ref)
    empty = torch.zeros(4, 4, dtype=torch.long)
    assert hd95(empty, empty, (1.0, 1.0)).values.numel() == 0
    with pytest.raises(ValueError):
        hd95(pred, target, spacing=(1.0, 1.0))  # 3D map with 2D spacing
    with pytest.raises(ValueError):
        hd95(pred, target, spacing=1.0, percentile=101)


@pytest.mark.parametrize(("shape", "spacing", "seed"), [
    ((48, 40), (0.7, 1.3), 10),
    ((22, 20, 18), (1.2, 0.9, 2.1), 11),
    ((3, 30, 26), (3.0, 1.0, 0.5), 12),  # thin slab: blobs touch the image border
])
def test_hd95_matches_monai_on_random_blobs(shape, spacing, seed):
    pred = blobs(shape, 5, seed=seed)
    target = blobs(shape, 5, seed=seed + 100)
    target[target == 5] = 6  # label 5 only in pred, 6 only in target
    labels = [1, 2, 3, 4, 5, 6, 8]
    values, got_labels = hd95(torch.from_numpy(pred), torch.from_numpy(target), spacing, labels=labels)
    assert got_labels.tolist() == labels
    ref = monai_hd(pred, target, labels, spacing)
    assert np.isfinite(ref[:4]).all()
    ref[4:6] = np.inf  # MONAI: torch.quantile of an all-inf list is NaN; the distance is inf
    np.testing.assert_allclose(values.numpy(), ref, rtol=1e-6, atol=1e-5)
    assert math.isnan(values[6])
    # labels=None: present labels only, same values; labels given in any order
    values_all, labels_all = hd95(torch.from_numpy(pred), torch.from_numpy(target), spacing)
    assert labels_all.tolist() == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(values_all.numpy(), ref[:6], rtol=1e-6, atol=1e-5)
    values_rev, _ = hd95(torch.from_numpy(pred), torch.from_numpy(target), spacing, labels=labels[::-1])
    np.testing.assert_array_equal(values_rev.numpy(), values.numpy()[::-1])


def test_hd95_sparse_and_negative_label_values():
    pred = blobs((20, 24), 4, seed=13)
    target = blobs((20, 24), 4, seed=14)
    ids = np.array([0, -3, 10**9, 2**40, 7])
    ref = hd95(torch.from_numpy(pred), torch.from_numpy(target), (0.9, 1.1))
    values, labels = hd95(torch.from_numpy(ids[pred]), torch.from_numpy(ids[target]), (0.9, 1.1))
    assert labels.tolist() == sorted(ids[1:].tolist())
    np.testing.assert_array_equal(values.numpy(), ref.values.numpy()[np.argsort(ids[1:])])
    values, labels = hd95(torch.from_numpy(ids[pred]), torch.from_numpy(ids[target]), (0.9, 1.1), labels=[7, 0, -3])
    assert labels.tolist() == [7, 0, -3]
    assert values[0] == ref.values[3] and values[2] == ref.values[0]
    assert values[1] == hd95(torch.from_numpy(pred), torch.from_numpy(target), (0.9, 1.1), labels=[0]).values[0]


def test_hd95_cropping_is_exact_for_distant_labels():
    # tight crops must give the same result as the full image, also when a label's parts are far apart
    pred = np.zeros((30, 30), dtype=np.int64)
    target = np.zeros_like(pred)
    pred[0:3, 0:3] = 1
    pred[27:30, 27:30] = 1
    target[0:4, 0:4] = 1
    target[25:28, 26:29] = 1
    spacing = (1.1, 0.6)
    for q in (50, 95, 100):
        got = hd95(torch.from_numpy(pred), torch.from_numpy(target), spacing, percentile=q).values.numpy()
        np.testing.assert_allclose(got, monai_hd(pred, target, [1], spacing, q), rtol=1e-6, atol=1e-5)


# ----------------------------------------------------------------------------------------------------- TRE


def test_tre_zero_displacement_is_point_distance_in_mm():
    fixed = torch.tensor([[1.0, 2.0, 3.0], [4.5, 0.0, 2.25]])
    moving = torch.tensor([[2.0, 2.0, 3.0], [4.5, 3.0, 6.25]])
    disp = torch.zeros(1, 3, 6, 7, 8)
    spacing = (2.0, 0.5, 1.5)
    err = tre(fixed, moving, disp, spacing)
    assert err.shape == (2,)
    torch.testing.assert_close(err, torch.tensor([2.0, math.hypot(1.5, 6.0)]))


def test_tre_exact_constant_displacement_gives_zero():
    fixed = torch.tensor([[1.0, 2.0], [3.5, 4.25], [0.0, 0.0]], dtype=torch.float64)
    shift = torch.tensor([1.5, -0.75], dtype=torch.float64)
    moving = fixed + shift
    disp = shift.view(1, 2, 1, 1).expand(1, 2, 8, 9).clone()
    err = tre(fixed, moving, disp, spacing=(1.3, 0.7))
    assert err.dtype == torch.float64
    torch.testing.assert_close(err, torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    # displacing in the wrong direction doubles the error, measured with the per-axis spacing
    err = tre(fixed, fixed - shift, disp, spacing=(1.3, 0.7))
    expected = math.hypot(2 * 1.5 * 1.3, 2 * 0.75 * 0.7)
    torch.testing.assert_close(err, torch.full((3,), expected, dtype=torch.float64))


def test_tre_linear_field_sampled_at_subvoxel_points():
    # u(x) = 0.1 * x0 along axis 0 and 0.2 * x2 along axis 2: linear, so interpolation is exact
    grid = spatial.identity_grid((10, 11, 12), torch.float64)
    disp = torch.zeros(1, 3, 10, 11, 12, dtype=torch.float64)
    disp[:, 0] = 0.1 * grid[:, 0]
    disp[:, 2] = 0.2 * grid[:, 2]
    fixed = torch.tensor([[2.5, 3.25, 4.75], [7.0, 1.5, 0.5]], dtype=torch.float64)
    moving = fixed.clone()
    err = tre(fixed, moving, disp, spacing=(2.0, 1.0, 3.0))
    expected = torch.hypot(0.1 * fixed[:, 0] * 2.0, 0.2 * fixed[:, 2] * 3.0)
    torch.testing.assert_close(err, expected)
    moving = fixed.clone()
    moving[:, 0] += 0.1 * fixed[:, 0]
    moving[:, 2] += 0.2 * fixed[:, 2]
    torch.testing.assert_close(tre(fixed, moving, disp, spacing=(2.0, 1.0, 3.0)),
                               torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)


def test_tre_rejects_bad_shapes():
    disp = torch.zeros(1, 3, 4, 4, 4)
    with pytest.raises(ValueError):
        tre(torch.zeros(2, 2), torch.zeros(2, 2), disp, 1.0)
    with pytest.raises(ValueError):
        tre(torch.zeros(2, 3), torch.zeros(2, 3), disp, (1.0, 1.0))


def test_regularity_metrics_are_reexported():
    from rlreg import metrics

    for name in ("folding_percent", "sdlogj", "jacobian_determinant"):
        assert name in metrics.__all__
        assert getattr(metrics, name) is getattr(spatial, name)


# ----------------------------------------------------------------------------------------------------- regularity


def test_jacobian_scores_match_spatial_on_a_field():
    """From a precomputed J, the same numbers as rlreg.spatial's functions of the displacement."""
    rng = np.random.default_rng(3)
    disp = torch.from_numpy(np.stack([ndimage.gaussian_filter(rng.standard_normal((12, 13, 14)), 2.0) * 20
                                      for _ in range(3)]))[None]
    scores = jacobian_scores(spatial.jacobian_determinant(disp))
    torch.testing.assert_close(scores.sdlogj, spatial.sdlogj(disp))
    torch.testing.assert_close(scores.folding_percent, spatial.folding_percent(disp))
    assert scores.folding_percent.item() > 0  # the field folds somewhere, so the check is not vacuous
    mask = torch.zeros(1, 1, 12, 13, 14)
    mask[..., 3:9, 3:9, 3:9] = 1
    masked = jacobian_scores(spatial.jacobian_determinant(disp), mask)
    torch.testing.assert_close(masked.sdlogj, spatial.sdlogj(disp, mask))


def l2r_reference_jacobian(disp_xyz3: np.ndarray) -> np.ndarray:
    """Learn2Reg's Jacobian as its utils.py describes it, written here from that description: correlate each
    component of the nibabel-order (X, Y, Z, 3) field with [-0.5, 0, 0.5] along each axis (zero padding), add I,
    crop 2 voxels per side, determinant."""
    kernel = np.array([-0.5, 0.0, 0.5])
    grad = np.empty((3, 3, *disp_xyz3.shape[:3]))
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = 3
        for comp in range(3):
            grad[axis, comp] = ndimage.correlate(disp_xyz3[..., comp], kernel.reshape(shape), mode="constant")
    jac = grad + np.eye(3).reshape(3, 3, 1, 1, 1)
    jac = jac[:, :, 2:-2, 2:-2, 2:-2]
    return np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))


def test_learn2reg_jacobian_matches_reference_in_both_axis_orders():
    rng = np.random.default_rng(0)
    disp = np.stack([ndimage.gaussian_filter(rng.standard_normal((11, 12, 13)), 1.5) * 2 for _ in range(3)], -1)
    expected = l2r_reference_jacobian(disp)
    nib_order = torch.from_numpy(np.moveaxis(disp, -1, 0))[None]
    got = learn2reg_jacobian_determinant(nib_order)
    assert got.shape == (1, 1, 7, 8, 9)
    np.testing.assert_allclose(got[0, 0].numpy(), expected, atol=1e-12)
    # rlreg tensor order (spatial axes and components reversed): the same values, transposed
    tensor_order = torch.from_numpy(np.ascontiguousarray(np.moveaxis(disp, -1, 0)[::-1].transpose(0, 3, 2, 1)))[None]
    np.testing.assert_allclose(learn2reg_jacobian_determinant(tensor_order)[0, 0].numpy(), expected.T, atol=1e-12)


def test_learn2reg_sdlogj_quirk_on_a_known_field():
    """u_0 = c x_0^2 / 2: central differences are exact, J = 1 + c x_0. L2R's "+3" SDlogJ is std(log(4 + c x_0))
    (ddof 0), about a quarter of the plain std(log(1 + c x_0)); its num_foldings is 0 even where J <= 0."""
    n, c = 16, 0.01
    x0 = torch.arange(n, dtype=torch.float64).view(n, 1, 1).expand(n, n, n)
    disp = torch.zeros(1, 3, n, n, n, dtype=torch.float64)
    disp[0, 0] = c * x0**2 / 2
    scores = learn2reg_jacobian_scores(disp)
    kept = np.arange(2, n - 2, dtype=np.float64)  # the crop; every kept slice has the same J
    np.testing.assert_allclose(scores.sdlogj.item(), np.log(4 + c * kept).std(), rtol=1e-12)
    plain = jacobian_scores(learn2reg_jacobian_determinant(disp)).sdlogj.item()
    np.testing.assert_allclose(plain, np.log(1 + c * np.repeat(kept, (n - 4) ** 2)).std(ddof=1), rtol=1e-9)
    assert 0.2 < scores.sdlogj.item() / plain < 0.3
    assert scores.num_foldings.item() == 0 and scores.folding_percent.item() == 0
    disp[0, 0] = -0.2 * x0**2 / 2  # J = 1 - 0.2 x_0 <= 0 from x_0 = 5 on
    folded = learn2reg_jacobian_scores(disp)
    assert folded.num_foldings.item() == 0  # reproduced as L2R computes it: the clip makes it always 0
    assert folded.folding_percent.item() == pytest.approx(100 * np.mean(kept >= 5))


def test_learn2reg_jacobian_mask_and_shape_errors():
    disp = torch.zeros(1, 3, 9, 9, 9, dtype=torch.float64)
    disp[0, 1] = torch.arange(9, dtype=torch.float64).view(1, 9, 1) ** 2 * 0.05
    mask = torch.zeros(1, 1, 9, 9, 9)
    mask[..., :, 2:4, :] = 1
    logs = np.log(4 + 0.1 * np.array([2.0, 3.0]))  # J = 1 + 0.1 x_1 at the kept x_1 = 2, 3
    assert learn2reg_jacobian_scores(disp, mask).sdlogj.item() == pytest.approx(logs.std())
    with pytest.raises(ValueError):
        learn2reg_jacobian_determinant(torch.zeros(1, 3, 4, 9, 9))
    with pytest.raises(ValueError):
        learn2reg_jacobian_determinant(torch.zeros(1, 2, 9, 9, 9))


def test_learn2reg_tre_cubic_sampling_and_moving_spacing():
    """Constant field: exact away from the border. Quadratic field: the cubic spline reads it exactly where linear
    interpolation (rlreg's tre) does not. Spacing is the moving image's."""
    n = 20
    disp = np.zeros((3, n, n, n))
    disp[0] = 1.5
    fixed = np.array([[5.0, 6.0, 7.0], [10.25, 9.5, 8.75]])
    moving = fixed + np.array([1.5, 2.0, 0.0])
    err = learn2reg_tre(fixed, moving, disp, (2.0, 3.0, 1.0))
    np.testing.assert_allclose(err.numpy(), [6.0, 6.0], atol=1e-9)
    x1 = np.arange(n, dtype=np.float64).reshape(1, n, 1)
    disp = np.zeros((3, n, n, n))
    disp[2] = np.broadcast_to(0.01 * x1**2, (n, n, n))
    point = np.array([[10.0, 9.5, 10.0]])
    target = point + np.array([0.0, 0.0, 0.01 * 9.5**2])
    err = learn2reg_tre(point, target, torch.from_numpy(disp)[None], 1.0)
    assert err.item() < 1e-3
    linear = tre(torch.from_numpy(point), torch.from_numpy(target), torch.from_numpy(disp)[None], 1.0)
    assert linear.item() == pytest.approx(0.0025, abs=1e-9)  # linear between 9 and 10 overshoots c x^2 by c / 4


B = 3
SHAPE = {2: (20, 18), 3: (12, 14, 10)}


@pytest.mark.parametrize("ndim", [2, 3])
def test_batch_dice_matches_per_pair_metric(ndim: int) -> None:
    gen = torch.Generator().manual_seed(ndim)
    pred = torch.randint(0, 5, (B, 1, *SHAPE[ndim]), generator=gen)
    target = torch.randint(0, 5, (B, 1, *SHAPE[ndim]), generator=gen)
    pred[1][pred[1] == 3] = 0  # label 3 absent from one map of pair 1: Dice 0 there
    pred[2][pred[2] == 4] = 0
    target[2][target[2] == 4] = 0  # label 4 absent from both maps of pair 2: left out of its mean
    expected = torch.stack([torch.nanmean(dice_per_label(pred[b], target[b], range(1, 6)).values)
                            for b in range(B)])
    assert torch.allclose(batch_dice(pred, target, 5), expected, atol=1e-6)
    empty = torch.zeros_like(pred)
    assert torch.equal(batch_dice(empty, empty, 5), torch.ones(B))
    # Values outside 0..num_labels are ignored rather than read out of bounds.
    assert torch.allclose(batch_dice(pred + 10 * (pred == 4), target, 3),
                          torch.stack([torch.nanmean(dice_per_label(pred[b], target[b], [1, 2, 3]).values)
                                       for b in range(B)]), atol=1e-6)


def test_dice_variants_state_absent_labels_and_empty_maps() -> None:
    """The semantics written in rlreg.metrics.dice, pinned on one tiny pair: label 1 in both maps, label 2 in the
    prediction only, label 3 in neither; then two maps of background only."""
    pred = torch.tensor([[[1, 1, 2, 0], [0, 0, 0, 0]]])[None]  # (1, 1, 2, 4)
    target = torch.tensor([[[1, 0, 0, 0], [0, 0, 0, 0]]])[None]
    values, labels = dice_per_label(pred, target, [1, 2, 3])
    assert labels.tolist() == [1, 2, 3]
    assert values[0].item() == pytest.approx(2 / 3) and values[1].item() == 0.0 and math.isnan(values[2].item())
    assert mean_dice(pred, target, [1, 2, 3]).item() == pytest.approx(1 / 3)  # NaN (absent) left out
    assert batch_dice(pred, target, 3).item() == pytest.approx(1 / 3)  # label 3 left out of the pair's mean
    empty = torch.zeros_like(pred)
    assert dice_per_label(empty, empty).values.numel() == 0  # no label present: nothing to score
    assert math.isnan(mean_dice(empty, empty).item())
    assert math.isnan(dice_per_label(empty, empty, [1]).values.item())
    assert batch_dice(empty, empty, 3).item() == 1.0
    zero = torch.zeros(1, 2, 2, 4, dtype=torch.float64)
    assert warped_soft_dice(empty, empty, zero, 3).item() == pytest.approx(1.0)
    one_hot = torch.nn.functional.one_hot(pred[:, 0], 4).movedim(-1, 1)[:, 1:].double()
    soft = warped_soft_dice(target, pred, zero, 3, eps=0.0 + 1e-12)
    assert soft.item() == pytest.approx((2 / 3 + 0.0 + 1.0) / 3, abs=1e-6)  # absent label 3 scores 1, not NaN
    assert soft.item() == pytest.approx(
        soft_dice(one_hot, torch.nn.functional.one_hot(target[:, 0], 4).movedim(-1, 1)[:, 1:].double(), eps=1e-12,
                  reduction="batch").item(), abs=1e-9)
