"""Image filters on ``(N, C, *S)`` tensors, 2D or 3D, following the device and dtype of their input."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gaussian_blur"]


def gaussian_blur(image: Tensor, sigma: Tensor | float) -> Tensor:
    """Separable Gaussian blur, zero outside the grid, truncated at 3 sigma; sigma 0 leaves an image unchanged.

    Written as sums of shifted copies of the padded image rather than a grouped convolution: faster on CPU for these
    short kernels (see docs/decisions.md#gaussian-blur-as-shifted-sums). It smooths every instance-optimisation
    gradient (:mod:`rlreg.instance`) and the synthetic data's noise and images (:mod:`rlreg.data.synth`).

    Args:
        image: ``(N, C, *S)`` float.
        sigma: ``(N,)`` standard deviations in voxels, one per image, or one number for all.

    Returns:
        ``(N, C, *S)`` blurred image, dtype and device of ``image``.
    """
    count = image.shape[0]
    sigma = torch.as_tensor(sigma, dtype=torch.float64).cpu().expand(count)
    radius = max(1, math.ceil(3 * float(sigma.max()))) if count else 1
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernels = torch.exp(-0.5 * (offsets / sigma.clamp_min(1e-3).view(-1, 1)) ** 2)
    kernels = torch.where(sigma.view(-1, 1) > 1e-3, kernels, (offsets == 0).double())
    kernels = kernels / kernels.sum(1, keepdim=True)  # (N, K)
    uniform = bool((kernels == kernels[:1]).all()) if count else True
    # One sigma: python-float weights (fused multiply-adds); several: (N, 1, ...) weight tensors.
    weights = kernels[0].tolist() if uniform else list(kernels.to(image).view(count, 1, -1, *[1] * (image.ndim - 2))
                                                       .unbind(2))
    out = image
    for axis in range(2, image.ndim):
        size = out.shape[axis]
        padded = F.pad(out, [0, 0] * (image.ndim - 1 - axis) + [radius, radius])
        taps = [padded.narrow(axis, i, size) for i in range(2 * radius + 1)]
        if uniform:  # accumulated in place: cheaper than allocating a sum per tap, and the same rounding
            out = taps[0] * weights[0]
            for tap, weight in zip(taps[1:], weights[1:], strict=True):
                out.add_(tap, alpha=weight)
        else:
            out = sum(tap * weight for tap, weight in zip(taps, weights, strict=True))
    return out
