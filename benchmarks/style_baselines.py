"""The style-transfer benchmark's quality reference: Gatys et al.'s optimisation of the pixels themselves.

Gatys, Ecker & Bethge, "Image Style Transfer Using Convolutional Neural Networks" (CVPR 2016) find the stylised
image by minimising the content + style (+ TV) loss over its pixels. :func:`gatys` does exactly that with the loss
the style agents learn from, :meth:`rlreg.tasks.style.StyleTask.weighted` (same VGG16 layers, same weights as the
model's :class:`~rlreg.tasks.style.StyleConfig`), starting from the content image.

Optimiser: Adam on the ``[0, 1]`` pixels (learning rate ``lr``, default 0.02: about 5 grey levels per iteration)
with the pixels clamped to ``[0, 1]`` after every step. L-BFGS (Gatys et al.'s choice) needs a line search to stay
stable with the clamp and about twice the VGG16 passes per iteration; Adam with a clamp is the common
reimplementation and keeps the cost per iteration one forward and one backward pass, so seconds per image compare
directly with the networks' (Johnson et al., ECCV 2016, time Gatys the same way).
"""

from __future__ import annotations

import time
from typing import NamedTuple

import torch
from torch import Tensor

from rlreg.tasks.style import StyleConfig, StyleTask

__all__ = ["GATYS_ITERATIONS", "GATYS_LR", "GatysResult", "gatys"]

GATYS_ITERATIONS = 150
"""Adam iterations per image by default."""
GATYS_LR = 0.02
"""Adam learning rate on ``[0, 1]`` pixels by default."""


class GatysResult(NamedTuple):
    """What :func:`gatys` returns."""

    image: Tensor
    """``(B, 3, H, W)`` the optimised images in ``[0, 1]``."""
    seconds: float
    """Wall time of the whole optimisation (VGG16 passes included), per image of the batch."""
    losses: list[float]
    """The weighted loss (mean over the batch) before each iteration, then after the last one."""


def gatys(config: StyleConfig, content: Tensor, style: Tensor, iterations: int = GATYS_ITERATIONS,
          lr: float = GATYS_LR, task: StyleTask | None = None) -> GatysResult:
    """Optimise ``content`` ``(B, 3, H, W)`` (RGB, ``[0, 1]``) towards the painting ``style`` ``(1, 3, h, w)``.

    The objective is :meth:`StyleTask.weighted` of :meth:`StyleTask.terms` under ``config``, summed over the batch
    (items are independent); Adam with learning rate ``lr``, pixels clamped to ``[0, 1]`` after each of the
    ``iterations`` steps. Follows the device of ``content``. ``task``: a :class:`StyleTask` of ``config`` to
    reuse (it keeps the painting's Gram matrices from one call to the next); default a new one.
    """
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if task is None:
        task = StyleTask(config)
    elif task.config != config:
        raise ValueError("gatys: the task's config differs from config")
    start = time.perf_counter()
    task.set_style(style[:1].to(content.device))
    vgg = task.vgg(content.device)
    with torch.no_grad():
        features = vgg.features(content.float(), [config.content_layer])[config.content_layer]
    image = content.detach().float().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([image], lr=lr)
    losses = []
    for _ in range(iterations):
        optimiser.zero_grad(set_to_none=True)
        loss = task.weighted(task.terms(image, features)).sum()
        losses.append(float(loss.detach()) / content.shape[0])
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            image.clamp_(0.0, 1.0)
    with torch.no_grad():
        losses.append(float(task.weighted(task.terms(image, features)).mean()))
    seconds = (time.perf_counter() - start) / content.shape[0]
    return GatysResult(image.detach(), seconds, losses)
