"""Image-to-image translation as an RL-I2IT task: turn a condition map into an image, step by step.

RL-I2IT (Sec. 4, realistic photo translation) keeps the source and the current generated image in the state; the
action is the predicted image, the next state is built from it, the reward is PSNR and the auxiliary loss is L1 plus
an SNGAN adversarial term, with the inpainting networks. Here:

* the state is ``[source (Cs), current image (C)]``, ``(B, Cs + C, *S)``;
* an episode starts from a uniform grey image (``initial_value``);
* the action is a bounded residual ``(B, C, *S)`` added to the whole image (clipped to ``[0, 1]``), so the number
  of steps sets how far the image is carried from grey towards the translation;
* the score is the PSNR of the whole image and the reward its scaled gain per step;
* the discriminator is conditional (pix2pix, Isola et al. CVPR 2017): it reads ``[source, image]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rlreg.tasks.image import ImageBatch, ImageTask, ImageTaskConfig

__all__ = ["TranslationConfig", "TranslationTask"]


@dataclass(frozen=True)
class TranslationConfig(ImageTaskConfig):
    """Settings of the translation task (saved in every checkpoint)."""

    source_channels: int = 1
    """Channels of the condition map (an edge map: 1; a label-colour, tissue or superpixel map: 3)."""
    initial_value: float = 0.5
    """Grey level of the image an episode starts from."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.source_channels, int) or self.source_channels < 1:
            raise ValueError(f"source_channels must be a positive integer, got {self.source_channels!r}")
        if not 0.0 <= self.initial_value <= 1.0:
            raise ValueError(f"initial_value must be in [0, 1], got {self.initial_value!r}")


class TranslationTask(ImageTask):
    """Step-wise translation (:mod:`rlreg.tasks.translation`): state ``[source, image]``, residual actions on the
    whole image, whole-image PSNR as score."""

    config: TranslationConfig

    def _state(self, source: Tensor, image: Tensor, mask: Tensor | None) -> Tensor:
        return torch.cat([source, image], dim=1)

    def _unpack(self, state: Tensor) -> tuple[Tensor, Tensor | None]:
        return state[:, self.config.source_channels:], None

    def _initial_image(self, batch: ImageBatch) -> Tensor:
        target = batch.target
        return torch.full_like(target, self.config.initial_value, dtype=torch.float32)

    def _disc_channels(self) -> int:
        return self.config.source_channels + self.config.channels

    def _disc_input(self, image: Tensor, state: Tensor) -> Tensor:
        return torch.cat([state[:, :self.config.source_channels], image], dim=1)

    def _check_batch(self, batch: ImageBatch) -> None:
        super()._check_batch(batch)
        if batch.source.shape[1] != self.config.source_channels:
            raise ValueError(f"the source map must have {self.config.source_channels} channels, "
                             f"got {batch.source.shape[1]}")
