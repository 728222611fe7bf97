"""Pictures a person would rather look at than read: orthogonal-slice overlays of a registration."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlreg.io import atomic_output

__all__ = ["save_registration_overview", "save_step_gif"]


def _mid_slices(volume: np.ndarray) -> list[np.ndarray]:
    if volume.ndim == 2:
        return [volume]
    return [np.take(volume, volume.shape[axis] // 2, axis=axis) for axis in range(3)]


def save_registration_overview(path: Path, rows: dict[str, np.ndarray], contours: np.ndarray | None = None,
                               title: str = "") -> Path:
    """Write a PNG grid: one row per named image (e.g. fixed, moving, warped), one column per mid slice.

    Args:
        path: output PNG (written atomically).
        rows: name -> 2D or 3D array, all on the fixed grid.
        contours: optional fixed label map; its boundaries are drawn on every panel so misalignment shows.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    columns = len(_mid_slices(rows[names[0]]))
    fig, axes = plt.subplots(len(names), columns, figsize=(3.2 * columns, 3.0 * len(names)), squeeze=False)
    overlays = None
    if contours is not None:  # label boundaries as an orange RGBA layer: one imshow, 10x cheaper than contour()
        overlays = []
        for labels in (np.asarray(s) for s in _mid_slices(contours)):
            boundary = np.zeros(labels.shape, dtype=bool)
            for axis in range(2):
                boundary |= np.diff(labels, axis=axis, prepend=np.take(labels, [0], axis=axis)) != 0
            layer = np.zeros((*boundary.T.shape, 4), dtype=np.float32)
            layer[boundary.T] = (1.0, 0.5, 0.05, 0.8)
            overlays.append(layer)
    for r, name in enumerate(names):
        vmax = float(np.percentile(rows[name], 99.5)) or 1.0
        for c, plane in enumerate(_mid_slices(rows[name])):
            ax = axes[r, c]
            ax.imshow(plane.T, cmap="gray", origin="lower", vmin=0.0, vmax=vmax, interpolation="nearest")
            if overlays is not None:
                ax.imshow(overlays[c], origin="lower", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path


def _frame_plane(volume: np.ndarray) -> np.ndarray:
    """The picture of one frame: a 2D image itself, or the middle slice of each axis of a 3D one, side by side."""
    planes = [p.T[::-1] for p in _mid_slices(volume)]
    height = max(p.shape[0] for p in planes)
    return np.concatenate([np.pad(p, ((0, height - p.shape[0]), (0, 2))) for p in planes], axis=1)


def save_step_gif(path: Path, fixed, frames: list, seconds_per_frame: float = 0.25, min_height: int = 192) -> Path:
    """An animated GIF of a registration: each frame shows ``[fixed | warped after step t | |difference|]``.

    Args:
        path: output ``.gif`` (written atomically).
        fixed: ``(1, 1, *S)`` tensor or ``(*S)`` array, intensities in ``[0, 1]``.
        frames: the warped moving image before the first step and after each step, same layout as ``fixed``.
        seconds_per_frame: display time of a frame (the last one is held 4x longer).
        min_height: frames are enlarged (nearest neighbour) to at least this many pixels high.
    """
    from PIL import Image as PILImage

    def array(x) -> np.ndarray:
        return np.squeeze(x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x))

    base = _frame_plane(array(fixed))
    pictures = []
    for frame in frames:
        moved = _frame_plane(array(frame))
        strip = np.concatenate([base, moved, np.abs(base - moved)], axis=1)
        scale = max(1, int(np.ceil(min_height / strip.shape[0])))
        strip = np.kron(np.clip(strip, 0, 1), np.ones((scale, scale)))
        pictures.append(PILImage.fromarray((strip * 255).astype(np.uint8)))
    durations = [int(seconds_per_frame * 1000)] * len(pictures)
    durations[-1] *= 4
    with atomic_output(path) as tmp:
        pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:], duration=durations, loop=0)
    return path
