"""``rlreg evaluate``: golden values on tiny synthetic pairs (identity, pure translation, anisotropic HD95), the batch
directory contract (done / failed / unfinished / todo), Learn2Reg naming and conventions cross-checked against an
independent scipy computation, and one-pair failures."""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from phantoms import rotation, write_pair
from scipy import ndimage

try:  # what Learn2Reg's HD95 calls; optional (pip install surface-distance)
    import surface_distance
except ImportError:
    surface_distance = None

from rlreg.data.pairs import Pair
from rlreg.formats import write_l2r
from rlreg.io import Geometry, InputError, write_image
from rlreg.metrics import hd95
from rlreg.pipelines.evaluate import evaluate, evaluate_batch, evaluate_fields
from rlreg.pipelines.register import RegisterOptions, RegisterSettings, register
from rlreg.transforms import write_itk_warp

# A small oblique, axis-flipped, anisotropic grid, in tensor order (k, j, i): ITK x has spacing 1.5 mm.
GEOMETRY = Geometry(size=(12, 14, 16), spacing=(2.0, 1.0, 1.5), origin=(10.0, -5.0, 3.0),
                    direction=tuple(rotation(3, 0.3, (-1, 1, 1)).ravel()))
SHIFT_T = np.array([1, -2, 2])
"""A voxel translation in tensor order (k, j, i)."""
FIXED_KP = np.array([[5.5, 6.0, 4.0], [8.0, 7.25, 5.0], [3.0, 9.0, 7.5]])
"""Keypoints in nibabel/ITK index order (i, j, k)."""


def base_labels() -> np.ndarray:
    seg = np.zeros(GEOMETRY.size, dtype=np.int16)
    seg[3:8, 4:10, 4:11] = 1
    seg[5:9, 6:12, 9:13] = 2
    return seg


def image_like(seg: np.ndarray) -> np.ndarray:
    return seg.astype(np.float32) + np.linspace(0.0, 0.5, seg.size, dtype=np.float32).reshape(seg.shape)


def write_points(path: Path, points: np.ndarray) -> Path:
    np.savetxt(path, points, delimiter=",", fmt="%.6f")
    return path


def world_matrix() -> np.ndarray:
    return GEOMETRY.index_to_world()[:3, :3]


def make_pair(folder: Path, moving_seg: np.ndarray, moving_kp: np.ndarray, name: str = "pair") -> dict[str, Path]:
    """Fixed = base labels; moving = the given labels, on the same grid; keypoint CSVs."""
    folder.mkdir(parents=True, exist_ok=True)
    fixed_seg = base_labels()
    paths = {
        "fixed": write_image(image_like(fixed_seg), GEOMETRY, folder / f"{name}_fixed.nii.gz"),
        "moving": write_image(image_like(moving_seg), GEOMETRY, folder / f"{name}_moving.nii.gz"),
        "fixed_seg": write_image(fixed_seg, GEOMETRY, folder / f"{name}_fixed_seg.nii.gz"),
        "moving_seg": write_image(moving_seg, GEOMETRY, folder / f"{name}_moving_seg.nii.gz"),
        "fixed_keypoints": write_points(folder / f"{name}_fixed_kp.csv", FIXED_KP),
        "moving_keypoints": write_points(folder / f"{name}_moving_kp.csv", moving_kp),
    }
    return paths


