"""Temporal consistency of a stylised video: optical flow, backward warping and the warping error.

Frames are ``(H, W, 3)`` arrays, float in ``[0, 1]`` (uint8 ``[0, 255]`` is accepted and rescaled). Flows are
``(H, W, 2)`` float32 fields in pixels, channel 0 the horizontal (x, column) and channel 1 the vertical (y, row)
displacement, OpenCV's convention: the flow ``w`` from frame ``a`` to frame ``b`` says that the pixel ``p`` of
``a`` is found at ``p + w(p)`` in ``b``, so ``a(p) ~ b(p + w(p))``. Hence ``backward_warp(b, w)`` samples ``b`` at
``p + w(p)`` and rebuilds ``a``: with the flow from the CURRENT frame to the PREVIOUS one, it warps the previous
frame into the current one.

The warping error (Lai et al., "Learning Blind Video Temporal Consistency", ECCV 2018) measures how much a
stylised video flickers where the content moves coherently: the flow is measured on the content frames, the
previous stylised frame is warped along it, and the squared difference to the current stylised frame is averaged
over the pixels that the forward-backward consistency check (Sundaram et al., ECCV 2010; Ruder et al., "Artistic
style transfer for videos", GCPR 2016) does not mark as occluded or on a motion boundary. ``cv2`` is imported
inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CONSISTENCY_RELATIVE", "CONSISTENCY_SLACK", "MOTION_BOUNDARY_RELATIVE", "MOTION_BOUNDARY_SLACK",
           "TemporalError", "backward_warp", "consistency_mask", "optical_flow", "warping_error"]

CONSISTENCY_RELATIVE = 0.01
CONSISTENCY_SLACK = 0.5
"""Forward-backward check (Sundaram et al. 2010, the constants of Ruder et al. 2016): a pixel is consistent when
``|w + w'|^2 <= 0.01 (|w|^2 + |w'|^2) + 0.5`` (pixels squared), ``w'`` the backward flow at ``p + w(p)``."""
MOTION_BOUNDARY_RELATIVE = 0.01
MOTION_BOUNDARY_SLACK = 0.002
"""Motion-boundary check (same papers): a pixel is on a boundary when ``|grad u|^2 + |grad v|^2 > 0.01 |w|^2 +
0.002`` (``u, v`` the flow's components; gradients per pixel)."""


@dataclass(frozen=True)
class TemporalError:
    """The warping error of a video (Lai et al. 2018)."""

    mean: float
    """Mean of :attr:`per_frame`: squared RGB distance summed over the three channels of ``[0, 1]`` intensities
    (so in ``[0, 3]``), averaged over the consistent pixels."""
    per_frame: list[float]
    """One value per frame ``t >= 1`` (between frames ``t - 1`` and ``t``)."""
    masked_fraction: float
    """Fraction of pixels left out by :func:`consistency_mask` (occluded or on a motion boundary), averaged over
    the frame pairs."""


def _grey_uint8(frame: np.ndarray) -> np.ndarray:
    """``(H, W)`` uint8 luma of an ``(H, W, 3)`` RGB frame (uint8, or float in ``[0, 1]``) or a grey ``(H, W)``."""
    import cv2

    array = np.asarray(frame)
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if array.ndim == 3:
        if array.shape[2] != 3:
            raise ValueError(f"frames must be (H, W, 3) or (H, W), got {array.shape}")
        array = cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGB2GRAY)
    elif array.ndim != 2:
        raise ValueError(f"frames must be (H, W, 3) or (H, W), got {array.shape}")
    return np.ascontiguousarray(array)


