"""Condition maps of the translation task: what a model translates *from*, built from an image or a label map.

Each function returns a float32 tensor ``(Cs, H, W)`` in ``[0, 1]``, the ``source`` of an
:class:`~rlreg.tasks.image.ImageBatch`. They are deterministic (fixed settings below, no randomness), so the
training data and a user's input at inference go through the same function.

* :func:`edge_map`: Canny edges, 1 channel. pix2pix's edges2photo (Isola et al., CVPR 2017) used HED edges
  (Xie & Tu, ICCV 2015), a trained network whose weights ship in no package available here, so Canny stands in;
* :func:`superpixel_map`: SLIC superpixels (Achanta et al., TPAMI 2012) each filled with its mean colour, 3 channels;
* :func:`label_colour_map`: one fixed colour per label id (0 black), 3 channels, e.g. a Desikan-Killiany map;
* :func:`tissue_map`: grey matter, white matter and CSF probabilities as the three channels.

Images are accepted as ``(H, W)`` / ``(H, W, 3)`` NumPy arrays (uint8 0-255 or float in [0, 1]) or ``(C, H, W)``
tensors in [0, 1].
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

__all__ = ["EDGE_SIGMA", "SLIC_COMPACTNESS", "SLIC_SEGMENTS", "edge_map", "label_colour_map", "label_palette",
           "superpixel_map", "tissue_map"]

EDGE_SIGMA = 2.0
"""Gaussian smoothing (pixels) of the Canny detector: keeps object outlines, drops most fine texture at 128^2."""
SLIC_SEGMENTS = 100
"""Approximate number of SLIC superpixels per image (``skimage.segmentation.slic`` ``n_segments``)."""
SLIC_COMPACTNESS = 10.0
"""SLIC's colour/space trade-off (scikit-image's default, for Lab colour in [0, 100])."""


def _as_float_image(image: np.ndarray | Tensor) -> np.ndarray:
    """``(H, W)`` or ``(H, W, 3)`` float64 in ``[0, 1]`` from any accepted image layout."""
    if isinstance(image, Tensor):
        array = image.detach().cpu().float().numpy()
        if array.ndim == 3:
            array = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
        return np.clip(array.astype(np.float64), 0.0, 1.0)
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {array.shape}")
    if array.dtype == np.uint8:  # through float32, so a uint8 image and its float32 tensor give the same map
        array = array.astype(np.float32) / np.float32(255.0)
    return np.clip(array.astype(np.float64), 0.0, 1.0)


def edge_map(image: np.ndarray | Tensor, sigma: float = EDGE_SIGMA) -> Tensor:
    """Canny edges of the image's luminance (``skimage.feature.canny``, default hysteresis thresholds).

    Returns:
        ``(1, H, W)`` float32 in ``{0, 1}`` (1 on an edge).
    """
    from skimage.color import rgb2gray
    from skimage.feature import canny

    array = _as_float_image(image)
    grey = rgb2gray(array) if array.ndim == 3 else array
    return torch.from_numpy(canny(grey, sigma=sigma).astype(np.float32))[None]


def superpixel_map(image: np.ndarray | Tensor, n_segments: int = SLIC_SEGMENTS,
                   compactness: float = SLIC_COMPACTNESS) -> Tensor:
    """SLIC superpixels of an RGB image, each filled with the mean colour of its pixels.

    Returns:
        ``(3, H, W)`` float32 in ``[0, 1]``.
    """
    from skimage.segmentation import slic

    array = _as_float_image(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    segments = slic(array, n_segments=n_segments, compactness=compactness, start_label=0, channel_axis=-1)
    flat = segments.ravel()
    counts = np.bincount(flat).astype(np.float64)
    sums = np.stack([np.bincount(flat, weights=array[..., c].ravel()) for c in range(3)], axis=1)
    means = sums / np.maximum(counts, 1.0)[:, None]
    filled = means[segments].astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(filled, -1, 0)))


@lru_cache(maxsize=1)
def _colour_sequence() -> Tensor:
    """Saturated colours in farthest-first order: ``(L, 3)`` RGB in ``[0, 1]``.

    Candidates are the 8^3 RGB grid minus greys (channel spread <= 0.25); starting from red, each next colour is the
    candidate farthest (Euclidean RGB) from all colours chosen so far, so the first ids are the most distinct.
    """
    levels = torch.linspace(0, 1, 8)
    grid = torch.cartesian_prod(levels, levels, levels)
    candidates = grid[(grid.max(1).values - grid.min(1).values) > 0.25]
    chosen = [int(torch.argmin(torch.cdist(candidates, torch.tensor([[1.0, 0.0, 0.0]]))[:, 0]))]
    nearest = torch.cdist(candidates, candidates[chosen[0]][None])[:, 0]
    for _ in range(len(candidates) - 1):
        pick = int(torch.argmax(nearest))
        chosen.append(pick)
        nearest = torch.minimum(nearest, torch.cdist(candidates, candidates[pick][None])[:, 0])
    return candidates[chosen]


@lru_cache(maxsize=8)
def label_palette(num_labels: int) -> Tensor:
    """The colour of each label id ``0..num_labels``: ``(num_labels + 1, 3)`` float32 RGB in ``[0, 1]``.

    Id 0 is black; id ``k > 0`` takes the ``k``-th colour of a fixed farthest-first sequence of saturated colours
    (about 450 of them, then it repeats), so ids are distinct and no id is black or grey. The colour of an id never
    depends on ``num_labels``.
    """
    sequence = _colour_sequence()
    ids = torch.arange(num_labels) % len(sequence)
    return torch.cat([torch.zeros(1, 3), sequence[ids]]).float()


def label_colour_map(labels: np.ndarray | Tensor) -> Tensor:
    """A label map painted with :func:`label_palette` (0, the background, black).

    Args:
        labels: ``(H, W)`` (or ``(1, H, W)``) non-negative integer label ids.

    Returns:
        ``(3, H, W)`` float32 in ``[0, 1]``.
    """
    ids = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels).long().cpu()
    if ids.ndim == 3 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 2:
        raise ValueError(f"expected an (H, W) label map, got shape {tuple(ids.shape)}")
    if ids.numel() and int(ids.min()) < 0:
        raise ValueError("label ids must be non-negative")
    palette = label_palette(int(ids.max()) if ids.numel() else 0)
    return palette[ids].permute(2, 0, 1).contiguous()


def tissue_map(gm: np.ndarray | Tensor, wm: np.ndarray | Tensor, csf: np.ndarray | Tensor) -> Tensor:
    """Grey matter, white matter and CSF probability maps as the channels ``(GM, WM, CSF)`` of one image.

    Args:
        gm, wm, csf: ``(H, W)`` probabilities (clipped to ``[0, 1]``).

    Returns:
        ``(3, H, W)`` float32 in ``[0, 1]``.
    """
    channels = [torch.as_tensor(np.asarray(c) if not isinstance(c, Tensor) else c).float().cpu().squeeze()
                for c in (gm, wm, csf)]
    shapes = {tuple(c.shape) for c in channels}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"gm, wm and csf must be (H, W) maps of one shape, got {sorted(shapes)}")
    return torch.stack(channels).clamp(0.0, 1.0)
