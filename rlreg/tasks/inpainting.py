"""Inpainting as an RL-I2IT task: fill a masked region step by step, leaving every known pixel untouched.

RL-I2IT (Sec. 4, image inpainting) starts from the image with its missing region and the mask; the actor predicts
the region's content, the next state pastes that prediction into the hole only, the reward is PSNR and the
auxiliary loss is L1 plus an SNGAN adversarial term. Here:

* the state is ``[current image (C), mask (1)]``, ``(B, C + 1, *S)``;
* the episode starts from a smooth *push-pull* fill of the hole (:func:`pushpull_fill`, Gortler et al., "The
  Lumigraph", SIGGRAPH 1996) instead of a flat value, so the agent refines a plausible low-frequency guess rather
  than spending its first step on the mean colour (``initial_fill="mean"`` gives the flat start);
* the action is a bounded residual ``(B, C, *S)`` added inside the hole only (:meth:`ImageTask._apply`): outside
  the mask the output equals the input bit for bit, at every step;
* the score is the PSNR inside the hole; the reward is its scaled gain per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from rlreg.tasks.image import ImageBatch, ImageTask, ImageTaskConfig

__all__ = ["InpaintingConfig", "InpaintingTask", "pushpull_fill"]

_AVG_POOL = {4: F.avg_pool2d, 5: F.avg_pool3d}
_LINEAR = {4: "bilinear", 5: "trilinear"}


@dataclass(frozen=True)
class InpaintingConfig(ImageTaskConfig):
    """Settings of the inpainting task (saved in every checkpoint)."""

    initial_fill: Literal["pushpull", "mean"] = "pushpull"
    """What the hole holds when an episode starts: the push-pull fill (:func:`pushpull_fill`) or the mean of
    each image's known pixels per channel."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.initial_fill not in ("pushpull", "mean"):
            raise ValueError(f"initial_fill must be 'pushpull' or 'mean', got {self.initial_fill!r}")


def pushpull_fill(image: Tensor, mask: Tensor) -> Tensor:
    """Fill the masked pixels by push-pull interpolation; known pixels are returned unchanged.

    *Push*: halve the resolution repeatedly, averaging the known pixels (weights ``1 - mask``, renormalised and
    capped at 1) until one pixel is left. *Pull*: from the coarsest level back up, every fine pixel blends its own
    value with the upsampled (bi/trilinear) coarser estimate by its weight: ``v = c + (1 - w) up(v_coarse)``.
    Holes get a smooth, membrane-like interpolation of their border in ``O(pixels)`` (Gortler et al., SIGGRAPH
    1996, the Lumigraph's pull-push).

    Args:
        image: ``(B, C, *S)`` image (2-D or 3-D), any range.
        mask: ``(B, 1, *S)``, 1 where the pixel is missing.

    Returns:
        ``(B, C, *S)``: ``image`` where ``mask`` is 0, the interpolation where it is 1. An image with no known
        pixel is filled with zeros.
    """
    if image.ndim not in _AVG_POOL or mask.shape != (image.shape[0], 1, *image.shape[2:]):
        raise ValueError(f"need image (B, C, *S) with 2 or 3 spatial dims and mask (B, 1, *S), got "
                         f"{tuple(image.shape)} and {tuple(mask.shape)}")
    pool, mode = _AVG_POOL[image.ndim], _LINEAR[image.ndim]
    weight = 1.0 - (mask > 0.5).to(image.dtype)
    value = image * weight
    pyramid: list[tuple[Tensor, Tensor]] = []  # premultiplied value and weight per level, finest first
    while True:
        pyramid.append((value, weight))
        if max(value.shape[2:]) == 1:
            break
        kernel = tuple(2 if n > 1 else 1 for n in value.shape[2:])
        factor = math.prod(kernel)
        summed_weight = pool(weight, kernel, ceil_mode=True) * factor
        summed_value = pool(value, kernel, ceil_mode=True) * factor
        capped = summed_weight.clamp(max=1.0)
        value = summed_value / summed_weight.clamp_min(1e-12) * capped
        weight = capped
    filled = pyramid[-1][0] / pyramid[-1][1].clamp_min(1e-12)
    for value, weight in reversed(pyramid[:-1]):
        coarse = F.interpolate(filled, size=value.shape[2:], mode=mode, align_corners=False)
        filled = value + (1.0 - weight) * coarse
    return torch.where(mask > 0.5, filled, image)


class InpaintingTask(ImageTask):
    """Step-wise inpainting (:mod:`rlreg.tasks.inpainting`): state ``[image, mask]``, residual actions pasted into
    the hole, PSNR inside the hole as score."""

    config: InpaintingConfig

    def _state(self, source: Tensor, image: Tensor, mask: Tensor | None) -> Tensor:
        assert mask is not None
        return torch.cat([image, mask], dim=1)

    def _unpack(self, state: Tensor) -> tuple[Tensor, Tensor | None]:
        channels = self.config.channels
        return state[:, :channels], state[:, channels:channels + 1]

    def _initial_image(self, batch: ImageBatch) -> Tensor:
        if batch.mask is None:
            raise ValueError("inpainting needs a mask (B, 1, *S)")
        mask = (batch.mask > 0.5).float()
        known = batch.source.float() * (1.0 - mask)
        if self.config.initial_fill == "pushpull":
            return pushpull_fill(known, mask)
        dims = tuple(range(2, known.ndim))
        mean = known.sum(dims, keepdim=True) / (1.0 - mask).sum(dims, keepdim=True).clamp_min(1.0)
        return torch.where(mask > 0.5, mean.expand_as(known), known)

    def _disc_channels(self) -> int:
        return self.config.channels + 1

    def _disc_input(self, image: Tensor, state: Tensor) -> Tensor:
        _, mask = self._unpack(state)
        assert mask is not None
        return torch.cat([image, mask], dim=1)

    def _check_batch(self, batch: ImageBatch) -> None:
        super()._check_batch(batch)
        if batch.mask is None:
            raise ValueError("inpainting needs a mask (B, 1, *S), 1 where pixels are missing")
        if batch.source.shape[1] != self.config.channels:
            raise ValueError(f"the image must have {self.config.channels} channels, got {batch.source.shape[1]}")
