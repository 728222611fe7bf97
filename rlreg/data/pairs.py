"""The pairs of a batch: read from a CSV/TSV, a Learn2Reg ``dataset.json``, or an atlas registered to many subjects.

Only the *structure* of the list is checked here (columns, JSON keys): a missing or unreadable image is found when
its pair runs, so it fails that pair alone and the rest of the batch goes on.

Pair ids name the output folders (``OUTDIR/<pair-id>/``) and are stable: the same input gives the same ids in the
same order on every run, which is what makes resuming and ``--shard i/N`` deterministic.
"""

from __future__ import annotations

import csv
import glob
import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from rlreg.formats import l2r_name
from rlreg.io import InputError, split_image_name

__all__ = ["COLUMNS", "L2R_SUBSETS", "RESERVED_IDS", "SUBJECT_COLUMNS", "Pair", "read_pairs", "shard"]

COLUMNS = ("fixed", "moving", "fixed_seg", "moving_seg", "fixed_mask", "moving_mask", "fixed_keypoints",
           "moving_keypoints")
"""CSV columns, in positional order when the file has no header row (``id`` may also appear in a header)."""
L2R_SUBSETS = ("registration_val", "registration_test", "training_paired_images")
"""Learn2Reg pair lists, in the order tried when no subset is named."""
RESERVED_IDS = frozenset({"report", "evaluation", "logs"})
"""Names of batch-level folders under OUTDIR, which no pair may take."""
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".tif", ".tiff", ".dcm")


@dataclass(frozen=True)
class Pair:
    """One registration of a batch. Paths are absolute (resolved against the list's folder)."""

    id: str
    fixed: Path
    moving: Path
    fixed_seg: Path | None = None
    moving_seg: Path | None = None
    fixed_mask: Path | None = None
    moving_mask: Path | None = None
    fixed_keypoints: Path | None = None
    """Learn2Reg-style CSV of voxel coordinates ``i,j,k`` (no header) in the fixed image, row-matched to
    ``moving_keypoints``; used by ``rlreg evaluate`` for TRE."""
    moving_keypoints: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pair:
        values: dict[str, Any] = {f.name: (Path(data[f.name]) if f.name != "id" and data.get(f.name)
                                           else data.get(f.name)) for f in fields(cls)}
        return cls(**values)


def _stem(path: Path) -> str:
    return split_image_name(path.name, IMAGE_SUFFIXES)[0]


