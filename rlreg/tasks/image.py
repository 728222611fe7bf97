"""What the image-to-image tasks (inpainting, translation) share: their batch type and their quality measure.

Images are ``(B, C, H, W)`` float tensors with intensities in ``[0, 1]``: ``C = 1`` for grey images and MRI
slices, ``C = 3`` for RGB photos. A mask is ``(B, 1, H, W)`` with values in ``{0, 1}``, ``1`` marking the missing
pixels (the hole).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["ImageBatch", "masked_psnr"]


class ImageBatch(NamedTuple):
    """``B`` items of an image-to-image task, as its :class:`~rlreg.tasks.base.DataSource` samples them.

    * Inpainting: ``source`` is the image with its hole set to 0, ``target`` the complete image (at inference the
      input itself: only its known pixels are used), ``mask`` the hole.
    * Translation: ``source`` is the condition (a label, tissue, edge or superpixel map), ``target`` the image to
      produce, ``mask`` ``None``.
    """

    source: Tensor
    """``(B, Cs, H, W)`` in ``[0, 1]``."""
    target: Tensor
    """``(B, C, H, W)`` in ``[0, 1]``."""
    mask: Tensor | None = None
    """``(B, 1, H, W)`` in ``{0, 1}`` (1: missing), or ``None``."""


def masked_psnr(image: Tensor, target: Tensor, mask: Tensor | None = None, eps: float = 1e-10) -> Tensor:
    """Peak signal-to-noise ratio (dB, peak 1) of each item, over the pixels where ``mask`` is 1 (all if ``None``).

    Args:
        image, target: ``(B, C, *S)`` intensities in ``[0, 1]``.
        mask: ``(B, 1, *S)`` weights in ``[0, 1]`` or ``None``.
        eps: floor of the mean squared error, so identical images give a finite PSNR (100 dB).

    Returns:
        ``(B,)`` PSNR in dB, ``10 log10(1 / MSE)``.
    """
    error = (image.float() - target.float()) ** 2
    if mask is None:
        mse = error.flatten(1).mean(1)
    else:
        weight = mask.float().expand_as(error)
        mse = (error * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1.0)
    return -10.0 * torch.log10(mse.clamp_min(eps))
