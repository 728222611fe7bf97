"""Figures of the batch QC report (:mod:`rlreg.pipelines.report`): anatomical planes, checkerboard, edges, deformed
grid, Jacobian, Dice per label, similarity per step, thumbnails; and the held-out Dice curve of a training run
(:func:`save_training_curve`, written by :mod:`rlreg.pipelines.train`).

Orientation. Volumes are first put in an **LPS-ordered array**: the tensor axes are permuted and flipped so that
array axis ``c`` runs along world (LPS) axis ``c`` in the increasing direction, each tensor axis being matched to
the world axis closest to its direction cosine (an oblique grid is shown on its nearest anatomical planes, not
resampled). Planes are then drawn in the radiological convention of Slicer and ITK-SNAP: axial with anterior up,
coronal and sagittal with superior up, the patient's right on the left of the screen, anterior on the left of
sagittal views; letters on the panel edges say so. Pixels are drawn at their size in mm, so the aspect ratio is
right for anisotropic spacing. 2D images are drawn with world ``x`` to the right and ``y`` down (for the identity
direction of a PNG or a plain 2D slice: index ``i`` to the right and ``j`` down, as image viewers do).

Every figure is a :class:`matplotlib.figure.Figure` rendered by the Agg canvas (no pyplot state) and written with
:func:`rlreg.io.atomic_output`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlreg.io import Geometry, atomic_output

__all__ = [
    "Plane",
    "Volume",
    "display_planes",
    "mid_planes",
    "reorient",
    "save_checkerboard",
    "save_dice_bars",
    "save_edges",
    "save_grid",
    "save_images",
    "save_jacobian",
    "save_steps",
    "save_thumbnail",
    "save_training_curve",
]

DPI = 100
"""Resolution of every report PNG: enough to read 2 mm brains, small enough to render a pair in about a second."""
PANEL_INCHES = 2.7
"""Height of one image panel."""
FONT = 9.5
"""Font size (points) of titles and axis labels."""
JACOBIAN_RANGE = (0.0, 2.0)
"""Colour range of the Jacobian map, centred on 1 (no volume change); values outside are clipped."""
EDGE_COLOURS = ("#ff9f1c", "#2ec4b6")
GRID_LINES = 24
"""About this many deformed-grid lines across the longer side of a plane."""
CHECKER_TILES = 8
"""About this many checkerboard tiles across the longer side of a plane."""

# view name -> (normal world axis, (world axis, sign) that runs screen-down, (world axis, sign) that runs screen-right,
#               edge letters left, right, top, bottom). LPS: +x = left, +y = posterior, +z = superior.
_VIEWS_3D = {
    "axial": (2, (1, 1), (0, 1), ("R", "L", "A", "P")),
    "coronal": (1, (2, -1), (0, 1), ("R", "L", "S", "I")),
    "sagittal": (0, (2, -1), (1, 1), ("A", "P", "S", "I")),
}


@dataclass(frozen=True)
class Volume:
    """A scalar or vector image in an LPS-ordered array (see the module docstring).

    Attributes:
        data: ``(*S)`` scalar or ``(C, *S)`` vector array; array axis ``c`` runs along LPS axis ``c``.
        spacing: mm per array axis.
    """

    data: np.ndarray
    spacing: tuple[float, ...]

    @property
    def ndim(self) -> int:
        return len(self.spacing)

    def centre(self) -> tuple[int, ...]:
        return tuple(n // 2 for n in self.data.shape[-self.ndim:])


@dataclass(frozen=True)
class Plane:
    """One 2D view of a :class:`Volume`, ready to draw: row 0 is the top of the screen.

    Attributes:
        name: ``axial``, ``coronal``, ``sagittal`` or ``image`` (2D input).
        data: ``(rows, cols)`` or ``(C, rows, cols)`` array.
        spacing: mm per row and per column.
        down, right: ``(world axis, sign)`` of the screen-down and screen-right directions.
        letters: anatomical letters at the left, right, top and bottom edges (empty for 2D).
    """

    name: str
    data: np.ndarray
    spacing: tuple[float, float]
    down: tuple[int, int]
    right: tuple[int, int]
    letters: tuple[str, ...]

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``imshow`` extent in mm (left, right, bottom, top) with row 0 at the top."""
        rows, cols = self.data.shape[-2:]
        return (0.0, cols * self.spacing[1], rows * self.spacing[0], 0.0)