def write_list(path: Path, rows: list[dict[str, Path]], ids: list[str]) -> Path:
    columns = ["id", "fixed", "moving", "fixed_seg", "moving_seg", "fixed_keypoints", "moving_keypoints"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for pair_id, row in zip(ids, rows, strict=True):
            writer.writerow([pair_id] + [row[c] for c in columns[1:]])
    return path


def write_field(fields: Path, kind: str, pair_id: str, shift_t: np.ndarray) -> Path:
    """A constant voxel translation as an ITK field (LPS mm) or a Learn2Reg field (voxels, nibabel order)."""
    fields.mkdir(parents=True, exist_ok=True)
    chain = np.broadcast_to(shift_t.astype(np.float64).reshape(3, 1, 1, 1), (3, *GEOMETRY.size)).copy()
    if kind == "l2r":
        return write_l2r(chain, GEOMETRY, fields / f"disp_{pair_id}_fixed_{pair_id}_moving.nii.gz")
    world = torch.from_numpy(np.einsum("ij,j...->i...", world_matrix(), chain))[None]
    return write_itk_warp(world, GEOMETRY, fields / f"{pair_id}.nii.gz")


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------------------------------------- golden values
@pytest.mark.parametrize(("kind", "learn2reg"), [("itk", False), ("l2r", False), ("l2r", True), ("itk", True)])
def test_identity_field_scores_perfectly_and_keeps_tre(tmp_path, kind, learn2reg):
    """Zero field, moving = fixed labels: Dice 1, HD95 0, SDlogJ 0, no folding; TRE after = TRE before = the
    keypoints' world distance."""
    offset = np.array([0.5, -1.0, 2.0])
    paths = make_pair(tmp_path / "data", base_labels(), FIXED_KP + offset, name="p")
    source = write_list(tmp_path / "pairs.csv", [paths], ["p"])
    write_field(tmp_path / "fields", kind, "p", np.zeros(3))
    calls = []
    ev = evaluate(source, tmp_path / "fields", output=tmp_path / "out", learn2reg=learn2reg,
                  progress=lambda *args: calls.append(args))
    row = ev.pairs[0]
    assert row.status == "done" and row.error is None, row.error
    assert row.dice_mean == 1.0 and row.hd95_mean == 0.0 and row.n_labels == 2
    assert row.sdlogj == pytest.approx(0.0, abs=1e-6) and row.folding_percent == 0.0
    expected = np.linalg.norm(offset * np.array(GEOMETRY.spacing[::-1]))  # orthonormal direction: |A d| = |s d|
    assert row.tre_before_mm == pytest.approx(expected, rel=1e-6)
    assert row.tre_after_mm == pytest.approx(expected, rel=1e-6)
    assert calls[0] == ("evaluate", 0, 1) and calls[-1] == ("evaluate", 1, 1)
    assert ev.outputs["evaluation"] == tmp_path / "out" / "evaluation.json"


@pytest.mark.parametrize(("kind", "learn2reg"), [("itk", False), ("l2r", False), ("l2r", True), ("itk", True)])
def test_translation_field_recovers_known_offset(tmp_path, kind, learn2reg):
    """Moving = fixed shifted by d voxels, field = d: Dice 1, TRE after 0, TRE before = |A d| mm."""
    moving_seg = np.roll(base_labels(), tuple(SHIFT_T), axis=(0, 1, 2))
    paths = make_pair(tmp_path / "data", moving_seg, FIXED_KP + SHIFT_T[::-1], name="t")
    source = write_list(tmp_path / "pairs.csv", [paths], ["t"])
    field_path = write_field(tmp_path / "fields", kind, "t", SHIFT_T)
    ev = evaluate_fields(source, tmp_path / "fields", output=tmp_path / "out", learn2reg=learn2reg)
    row = ev.pairs[0]
    assert row.status == "done", row.error
    assert row.field == str(field_path)
    assert row.dice_mean == 1.0 and row.hd95_mean == 0.0
    assert row.tre_before_mm == pytest.approx(float(np.linalg.norm(world_matrix() @ SHIFT_T)), rel=1e-6)
    assert row.tre_after_mm == pytest.approx(0.0, abs=1e-4)
    assert row.sdlogj == pytest.approx(0.0, abs=1e-6)
    if learn2reg:
        assert row.num_foldings == 0.0


def test_hd95_in_voxels_for_learn2reg_and_mm_otherwise(tmp_path):
    """A one-voxel plate moved by 2 voxels along ITK x (1.5 mm spacing): HD95 = 3 mm (rlreg) vs 2 voxels (L2R)."""
    fixed_seg = np.zeros(GEOMETRY.size, dtype=np.int16)
    fixed_seg[2:10, 3:11, 5] = 1
    moving_seg = np.zeros_like(fixed_seg)
    moving_seg[2:10, 3:11, 7] = 1
    folder = tmp_path / "data"
    folder.mkdir()
    pair = {"fixed": write_image(image_like(fixed_seg), GEOMETRY, folder / "f.nii.gz"),
            "moving": write_image(image_like(moving_seg), GEOMETRY, folder / "m.nii.gz"),
            "fixed_seg": write_image(fixed_seg, GEOMETRY, folder / "fs.nii.gz"),
            "moving_seg": write_image(moving_seg, GEOMETRY, folder / "ms.nii.gz"), "fixed_keypoints": "",
            "moving_keypoints": ""}
    source = write_list(tmp_path / "pairs.csv", [pair], ["plate"])
    write_field(tmp_path / "fields", "itk", "plate", np.zeros(3))
    mm = evaluate_fields(source, tmp_path / "fields", output=tmp_path / "mm").pairs[0]
    vox = evaluate_fields(source, tmp_path / "fields", output=tmp_path / "vox", learn2reg=True).pairs[0]
    assert mm.hd95_mean == pytest.approx(3.0) and mm.labels[1]["hd95"] == pytest.approx(3.0)
    assert vox.hd95_mean == pytest.approx(2.0)
    assert mm.dice_mean == 0.0 and vox.dice_mean == 0.0
    assert mm.tre_after_mm is None and mm.n_keypoints is None  # no keypoints, no TRE
    assert read_csv(tmp_path / "vox" / "per_pair.csv")[0]["hd95_mean_vox"] == "2"
    assert read_csv(tmp_path / "mm" / "per_pair.csv")[0]["hd95_mean_mm"] == "3"


@pytest.mark.parametrize("learn2reg", [False, True])
def test_2d_translation_through_a_learn2reg_field(tmp_path, learn2reg):
    """One code path for 2D: an (X, Y, 2) Learn2Reg field and an ITK 2D warp give the same exact answer."""
    geometry = Geometry(size=(20, 24), spacing=(0.8, 1.2), origin=(3.0, -4.0), direction=(0.0, 1.0, -1.0, 0.0))
    seg = np.zeros(geometry.size, dtype=np.int16)
    seg[5:12, 6:15] = 1
    seg[13:16, 8:20] = 2
    shift = np.array([2, -3])
    moving = np.roll(seg, tuple(shift), axis=(0, 1))
    folder = tmp_path / "d"
    folder.mkdir()
    kp = np.array([[7.0, 6.0], [12.5, 9.25]])
    pair = {"fixed": write_image(image_like(seg), geometry, folder / "f.nii.gz"),
            "moving": write_image(image_like(moving), geometry, folder / "m.nii.gz"),
            "fixed_seg": write_image(seg, geometry, folder / "fs.nii.gz"),
            "moving_seg": write_image(moving, geometry, folder / "ms.nii.gz"),
            "fixed_keypoints": write_points(folder / "fk.csv", kp),
            "moving_keypoints": write_points(folder / "mk.csv", kp + shift[::-1])}
    source = write_list(tmp_path / "pairs.csv", [pair, pair], ["l2r", "itk"])
    chain = np.broadcast_to(shift.astype(np.float64).reshape(2, 1, 1), (2, *geometry.size)).copy()
    fields = tmp_path / "fields"
    fields.mkdir()
    write_l2r(chain, geometry, fields / "disp_f_m.nii.gz")
    world = torch.from_numpy(np.einsum("ij,j...->i...", geometry.index_to_world()[:2, :2], chain))[None]
    write_itk_warp(world, geometry, fields / "itk.nii.gz")
    ev = evaluate_fields(source, fields, output=tmp_path / "out", learn2reg=learn2reg)
    for row in ev.pairs:
        assert row.status == "done", row.error
        assert row.dice_mean == 1.0 and row.hd95_mean == 0.0
        assert row.tre_after_mm == pytest.approx(0.0, abs=1e-4)
        assert row.tre_before_mm == pytest.approx(np.hypot(2 * 0.8, 3 * 1.2), rel=1e-6)
    assert ev.pairs[0].field.endswith("disp_f_m.nii.gz") and ev.pairs[1].field.endswith("itk.nii.gz")


# ---------------------------------------------------------------------------------------------------- failures
def test_missing_field_fails_only_its_pair(tmp_path):
    moving_seg = np.roll(base_labels(), tuple(SHIFT_T), axis=(0, 1, 2))
    good = make_pair(tmp_path / "data", moving_seg, FIXED_KP + SHIFT_T[::-1], name="a")
    other = make_pair(tmp_path / "data", moving_seg, FIXED_KP + SHIFT_T[::-1], name="b")
    source = write_list(tmp_path / "pairs.csv", [good, other], ["a", "b"])
    write_field(tmp_path / "fields", "itk", "a", SHIFT_T)
    ev = evaluate(source, tmp_path / "fields", output=None)
    assert [r.status for r in ev.pairs] == ["done", "failed"]
    assert "no field for pair b" in ev.pairs[1].error and "\n" not in ev.pairs[1].error
    assert ev.counts() == {"scored": 1, "failed": 1, "unfinished": 0, "todo": 0}
    assert ev.aggregate["dice_mean"]["n"] == 1 and ev.aggregate["dice_mean"]["mean"] == 1.0
    out = tmp_path / "fields" / "evaluation"  # default output next to the fields
    rows = read_csv(out / "per_pair.csv")
    assert [r["status"] for r in rows] == ["done", "failed"] and rows[1]["dice_mean"] == ""
    document = json.loads((out / "evaluation.json").read_text())  # strict JSON: no NaN
    assert document["pairs"][1]["error"] == ev.pairs[1].error
    assert any("failed: b" in line for line in ev.summary_lines())


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        evaluate(tmp_path / "nothing", None, output=None)
    with pytest.raises(InputError, match=r"without batch\.json"):
        evaluate(tmp_path, None, output=None)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("fixed,moving\na.nii.gz,b.nii.gz\n")
    with pytest.raises(InputError, match="needs --fields"):
        evaluate(pairs, None, output=None)
    with pytest.raises(InputError, match="--fields must be a folder"):
        evaluate(pairs, tmp_path / "nofields", output=None)
    (tmp_path / "batch").mkdir()
    (tmp_path / "batch" / "batch.json").write_text("{}")
    with pytest.raises(InputError, match="drop --fields"):
        evaluate(tmp_path / "batch", tmp_path, output=None)
    with pytest.raises(InputError, match="not a readable rlreg batch file"):
        evaluate(tmp_path / "batch", None, output=None)


# ---------------------------------------------------------------------------------------------------- Learn2Reg
def test_learn2reg_dataset_names_and_independent_crosscheck(tmp_path):
    """A Learn2Reg-style dataset (imagesTr/labelsTr/keypointsTr, disp_0001_0002.nii.gz written with nibabel):
    every number equals an independent scipy computation in nibabel order."""
    root = tmp_path / "L2R"
    rng = np.random.default_rng(7)
    fixed_seg = base_labels()
    moving_seg = np.roll(fixed_seg, (1, 1, -1), axis=(0, 1, 2))
    moving_seg[6:8, 7:9, 5:7] = 3  # a label only the moving image has: NaN under L2R's rule
    for folder in ("imagesTr", "labelsTr", "keypointsTr"):
        (root / folder).mkdir(parents=True)
    names = {"0001": (fixed_seg, FIXED_KP), "0002": (moving_seg, FIXED_KP + np.array([-1.0, 1.0, 1.0]))}
    for case, (seg, kp) in names.items():
        write_image(image_like(seg), GEOMETRY, root / "imagesTr" / f"TOY_{case}_0000.nii.gz")
        write_image(seg, GEOMETRY, root / "labelsTr" / f"TOY_{case}_0000.nii.gz")
        write_points(root / "keypointsTr" / f"TOY_{case}_0000.csv", kp)
    (root / "TOY_dataset.json").write_text(json.dumps({"registration_val": [
        {"fixed": "./imagesTr/TOY_0001_0000.nii.gz", "moving": "./imagesTr/TOY_0002_0000.nii.gz"}]}))
    shape_xyz = GEOMETRY.size[::-1]
    disp = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape_xyz), 2.0) * 4 for _ in range(3)], -1)
    disp += np.array([-1.0, 1.0, 1.0])  # roughly the true correspondence, in (i, j, k) voxels
    fields = tmp_path / "fields"
    fields.mkdir()
    nib.save(nib.Nifti1Image(disp.astype(np.float32), np.eye(4)), fields / "disp_0001_0002.nii.gz")
    disp = disp.astype(np.float32).astype(np.float64)

    ev = evaluate(root / "TOY_dataset.json", fields, output=tmp_path / "out", learn2reg=True)
    row = ev.pairs[0]
    assert row.pair == "0001_0002" and row.status == "done", row.error
    assert row.field == str(fields / "disp_0001_0002.nii.gz")

    # independent: nibabel arrays, map_coordinates order 0, Dice by hand with L2R's NaN rule
    load = lambda p: nib.load(str(p)).get_fdata()  # noqa: E731
    fixed_nib = load(root / "labelsTr" / "TOY_0001_0000.nii.gz")
    moving_nib = load(root / "labelsTr" / "TOY_0002_0000.nii.gz")
    identity = np.stack(np.meshgrid(*[np.arange(n) for n in shape_xyz], indexing="ij"))
    warped = ndimage.map_coordinates(moving_nib, identity + disp.transpose(3, 0, 1, 2), order=0)
    for label in (1, 2):
        a, b = fixed_nib == label, warped == label
        assert row.labels[label]["dice"] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()), abs=1e-7)
        # HD95 in voxels: L2R's own package when installed, else MONAI's definition with unit spacing
        if surface_distance is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                distances = surface_distance.compute_surface_distances(a, b, np.ones(3))
            expected = surface_distance.compute_robust_hausdorff(distances, 95.0)
        else:
            expected = hd95(b.astype(int), a.astype(int), 1.0, labels=[1]).values.item()
        assert row.labels[label]["hd95"] == pytest.approx(expected, rel=1e-6)
        assert 0 < expected < 10
    assert math.isnan(row.labels[3]["dice"]) and math.isnan(row.labels[3]["hd95"])
    assert row.n_labels == 2
    # TRE: cubic map_coordinates of each component, times the moving spacing (nibabel zooms)
    zooms = np.array(nib.load(str(root / "imagesTr" / "TOY_0002_0000.nii.gz")).header.get_zooms()[:3])
    fix_kp, mov_kp = FIXED_KP, FIXED_KP + np.array([-1.0, 1.0, 1.0])
    sampled = np.stack([ndimage.map_coordinates(disp[..., c], fix_kp.T) for c in range(3)], 1)
    assert row.tre_after_mm == pytest.approx(np.linalg.norm((fix_kp + sampled - mov_kp) * zooms, axis=1).mean())
    assert row.tre_before_mm == pytest.approx(np.linalg.norm((fix_kp - mov_kp) * zooms, axis=1).mean())
    # SDlogJ: central differences (np.gradient is central inside), 2-voxel crop, log(J + 3), population std
    grads = np.stack([np.stack(np.gradient(disp[..., c]), 0) for c in range(3)], 0)  # [component, axis]
    jac = np.moveaxis(grads + np.eye(3).reshape(3, 3, 1, 1, 1), (0, 1), (-2, -1))[2:-2, 2:-2, 2:-2]
    det = np.linalg.det(jac)
    assert row.sdlogj == pytest.approx(np.log(np.clip(det + 3, 1e-9, 1e9)).std(), rel=1e-9)
    assert row.folding_percent == pytest.approx(100 * np.mean(det <= 0))
    assert row.num_foldings == 0.0
    agg = ev.aggregate
    assert set(agg["dice_mean"]) == {"n", "mean", "std", "q30"} and set(agg["sdlogj"]) == {"n", "mean", "std", "q70"}
    assert "hd95_mean_vox" in agg and set(agg["tre_after_mm"]) == {"n", "mean", "std", "q70"}

    # rlreg conventions on the same field: world TRE cross-checked through SimpleITK's index <-> LPS maps
    plain = evaluate(root / "TOY_dataset.json", fields, output=tmp_path / "plain").pairs[0]
    image = sitk.ReadImage(str(root / "imagesTr" / "TOY_0001_0000.nii.gz"))
    lin = np.stack([ndimage.map_coordinates(disp[..., c], fix_kp.T, order=1) for c in range(3)], 1)
    p = np.array([image.TransformContinuousIndexToPhysicalPoint(k.tolist()) for k in fix_kp])
    mapped = np.array([image.TransformContinuousIndexToPhysicalPoint(k.tolist()) for k in fix_kp + lin])
    q = np.array([image.TransformContinuousIndexToPhysicalPoint(k.tolist()) for k in mov_kp])
    assert plain.tre_after_mm == pytest.approx(np.linalg.norm(mapped - q, axis=1).mean(), rel=1e-5)
    assert plain.tre_before_mm == pytest.approx(np.linalg.norm(p - q, axis=1).mean(), rel=1e-6)
    assert plain.labels[3]["dice"] == 0.0  # rlreg: a label in one map only scores 0, not NaN


