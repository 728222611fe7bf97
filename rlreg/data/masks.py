"""Hole masks of the inpainting task: a centre square, free-form brush strokes and lesion-like blobs.

A mask is a float32 tensor with values in ``{0, 1}``, ``1`` marking the missing pixels (the hole), shaped
``(1, *S)`` for one item (``S = (H, W)`` for images). Random masks draw every random number from the passed CPU
``torch.Generator``, so a seeded generator gives the same masks on any machine.

* :func:`centre_mask`: the centre square of Context Encoders (Pathak et al., CVPR 2016) and of the RL-I2IT paper's
  inpainting experiments (a 64^2 hole in a 128^2 image);
* :func:`free_form_mask`: random brush strokes after the free-form masks of DeepFill v2 (Yu et al., "Free-Form Image
  Inpainting with Gated Convolution", ICCV 2019), covering 10-40 % of the image;
* :func:`lesion_mask`: one to a few smooth ellipsoidal blobs inside a region (the brain), a stand-in for lesions
  in MRI inpainting (any number of spatial dimensions).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["FREE_FORM_COVERAGE", "centre_mask", "free_form_mask", "lesion_mask"]

FREE_FORM_COVERAGE = (0.1, 0.4)
"""Range of the fraction of the image a free-form mask covers (each mask draws its target in it)."""


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _integer(generator: torch.Generator, low: int, high: int) -> int:
    """A uniform integer in ``[low, high]`` (both included)."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def centre_mask(size: int | tuple[int, int], hole: int | tuple[int, int]) -> Tensor:
    """A ``hole``-sized square (or rectangle) of ones at the centre of a ``size`` image: ``(1, H, W)`` float32.

    Raises:
        ValueError: the hole is empty or larger than the image.
    """
    height, width = _pair(size)
    hole_h, hole_w = _pair(hole)
    if not (0 < hole_h <= height and 0 < hole_w <= width):
        raise ValueError(f"hole {hole_h}x{hole_w} must be non-empty and fit in the {height}x{width} image")
    mask = torch.zeros(1, height, width)
    top, left = (height - hole_h) // 2, (width - hole_w) // 2
    mask[:, top:top + hole_h, left:left + hole_w] = 1.0
    return mask


def _stroke(canvas: np.ndarray, generator: torch.Generator, max_width: float) -> np.ndarray:
    """``canvas`` (H, W) uint8 with one more random brush stroke drawn on a copy (DeepFill v2's polyline brush:
    4-12 vertices, each a random turn and length from the previous, a round brush of one random width)."""
    from PIL import Image, ImageDraw

    height, width = canvas.shape
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    longest = max(height, width)
    brush = max(2, round(_uniform(generator, 0.3, 1.0) * max_width))
    x, y = _uniform(generator, 0, width - 1), _uniform(generator, 0, height - 1)
    angle = _uniform(generator, 0, 2 * math.pi)
    points = [(x, y)]
    for _ in range(_integer(generator, 4, 12)):
        angle += _uniform(generator, -0.6 * math.pi, 0.6 * math.pi)
        length = _uniform(generator, 0.04, 0.16) * longest
        x = min(max(x + length * math.cos(angle), 0.0), width - 1.0)
        y = min(max(y + length * math.sin(angle), 0.0), height - 1.0)
        points.append((x, y))
    draw.line(points, fill=1, width=brush)
    radius = brush / 2
    for px, py in points:  # round joints and ends, as a brush leaves them
        draw.ellipse((px - radius, py - radius, px + radius, py + radius), fill=1)
    return np.asarray(image)


def free_form_mask(size: int | tuple[int, int], generator: torch.Generator,
                   coverage: tuple[float, float] = FREE_FORM_COVERAGE) -> Tensor:
    """Random brush strokes (DeepFill v2, Yu et al. 2019) covering a fraction of the image in ``coverage``.

    A target fraction is drawn uniformly in ``coverage``; strokes are added until the mask reaches it, and a stroke
    that would push it past ``coverage[1]`` is redrawn (with a thinner brush after repeated misses), so every mask
    covers between ``coverage[0]`` and ``coverage[1]`` of the image.

    Returns:
        ``(1, H, W)`` float32 in ``{0, 1}``.
    """
    low, high = coverage
    if not 0.0 < low <= high < 1.0:
        raise ValueError(f"coverage must satisfy 0 < low <= high < 1, got {coverage}")
    height, width = _pair(size)
    target = _uniform(generator, low, high)
    canvas = np.zeros((height, width), dtype=np.uint8)
    max_width = 0.1 * max(height, width)
    misses = 0
    while canvas.mean() < target:
        candidate = _stroke(canvas, generator, max_width)
        if candidate.mean() <= high:
            canvas = candidate
        else:
            misses += 1
            if misses % 8 == 0:
                max_width = max(2.0, max_width / 2)
    return torch.from_numpy(canvas.astype(np.float32))[None]


def lesion_mask(shape: tuple[int, ...], generator: torch.Generator, inside: Tensor | None = None,
                count: tuple[int, int] = (1, 3), radius: tuple[float, float] = (0.04, 0.12)) -> Tensor:
    """One to a few smooth blobs (random axis-aligned ellipsoids) inside ``inside``: a lesion-like hole.

    Args:
        shape: the spatial shape ``S`` (2-D or 3-D).
        generator: CPU generator, the only source of randomness.
        inside: ``S`` boolean (or {0, 1}) region the blobs are cut to and centred in (e.g. the brain mask); the
            whole image when ``None``.
        count: range (both included) of the number of blobs.
        radius: range of each semi-axis as a fraction of the largest side of ``S``.

    Returns:
        ``(1, *S)`` float32 in ``{0, 1}``; never empty while ``inside`` is not (each blob is centred on a pixel of
        ``inside``).
    """
    region = torch.ones(shape, dtype=torch.bool) if inside is None else inside.reshape(shape).bool().cpu()
    candidates = torch.nonzero(region)
    if len(candidates) == 0:
        raise ValueError("lesion_mask: the region inside which lesions go is empty")
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    longest = max(shape)
    mask = torch.zeros(shape, dtype=torch.bool)
    for _ in range(_integer(generator, count[0], count[1])):
        centre = candidates[int(torch.randint(len(candidates), (), generator=generator))].float()
        distance = torch.zeros(shape)
        for axis, grid in enumerate(grids):
            semi_axis = _uniform(generator, radius[0], radius[1]) * longest
            distance += ((grid - centre[axis]) / max(semi_axis, 0.5)) ** 2
        mask |= distance <= 1.0
    return (mask & region).float()[None]