def _clean(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "pair"


def _unique_ids(raw: list[str]) -> list[str]:
    """Make ids unique and safe as folder names; a repeated id gets ``-2``, ``-3``, ... in order of appearance."""
    seen: dict[str, int] = {}
    out = []
    for text in raw:
        base = _clean(text)
        if base in RESERVED_IDS:
            base = f"{base}-pair"
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return out


def _resolve(folder: Path, value: str | None) -> Path | None:
    if value is None or not value.strip():
        return None
    path = Path(value.strip()).expanduser()
    return path if path.is_absolute() else (folder / path).resolve()


def _drop_repeats(pairs: list[dict[str, Any]], where: list[str], raw_ids: list[str], given_ids: list[str | None],
                  warnings: list[str] | None) -> tuple[list[dict[str, Any]], list[str]]:
    """Keep the first of rows naming the same files in every column and the same ``id`` (or none): a repeated row
    is almost surely a mistake, and registering it twice only costs time. Rows told apart by distinct ids are
    kept (a deliberate repeat). Says which rows were dropped in ``warnings``."""
    first: dict[tuple[Any, ...], str] = {}
    kept, kept_ids = [], []
    for pair, place, raw, given in zip(pairs, where, raw_ids, given_ids, strict=True):
        key = (given, *(pair.get(k) for k in COLUMNS))
        if key in first:
            if warnings is not None:
                warnings.append(f"{place}: repeats {first[key]} ({pair['fixed'].name}, {pair['moving'].name}); "
                                "the pair is registered once")
            continue
        first[key] = place
        kept.append(pair)
        kept_ids.append(raw)
    return kept, kept_ids


def _read_table(path: Path, warnings: list[str] | None = None) -> list[Pair]:
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: Excel's "CSV UTF-8" starts with a BOM
        rows = [row for row in csv.reader(handle, delimiter=delimiter) if any(cell.strip() for cell in row)
                and not row[0].lstrip().startswith("#")]
    if not rows:
        raise InputError(f"{path}: lists no pairs; give one pair per row: fixed,moving[,fixed_seg,moving_seg]")
    header = [cell.strip().lower() for cell in rows[0]]
    if "fixed" in header and "moving" in header:
        unknown = [c for c in header if c not in COLUMNS and c != "id"]
        if unknown:
            raise InputError(f"{path}: unknown column(s) {', '.join(unknown)}; use id, {', '.join(COLUMNS)}")
        names, rows = header, rows[1:]
    else:
        names = list(COLUMNS)
    folder = path.parent.resolve()
    records, raw_ids, where, given_ids = [], [], [], []
    for line, row in enumerate(rows, start=2 if names is header else 1):
        if len(row) < 2 or len(row) > len(names):
            raise InputError(f"{path}:{line}: has {len(row)} columns; give fixed,moving[,fixed_seg,moving_seg] "
                             f"(at most {len(names)} columns)")
        values = dict(zip(names, (cell.strip() for cell in row), strict=False))
        if not values.get("fixed") or not values.get("moving"):
            raise InputError(f"{path}:{line}: the fixed or moving path is empty; give both on every row")
        record: dict[str, Any] = {k: _resolve(folder, values.get(k)) for k in COLUMNS}
        records.append(record)
        raw_ids.append(values.get("id") or f"{_stem(record['fixed'])}__{_stem(record['moving'])}")
        where.append(f"{path}:{line}")
        given_ids.append(values.get("id") or None)
    records, raw_ids = _drop_repeats(records, where, raw_ids, given_ids, warnings)
    return [Pair(id=i, **r) for i, r in zip(_unique_ids(raw_ids), records, strict=True)]


def _sibling(image: Path, folder: str, suffix: str | None = None) -> Path | None:
    """The Learn2Reg companion of ``imagesTr/X.nii.gz`` in ``labelsTr``/``masksTr``/``keypointsTr``, if present."""
    if image.parent.name not in ("imagesTr", "imagesTs"):
        return None
    name = image.name if suffix is None else _stem(image) + suffix
    candidate = image.parent.parent / (folder + image.parent.name[-2:]) / name
    return candidate if candidate.exists() else None


def _read_learn2reg(path: Path, subset: str | None, warnings: list[str] | None = None) -> list[Pair]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a readable JSON file ({err}); give a Learn2Reg dataset.json") from None
    available = [k for k in L2R_SUBSETS if isinstance(data.get(k), list) and data[k]]
    if subset is None:
        if not available:
            raise InputError(f"{path}: has none of {', '.join(L2R_SUBSETS)}; give a Learn2Reg dataset.json with a "
                             "pair list")
        subset = available[0]
    elif subset not in available:
        raise InputError(f"{path}: has no non-empty {subset!r}; choose one of {', '.join(available) or 'none'}")
    folder = path.parent.resolve()
    pairs: list[dict[str, Any]] = []
    for index, entry in enumerate(data[subset]):
        if not isinstance(entry, dict) or "fixed" not in entry or "moving" not in entry:
            raise InputError(f"{path}: {subset}[{index}] lacks 'fixed'/'moving'; each entry must name both")
        for key in ("fixed", "moving"):
            if not isinstance(entry[key], str) or not entry[key].strip():
                raise InputError(f"{path}: {subset}[{index}].{key} is {json.dumps(entry[key])}, not a path; give "
                                 "each image as a path string relative to the dataset.json, e.g. "
                                 '"./imagesTr/0001_0000.nii.gz"')
        fixed, moving = _resolve(folder, entry["fixed"]), _resolve(folder, entry["moving"])
        assert fixed is not None and moving is not None
        pairs.append(dict(
            fixed=fixed, moving=moving, fixed_seg=_sibling(fixed, "labels"), moving_seg=_sibling(moving, "labels"),
            fixed_mask=_sibling(fixed, "masks"), moving_mask=_sibling(moving, "masks"),
            fixed_keypoints=_sibling(fixed, "keypoints", ".csv"),
            moving_keypoints=_sibling(moving, "keypoints", ".csv")))
    raw = [l2r_name(p["fixed"], p["moving"])[len("disp_"):-len(".nii.gz")] for p in pairs]
    pairs, raw = _drop_repeats(pairs, [f"{path}: {subset}[{i}]" for i in range(len(pairs))], raw,
                               [None] * len(pairs), warnings)
    return [Pair(id=i, **p) for i, p in zip(_unique_ids(raw), pairs, strict=True)]


SUBJECT_COLUMNS = ("fixed", "fixed_seg", "fixed_mask", "fixed_keypoints")
"""Columns of an atlas mode's subject list (``id`` may also appear in a header); without a header, one image a row."""


def _read_subjects(path: Path) -> list[tuple[str | None, Path, dict[str, Path | None]]]:
    """The subjects of a CSV/TSV list: ``(id or None, image, {other column: path or None})`` per row, paths relative
    to the file."""
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = [row for row in csv.reader(handle, delimiter=delimiter) if any(cell.strip() for cell in row)
                and not row[0].lstrip().startswith("#")]
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    if "fixed" in header:
        unknown = [c for c in header if c not in SUBJECT_COLUMNS and c != "id"]
        if unknown:
            raise InputError(f"{path}: unknown column(s) {', '.join(unknown)} for --atlas; list the subjects with "
                             f"id, {', '.join(SUBJECT_COLUMNS)} (the atlas is the moving image of every pair)")
        names, rows = header, rows[1:]
    else:
        names = ["fixed"]
    folder = path.parent.resolve()
    subjects = []
    for line, row in enumerate(rows, start=2 if names is header else 1):
        if len(row) > len(names):
            raise InputError(f"{path}:{line}: has {len(row)} columns; with --atlas give one subject image a row, or "
                             f"a header naming id, {', '.join(SUBJECT_COLUMNS)}")
        values = dict(zip(names, (cell.strip() for cell in row), strict=False))
        if not values.get("fixed"):
            raise InputError(f"{path}:{line}: the subject image (fixed column) is empty; give one on every row")
        image = _resolve(folder, values["fixed"])
        assert image is not None
        subjects.append((values.get("id") or None, image,
                         {k: _resolve(folder, values.get(k)) for k in SUBJECT_COLUMNS[1:]}))
    if not subjects:
        raise InputError(f"{path}: lists no subjects; give one subject image a row (or a header with a fixed column)")
    return subjects


def _read_atlas(atlas: Path, source: str, atlas_seg: Path | None) -> list[Pair]:
    """Atlas label propagation: one pair per subject, the subject FIXED and the atlas MOVING, so that the atlas
    labels (the pair's ``moving_seg``) land on each subject's own grid."""
    for path, option in ((atlas, "--atlas"), (atlas_seg, "--atlas-seg")):
        if path is not None and not path.expanduser().exists():
            raise InputError(f"{path}: not found; give {option} an existing image file (or DICOM series folder)")
    atlas = atlas.expanduser().resolve()
    seg = atlas_seg.expanduser().resolve() if atlas_seg else None
    root = Path(source).expanduser()
    if root.is_file() and root.suffix.lower() in (".csv", ".tsv", ".tab"):
        subjects = _read_subjects(root)
    else:
        if root.is_dir():
            candidates = sorted(p for p in root.iterdir() if not p.name.startswith(".") and
                                (p.is_dir() or p.name.lower().endswith(IMAGE_SUFFIXES)))
        else:
            candidates = sorted(Path(p) for p in glob.glob(str(root)))
        subjects = [(None, p.resolve(), {}) for p in candidates if p.resolve() not in (atlas, seg)]
    if not subjects:
        raise InputError(f"{source}: matches no subject images; give a folder of images, a quoted glob such as "
                         "'data/*.nii.gz', or a CSV/TSV with one subject image a row")
    ids = _unique_ids([given or _stem(image) for given, image, _ in subjects])
    return [Pair(id=i, fixed=image, moving=atlas, fixed_seg=extra.get("fixed_seg"), moving_seg=seg,
                 fixed_mask=extra.get("fixed_mask"), fixed_keypoints=extra.get("fixed_keypoints"))
            for i, (_, image, extra) in zip(ids, subjects, strict=True)]


def read_pairs(source: str | Path, atlas: str | Path | None = None, atlas_seg: str | Path | None = None,
               subset: str | None = None, warnings: list[str] | None = None) -> list[Pair]:
    """The pairs of a batch, in a stable order.

    Args:
        source: a ``.csv``/``.tsv`` pair list (header ``fixed,moving[,fixed_seg,moving_seg,...]`` or none, paths
            relative to the file), a Learn2Reg ``*.json`` dataset, or, with ``atlas``, the subjects: a folder, a glob,
            or a ``.csv``/``.tsv`` with one image a row (or a header of :data:`SUBJECT_COLUMNS` and ``id``).
        atlas: atlas mode: the moving image of every pair, registered to each subject (the fixed image), so that
            its labels are propagated onto every subject's grid.
        atlas_seg: the atlas' label map (the pairs' ``moving_seg``); Dice only where a subject list gives the
            subjects' own labels (``fixed_seg``).
        subset: Learn2Reg list to use (default: the first non-empty of :data:`L2R_SUBSETS`).
        warnings: where to append one line per row dropped because it repeats an earlier row's files (the pair
            is registered once).

    Raises:
        InputError: the list itself is malformed (one line, names the file, row and fix).
    """
    if atlas is not None:
        return _read_atlas(Path(atlas), str(source), Path(atlas_seg) if atlas_seg else None)
    if atlas_seg is not None:
        raise InputError(f"--atlas-seg {atlas_seg}: labels an atlas, but no --atlas was given; add --atlas with the "
                         "atlas image these labels lie on")
    path = Path(source).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: no such pair list; give a CSV/TSV of pairs, a Learn2Reg dataset.json, or use "
                         "--atlas FIXED with a folder or glob of moving images")
    if path.suffix.lower() == ".json":
        return _read_learn2reg(path, subset, warnings)
    return _read_table(path, warnings)


def shard(pairs: list[Pair], spec: str | None) -> list[Pair]:
    """The pairs of shard ``i/N`` (0-based ``i``): every N-th pair starting at the i-th, in list order.

    Deterministic and disjoint: shards ``0/N`` ... ``N-1/N`` together hold every pair exactly once.
    """
    if spec is None:
        return pairs
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not match or int(match[2]) < 1 or int(match[1]) >= int(match[2]):
        raise InputError(f"--shard {spec}: give i/N with 0 <= i < N, e.g. --shard 0/4 ... --shard 3/4")
    index, count = int(match[1]), int(match[2])
    return pairs[index::count]