# ---------------------------------------------------------------------------------------------------- batch
@pytest.fixture(scope="module")
def batch_dir(tmp_path_factory):
    """A batch directory with one done (really registered), one failed, one unfinished and one todo pair."""
    root = tmp_path_factory.mktemp("batch")
    paths = write_pair(root / "data", 3)
    # Keypoints from the phantoms' known correspondence: q = c_m + r_m / r_f (p - c_f).
    c_f, r_f = np.zeros(3), np.array([11.0, 9.0, 10.0])
    c_m, r_m = np.array([1.5, -1.0, 1.0]), np.array([12.0, 8.5, 10.0])
    unit = np.array([[0.3, 0.2, -0.1], [-0.4, 0.1, 0.3], [0.1, -0.5, 0.2], [0.0, 0.0, 0.0], [0.5, 0.3, 0.2]])
    p_world, q_world = c_f + unit * r_f, c_m + unit * r_m
    fixed_image, moving_image = sitk.ReadImage(str(paths["fixed"])), sitk.ReadImage(str(paths["moving"]))
    to_index = lambda image, pts: np.array(  # noqa: E731
        [image.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in pts])
    kp_f = write_points(root / "data" / "fixed_kp.csv", to_index(fixed_image, p_world))
    kp_m = write_points(root / "data" / "moving_kp.csv", to_index(moving_image, q_world))
    out = root / "out"
    done = Pair(id="done", fixed=paths["fixed"], moving=paths["moving"], fixed_seg=paths["fixed_seg"],
                moving_seg=paths["moving_seg"], fixed_keypoints=kp_f, moving_keypoints=kp_m)
    others = [Pair(id=name, fixed=paths["fixed"], moving=paths["moving"])
              for name in ("failed", "unfinished", "todo", "broken", "cut")]
    result = register(RegisterOptions(fixed=done.fixed, moving=done.moving, output=out / "done",
                                      fixed_seg=done.fixed_seg, moving_seg=done.moving_seg,
                                      settings=RegisterSettings(steps=20)))
    (out / "failed").mkdir()
    (out / "failed" / "error.json").write_text(json.dumps(
        {"pair": "failed", "error": "moving.nii.gz: file not found; check the path", "type": "InputError",
         "created": "2026-01-01T00:00:00+00:00"}))
    (out / "unfinished").mkdir()
    (out / "unfinished" / "warped.nii.gz").write_bytes(b"")
    (out / "broken").mkdir()  # finished, but its warp.nii.gz was deleted afterwards
    (out / "broken" / "rlreg.json").write_text("{}")
    (out / "cut").mkdir()  # killed while writing its record: rlreg batch counts it as unfinished
    (out / "cut" / "rlreg.json").write_text('{"tool": "rl')
    (out / "batch.json").write_text(json.dumps({"tool": "rlreg", "version": "0", "created": "", "input": "x",
                                                "options": {}, "pairs": [p.to_json() for p in [done, *others]]}))
    return out, result, p_world, q_world


