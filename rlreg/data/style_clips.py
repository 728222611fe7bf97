"""Training clips for video style transfer: photo crops set in motion, with their exact backward flows.

Real videos with ground-truth flow (MPI Sintel) do not ship in any package, and flow estimated on the training
videos would teach the estimator's errors. The clips here are made from the content photos of
:mod:`rlreg.data.photos` (its declared split of whole photos): each clip views a photo through a camera that pans,
rotates and zooms a little from frame to frame, and every frame gets its own sensor noise and brightness change,
the perturbations that make per-frame stylisation flicker (the compound regularisation of Wang et al., ECCV 2020,
warps and noises frames the same way). Because the motion is known, the backward flow and its valid mask are exact.

Dataset ``style-clips`` (:class:`ClipOptions`): :class:`~rlreg.tasks.video_style.ClipBatch` items for the
``video-style`` task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rlreg.data.paintings import StyleOptions, painting_tensor
from rlreg.data.photos import PhotoCrops, PhotoOptions, photo_split
from rlreg.spatial import identity_grid, warp
from rlreg.tasks.video_style import ClipBatch

__all__ = ["ClipOptions", "StyleClips", "clip_datasets"]


@dataclass(frozen=True)
class ClipOptions(StyleOptions):
    """Options of the ``style-clips`` dataset (``data.options`` of a recipe); the style and crop options are
    :class:`~rlreg.data.paintings.StyleOptions`'."""

    frames: int = 4
    """Frames per clip."""
    shift: float = 2.0
    """Largest pan per frame (pixels, each axis)."""
    rotation: float = 1.0
    """Largest rotation per frame (degrees)."""
    zoom: float = 0.01
    """Largest relative zoom per frame."""
    noise: float = 0.01
    """Std of the Gaussian sensor noise of each frame (intensity units)."""
    brightness: float = 0.02
    """Largest brightness offset of each frame (intensity units)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.frames < 1:
            raise ValueError(f"frames must be at least 1, got {self.frames}")


class StyleClips:
    """Synthetic clips of content crops (:mod:`rlreg.data.style_clips`) paired with one painting."""

    def __init__(self, names: list[str], options: ClipOptions, training: bool) -> None:
        self.options = options
        margin = 1.0 + 2.0 * (options.frames * (options.shift + 2) / options.size + options.frames * options.zoom)
        photo = PhotoOptions(size=math.ceil(options.size * margin), min_scale=options.min_scale,
                             max_scale=options.max_scale, flip=options.flip)
        self.crops = PhotoCrops(names, photo, "edges", training)
        self.style = painting_tensor(options.style, options.style_size)

    def _motion(self, count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Per clip and frame, the ``(count, F, 2, 2)`` linear map and ``(count, F, 2)`` offset (pixels) taking a
        frame pixel (relative to the centre) to the big crop (relative to its centre)."""
        o = self.options
        frames = torch.arange(o.frames, dtype=torch.float32).view(1, -1)

        def uniform(scale: float, shape: tuple[int, ...]) -> Tensor:
            return (2 * torch.rand(shape, generator=generator) - 1) * scale

        angle = math.radians(1.0) * uniform(o.rotation, (count, 1)) * frames
        scale = (1 + uniform(o.zoom, (count, 1))) ** frames
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        linear = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        offset = uniform(o.shift, (count, 1, 2)) * frames.unsqueeze(-1)
        return linear, offset

    def sample(self, count: int, generator: torch.Generator, device: torch.device | str = "cpu") -> ClipBatch:
        """``count`` clips and the painting, on ``device``."""
        o = self.options
        big = self.crops.crops(count, generator)
        linear, offset = self._motion(count, generator)
        size, side = o.size, big.shape[-1]
        grid = identity_grid((size, size)).view(2, -1)  # (2, size*size) row, column indices
        centred = grid - (size - 1) / 2
        frames, positions = [], []
        for k in range(o.frames):
            where = torch.einsum("bij,jn->bin", linear[:, k], centred) + offset[:, k].unsqueeze(-1)
            positions.append(where)
            displacement = (where + (side - 1) / 2 - grid).view(count, 2, size, size)
            frames.append(warp(big, displacement, padding="border"))
        clip = torch.stack(frames, 1)
        noise = torch.randn(clip.shape, generator=generator) * o.noise
        bright = (2 * torch.rand((count, o.frames, 1, 1, 1), generator=generator) - 1) * o.brightness
        clip = (clip + noise + bright).clamp(0, 1)
        flows, valid = [], []
        for k in range(1, o.frames):
            # frame k's pixel x shows big(L_k x + o_k); in frame k-1 it sits at L_{k-1}^-1 (L_k x + o_k - o_{k-1})
            target = torch.linalg.solve(linear[:, k - 1], positions[k] - offset[:, k - 1].unsqueeze(-1))
            previous = target + (size - 1) / 2
            flows.append((previous - grid).view(count, 2, size, size))
            inside = ((previous >= 0) & (previous <= size - 1)).all(1)
            valid.append(inside.view(count, 1, size, size).float())
        empty = torch.zeros(count, 0, 2, size, size)
        flow = torch.stack(flows, 1) if flows else empty
        mask = torch.stack(valid, 1) if valid else empty[:, :, :1]
        style = self.style.expand(count, -1, -1, -1)
        return ClipBatch(clip.to(device), flow.to(device), mask.to(device), style.to(device))


def clip_datasets(options: dict[str, Any]) -> tuple[StyleClips, StyleClips]:
    """``(training, held-out)`` :class:`StyleClips` of the photo split, options from a recipe's ``data.options``
    (keys of :class:`ClipOptions`)."""
    from rlreg.config import from_dict

    parsed = from_dict(ClipOptions, options, "data.options.")
    split = photo_split()
    return StyleClips(split["train"], parsed, True), StyleClips(split["test"], parsed, False)
