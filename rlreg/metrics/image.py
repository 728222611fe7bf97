"""Image-quality metrics of the image-to-image tasks (inpainting, translation): PSNR, SSIM and L1, per item.

Inputs follow :mod:`rlreg.tasks.image`: images ``(B, C, H, W)`` with intensities in ``[0, 1]`` (``C = 1`` grey or
MRI, ``C = 3`` RGB), masks ``(B, 1, H, W)`` in ``{0, 1}`` with ``1`` marking the region scored (the hole). Without a
mask every pixel is scored. Each function returns a ``(B,)`` tensor, one value per item.

* :func:`psnr`: peak signal-to-noise ratio in dB (peak 1), :func:`rlreg.tasks.image.masked_psnr`.
* :func:`ssim`: structural similarity (Wang et al., IEEE TIP 2004) from scikit-image's SSIM map, averaged over the
  scored pixels.
* :func:`l1`: mean absolute error.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlreg.tasks.image import masked_psnr

__all__ = ["SSIM_SIGMA", "l1", "psnr", "ssim", "ssim_border"]

SSIM_SIGMA = 1.5
"""Standard deviation (pixels) of the Gaussian SSIM window, Wang et al.'s 11x11, sigma 1.5 window (scikit-image's
``gaussian_weights=True``: a window of ``2 * round(3.5 * sigma) + 1 = 11`` pixels)."""


def _check(image: Tensor, target: Tensor, mask: Tensor | None) -> None:
    if image.ndim != 4 or image.shape != target.shape:
        raise ValueError(f"image and target must be (B, C, H, W) of one shape, got {tuple(image.shape)} and "
                         f"{tuple(target.shape)}")
    if mask is not None and (mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] != image.shape[0]
                             or mask.shape[2:] != image.shape[2:]):
        raise ValueError(f"mask must be (B, 1, H, W) matching the image {tuple(image.shape)}, got "
                         f"{tuple(mask.shape)}")


def psnr(image: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """PSNR (dB, peak 1) of each item over the masked pixels (all if ``mask`` is ``None``); identical images give
    100 dB (the mean squared error is floored at 1e-10). ``(B, C, H, W)`` -> ``(B,)``."""
    _check(image, target, mask)
    return masked_psnr(image, target, mask)


def l1(image: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean absolute difference of each item over the masked pixels and all channels (all pixels if ``mask`` is
    ``None``), in intensity units of ``[0, 1]``. ``(B, C, H, W)`` -> ``(B,)``."""
    _check(image, target, mask)
    error = (image.float() - target.float()).abs()
    if mask is None:
        return error.flatten(1).mean(1)
    weight = mask.float().expand_as(error)
    return (error * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1.0)


def ssim_border() -> int:
    """Pixels along each image edge left out of every SSIM average: half the Gaussian window (5), where the window
    leaves the image (scikit-image leaves the same border out of its mean SSIM)."""
    return (2 * int(3.5 * SSIM_SIGMA + 0.5) + 1 - 1) // 2


def ssim(image: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Structural similarity (Wang et al., IEEE TIP 2004) of each item, averaged over the masked pixels.

    The SSIM map comes from :func:`skimage.metrics.structural_similarity` (``full=True``, ``data_range=1``, the
    channels as ``channel_axis``) with Wang et al.'s window: Gaussian, sigma :data:`SSIM_SIGMA` = 1.5 pixels,
    11 x 11, population covariances (``gaussian_weights=True, use_sample_covariance=False``), ``K1 = 0.01``,
    ``K2 = 0.03``. The map is averaged over the channels and over the pixels where ``mask`` is 1, leaving out the
    :func:`ssim_border` pixels along the edges; without a mask the result equals scikit-image's mean SSIM.
    A mask lying wholly in the border gives NaN.

    Args:
        image, target: ``(B, C, H, W)`` in ``[0, 1]``, ``H, W >= 11``.
        mask: ``(B, 1, H, W)`` in ``{0, 1}`` or ``None`` (the whole image).

    Returns:
        ``(B,)`` SSIM in ``[-1, 1]`` (1: identical), on the images' device.
    """
    from skimage.metrics import structural_similarity

    _check(image, target, mask)
    if min(image.shape[2:]) < 11:
        raise ValueError(f"SSIM needs images of at least 11 x 11 pixels (its window), got {tuple(image.shape[2:])}")
    ours = image.detach().double().clamp(0, 1).cpu().numpy()
    theirs = target.detach().double().clamp(0, 1).cpu().numpy()
    border = ssim_border()
    values = []
    for index in range(ours.shape[0]):
        _, full = structural_similarity(ours[index], theirs[index], data_range=1.0, channel_axis=0, full=True,
                                        gaussian_weights=True, sigma=SSIM_SIGMA, use_sample_covariance=False)
        ssim_map = torch.from_numpy(full).mean(0)[border:-border, border:-border]
        if mask is None:
            values.append(ssim_map.mean())
        else:
            weight = mask[index, 0].detach().double().cpu()[border:-border, border:-border]
            values.append((ssim_map * weight).sum() / weight.sum())
    return torch.stack(values).float().to(image.device)