def test_batch_directory_statuses_and_scores(batch_dir):
    out, result, p_world, q_world = batch_dir
    ev = evaluate(out, None, output=None)
    assert [(r.pair, r.status) for r in ev.pairs] == [("done", "done"), ("failed", "failed"),
                                                      ("unfinished", "unfinished"), ("todo", "todo"),
                                                      ("broken", "failed"), ("cut", "unfinished")]
    assert ev.pairs[4].error.startswith("evaluation: ") and "warp.nii.gz: missing" in ev.pairs[4].error
    done, failed = ev.pairs[0], ev.pairs[1]
    assert failed.error == "moving.nii.gz: file not found; check the path" and failed.dice_mean is None
    assert ev.pairs[2].dice_mean is None and ev.pairs[3].sdlogj is None
    # the same Dice that register measured on its own warped_seg.nii.gz
    assert done.dice_mean == pytest.approx(result.qc.dice_after, abs=1e-6)
    assert done.registration_seconds == pytest.approx(result.seconds.total)
    assert set(done.labels) == {1, 2, 3} and done.n_labels == 3
    # TRE cross-checked with SimpleITK reading warp.nii.gz as a DisplacementFieldTransform
    field = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(out / "done" / "warp.nii.gz")),
                                                      sitk.sitkVectorFloat64))
    mapped = np.array([field.TransformPoint(p.tolist()) for p in p_world])
    assert done.tre_after_mm == pytest.approx(np.linalg.norm(mapped - q_world, axis=1).mean(), rel=1e-4)
    assert done.tre_before_mm == pytest.approx(np.linalg.norm(p_world - q_world, axis=1).mean(), rel=1e-6)
    assert done.tre_after_mm < 0.5 * done.tre_before_mm
    # outputs: the default folder, the CSV columns, and the shape the QC report reads
    folder = out / "evaluation"
    assert ev.outputs == {"per_pair": folder / "per_pair.csv", "per_label": folder / "per_label.csv",
                          "evaluation": folder / "evaluation.json"}
    rows = read_csv(folder / "per_pair.csv")
    assert list(rows[0]) == ["pair", "status", "dice_mean", "hd95_mean_mm", "sdlogj", "folding_percent",
                             "tre_before_mm", "tre_after_mm", "n_labels", "error"]
    assert [r["status"] for r in rows] == ["done", "failed", "unfinished", "todo", "failed", "unfinished"]
    labels = read_csv(folder / "per_label.csv")
    assert [r["label"] for r in labels] == ["1", "2", "3"] and all(r["n_pairs"] == "1" for r in labels)
    document = json.loads((folder / "evaluation.json").read_text())
    item = document["pairs"][0]["labels"]["2"]
    assert set(item) == {"dice", "hd95"} and item["dice"] == pytest.approx(done.labels[2]["dice"])
    assert document["counts"] == {"scored": 1, "failed": 2, "unfinished": 2, "todo": 1}
    assert document["conventions"]["hd95"].startswith("millimetres")
    assert ev.summary_lines()[0].startswith("Evaluated 6 pairs")


