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


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 (no FreeType default): the fixed bitmap font
        return ImageFont.load_default()


def _gray(plane: np.ndarray, vmax: float) -> np.ndarray:
    """``(H, W)`` float -> ``(H, W, 3)`` uint8 on a gray ramp from 0 to ``vmax``."""
    level = np.clip(plane / vmax, 0.0, 1.0) * 255.0
    return np.repeat(level.astype(np.uint8)[..., None], 3, axis=-1)


def _jacobian_colours(plane: np.ndarray) -> np.ndarray:
    """``(H, W)`` Jacobian determinants -> ``(H, W, 3)`` uint8: log2 of the determinant from -1 (blue, halved
    volume) through 0 (white) to +1 (red, doubled volume); folding (determinant <= 0) black."""
    log = np.clip(np.log2(np.clip(plane, 1e-6, None)), -1.0, 1.0)
    red = np.where(log < 0, 1.0 + log, 1.0)
    blue = np.where(log > 0, 1.0 - log, 1.0)
    green = 1.0 - np.abs(log)
    rgb = (np.stack([red, green, blue], axis=-1) * 255.0).astype(np.uint8)
    rgb[plane <= 0] = 0
    return rgb


def save_registration_overview(path: Path, rows: dict[str, np.ndarray], contours: np.ndarray | None = None,
                               title: str = "", jacobian: np.ndarray | None = None, panel_size: int = 240) -> Path:
    """Write a PNG grid: one row per named image (e.g. fixed, moving, warped), one column per mid slice.

    Drawn with Pillow alone (about 0.1 s for a 2 mm brain, PNG encoding included; matplotlib took about 1 s, plus
    1 s to import).

    Args:
        path: output PNG (written atomically).
        rows: name -> 2D or 3D array, all on the fixed grid; each row is shown in gray from 0 to its 99.5th
            percentile.
        contours: optional fixed label map; its boundaries are drawn in orange on every panel so misalignment shows.
        title: text above the grid.
        jacobian: optional Jacobian determinant map on the same grid, added as a last row: log2 of the determinant
            from -1 (blue) through 0 (white) to +1 (red), folding (determinant <= 0) in black.
        panel_size: each slice is enlarged (an integer factor, bilinear for images, nearest for labels) until its
            longer side reaches at least this many pixels.
    """
    from PIL import Image as PILImage
    from PIL import ImageDraw

    names = list(rows)
    entries: list[tuple[str, list[np.ndarray], int, bool]] = []  # name, RGB slices, how to enlarge, colour bar
    for name in names:
        volume = np.asarray(rows[name], dtype=np.float32)
        vmax = float(np.percentile(volume, 99.5)) or 1.0
        entries.append((name, [_gray(p, vmax) for p in _mid_slices(volume)], PILImage.BILINEAR, False))
    if jacobian is not None:  # nearest: interpolated colours would invent determinants between the voxels'
        entries.append(("log2 Jacobian", [_jacobian_colours(p) for p in _mid_slices(np.asarray(jacobian))],
                        PILImage.NEAREST, True))
    shapes = [p.shape[:2] for p in entries[0][1]]
    scale = max(1, int(np.ceil(panel_size / max(max(s) for s in shapes))))
    boundaries = None
    if contours is not None:  # label edges on the enlarged grid: one pixel wide whatever the scale
        boundaries = []
        for labels in _mid_slices(np.asarray(contours)):
            big = np.kron(labels, np.ones((scale, scale), dtype=labels.dtype))
            edge = np.zeros(big.shape, dtype=bool)
            for axis in range(2):
                edge |= np.diff(big, axis=axis, prepend=np.take(big, [0], axis=axis)) != 0
            boundaries.append(_picture(edge))
    font, small = _font(16), _font(14)
    gap, label_width = 8, 26
    title_height = 30 if title else gap
    widths = [s[0] * scale for s in shapes]  # a slice (x, y) is shown with x across and y up
    height = max(s[1] for s in shapes) * scale
    legend = 0 if jacobian is None else 48  # the Jacobian row's colour bar and its ticks
    canvas = PILImage.new("RGB", (label_width + sum(widths) + gap * (len(widths) + 1) + legend,
                                  title_height + len(entries) * (height + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((canvas.width // 2, title_height // 2), title, fill="black", font=font, anchor="mm")
    for r, (name, planes, resample, colour_bar) in enumerate(entries):
        top = title_height + r * (height + gap)
        label = PILImage.new("RGB", (height, label_width), "white")
        ImageDraw.Draw(label).text((height // 2, label_width // 2), name, fill="black", font=small, anchor="mm")
        canvas.paste(label.rotate(90, expand=True), (0, top))
        left = label_width + gap
        for c, plane in enumerate(planes):
            picture = _picture(plane)
            panel = PILImage.fromarray(picture).resize((picture.shape[1] * scale, picture.shape[0] * scale), resample)
            if boundaries is not None:
                mask = PILImage.fromarray(boundaries[c].astype(np.uint8) * 200)
                panel.paste(PILImage.new("RGB", panel.size, (255, 128, 13)), (0, 0), mask)
            canvas.paste(panel, (left, top + height - panel.height))
            left += panel.width + gap
        if colour_bar:  # log2 J from +1 (top) to -1
            ramp = np.linspace(2.0, 0.5, height)[:, None].repeat(12, axis=1)
            canvas.paste(PILImage.fromarray(_jacobian_colours(ramp)), (left, top))
            for text, y in (("+1", top + 8), ("0", top + height // 2), ("-1", top + height - 8)):
                draw.text((left + 16, y), text, fill="black", font=small, anchor="lm")
    with atomic_output(path) as tmp:
        canvas.save(tmp, format="PNG", compress_level=3)  # half the time of the default 6, 1 % larger
    return path


def _picture(plane: np.ndarray) -> np.ndarray:
    """A slice ``(x, y[, 3])`` as picture rows: ``y`` up the page, ``x`` across."""
    return np.ascontiguousarray(np.swapaxes(plane, 0, 1)[::-1])


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
