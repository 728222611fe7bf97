"""Pictures a person would rather look at than read: orthogonal-slice overlays of a registration."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlreg.io import atomic_output

__all__ = ["save_registration_overview"]


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
    edges = None
    if contours is not None:
        edges = [np.asarray(s) for s in _mid_slices(contours)]
    for r, name in enumerate(names):
        vmax = float(np.percentile(rows[name], 99.5)) or 1.0
        for c, plane in enumerate(_mid_slices(rows[name])):
            ax = axes[r, c]
            ax.imshow(plane.T, cmap="gray", origin="lower", vmin=0.0, vmax=vmax, interpolation="nearest")
            if edges is not None:
                boundary = np.zeros(edges[c].shape, dtype=bool)
                for axis in range(2):
                    boundary |= np.diff(edges[c], axis=axis, prepend=np.take(edges[c], [0], axis=axis)) != 0
                ax.contour(boundary.T, levels=[0.5], colors="tab:orange", linewidths=0.4, origin="lower")
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
