"""What the image-to-image tasks (inpainting, translation) share: their batch type and their quality measure.

Images are ``(B, C, H, W)`` float tensors with intensities in ``[0, 1]``: ``C = 1`` for grey images and MRI
slices, ``C = 3`` for RGB photos. A mask is ``(B, 1, H, W)`` with values in ``{0, 1}``, ``1`` marking the missing
pixels (the hole).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from rlreg.tasks.adversarial import Adversary
from rlreg.tasks.base import StepResult

__all__ = ["ImageBatch", "ImageTask", "ImageTaskConfig", "masked_psnr"]


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


# ------------------------------------------------------------------------------------------------- the shared task
@dataclass(frozen=True)
class ImageTaskConfig:
    """Settings every image-to-image task has (the tasks' config classes extend it)."""

    channels: int = 3
    """Channels of the image the task produces: 1 (grey, MRI) or 3 (RGB)."""
    max_steps: int = 5
    """Steps per training episode (truncation, not termination)."""
    reward_scale: float = 0.1
    """Reward = ``reward_scale`` x the step's PSNR gain in dB (the paper's PSNR reward, as a per-step gain)."""
    l1_weight: float = 1.0
    """Weight of the L1 reconstruction term of the auxiliary loss."""
    adv_weight: float = 0.01
    """Weight of the SNGAN generator term of the auxiliary loss (0: L1 only, no discriminator)."""
    disc_widths: tuple[int, ...] = (32, 64, 128)
    """Channels per 4x4 stride-2 level of the PatchGAN discriminator."""
    disc_lr: float = 2e-4
    """Adam step of the discriminator."""

    def __post_init__(self) -> None:
        if isinstance(self.disc_widths, list):
            object.__setattr__(self, "disc_widths", tuple(self.disc_widths))
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels!r}")
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"max_steps must be a positive integer, got {self.max_steps!r}")
        for name in ("reward_scale", "l1_weight", "adv_weight", "disc_lr"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")


class ImageTask:
    """The episodes of an image-to-image task (the shared half of inpainting and translation).

    An episode starts from an initial image (:meth:`_initial_image`) and each step adds the action, a bounded
    residual ``(B, C, *S)``, where the task allows it (:meth:`_apply`); the reward is the scaled PSNR gain of the
    step, the score the PSNR after it (:meth:`_psnr`), and the auxiliary loss L1 to the target plus the SNGAN
    generator term (:mod:`rlreg.tasks.adversarial`). Subclasses define the state's layout and where the action
    applies.
    """

    score_name = "psnr"

    def __init__(self, config: ImageTaskConfig) -> None:
        self.config = config
        self.adversary = Adversary(self._disc_channels(), config.disc_widths, config.disc_lr)
        self._ready = False
        self.source = self.target = self.image = torch.empty(0)
        self.mask: Tensor | None = None
        self.steps = torch.empty(0, dtype=torch.long)
        self._score = torch.empty(0)

    # ------------------------------------------------------------------ what a task defines
    def _state(self, source: Tensor, image: Tensor, mask: Tensor | None) -> Tensor:
        """The state ``(B, Cstate, *S)`` of episodes at ``image``."""
        raise NotImplementedError

    def _unpack(self, state: Tensor) -> tuple[Tensor, Tensor | None]:
        """The current image ``(B, C, *S)`` and mask (or ``None``) that a state was built from."""
        raise NotImplementedError

    def _initial_image(self, batch: ImageBatch) -> Tensor:
        """The image ``(B, C, *S)`` an episode starts from."""
        raise NotImplementedError

    def _disc_channels(self) -> int:
        """Channels of the discriminator's input (:meth:`_disc_input`)."""
        raise NotImplementedError

    def _disc_input(self, image: Tensor, state: Tensor) -> Tensor:
        """What the discriminator reads for ``image`` produced in ``state`` (the image and its condition)."""
        raise NotImplementedError

    def _psnr(self, image: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
        """``(B,)`` the score: PSNR in dB."""
        return masked_psnr(image, target, mask)

    def _apply(self, image: Tensor, action: Tensor, mask: Tensor | None) -> Tensor:
        """The next image: ``image + action`` clipped to ``[0, 1]`` (inside ``mask`` only, when there is one:
        elsewhere the image is returned bit for bit)."""
        moved = (image + action).clamp(0.0, 1.0)
        return moved if mask is None else torch.where(mask > 0.5, moved, image)

    # ------------------------------------------------------------------ Task interface
    def reset(self, batch: ImageBatch) -> Tensor:
        """Start ``B`` episodes from ``batch``; returns the state."""
        self._check_batch(batch)
        with torch.no_grad():
            self.source = batch.source.detach().float()
            self.target = batch.target.detach().float()
            self.mask = None if batch.mask is None else (batch.mask.detach() > 0.5).float()
            self.image = self._initial_image(batch).float()
            self.steps = torch.zeros(self.source.shape[0], dtype=torch.long, device=self.source.device)
            self._score = self._psnr(self.image, self.target, self.mask)
        self._ready = True
        return self.observe()

    def reset_done(self, done: Tensor, batch: ImageBatch) -> Tensor:
        """Restart the episodes where ``done`` ``(B,)`` is true from the same rows of ``batch``."""
        self._require_reset()
        self._check_batch(batch)
        if tuple(batch.target.shape) != tuple(self.target.shape):
            raise ValueError(f"new items {tuple(batch.target.shape)} must match the batch {tuple(self.target.shape)}")
        with torch.no_grad():
            done = done.to(device=self.source.device, dtype=torch.bool)
            rows = done.view(-1, *[1] * (self.source.ndim - 1))
            fresh = self._initial_image(batch).float()
            self.source = torch.where(rows, batch.source.float(), self.source)
            self.target = torch.where(rows, batch.target.float(), self.target)
            if self.mask is not None and batch.mask is not None:
                self.mask = torch.where(rows, (batch.mask > 0.5).float(), self.mask)
            self.image = torch.where(rows, fresh, self.image)
            self.steps = torch.where(done, torch.zeros_like(self.steps), self.steps)
            self._score = self._psnr(self.image, self.target, self.mask)
        return self.observe()

    def observe(self) -> Tensor:
        """The state of the current episodes."""
        self._require_reset()
        return self._state(self.source, self.image, self.mask)

    def step(self, action: Tensor) -> StepResult:
        """Add the action ``(B, C, *S)`` (where the task allows) and score the new image."""
        self._require_reset()
        with torch.no_grad():
            before = self._score
            self.image = self._apply(self.image, action.detach().to(self.image.dtype), self.mask)
            self.steps = self.steps + 1
            self._score = self._psnr(self.image, self.target, self.mask)
            reward = self.config.reward_scale * (self._score - before)
            terminated = torch.zeros_like(self.steps, dtype=torch.bool)
            truncated = self.steps >= self.config.max_steps
        return StepResult(self.observe(), reward, terminated, truncated, self._score)

    @property
    def score(self) -> Tensor:
        """``(B,)`` PSNR (dB) of the current images."""
        self._require_reset()
        return self._score

    def metrics(self) -> dict[str, Tensor]:
        """``psnr_whole`` (dB, every pixel) and ``l1`` (mean absolute error over every pixel)."""
        self._require_reset()
        return {"psnr_whole": masked_psnr(self.image, self.target),
                "l1": (self.image - self.target).abs().flatten(1).mean(1)}

    def extras(self) -> Tensor | None:
        """The targets ``(B, C, *S)``, which the auxiliary loss compares with."""
        self._require_reset()
        return self.target

    def auxiliary_loss(self, state: Tensor, action: Tensor, extras: Tensor | None) -> Tensor:
        """``l1_weight * L1(next image, target) + adv_weight * SNGAN generator loss`` (scalar), differentiable with
        respect to ``action`` ``(B, C, *S)``. Inside a mask the L1 is averaged over the hole only.

        With ``adv_weight > 0`` it first takes one discriminator step on the targets against the detached next
        images.
        """
        if extras is None:
            raise ValueError("the image tasks' auxiliary loss needs the targets (extras)")
        target = extras.float()
        image, mask = self._unpack(state.float())
        moved = self._apply(image, action.float(), mask)
        error = (moved - target).abs()
        if mask is None:
            loss = self.config.l1_weight * error.mean()
        else:
            weight = mask.expand_as(error)
            loss = self.config.l1_weight * (error * weight).sum() / weight.sum().clamp_min(1.0)
        if self.config.adv_weight > 0:
            real = self._disc_input(target, state.float())
            fake = self._disc_input(moved, state.float())
            self.adversary.update(real, fake)
            loss = loss + self.config.adv_weight * self.adversary.generator_loss(fake)
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The running episodes and the discriminator (``weights_only``-safe), for resumable training."""
        self._require_reset()
        return {"source": self.source, "target": self.target, "mask": self.mask, "image": self.image,
                "steps": self.steps, "score": self._score, "adversary": self.adversary.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output: the episodes and the discriminator continue where they were saved."""
        self.source, self.target, self.mask = state["source"], state["target"], state["mask"]
        self.image, self.steps, self._score = state["image"], state["steps"], state["score"]
        self.adversary.load_state_dict(state["adversary"], self.source.device)
        self._ready = True

    # ------------------------------------------------------------------ internals
    def _require_reset(self) -> None:
        if not self._ready:
            raise RuntimeError("call reset() before using the task")

    def _check_batch(self, batch: ImageBatch) -> None:
        target = batch.target
        if target.ndim not in (4, 5) or target.shape[1] != self.config.channels:
            raise ValueError(f"targets must be (B, {self.config.channels}, *S), got {tuple(target.shape)}")
        if batch.source.shape[0] != target.shape[0] or batch.source.shape[2:] != target.shape[2:]:
            raise ValueError(f"source {tuple(batch.source.shape)} and target {tuple(target.shape)} must have the same "
                             "batch and spatial size")
        if batch.mask is not None and tuple(batch.mask.shape) != (target.shape[0], 1, *target.shape[2:]):
            raise ValueError(f"mask must be (B, 1, *S) = {(target.shape[0], 1, *target.shape[2:])}, "
                             f"got {tuple(batch.mask.shape)}")