def reorient(data: np.ndarray, geometry: Geometry) -> Volume:
    """Permute and flip a ``(*S)`` or ``(C, *S)`` array on ``geometry`` into an LPS-ordered :class:`Volume`.

    Tensor axes are matched to world axes by the permutation that maximises the summed absolute direction cosines
    (so two tensor axes never claim the same world axis), then flipped where they run against the world axis.
    Vector components are not touched: an LPS-mm displacement keeps its LPS channels.
    """
    n = geometry.ndim
    lead = data.ndim - n
    linear = geometry.index_to_world()[:n, :n]  # column t = world step of tensor axis t
    cosines = np.abs(linear) / np.linalg.norm(linear, axis=0, keepdims=True)
    world_of = max(itertools.permutations(range(n)), key=lambda p: sum(cosines[p[t], t] for t in range(n)))
    tensor_of = [world_of.index(w) for w in range(n)]
    out = np.transpose(data, (*range(lead), *(lead + t for t in tensor_of)))
    flips = tuple(lead + w for w, t in enumerate(tensor_of) if linear[w, t] < 0)
    if flips:
        out = np.flip(out, axis=flips)
    return Volume(np.ascontiguousarray(out), tuple(float(geometry.spacing[t]) for t in tensor_of))


def mid_planes(volume: Volume, centre: Sequence[int] | None = None) -> list[Plane]:
    """The axial, coronal and sagittal planes through ``centre`` (default: the middle voxel); one plane in 2D."""
    lead = volume.data.ndim - volume.ndim
    if volume.ndim == 2:
        data = np.swapaxes(volume.data, lead, lead + 1)
        return [Plane("image", data, (volume.spacing[1], volume.spacing[0]), (1, 1), (0, 1), ())]
    centre = tuple(volume.centre() if centre is None else centre)
    planes = []
    for name, (normal, down, right, letters) in _VIEWS_3D.items():
        plane = np.take(volume.data, centre[normal], axis=lead + normal)
        # The two remaining world axes are in ascending order; put the screen-down one first.
        if down[0] > right[0]:
            plane = np.swapaxes(plane, lead, lead + 1)
        if down[1] < 0:
            plane = np.flip(plane, axis=lead)
        if right[1] < 0:
            plane = np.flip(plane, axis=lead + 1)
        planes.append(Plane(name, plane, (volume.spacing[down[0]], volume.spacing[right[0]]), down, right, letters))
    return planes


def display_planes(data: np.ndarray, geometry: Geometry | None = None,
                   *, centre: Sequence[int] | None = None) -> list[Plane]:
    """How rlreg shows an array on the screen: :func:`reorient` then :func:`mid_planes`.

    Args:
        data: ``(*S)`` or ``(C, *S)`` array in tensor axis order (SimpleITK's array order, as :class:`Geometry`).
        geometry: its grid; ``None`` (scalar ``data`` only) means identity direction and 1 mm spacing, so a 2D
            array ``(j, i)`` read from a PNG is shown as image viewers show the file (row ``j`` = 0 at the top).
        centre: voxel of the LPS-ordered volume the planes go through (default: the middle).

    Returns:
        The axial, coronal and sagittal planes in 3D (row 0 at the top of the screen, with their edge letters), or
        the one ``image`` plane in 2D.
    """
    if geometry is None:
        n = data.ndim  # a scalar array
        geometry = Geometry(size=tuple(data.shape), spacing=(1.0,) * n, origin=(0.0,) * n,
                            direction=tuple(np.eye(n).ravel().tolist()))
    return mid_planes(reorient(data, geometry), centre)


