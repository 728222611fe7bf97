"""Pictures a person would rather look at than read: orthogonal-slice overlays of a registration.

Planes are oriented by :func:`rlreg.pipelines.qc_figures.display_planes`, the one place that decides how rlreg shows
a 2D image or a 3D plane (the QC report's pair pages use it too).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlreg.io import Geometry, atomic_output
from rlreg.pipelines.qc_figures import Plane, display_planes

__all__ = ["save_registration_overview", "save_step_gif"]

OUTSIDE_GRAY = (208, 208, 208)
"""Colour of the overview's Jacobian row outside ``jacobian_support``."""
LETTER_COLOUR = (255, 209, 102)
"""Colour of the anatomical letters at the panel edges (the QC report's)."""


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


def _pixels_per_mm(planes: list[Plane], panel_size: int) -> float:
    """Screen pixels per mm: the finest spacing gets a whole number of pixels (crisp isotropic grids), and the
    longest plane side reaches at least ``panel_size`` pixels."""
    finest = min(min(p.spacing) for p in planes)
    longest = max(max(p.extent[1], p.extent[2]) for p in planes) / finest  # in voxels of the finest spacing
    return max(1, int(np.ceil(panel_size / longest))) / finest


def _panel_size(plane: Plane, per_mm: float) -> tuple[int, int]:
    """``(width, height)`` in pixels of a plane's panel, at the physical aspect ratio of its voxels."""
    return max(1, round(plane.extent[1] * per_mm)), max(1, round(plane.extent[2] * per_mm))


