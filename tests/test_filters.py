"""Image filters: the Gaussian blur against a dense convolution, its mass and its sigma-0 identity."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rlreg.filters import gaussian_blur


def test_gaussian_blur_keeps_mass_and_sigma_zero_is_identity() -> None:
    image = torch.zeros(2, 1, 21, 21)
    image[:, :, 10, 10] = 1.0
    out = gaussian_blur(image, torch.tensor([0.0, 2.0]))
    assert torch.allclose(out[0], image[0])
    assert abs(float(out[1].sum()) - 1.0) < 1e-5 and float(out[1].max()) < 0.1


@pytest.mark.parametrize("shape", [(2, 3, 17, 20), (2, 2, 9, 12, 10)])
def test_gaussian_blur_equals_a_zero_padded_gaussian_convolution(shape: tuple[int, ...]) -> None:
    """One sigma for all images, and one per image, against a dense convolution with the separable kernel."""
    ndim = len(shape) - 2
    image = torch.randn(shape, dtype=torch.float64)
    for sigmas in ([1.0, 1.0], [0.6, 2.0]):
        radius = math.ceil(3 * max(sigmas))
        expected = []
        for b, sigma in enumerate(sigmas):
            taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float64) / sigma) ** 2)
            taps = taps / taps.sum()
            kernel = taps
            for _ in range(ndim - 1):
                kernel = kernel[..., None] * taps
            conv = F.conv2d if ndim == 2 else F.conv3d
            weight = kernel.expand(shape[1], 1, *kernel.shape)
            expected.append(conv(image[b:b + 1], weight, padding=radius, groups=shape[1]))
        sigma = torch.tensor(sigmas, dtype=torch.float64) if sigmas[0] != sigmas[1] else sigmas[0]
        blurred = gaussian_blur(image, sigma)
        assert torch.allclose(blurred, torch.cat(expected), atol=1e-12)