def optical_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The dense optical flow from frame ``a`` to frame ``b``: ``(H, W, 2)`` float32 pixels, ``a(p) ~ b(p + w(p))``.

    OpenCV's DIS flow (Kroeger et al., "Fast Optical Flow using Dense Inverse Search", ECCV 2016) with the
    ``DISOPTICAL_FLOW_PRESET_MEDIUM`` preset (8x8 patches at stride 3, coarse-to-fine down to the finest scale
    but one, 5 variational refinement iterations): the most accurate of its three presets (ULTRAFAST, FAST,
    MEDIUM). It runs on the grey uint8 frames.
    """
    import cv2

    grey_a, grey_b = _grey_uint8(a), _grey_uint8(b)
    if grey_a.shape != grey_b.shape:
        raise ValueError(f"frames differ in size: {grey_a.shape} and {grey_b.shape}")
    dis = cv2.DISOpticalFlow.create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flow = np.zeros((*grey_a.shape, 2), np.float32)  # output only: DIS ignores it without setUseInitialFlow
    return np.asarray(dis.calc(grey_a, grey_b, flow), dtype=np.float32)


def _sampling_maps(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    height, width = flow.shape[:2]
    columns, rows = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return columns + flow[..., 0], rows + flow[..., 1]


def backward_warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``image`` sampled at ``p + flow(p)`` for every pixel ``p``: bilinear, the border replicated outside.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` array (float or uint8; the result keeps its dtype).
        flow: ``(H, W, 2)`` pixels (x then y), e.g. :func:`optical_flow` from the current frame to ``image``'s.
    """
    import cv2

    flow = np.asarray(flow, dtype=np.float32)
    if flow.ndim != 3 or flow.shape[2] != 2 or flow.shape[:2] != np.shape(image)[:2]:
        raise ValueError(f"flow must be (H, W, 2) on the image's grid, got {flow.shape} for {np.shape(image)}")
    map_x, map_y = _sampling_maps(flow)
    image = np.asarray(image)
    source = image.astype(np.float32) if image.dtype == np.float64 else image
    warped = cv2.remap(np.ascontiguousarray(source), map_x, map_y, interpolation=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    return warped.reshape(image.shape).astype(image.dtype, copy=False)


def consistency_mask(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool, True where the flow ``forward`` (frame ``a`` -> ``b``) is reliable on ``a``'s grid.

    Forward-backward check (Sundaram et al. ECCV 2010; Ruder et al. GCPR 2016): with ``w = forward(p)`` and
    ``w' = backward(p + w)`` (``backward`` is the flow ``b`` -> ``a``, sampled bilinearly), a pixel whose motion
    is not undone, ``|w + w'|^2 > 0.01 (|w|^2 + |w'|^2) + 0.5``, is occluded in ``b``. Pixels on a motion boundary,
    ``|grad u|^2 + |grad v|^2 > 0.01 |w|^2 + 0.002``, are excluded too (Ruder et al.).
    """
    forward = np.asarray(forward, dtype=np.float32)
    backward = np.asarray(backward, dtype=np.float32)
    if forward.shape != backward.shape or forward.ndim != 3 or forward.shape[2] != 2:
        raise ValueError(f"flows must both be (H, W, 2), got {forward.shape} and {backward.shape}")
    returned = backward_warp(backward, forward)
    squared = np.square(forward).sum(-1)
    consistent = (np.square(forward + returned).sum(-1)
                  <= CONSISTENCY_RELATIVE * (squared + np.square(returned).sum(-1)) + CONSISTENCY_SLACK)
    gradients = sum(np.square(g) for c in range(2) for g in np.gradient(forward[..., c]))
    boundary = gradients > MOTION_BOUNDARY_RELATIVE * squared + MOTION_BOUNDARY_SLACK
    return consistent & ~boundary


def _float_frame(frame: np.ndarray) -> np.ndarray:
    array = np.asarray(frame)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"frames must be (H, W, 3), got {array.shape}")
    return array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)


def warping_error(stylised: Sequence[np.ndarray], content: Sequence[np.ndarray]) -> TemporalError:
    """The warping error of the video ``stylised`` whose frames were made from ``content`` (Lai et al. 2018).

    For each ``t >= 1``: ``w`` = :func:`optical_flow` from ``content[t]`` to ``content[t - 1]`` (the backward flow)
    and ``w'`` the flow back, ``M`` = :func:`consistency_mask` ``(w, w')``, ``V`` = :func:`backward_warp`
    ``(stylised[t - 1], w)``, and ``E_t = sum_p M(p) |stylised[t](p) - V(p)|^2 / sum_p M(p)``, the squared
    distance summed over the RGB channels as in Lai et al.'s evaluation (over all pixels when the mask keeps
    none). A stylisation that moves with the
    content scores near 0; independent noise frames score about 1/2 (``3 * 2 * 1/12``).

    Args:
        stylised, content: equally long sequences (at least 2) of same-size ``(H, W, 3)`` frames, float in
            ``[0, 1]`` or uint8.
    """
    if len(stylised) != len(content):
        raise ValueError(f"stylised and content differ in length: {len(stylised)} and {len(content)} frames")
    if len(content) < 2:
        raise ValueError(f"the warping error needs at least 2 frames, got {len(content)}")
    per_frame: list[float] = []
    masked: list[float] = []
    previous_content, previous_stylised = content[0], _float_frame(stylised[0])
    for current_content, current in zip(content[1:], stylised[1:], strict=True):
        current_stylised = _float_frame(current)
        if current_stylised.shape != previous_stylised.shape or np.shape(current_content)[:2] != \
                current_stylised.shape[:2]:
            raise ValueError(f"frames differ in size: stylised {current_stylised.shape}, content "
                             f"{np.shape(current_content)}")
        flow = optical_flow(current_content, previous_content)
        mask = consistency_mask(flow, optical_flow(previous_content, current_content))
        difference = np.square(current_stylised - backward_warp(previous_stylised, flow)).sum(-1)
        kept = int(mask.sum())
        per_frame.append(float((difference * mask).sum() / kept) if kept else float(difference.mean()))
        masked.append(1.0 - kept / mask.size)
        previous_content, previous_stylised = current_content, current_stylised
    return TemporalError(float(np.mean(per_frame)), per_frame, float(np.mean(masked)))
