"""Video style transfer as an RL-I2IT task: stylise the frames of a clip in turn, consistently over time.

RL-I2IT (arXiv 2309.13672, Sec. 4, "video style transfer") extends the style task (:mod:`rlreg.tasks.style`):

* each frame initialises the moving image: an episode runs ``max_steps`` steps on frame 0, then starts again from
  frame 1's content, and so on for the ``frames`` frames of a clip;
* a step-wise GRU carries memory between steps and a frame-wise GRU between frames: here one convolutional GRU on
  the planner's bottleneck (``network.memory="gru"``) whose memory simply continues from one frame to the next (the
  rollout carries it), so the same cell serves as both;
* the loss adds a temporal regulariser, ``L + temporal_weight * L_T``, to the style-learning loss ``L``. ``L_T`` is
  the output temporal loss of Ruder et al. (GCPR 2016) and ReCoNet (Gao et al., ACCV 2018): the image after step
  ``t`` of frame ``k`` against the image after step ``t`` of frame ``k - 1`` warped by the backward optical flow,
  inside the flow's valid (non-occluded) mask. Comparing equal step counts keeps every degree of stylisation
  consistent over time, not only the last. It plays the role of RL-I2IT's compound temporal regularisation
  (Wang et al., ECCV 2020), whose random-warp-and-noise pairs the training clips (:mod:`rlreg.data.style_clips`)
  make explicit: frames related by known motions plus sensor noise.

The batch is a :class:`ClipBatch` (frames, their backward flows and valid masks, the style image). The state is the
current image ``(B, 3, H, W)``, as in the image task, so one network design serves both. The reward is the style
task's, per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from rlreg.spatial import warp
from rlreg.tasks.base import StepResult
from rlreg.tasks.image import ImageBatch
from rlreg.tasks.style import StyleConfig, StyleTask, apply_step

__all__ = ["ClipBatch", "VideoStyleConfig", "VideoStyleTask", "temporal_loss"]


class ClipBatch(NamedTuple):
    """``B`` clips of ``F`` frames, as the video task's data source samples them."""

    frames: Tensor
    """``(B, F, 3, H, W)`` content frames in ``[0, 1]``."""
    flows: Tensor
    """``(B, F - 1, 2, H, W)`` backward flows: entry ``k - 1`` maps each pixel of frame ``k`` to where it was in frame
    ``k - 1``, in pixels, channel 0 along rows and 1 along columns (:func:`rlreg.spatial.warp`'s convention)."""
    valid: Tensor
    """``(B, F - 1, 1, H, W)`` 1 where the backward flow is valid (the point was visible in frame ``k - 1``)."""
    style: Tensor
    """``(B or 1, 3, h, w)`` the style image."""


