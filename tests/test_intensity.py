"""Golden values and invariants of :mod:`rlreg.intensity`."""

from __future__ import annotations

import pytest
import torch

from rlreg.intensity import MAX_PERCENTILE_SAMPLES, normalise_intensity


def test_percentiles_map_to_zero_and_one_and_outliers_clip() -> None:
    image = torch.cat([torch.arange(1000, dtype=torch.float32), torch.tensor([1e6])]).view(1, 1, 7, 11, 13)
    out = normalise_intensity(image, low=0.0, high=99.0)
    flat = out.flatten()
    assert flat.min() == 0.0 and flat.max() == 1.0
    assert flat[-1] == 1.0  # the outlier clips instead of squashing the rest
    assert flat[500] == pytest.approx(500 / 990, abs=1e-4)  # linear between the 0th and 99th percentiles (0, 990)


def test_mask_chooses_the_voxels_whose_percentiles_count() -> None:
    image = torch.linspace(0.0, 1.0, 64).view(1, 1, 8, 8) * 100
    mask = torch.zeros_like(image, dtype=torch.bool)
    mask[..., :4, :] = True  # values 0 .. 50.8
    out = normalise_intensity(image, mask, low=0.0, high=100.0)
    assert out[mask].max() == 1.0 and out[~mask].min() == 1.0  # everything outside lies above the mask's range
    assert out[0, 0, 0, 0] == 0.0


def test_constant_image_falls_back_to_min_max_without_nan() -> None:
    out = normalise_intensity(torch.full((1, 1, 5, 5), 3.0))
    assert torch.isfinite(out).all() and (out == 0.0).all()


def test_large_images_use_a_fixed_sample_and_repeat() -> None:
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(1, 1, MAX_PERCENTILE_SAMPLES + 1000, generator=gen)
    first, second = normalise_intensity(image), normalise_intensity(image)
    assert torch.equal(first, second)
    assert 0.45 < float(first.mean()) < 0.55  # a symmetric distribution stays centred