def test_batch_directory_learn2reg_conventions(batch_dir, tmp_path):
    out, _result, _p, _q = batch_dir
    plain = evaluate_batch(out, output=tmp_path / "plain").pairs[0]
    l2r = evaluate_batch(out, learn2reg=True, labels=[1, 2, 3], output=tmp_path / "l2r").pairs[0]
    assert l2r.status == "done", l2r.error
    assert abs(l2r.dice_mean - plain.dice_mean) < 0.05  # nearest neighbour vs label-safe warping
    assert l2r.sdlogj < 0.5 * plain.sdlogj  # the "+3" flattens log J
    # L2R reads the voxel displacement at the fixed keypoints by cubic spline (scipy's map_coordinates defaults).
    # The same number by hand from warp.nii.gz: that displacement is an affine image of the world one, and the
    # spline reproduces affine maps away from the border, so read the world field the same way, then map to voxels.
    from scipy import ndimage

    kp_f, kp_m = (np.loadtxt(out.parent / "data" / f"{name}_kp.csv", delimiter=",") for name in ("fixed", "moving"))
    fixed_image, moving_image = (sitk.ReadImage(str(out.parent / "data" / f"{name}.nii.gz"))
                                 for name in ("fixed", "moving"))
    world = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "done" / "warp.nii.gz"))).astype(np.float64)
    at_keypoints = np.stack([ndimage.map_coordinates(world[..., c], kp_f[:, ::-1].T) for c in range(3)], axis=1)
    mapped = np.array([moving_image.TransformPhysicalPointToContinuousIndex(
        (np.array(fixed_image.TransformContinuousIndexToPhysicalPoint(k.tolist())) + u).tolist())
        for k, u in zip(kp_f, at_keypoints, strict=True)])
    by_hand = np.linalg.norm((mapped - kp_m) * moving_image.GetSpacing(), axis=1).mean()
    assert l2r.tre_after_mm == pytest.approx(by_hand, rel=1e-3)
    # and close to rlreg's TRE, which reads the field linearly: the two differ only where the field curves
    assert l2r.tre_after_mm == pytest.approx(plain.tre_after_mm, abs=0.15)
    # L2R's "before" compares voxel indices of two different grids (it assumes one grid): not the world distance
    spacing = sitk.ReadImage(str(out.parent / "data" / "moving.nii.gz")).GetSpacing()
    assert l2r.tre_before_mm == pytest.approx(np.linalg.norm((kp_f - kp_m) * spacing, axis=1).mean(), rel=1e-6)
    assert l2r.tre_before_mm != pytest.approx(plain.tre_before_mm, rel=0.1)
    assert not (tmp_path / "l2r" / "per_pair.csv").read_text().count("hd95_mean_mm")