@dataclass(frozen=True)
class VideoStyleConfig(StyleConfig):
    """Settings of the video style-transfer task (saved in every checkpoint); ``max_steps`` is per frame."""

    frames: int = 4
    """Frames per training clip: an episode is ``frames * max_steps`` steps."""
    temporal_weight: float = 200.0
    """Weight of the temporal loss (mean squared difference in ``[0, 1]`` intensity units**2)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.frames, int) or self.frames < 1:
            raise ValueError(f"frames must be a positive integer, got {self.frames!r}")
        if not (math.isfinite(self.temporal_weight) and self.temporal_weight >= 0):
            raise ValueError(f"temporal_weight must be a finite number >= 0, got {self.temporal_weight!r}")


def temporal_loss(image: Tensor, warped_previous: Tensor, valid: Tensor) -> Tensor:
    """``(B,)`` mean squared difference of ``(B, 3, H, W)`` images where ``valid`` ``(B, 1, H, W)`` is 1 (0 for an
    item with no valid pixel)."""
    weight = valid.to(image.dtype)
    error = ((image - warped_previous) ** 2 * weight).flatten(1).sum(1)
    return error / (weight.flatten(1).sum(1) * image.shape[1]).clamp_min(1.0)


class VideoStyleTask(StyleTask):
    """The episodes of video style transfer (:mod:`rlreg.tasks.video_style`)."""

    config: VideoStyleConfig

    def __init__(self, config: VideoStyleConfig) -> None:
        super().__init__(config)
        self.frames = self.flows = self.valid = torch.empty(0)
        self.previous = self.current = torch.empty(0)
        self.total = torch.empty(0, dtype=torch.long)

    # ------------------------------------------------------------------ clip bookkeeping
    def _frame_index(self) -> Tensor:
        return torch.div(self.total, self.config.max_steps, rounding_mode="floor")

    def _rows(self, tensor: Tensor, index: Tensor) -> Tensor:
        """``tensor[b, index[b]]`` for every row ``b``."""
        return tensor[torch.arange(tensor.shape[0], device=tensor.device), index]

    def _check_clip(self, batch: ClipBatch) -> None:
        frames = batch.frames
        if frames.ndim != 5 or frames.shape[2] != 3 or frames.shape[1] != self.config.frames:
            raise ValueError(f"frames must be (B, {self.config.frames}, 3, H, W), got {tuple(frames.shape)}")
        expected = (frames.shape[0], frames.shape[1] - 1, 2, *frames.shape[3:])
        if tuple(batch.flows.shape) != expected or tuple(batch.valid.shape) != (*expected[:2], 1, *expected[3:]):
            raise ValueError(f"flows must be {expected} and valid {(*expected[:2], 1, *expected[3:])}, got "
                             f"{tuple(batch.flows.shape)} and {tuple(batch.valid.shape)}")

    # ------------------------------------------------------------------ Task interface
    def reset(self, batch: ClipBatch) -> Tensor:  # type: ignore[override]
        """Start ``B`` episodes at frame 0 of each clip."""
        self._check_clip(batch)
        self.frames, self.flows, self.valid = batch.frames.float(), batch.flows.float(), batch.valid.float()
        steps = self.config.max_steps
        shape = (self.frames.shape[0], steps, *self.frames.shape[2:])
        self.previous = torch.zeros(shape, device=self.frames.device)
        self.current = torch.zeros(shape, device=self.frames.device)
        self.total = torch.zeros(self.frames.shape[0], dtype=torch.long, device=self.frames.device)
        return super().reset(ImageBatch(self.frames[:, 0], batch.style, None))

    def reset_done(self, done: Tensor, batch: ClipBatch) -> Tensor:  # type: ignore[override]
        """Restart the episodes where ``done`` ``(B,)`` is true with the same rows of ``batch``."""
        self._require_reset()
        self._check_clip(batch)
        done = done.to(device=self.frames.device, dtype=torch.bool)
        if not bool(done.any()):
            return self.observe()
        clip_rows = done.view(-1, 1, 1, 1, 1)
        self.frames = torch.where(clip_rows, batch.frames.float(), self.frames)
        self.flows = torch.where(clip_rows, batch.flows.float(), self.flows)
        self.valid = torch.where(clip_rows, batch.valid.float(), self.valid)
        self.previous = torch.where(clip_rows, torch.zeros_like(self.previous), self.previous)
        self.current = torch.where(clip_rows, torch.zeros_like(self.current), self.current)
        self.total = torch.where(done, torch.zeros_like(self.total), self.total)
        return super().reset_done(done, ImageBatch(self.frames[:, 0], batch.style, None))

    def step(self, action: Tensor) -> StepResult:
        """One step on every episode's current frame; after the frame's last step the next frame's content becomes
        the image (its reward is still the step's own style gain)."""
        result = super().step(action)
        steps = self.config.max_steps
        with torch.no_grad():
            t = self.total % steps
            rows = torch.arange(self.image.shape[0], device=self.image.device)
            self.current[rows, t] = self.image
            self.total = self.total + 1
            frame = self._frame_index()
            advance = (self.total % steps == 0) & (frame < self.config.frames)
            truncated = frame >= self.config.frames
            if bool(advance.any()):
                rows_ = advance.view(-1, 1, 1, 1)
                fresh = self._rows(self.frames, frame.clamp_max(self.config.frames - 1))
                self.previous = torch.where(advance.view(-1, 1, 1, 1, 1), self.current, self.previous)
                self.content = torch.where(rows_, fresh, self.content)
                self.image = torch.where(rows_, fresh, self.image)
                self._content_features = torch.where(rows_, self._features(fresh), self._content_features)
                self._measure()
                self._start = torch.where(advance, self._style, self._start)
        return StepResult(self.observe(), result.reward, result.terminated, truncated, self.score)

    def extras(self) -> Tensor | None:
        """``(B, 7, H, W)``: the current frame's content (3), the previous frame's image after the step about to be
        taken, warped into this frame (3), and where that warp is valid (1; all 0 on a clip's first frame)."""
        self._require_reset()
        frame = self._frame_index().clamp_max(self.config.frames - 1)
        t = self.total % self.config.max_steps
        rows = torch.arange(self.image.shape[0], device=self.image.device)
        previous = self.previous[rows, t]
        if self.config.frames == 1:
            return torch.cat([self.content, previous, torch.zeros_like(previous[:, :1])], dim=1)
        link = (frame - 1).clamp_min(0)
        flow, valid = self._rows(self.flows, link), self._rows(self.valid, link)
        valid = valid * (frame > 0).to(valid.dtype).view(-1, 1, 1, 1)
        return torch.cat([self.content, warp(previous, flow, padding="border"), valid], dim=1)

    def auxiliary_loss(self, state: Tensor, action: Tensor, extras: Tensor | None) -> Tensor:
        """The style-learning loss plus ``temporal_weight`` times :func:`temporal_loss` (scalar), differentiable with
        respect to ``action`` ``(B, 3, H, W)``; ``extras`` as :meth:`extras` returns them."""
        if extras is None or extras.shape[1] != 7:
            raise ValueError("the video style task's auxiliary loss needs its 7-channel extras")
        content, previous, valid = extras.float().split((3, 3, 1), dim=1)
        loss = self._style_learning_loss(state.float(), action, content)
        moved = apply_step(state.float(), action.float())
        return (loss + self.config.temporal_weight * temporal_loss(moved, previous, valid)).mean()

    def state_dict(self) -> dict[str, Any]:
        """The running clips and episodes (``weights_only``-safe)."""
        state = super().state_dict()
        state.update(frames=self.frames, flows=self.flows, valid=self.valid, previous=self.previous,
                     current=self.current, total=self.total)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.frames, self.flows, self.valid = state["frames"], state["flows"], state["valid"]
        self.previous, self.current, self.total = state["previous"], state["current"], state["total"]
        super().load_state_dict(state)