def _boundaries(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Label edges of a ``(rows, cols)`` plane enlarged (nearest) to ``size`` = (width, height): one pixel wide
    whatever the enlargement."""
    from PIL import Image as PILImage

    nearest = PILImage.Resampling.NEAREST
    big = np.asarray(PILImage.fromarray(np.ascontiguousarray(labels, dtype=np.int32)).resize(size, nearest))
    edge = np.zeros(big.shape, dtype=bool)
    for axis in range(2):
        edge |= np.diff(big, axis=axis, prepend=np.take(big, [0], axis=axis)) != 0
    return edge


def _draw_letters(draw, box: tuple[int, int, int, int], letters: tuple[str, ...], font) -> None:
    """Anatomical letters (left, right, top, bottom) just inside the edges of the panel ``box`` (x0, y0, x1, y1)."""
    if not letters:
        return
    x0, y0, x1, y1 = box
    left, right, top, bottom = letters
    xm, ym = (x0 + x1) // 2, (y0 + y1) // 2
    style = dict(fill=LETTER_COLOUR, font=font, stroke_width=1, stroke_fill="black")  # readable on any background
    draw.text((x0 + 3, ym), left, anchor="lm", **style)
    draw.text((x1 - 3, ym), right, anchor="rm", **style)
    draw.text((xm, y0 + 2), top, anchor="mt", **style)
    draw.text((xm, y1 - 2), bottom, anchor="mb", **style)


def save_registration_overview(path: Path, rows: dict[str, np.ndarray], *, contours: np.ndarray | None = None,
                               title: str = "", jacobian: np.ndarray | None = None, panel_size: int = 240,
                               geometry: Geometry | None = None,
                               jacobian_support: np.ndarray | None = None) -> Path:
    """Write a PNG grid: one row per named image (e.g. fixed, moving, warped), one column per plane.

    The planes are the QC report's (:func:`rlreg.pipelines.qc_figures.display_planes`): a 2D image as an image
    viewer shows it; a 3D volume as its axial, coronal and sagittal mid planes in the radiological convention, with
    the plane names above the columns and R/L, A/P, S/I letters at the panel edges. Panels keep the physical aspect
    ratio of the voxels. Drawn with Pillow alone, without matplotlib
    (docs/decisions.md#overview-figure-drawn-with-pillow).

    Args:
        path: output PNG (written atomically).
        rows: name -> ``(*S)`` 2D or 3D array in tensor axis order, all on the grid ``geometry``; each row is shown
            in gray from 0 to its 99.5th percentile.
        contours: optional fixed label map; its boundaries are drawn in orange on every panel so misalignment shows.
        title: text above the grid.
        jacobian: optional Jacobian determinant map on the same grid, added as a last row: log2 of the determinant
            from -1 (blue) through 0 (white) to +1 (red), folding (determinant <= 0) in black.
        panel_size: panels are enlarged (bilinear for images, nearest for labels and the Jacobian) until the longest
            plane side reaches at least this many pixels.
        geometry: the grid of the arrays (the fixed image's); ``None``: identity direction, 1 mm spacing.
        jacobian_support: optional boolean ``(*S)`` mask: the Jacobian is drawn there and in :data:`OUTSIDE_GRAY`
            elsewhere (where the field was not fitted but only continued, its determinant draws stripes).
    """
    from PIL import Image as PILImage
    from PIL import ImageDraw

    entries: list[tuple[str, list[Plane], list[np.ndarray], int, bool]] = []  # name, planes, RGB, resample, bar
    for name, array in rows.items():
        volume = np.asarray(array, dtype=np.float32)
        vmax = float(np.percentile(volume, 99.5)) or 1.0
        planes = display_planes(volume, geometry)
        entries.append((name, planes, [_gray(p.data, vmax) for p in planes], PILImage.Resampling.BILINEAR, False))
    if jacobian is not None:  # nearest: interpolated colours would invent determinants between the voxels'
        planes = display_planes(np.asarray(jacobian, dtype=np.float32), geometry)
        colours = [_jacobian_colours(p.data) for p in planes]
        if jacobian_support is not None:
            for rgb, inside in zip(colours, display_planes(np.asarray(jacobian_support, dtype=bool), geometry),
                                   strict=True):
                rgb[~inside.data] = OUTSIDE_GRAY
        entries.append(("log2 Jacobian", planes, colours, PILImage.Resampling.NEAREST, True))
    layout = entries[0][1]
    per_mm = _pixels_per_mm(layout, panel_size)
    sizes = [_panel_size(p, per_mm) for p in layout]
    boundaries = None
    if contours is not None:
        boundaries = [_boundaries(p.data, s) for p, s in zip(display_planes(np.asarray(contours), geometry), sizes,
                                                              strict=True)]
    font, small = _font(16), _font(14)
    gap, label_width = 8, 26
    title_height = 30 if title else gap
    header = 0 if layout[0].name == "image" else 20  # the plane names above the columns
    height = max(s[1] for s in sizes)
    legend = 0 if jacobian is None else 48  # the Jacobian row's colour bar and its ticks
    canvas = PILImage.new("RGB", (label_width + sum(s[0] for s in sizes) + gap * (len(sizes) + 1) + legend,
                                  title_height + header + len(entries) * (height + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((canvas.width // 2, title_height // 2), title, fill="black", font=font, anchor="mm")
    left = label_width + gap
    for plane, (width, _) in zip(layout, sizes, strict=True):
        if header:
            draw.text((left + width // 2, title_height + header // 2), plane.name, fill="black", font=small,
                      anchor="mm")
        left += width + gap
    for r, (name, planes, pictures, resample, colour_bar) in enumerate(entries):
        top = title_height + header + r * (height + gap)
        label = PILImage.new("RGB", (height, label_width), "white")
        ImageDraw.Draw(label).text((height // 2, label_width // 2), name, fill="black", font=small, anchor="mm")
        canvas.paste(label.rotate(90, expand=True), (0, top))
        left = label_width + gap
        for c, (plane, picture) in enumerate(zip(planes, pictures, strict=True)):
            panel = PILImage.fromarray(np.ascontiguousarray(picture)).resize(sizes[c], resample)
            if boundaries is not None:
                mask = PILImage.fromarray(boundaries[c].astype(np.uint8) * 200)
                panel.paste(PILImage.new("RGB", panel.size, (255, 128, 13)), (0, 0), mask)
            y = top + height - panel.height
            canvas.paste(panel, (left, y))
            _draw_letters(draw, (left, y, left + panel.width, y + panel.height), plane.letters, small)
            left += panel.width + gap
        if colour_bar:  # log2 J from +1 (top) to -1
            ramp = np.linspace(2.0, 0.5, height)[:, None].repeat(12, axis=1)
            canvas.paste(PILImage.fromarray(_jacobian_colours(ramp)), (left, top))
            for text, y in (("+1", top + 8), ("0", top + height // 2), ("-1", top + height - 8)):
                draw.text((left + 16, y), text, fill="black", font=small, anchor="lm")
    with atomic_output(path) as tmp:
        canvas.save(tmp, format="PNG", compress_level=3)  # half the time of the default 6, 1 % larger
    return path


def _frame_plane(volume: np.ndarray, geometry: Geometry | None) -> np.ndarray:
    """The picture of one frame: a 2D image itself, or its axial, coronal and sagittal mid planes side by side
    (oriented by :func:`rlreg.pipelines.qc_figures.display_planes`)."""
    planes = [p.data for p in display_planes(volume, geometry)]
    height = max(p.shape[0] for p in planes)
    return np.concatenate([np.pad(p, ((0, height - p.shape[0]), (0, 2))) for p in planes], axis=1)


def save_step_gif(path: Path, fixed, *, frames: list, seconds_per_frame: float = 0.25, min_height: int = 192,
                  geometry: Geometry | None = None) -> Path:
    """An animated GIF of a registration: each frame shows ``[fixed | warped after step t | |difference|]``.

    Args:
        path: output ``.gif`` (written atomically).
        fixed: ``(1, 1, *S)`` tensor or ``(*S)`` array in tensor axis order, intensities in ``[0, 1]``.
        frames: the warped moving image before the first step and after each step, same layout as ``fixed``.
        seconds_per_frame: display time of a frame (the last one is held 4x longer).
        min_height: frames are enlarged (nearest neighbour) to at least this many pixels high.
        geometry: the grid of ``fixed`` (which sets the display orientation); ``None``: identity direction.
    """
    from PIL import Image as PILImage

    def array(x) -> np.ndarray:
        return np.squeeze(x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x))

    base = _frame_plane(array(fixed), geometry)
    pictures = []
    for frame in frames:
        moved = _frame_plane(array(frame), geometry)
        strip = np.concatenate([base, moved, np.abs(base - moved)], axis=1)
        scale = max(1, int(np.ceil(min_height / strip.shape[0])))
        strip = np.kron(np.clip(strip, 0, 1), np.ones((scale, scale)))
        pictures.append(PILImage.fromarray((strip * 255).astype(np.uint8)))
    durations = [int(seconds_per_frame * 1000)] * len(pictures)
    durations[-1] *= 4
    with atomic_output(path) as tmp:
        pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:], duration=durations, loop=0)
    return path
