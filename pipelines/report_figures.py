"""The figures of one finished pair in the QC report (drawn by :mod:`rlreg.pipelines.qc_figures`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rlreg.io import InputError
from rlreg.pipelines.report_data import PairEntry, finite

__all__ = ["FIGURES", "input_path", "pair_figures"]



def _read(path: Path):
    """``(array in tensor order, Geometry)`` of an image file, without the value checks of a registration input."""
    from rlreg.io import read_image

    image = read_image(path, dtype=None, check_values=False)
    return image.data[0, 0].numpy(), image.geometry


def input_path(entry: PairEntry, key: str) -> Path | None:
    """An input's path from ``rlreg.json`` (``inputs.<key>.path``), else from ``batch.json``."""
    inputs = (entry.record or {}).get("inputs") or {}
    value = (inputs.get(key) or {}).get("path") if isinstance(inputs.get(key), dict) else None
    value = value or entry.pair.get(key)
    return Path(value) if value else None


def _deformable_part(warp_path: Path, geometry, record: dict[str, Any]) -> np.ndarray:
    """The deformable part of ``warp.nii.gz``'s total field (:func:`rlreg.transforms.deformable_part`), with the
    affine of ``rlreg.json``'s ``method.affine_matrix_lps``."""
    from rlreg.transforms import deformable_part, read_transform

    total = read_transform(warp_path, geometry)[0].numpy()
    return deformable_part(total, geometry, (record.get("method") or {}).get("affine_matrix_lps"))


def _label_dice(entry: PairEntry) -> tuple[list[str], list[float], str]:
    """Per-label Dice: from ``evaluation.json`` when it has them, else ``warped_seg`` vs the fixed segmentation."""
    labels = entry.evaluation.get("labels")
    if isinstance(labels, dict):
        scored = [(str(k), finite(v.get("dice"))) for k, v in labels.items() if isinstance(v, dict)]
        pairs = [(k, v) for k, v in scored if v is not None]
        if pairs:
            return [k for k, _ in pairs], [v for _, v in pairs], "evaluation.json"
    fixed_seg = input_path(entry, "fixed_seg")
    warped_seg = entry.folder / "warped_seg.nii.gz"
    if fixed_seg is None or not fixed_seg.is_file() or not warped_seg.is_file():
        return [], [], ""
    from rlreg.metrics import dice_per_label

    values, labels_ = dice_per_label(_read(warped_seg)[0], _read(fixed_seg)[0])
    keep = ~np.isnan(values.numpy())
    return ([str(int(v)) for v in labels_.numpy()[keep]], [float(v) for v in values.numpy()[keep]],
            "warped_seg.nii.gz vs the fixed segmentation")


FIGURES = {
    "images": "Fixed, moving and warped images: mid planes. The moving image is shown on its own grid, as it is; "
              "fixed and warped share the fixed grid.",
    "checkerboard": "Checkerboard of the fixed and warped images: edges should run on across the tiles.",
    "edges": "Edges of the fixed image (iso-contours) drawn on the warped image.",
    "grid": "The fixed grid moved by the deformable part of the transform (affine removed), over the fixed image: "
            "crossing lines mean folding.",
    "jacobian": "Jacobian determinant of the total map (affine included): blue shrinks, red grows, white keeps "
                "volume; black marks folding (J ≤ 0).",
    "dice": "Dice per label after registration, sorted from worst to best.",
    "steps": "Similarity of the fixed and warped images (LNCC, higher is better) after each step of the agent.",
}


def pair_figures(entry: PairEntry, folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Draw every figure of a finished pair into ``folder``; a figure whose inputs are missing or unreadable is
    skipped with a note, so one damaged pair never stops the report."""
    from rlreg.pipelines import qc_figures as qf

    figures: dict[str, Path] = {}
    notes: list[str] = []

    def attempt(name: str, draw: Callable[[], Path | None]) -> None:
        try:
            path = draw()
        except Exception as err:  # any failure is reported on the page, not raised
            notes.append(f"{name}: not drawn ({type(err).__name__}: {err})")
            return
        if path is not None:
            figures[name] = path

    loaded: dict[str, Any] = {}

    def volume(name: str, path: Path | None):
        if name not in loaded:
            if path is None or not path.exists():
                raise FileNotFoundError(f"{path or name} not found")
            data, geometry = _read(path)
            loaded[name] = (qf.reorient(data.astype(np.float32), geometry), geometry)
        return loaded[name]

    def images() -> Path:
        rows, windows = {}, {}
        fixed_path = input_path(entry, "fixed")
        moving_path = input_path(entry, "moving")
        for name, path in (("fixed", fixed_path), ("moving", moving_path),
                           ("warped", entry.folder / "warped.nii.gz")):
            try:
                rows[name] = volume(name, path)[0]
            except (OSError, InputError, RuntimeError) as err:
                notes.append(f"{name} image: not shown ({err})")
        if "moving" in rows:
            windows["moving"] = windows["warped"] = qf.window(rows["moving"].data)
        return qf.save_images(folder / "images.png", rows, windows=windows)

    def checkerboard() -> Path:
        fixed, warped = volume("fixed", input_path(entry, "fixed"))[0], volume("warped", entry.folder /
                                                                                 "warped.nii.gz")[0]
        return qf.save_checkerboard(folder / "checkerboard.png", fixed, warped=warped,
                                    fixed_window=qf.window(fixed.data), warped_window=qf.window(warped.data))

    def edges() -> Path:
        fixed, warped = volume("fixed", input_path(entry, "fixed"))[0], volume("warped", entry.folder /
                                                                                 "warped.nii.gz")[0]
        return qf.save_edges(folder / "edges.png", fixed, warped=warped, warped_window=qf.window(warped.data))

    def grid() -> Path:
        fixed, geometry = volume("warped", entry.folder / "warped.nii.gz")
        background = loaded["fixed"][0] if "fixed" in loaded else fixed
        d = _deformable_part(entry.folder / "warp.nii.gz", geometry, entry.record or {})
        return qf.save_grid(folder / "grid.png", qf.reorient(d.astype(np.float32), geometry), background=background,
                            background_window=qf.window(background.data))

    def jacobian() -> Path:
        return qf.save_jacobian(folder / "jacobian.png", volume("jacobian", entry.folder / "jacdet.nii.gz")[0])

    def dice() -> Path | None:
        labels, values, source = _label_dice(entry)
        if not labels:
            return None
        notes.append(f"Dice per label from {source}.")
        return qf.save_dice_bars(folder / "dice.png", labels, values=values)

    def steps() -> Path | None:
        curve = [s for s in (entry.record or {}).get("steps") or [] if isinstance(s, dict) and "step" in s]
        config = ((entry.record or {}).get("method") or {}).get("config") or {}
        iterations = config.get("iterations") if isinstance(config, dict) else None
        levels = np.cumsum(iterations)[:-1].tolist() if isinstance(iterations, list) and len(iterations) > 1 else []
        return qf.save_steps(folder / "steps.png", curve, levels=levels) if curve else None

    def thumb() -> Path:
        warped = volume("warped", entry.folder / "warped.nii.gz")[0]
        return qf.save_thumbnail(folder / "thumb.png", warped, value_window=qf.window(warped.data))

    folder.mkdir(parents=True, exist_ok=True)
    for name, draw in (("images", images), ("checkerboard", checkerboard), ("edges", edges), ("grid", grid),
                       ("jacobian", jacobian), ("dice", dice), ("steps", steps), ("thumb", thumb)):
        attempt(name, draw)
    for stale in folder.glob("*.png"):
        if stale not in figures.values():
            stale.unlink()
    return figures, notes


