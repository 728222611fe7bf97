"""Per-item PSNR, SSIM and L1 of the image-to-image tasks, against closed-form cases and scikit-image."""

from __future__ import annotations

import math

import pytest
import torch
from skimage.metrics import structural_similarity

from rlreg.metrics import l1, psnr, ssim
from rlreg.metrics.image import ssim_border


def _images(batch: int = 2, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, size, size, generator=generator)


def _centre_mask(batch: int = 2, size: int = 32, hole: int = 16) -> torch.Tensor:
    mask = torch.zeros(batch, 1, size, size)
    start = (size - hole) // 2
    mask[..., start:start + hole, start:start + hole] = 1
    return mask


@pytest.mark.parametrize("channels", [1, 3])
def test_identical_images_score_perfectly(channels: int) -> None:
    image = _images(channels=channels)
    assert torch.all(psnr(image, image) >= 99.9)
    assert torch.allclose(ssim(image, image), torch.ones(2))
    assert torch.equal(l1(image, image), torch.zeros(2))
    mask = _centre_mask()
    assert torch.allclose(ssim(image, image, mask), torch.ones(2))


def test_psnr_of_a_known_error_level() -> None:
    target = torch.full((3, 1, 16, 16), 0.5)
    for delta, expected in ((0.1, 20.0), (0.01, 40.0), (0.5, 20 * math.log10(2))):
        assert torch.allclose(psnr(target + delta, target), torch.full((3,), expected), atol=1e-3)
        assert torch.allclose(l1(target + delta, target), torch.full((3,), delta), atol=1e-6)


def test_psnr_of_gaussian_noise_follows_its_sigma() -> None:
    target = torch.full((2, 3, 64, 64), 0.5)
    noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(3))
    for sigma in (0.01, 0.05):  # MSE = sigma^2 (no clipping at 0.5 +- 10 sigma): PSNR = -20 log10(sigma)
        assert torch.allclose(psnr(target + sigma * noise, target), torch.full((2,), -20 * math.log10(sigma)),
                              atol=0.1)
        assert torch.allclose(l1(target + sigma * noise, target), torch.full((2,), sigma * math.sqrt(2 / math.pi)),
                              rtol=0.03)


def test_mask_restricts_every_metric_to_the_hole() -> None:
    target = _images(channels=3, size=32)
    mask = _centre_mask()
    outside_only = torch.where(mask.bool(), target, 1 - target)  # wrong outside, exact inside
    assert torch.all(psnr(outside_only, target, mask) >= 99.9)
    assert torch.equal(l1(outside_only, target, mask), torch.zeros(2))
    # SSIM windows near the hole's edge see the wrong outside: not 1 there, but far above the whole-image score
    assert torch.all(ssim(outside_only, target, mask) > ssim(outside_only, target) + 0.3)
    inside_only = torch.where(mask.bool(), 1 - target, target)
    assert torch.all(psnr(inside_only, target, mask) < psnr(inside_only, target))
    assert torch.allclose(l1(inside_only, target, mask) * mask.mean(), l1(inside_only, target), atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_whole_image_ssim_equals_scikit_image_mean(channels: int) -> None:
    clean = _images(batch=1, channels=channels, size=40)
    noisy = (clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    expected = structural_similarity(noisy[0].double().numpy(), clean[0].double().numpy(), data_range=1.0,
                                     channel_axis=0, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    assert ssim(noisy, clean).item() == pytest.approx(expected, abs=1e-5)
    # a full mask is the whole image
    assert ssim(noisy, clean, torch.ones(1, 1, 40, 40)).item() == pytest.approx(expected, abs=1e-5)


def test_ssim_falls_with_noise() -> None:
    clean = _images(batch=1, channels=1, size=32)
    scores = [ssim((clean + s * torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1),
                   clean).item() for s in (0.02, 0.1, 0.3)]
    assert scores[0] > scores[1] > scores[2]
    assert ssim_border() == 5


def test_bad_shapes_are_refused() -> None:
    image = _images()
    with pytest.raises(ValueError, match="one shape"):
        psnr(image, image[:, :1])
    with pytest.raises(ValueError, match="mask"):
        l1(image, image, torch.ones(2, 3, 32, 32))
    with pytest.raises(ValueError, match="11 x 11"):
        ssim(image[..., :8, :8], image[..., :8, :8])