def window(data: np.ndarray, low: float = 0.5, *, high: float = 99.5) -> tuple[float, float]:
    """Display range: the ``[low, high]`` percentiles of a subsample of ``data`` (robust to a few bright voxels)."""
    flat = data.ravel()
    if flat.size > 1_000_000:
        flat = flat[:: flat.size // 1_000_000]
    lo, hi = (float(v) for v in np.percentile(flat, [low, high]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


# ---------------------------------------------------------------------------------------------------- drawing
def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI)


def _save(fig, path: Path) -> Path:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    return path


def _panel_widths(planes: list[Plane]) -> list[float]:
    """Width / height ratio of each plane in mm, so panels of one row share a height."""
    return [p.extent[1] / p.extent[2] for p in planes]


def _letters(ax, plane: Plane) -> None:
    if not plane.letters:
        return
    style = dict(color="#ffd166", fontsize=8.5, fontweight="bold", transform=ax.transAxes)
    left, right, top, bottom = plane.letters
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)


def _clean_axes(ax) -> None:
    ax.set_axis_off()  # no ticks or spines; cheaper than clearing the ticks one by one


def _grid_figure(rows: int, planes: list[Plane], colorbar: bool = False, title_space: float = 0.28):
    """A figure with ``rows`` x ``len(planes)`` image axes sized to the planes' physical aspect ratios, plus a narrow
    colour-bar column (with room for its labels) when asked."""
    widths = _panel_widths(planes)
    bar, labels, left = (0.16, 0.75, 0.12) if colorbar else (0.0, 0.0, 0.12)
    width = PANEL_INCHES * sum(widths) + left + 0.08 + (bar + 0.1 + labels if colorbar else 0.0)
    fig = _figure(width, PANEL_INCHES * rows + title_space * rows)
    ratios = [w * PANEL_INCHES for w in widths] + ([0.1, bar] if colorbar else [])
    grid = fig.add_gridspec(rows, len(ratios), width_ratios=ratios, left=left / width,
                            right=1 - (labels + 0.02 if colorbar else 0.08) / width, bottom=0.01,
                            top=1 - title_space / fig.get_figheight(), wspace=0.03, hspace=title_space / PANEL_INCHES)
    axes = [[fig.add_subplot(grid[r, c]) for c in range(len(planes))] for r in range(rows)]
    return fig, grid, axes


def _title(ax, text: str) -> None:
    # An explicit y keeps matplotlib from measuring the (hidden) tick labels to place the title: half the draw time.
    ax.set_title(text, fontsize=FONT, y=1.0, pad=3)


def _show(ax, plane: Plane, data: np.ndarray | None = None, **kwargs) -> None:
    ax.imshow(plane.data if data is None else data, extent=plane.extent, origin="upper", interpolation="nearest",
              aspect="equal", **kwargs)
    _clean_axes(ax)


def save_images(path: Path, rows: dict[str, Volume], *, centres: dict[str, Sequence[int]] | None = None,
                windows: dict[str, tuple[float, float]] | None = None) -> Path:
    """One row of mid planes per image (e.g. fixed, moving, warped), each in its own physical aspect, gray scale;
    2D images side by side in a single row.

    Args:
        path: output PNG.
        rows: row title -> scalar :class:`Volume`; volumes may be on different grids (the moving image).
        centres: row title -> centre voxel (default: each volume's middle).
        windows: row title -> display range (default: :func:`window` of that volume).
    """
    centres, windows = centres or {}, windows or {}
    panels = [[(name, plane) for plane in mid_planes(v, centres.get(name))] for name, v in rows.items()]
    if all(v.ndim == 2 for v in rows.values()):
        panels = [[row[0] for row in panels]]
    fig, _, axes = _grid_figure(len(panels), [plane for _, plane in panels[0]])
    for r, row in enumerate(panels):
        for c, (name, plane) in enumerate(row):
            lo, hi = windows.get(name) or window(rows[name].data)
            ax = axes[r][c]
            _show(ax, plane, cmap="gray", vmin=lo, vmax=hi)
            _letters(ax, plane)
            _title(ax, f"{name}: {plane.name}" if plane.name != "image" else name)
    return _save(fig, path)


def _checker(plane: Plane, tiles: int = CHECKER_TILES) -> np.ndarray:
    rows, cols = plane.data.shape[-2:]
    size = max(rows * plane.spacing[0], cols * plane.spacing[1]) / tiles
    r = (np.arange(rows) + 0.5) * plane.spacing[0] // size
    c = (np.arange(cols) + 0.5) * plane.spacing[1] // size
    return ((r[:, None] + c[None, :]) % 2).astype(bool)


def save_checkerboard(path: Path, fixed: Volume, *, warped: Volume, fixed_window: tuple[float, float],
                      warped_window: tuple[float, float]) -> Path:
    """Checkerboard of the fixed and warped images (same grid), each scaled to ``[0, 1]`` by its own window."""
    f_planes, w_planes = mid_planes(fixed), mid_planes(warped)
    fig, _, axes = _grid_figure(1, f_planes)
    for c, (fp, wp) in enumerate(zip(f_planes, w_planes, strict=True)):
        f = np.clip((fp.data - fixed_window[0]) / (fixed_window[1] - fixed_window[0]), 0, 1)
        w = np.clip((wp.data - warped_window[0]) / (warped_window[1] - warped_window[0]), 0, 1)
        ax = axes[0][c]
        _show(ax, fp, np.where(_checker(fp), w, f), cmap="gray", vmin=0, vmax=1)
        _letters(ax, fp)
        _title(ax, f"fixed | warped: {fp.name}" if fp.name != "image" else "fixed | warped")
    return _save(fig, path)


def _otsu(values: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold (maximum between-class variance) of a 1-D sample."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist).astype(np.float64)
    total = weight[-1]
    mean = np.cumsum(hist * centres)
    between = (mean[-1] * weight / total - mean) ** 2 / np.maximum(weight * (total - weight), 1e-12)
    return float(centres[int(np.argmax(between[:-1]))])


def edge_levels(volume: Volume) -> list[float]:
    """Two contour levels that outline a volume: Otsu's background threshold and the one among the tissue above it."""
    flat = volume.data.ravel()
    if flat.size > 500_000:
        flat = flat[:: flat.size // 500_000]
    first = _otsu(flat)
    tissue = flat[flat > first]
    levels = [first]
    if tissue.size > 100 and tissue.max() > tissue.min():
        levels.append(_otsu(tissue))
    return sorted(set(levels))


def save_edges(path: Path, fixed: Volume, *, warped: Volume, warped_window: tuple[float, float]) -> Path:
    """The warped image with the fixed image's edges (iso-contours at :func:`edge_levels`) drawn on it."""
    from scipy import ndimage

    levels = edge_levels(fixed)
    f_planes, w_planes = mid_planes(fixed), mid_planes(warped)
    fig, _, axes = _grid_figure(1, f_planes)
    for c, (fp, wp) in enumerate(zip(f_planes, w_planes, strict=True)):
        ax = axes[0][c]
        _show(ax, wp, cmap="gray", vmin=warped_window[0], vmax=warped_window[1])
        rows, cols = fp.data.shape
        y = (np.arange(rows) + 0.5) * fp.spacing[0]
        x = (np.arange(cols) + 0.5) * fp.spacing[1]
        smooth = ndimage.gaussian_filter(fp.data.astype(np.float32), 0.6)
        for level, colour in zip(levels, EDGE_COLOURS, strict=False):
            ax.contour(x, y, smooth, levels=[level], colors=colour, linewidths=0.8)
        ax.set_xlim(fp.extent[0], fp.extent[1])
        ax.set_ylim(fp.extent[2], fp.extent[3])
        _letters(ax, fp)
        _title(ax, f"fixed edges on warped: {fp.name}" if fp.name != "image" else "fixed edges on warped",
                     )
    return _save(fig, path)


def save_grid(path: Path, displacement: Volume, *, background: Volume, background_window: tuple[float, float]) -> Path:
    """Grid lines of the fixed grid moved by a displacement, over the fixed image, on each mid plane.

    Args:
        displacement: ``(ndim, *S)`` LPS-mm displacement (the deformable part) as an LPS-ordered :class:`Volume`;
            a grid point at ``p`` is drawn at ``p + d(p)`` projected on the plane (the out-of-plane part is not
            shown). Crossing lines mean folding.
        background: the fixed image on the same grid.
    """
    from matplotlib.collections import LineCollection

    d_planes, b_planes = mid_planes(displacement), mid_planes(background)
    fig, _, axes = _grid_figure(1, b_planes)
    for c, (dp, bp) in enumerate(zip(d_planes, b_planes, strict=True)):
        ax = axes[0][c]
        _show(ax, bp, cmap="gray", vmin=background_window[0], vmax=background_window[1], alpha=0.55)
        rows, cols = bp.data.shape
        y = (np.arange(rows) + 0.5) * bp.spacing[0]
        x = (np.arange(cols) + 0.5) * bp.spacing[1]
        down = dp.down[1] * dp.data[dp.down[0]]
        right = dp.right[1] * dp.data[dp.right[0]]
        py = y[:, None] + down
        px = x[None, :] + right
        step = max(1, round(max(rows, cols) / GRID_LINES))
        lines = [np.stack([px[r], py[r]], axis=1) for r in range(step // 2, rows, step)]
        lines += [np.stack([px[:, k], py[:, k]], axis=1) for k in range(step // 2, cols, step)]
        ax.add_collection(LineCollection(lines, colors="#e63946", linewidths=0.6))
        ax.set_xlim(bp.extent[0], bp.extent[1])
        ax.set_ylim(bp.extent[2], bp.extent[3])
        _letters(ax, bp)
        largest = float(np.sqrt(down**2 + right**2).max())
        _title(ax, f"{bp.name}: max in-plane {largest:.1f} mm" if bp.name != "image"
                     else f"max {largest:.1f} mm")
    return _save(fig, path)


def save_jacobian(path: Path, jacobian: Volume) -> Path:
    """The Jacobian determinant on a diverging map centred on 1 (blue shrink, red growth); ``J <= 0`` in black."""
    from matplotlib.colors import ListedColormap, TwoSlopeNorm

    planes = mid_planes(jacobian)
    fig, grid, axes = _grid_figure(1, planes, colorbar=True)
    norm = TwoSlopeNorm(vcenter=1.0, vmin=JACOBIAN_RANGE[0], vmax=JACOBIAN_RANGE[1])
    folding = ListedColormap(["black"])
    image = None
    for c, plane in enumerate(planes):
        ax = axes[0][c]
        image = ax.imshow(plane.data, extent=plane.extent, origin="upper", interpolation="nearest", cmap="RdBu_r",
                          norm=norm)
        folded = plane.data <= 0
        if folded.any():
            ax.imshow(np.ma.masked_where(~folded, folded.astype(float)), extent=plane.extent, origin="upper",
                      interpolation="nearest", cmap=folding, vmin=0, vmax=1)
        _clean_axes(ax)
        _letters(ax, plane)
        _title(ax, f"{plane.name}: {int(folded.sum())} voxels J≤0" if plane.name != "image"
                     else f"{int(folded.sum())} pixels J≤0")
    bar_ax = fig.add_subplot(grid[0, len(planes) + 1])
    bar = fig.colorbar(image, cax=bar_ax, extend="both")
    bar.ax.tick_params(labelsize=7)
    bar.set_label("Jacobian determinant", fontsize=8)
    return _save(fig, path)


def save_dice_bars(path: Path, labels: Sequence[str], *, values: Sequence[float]) -> Path:
    """Dice of each label as bars sorted from worst to best, with the mean as a dashed line."""
    order = np.argsort(np.asarray(values, dtype=np.float64), kind="stable")
    names = [str(labels[i]) for i in order]
    scores = np.asarray(values, dtype=np.float64)[order]
    count = len(scores)
    height = 2.7
    fig = _figure(min(14.0, max(5.0, 0.13 * count + 1.2)), height)
    ax = fig.add_axes((0.7 / fig.get_figwidth(), 0.45 / height, 1 - 0.85 / fig.get_figwidth(), 1 - 0.75 / height))
    ax.bar(np.arange(count), scores, color="#457b9d", width=0.8)
    mean = float(np.mean(scores)) if count else float("nan")
    ax.axhline(mean, color="#e63946", linestyle="--", linewidth=1, label=f"mean {mean:.3f}")
    # One text per label instead of one tick each: a matplotlib tick costs ~10x a text, and 100+ labels are common.
    ax.set_xticks([])
    below = ax.get_xaxis_transform()
    for x, name in enumerate(names):
        ax.text(x, -0.02, name, transform=below, rotation=90, ha="center", va="top",
                fontsize=6.5 if count > 40 else 8)
    ax.set_xlim(-0.6, count - 0.4)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice", fontsize=FONT)
    _title(ax, f"Dice of each of {count} labels, sorted (label values under the bars)")
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def save_steps(path: Path, steps: Sequence[dict[str, float]], *, levels: Sequence[int] = ()) -> Path:
    """The similarity (``lncc``, higher is better) or the optimiser's ``loss`` (lower is better) after each step,
    plus ``dice`` when recorded.

    Args:
        steps: ``rlreg.json["steps"]``: ``{"step": t, "lncc" or "loss": value[, "dice": value]}``.
        levels: steps at which a multi-resolution optimiser moved to a finer level (dotted lines; the loss of
            different levels is not comparable, so it jumps there).
    """
    fig = _figure(5.6, 2.9)
    ax = fig.add_axes((0.14, 0.17, 0.72 if any("dice" in s for s in steps) else 0.83, 0.72))
    key = "lncc" if any("lncc" in s for s in steps) else "loss"
    points = [(s["step"], s[key]) for s in steps if s.get(key) is not None]
    if points:
        x, y = zip(*points, strict=True)
        ax.plot(x, y, color="#1d3557", marker="o" if len(x) <= 40 else None, markersize=3, linewidth=1.2)
    for number, level in enumerate(levels, start=2):
        ax.axvline(level, color="#57606a", linestyle=":", linewidth=1.2)
        ax.text(level, 0.03, f" level {number}", transform=ax.get_xaxis_transform(), fontsize=FONT - 1,
                va="bottom", color="#57606a")
    ax.set_xlabel("step", fontsize=FONT)
    ax.set_ylabel("LNCC (higher is better)" if key == "lncc" else "loss (lower is better)", fontsize=FONT)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    dice = [(s["step"], s["dice"]) for s in steps if s.get("dice") is not None]
    if dice:
        twin = ax.twinx()
        x, y = zip(*dice, strict=True)
        twin.plot(x, y, color="#e63946", linewidth=1.2)
        twin.set_ylabel("Dice", fontsize=FONT, color="#e63946")
        twin.tick_params(labelsize=8)
    return _save(fig, path)


def save_training_curve(path: Path, history: Sequence[dict[str, float]], *, name: str = "dice") -> Path:
    """Held-out score (``name``, e.g. Dice) of a training run against its environment steps: before the first step,
    the best over the agent's steps (the step count marked at each point) and after the evaluation's last step.

    Args:
        history: the run's ``metrics.jsonl`` records, ``{"step", "dice0", "dice_best", "best_step",
            "dice_final"}`` (:func:`rlreg.pipelines.train.train`), the score's keys prefixed by ``name``.
    """
    fig = _figure(5.6, 3.0)
    ax = fig.add_axes((0.13, 0.16, 0.83, 0.74))
    records = sorted(history, key=lambda r: r["step"])
    if records:
        x = [r["step"] for r in records]
        ax.plot(x, [r[f"{name}0"] for r in records], color="#57606a", linestyle="--", linewidth=1.0,
                label="before the first step")
        ax.plot(x, [r[f"{name}_final"] for r in records], color="#e63946", linewidth=1.0, label="after the last step")
        ax.plot(x, [r[f"{name}_best"] for r in records], color="#1d3557", marker="o" if len(x) <= 40 else None,
                markersize=3, linewidth=1.4, label="best over the steps (at the step marked)")
        if len(x) <= 40:
            for record in (r for r in records if r.get("best_step")):
                ax.annotate(str(record["best_step"]), (record["step"], record[f"{name}_best"]),
                            textcoords="offset points", xytext=(0, 4), ha="center", fontsize=FONT - 3,
                            color="#1d3557")
        ax.legend(fontsize=8, loc="best")  # the curves fill different corners: rising from scratch, flat fine-tuning
    ax.set_xlabel("environment steps (batches of pairs)", fontsize=FONT)
    ax.set_ylabel("held-out Dice" if name == "dice" else f"held-out {name}", fontsize=FONT)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def save_thumbnail(path: Path, volume: Volume, *, value_window: tuple[float, float], height: int = 72) -> Path:
    """A small gray PNG of the coronal mid plane (the image itself in 2D), ``height`` pixels high, true aspect."""
    from PIL import Image as PILImage

    planes = mid_planes(volume)
    plane = next((p for p in planes if p.name == "coronal"), planes[0])
    lo, hi = value_window
    grey = (np.clip((plane.data - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    width = max(1, round(height * plane.extent[1] / plane.extent[2]))
    picture = PILImage.fromarray(np.ascontiguousarray(grey)).resize((width, height), PILImage.Resampling.BILINEAR)
    with atomic_output(path) as tmp:
        picture.save(tmp, format="PNG")
    return path
