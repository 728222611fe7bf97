"""Peer tools (ANTs SyN, elastix, Greedy, VoxelMorph) written in rlreg's ``warp.nii.gz`` convention and scored by
rlreg's evaluator: each written field reproduces the tool's own resampling, a known translation comes out with its sign,
Dice improves, VoxelMorph checkpoints reload with ``weights_only=True``, and ``run_peer`` resumes and isolates a
failing pair. Small oblique, anisotropic, flipped 3-D phantoms (24 x 26 x 20 voxels) keep the file fast."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from phantoms import phantom, rotation

from benchmarks.peers import (
    ERROR_RECORD,
    PEER_RECORD,
    PeerRecord,
    VoxelMorphConfig,
    register_greedy,
    run_peer,
    train_voxelmorph,
)
from rlreg.data.pairs import Pair, read_pairs
from rlreg.io import read_image
from rlreg.pipelines.evaluate import evaluate_fields
from rlreg.spatial import identity_grid, warp
from rlreg.transforms import write_itk_warp

FIXED_GRID = ((24, 26, 20), (1.2, 0.9, 1.5), (14.0, -11.0, -14.0), rotation(3, 0.3, (-1, 1, 1)))
MOVING_GRID = ((26, 24, 22), (1.0, 1.1, 1.3), (-12.0, 14.0, -13.0), rotation(3, -0.2, (1, -1, 1)))
RADII = (9.0, 7.5, 8.5)
SHIFT_MM = np.array([2.5, -1.5, 2.0])
"""The moving object of the ``shift`` pair is the fixed one translated by this (LPS mm), on the same grid: so
``moving(x + SHIFT) = fixed(x)`` and the field must be ``+SHIFT`` over the object."""
ELASTIX_FAST = {"bspline": {"MaximumNumberOfIterations": 32, "NumberOfResolutions": 2,
                            "GridSpacingSchedule": [1.4142135623730951, 1.0]}}
"""Test-only: fewer B-spline iterations and levels (about 4 s instead of about 50 s per pair here)."""


def write_phantom(folder: Path, name: str, grid: tuple, centre: tuple[float, ...],
                  radii: tuple[float, ...]) -> tuple[Path, Path]:
    image, seg = phantom(*grid, centre, radii)
    paths = folder / f"{name}.nii.gz", folder / f"{name}_seg.nii.gz"
    sitk.WriteImage(image, str(paths[0]))
    sitk.WriteImage(seg, str(paths[1]))
    return paths


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Two pairs (``shift``: pure translation on one grid; ``oblique``: two grids, a shape change) and their CSV."""
    folder = tmp_path_factory.mktemp("peer_data")
    rows = {
        "shift": (write_phantom(folder, "shift_fixed", FIXED_GRID, (0.0, 0.0, 0.0), RADII),
                  write_phantom(folder, "shift_moving", FIXED_GRID, tuple(SHIFT_MM), RADII)),
        "oblique": (write_phantom(folder, "oblique_fixed", FIXED_GRID, (0.0, 0.0, 0.0), RADII),
                    write_phantom(folder, "oblique_moving", MOVING_GRID, (1.5, -1.0, 1.0), (10.0, 7.0, 8.5))),
    }
    table = folder / "pairs.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "fixed", "moving", "fixed_seg", "moving_seg"])
        for pair_id, ((fixed, fixed_seg), (moving, moving_seg)) in rows.items():
            writer.writerow([pair_id, fixed, moving, fixed_seg, moving_seg])
    pairs = read_pairs(table)
    missing = Pair(id="missing", fixed=pairs[0].fixed, moving=folder / "no_such_moving.nii.gz")
    return {"folder": folder, "csv": table, "pairs": pairs, "missing": missing}


def run_tool(method: str, data: dict, tmp_path_factory: pytest.TempPathFactory, **kwargs) -> dict[str, object]:
    pytest.importorskip({"syn": "ants", "elastix": "itk", "greedy": "picsl_greedy"}[method])
    out = tmp_path_factory.mktemp(f"peer_{method}")
    statuses: list[tuple[str, str]] = []
    records = run_peer(method, [*data["pairs"], data["missing"]], out,
                       progress=lambda done, total, pair, status: statuses.append((pair, status)),
                       keep_native=True, **kwargs)
    return {"out": out, "records": records, "statuses": statuses}


@pytest.fixture(scope="module")
def syn(data: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return run_tool("syn", data, tmp_path_factory)


@pytest.fixture(scope="module")
def elastix(data: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return run_tool("elastix", data, tmp_path_factory, overrides=ELASTIX_FAST)


@pytest.fixture(scope="module")
def greedy(data: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return run_tool("greedy", data, tmp_path_factory)


def resample_through_warp(pair: Pair, folder: Path, interpolator: int) -> np.ndarray:
    """The moving image resampled by SimpleITK through the written ``warp.nii.gz`` (an independent reader)."""
    field = sitk.ReadImage(str(folder / "warp.nii.gz"))
    assert field.GetNumberOfComponentsPerPixel() == 3
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    fixed, moving = sitk.ReadImage(str(pair.fixed)), sitk.ReadImage(str(pair.moving))
    return sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, interpolator, 0.0, sitk.sitkFloat32))


def interior(array: np.ndarray, margin: int = 3) -> np.ndarray:
    return array[(slice(margin, -margin),) * array.ndim]


# ---------------------------------------------------------------------------------------------------- conventions
@pytest.mark.bench  # runs ANTs or elastix (about 90 s for the module's fixtures) or trains
def test_syn_warp_reproduces_ants_apply_transforms(data: dict, syn: dict) -> None:
    ants = pytest.importorskip("ants")
    for pair in data["pairs"]:
        folder = syn["out"] / pair.id
        names = json.loads((folder / PEER_RECORD).read_text())["settings"]["fwdtransforms"]
        transforms = [str(folder / "native" / name) for name in names]
        assert names[0].endswith("Warp.nii.gz") and names[1].endswith(".mat")  # warp and affine, ANTs order
        reference = ants.apply_transforms(ants.image_read(str(pair.fixed)), ants.image_read(str(pair.moving)),
                                          transforms).numpy().T  # ANTs arrays are (x, y, z)
        ours = resample_through_warp(pair, folder, sitk.sitkLinear)
        assert np.abs(reference).max() > 0.5
        np.testing.assert_allclose(interior(ours), interior(reference), atol=1e-4)


@pytest.mark.bench  # runs ANTs or elastix (about 90 s for the module's fixtures) or trains
def test_elastix_warp_reproduces_elastix_result(data: dict, elastix: dict) -> None:
    for pair in data["pairs"]:
        folder = elastix["out"] / pair.id
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "native" / "elastix_warped.nii.gz")))
        ours = resample_through_warp(pair, folder, sitk.sitkBSpline)  # elastix resamples with a cubic B-spline
        assert np.abs(reference).max() > 0.5
        np.testing.assert_allclose(interior(ours), interior(reference), atol=1e-4)


def inside_moving(pair: Pair, folder: Path, margin: float = 1.0) -> np.ndarray:
    """Fixed voxels ``(k, j, i)`` that ``warp.nii.gz`` maps at least ``margin`` voxels inside the moving grid (where
    every resampler interpolates; at the border each extrapolates its own way)."""
    field = sitk.ReadImage(str(folder / "warp.nii.gz"))
    vectors = sitk.GetArrayFromImage(field).astype(np.float64)  # (k, j, i, 3) LPS mm
    size = field.GetSize()
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij"), -1)[..., ::-1]  # (i, j, k)
    grid = (np.asarray(field.GetDirection()).reshape(3, 3) * np.asarray(field.GetSpacing())) @ index.reshape(-1, 3).T
    points = grid.T + np.asarray(field.GetOrigin()) + vectors.reshape(-1, 3)
    moving = sitk.ReadImage(str(pair.moving))
    to_index = np.linalg.inv(np.asarray(moving.GetDirection()).reshape(3, 3) * np.asarray(moving.GetSpacing()))
    continuous = (to_index @ (points - np.asarray(moving.GetOrigin())).T).T
    inside = np.all((continuous >= margin) & (continuous <= np.asarray(moving.GetSize()) - 1 - margin), axis=1)
    return inside.reshape(vectors.shape[:3])


def test_greedy_warp_reproduces_greedy_reslice(data: dict, greedy: dict, tmp_path: Path) -> None:
    """``greedy -rf fixed -rm moving out -r warp.nii.gz affine.mat`` from its own files == our ``warp.nii.gz``."""
    from picsl_greedy import Greedy3D

    for pair in data["pairs"]:
        folder = greedy["out"] / pair.id
        reference_path = tmp_path / f"{pair.id}_greedy.nii.gz"
        with (tmp_path / "greedy.log").open("a") as log:
            Greedy3D().execute(f"-d 3 -threads 1 -rf {pair.fixed} -rm {pair.moving} {reference_path} "
                               f"-r {folder / 'native' / 'warp.nii.gz'} {folder / 'native' / 'affine.mat'}",
                               out=log, err=log)
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(reference_path)))
        ours = resample_through_warp(pair, folder, sitk.sitkLinear)
        inside = inside_moving(pair, folder)
        assert inside.mean() > 0.4 and np.abs(reference[inside]).max() > 0.5
        np.testing.assert_allclose(ours[inside], reference[inside], atol=1e-4)
        native = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "native" / "greedy_warped.nii.gz")))
        assert np.abs(native[inside] - reference[inside]).max() < 0.02  # the in-memory reslice, same transform


def test_greedy_affine_is_a_ras_matrix_fixed_to_moving() -> None:
    """A RAS translation of +t maps an LPS point p to p + (-t_x, -t_y, t_z); the linear part is conjugated."""
    from benchmarks.peers import greedy_affine_transform

    matrix = np.eye(4)
    matrix[:3, :3] = rotation(3, 0.2, (1, 1, 1))
    matrix[:3, 3] = (1.0, 2.0, 3.0)
    transform = greedy_affine_transform(matrix)
    point_lps = np.array([4.0, -5.0, 6.0])
    flip = np.array([-1.0, -1.0, 1.0])
    expected = flip * (matrix[:3, :3] @ (flip * point_lps) + matrix[:3, 3])
    np.testing.assert_allclose(transform.TransformPoint(point_lps.tolist()), expected, atol=1e-12)


def test_greedy_record_commands_and_quiet_console(data: dict, greedy: dict, tmp_path: Path,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    assert greedy["statuses"] == [("shift", "done"), ("oblique", "done"), ("missing", "failed")]
    record = PeerRecord.from_json(json.loads((greedy["out"] / "oblique" / PEER_RECORD).read_text()))
    assert (record.method, record.tool, record.parameters, record.threads) == ("greedy", "picsl-greedy", 0, 1)
    assert record.version not in ("", "unknown") and record.cuda_peak_gib is None
    seconds = record.seconds
    assert seconds["registration"] == pytest.approx(seconds["affine"] + seconds["deformable"])
    assert min(seconds["affine"], seconds["deformable"]) > 0 and seconds["registration"] <= seconds["total"]
    assert 0 < record.peak_rss_gib_before <= record.peak_rss_gib
    commands = record.settings["commands"]
    assert "-a -dof 12" in commands["affine"] and "-ia-image-centers -n 100x50x10 -m NCC 2x2x2" in commands["affine"]
    assert "-it affine -o warp -n 100x50x10 -m NCC 2x2x2" in commands["deformable"]
    assert all("-threads 1" in c for c in commands.values()) and "-seed 1" in commands["deformable"]
    log = Path(record.outputs["native_log"]).read_text()
    assert "LEVEL 3 of 3" in log and "Final RAS Transform" in log  # the log went to the pair folder ...
    capfd.readouterr()
    pair = data["pairs"][0]
    again = register_greedy(pair.fixed, pair.moving, tmp_path / "again", threads=1)
    captured = capfd.readouterr()
    assert "Level" not in captured.out + captured.err and not (tmp_path / "again" / "native").exists()  # ... or away
    first = sitk.GetArrayFromImage(sitk.ReadImage(str(greedy["out"] / pair.id / "warp.nii.gz")))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(again.outputs["warp"]))), first)


@pytest.mark.parametrize("method", [pytest.param("syn", marks=pytest.mark.bench),  # about 90 s for the fixtures
                                    pytest.param("elastix", marks=pytest.mark.bench), "greedy"])
def test_translation_comes_out_with_its_sign(method: str, data: dict, request: pytest.FixtureRequest) -> None:
    run = request.getfixturevalue(method)
    pair = data["pairs"][0]
    field = sitk.GetArrayFromImage(sitk.ReadImage(str(run["out"] / pair.id / "warp.nii.gz")))  # (k, j, i, 3) LPS
    inside = sitk.GetArrayFromImage(sitk.ReadImage(str(pair.fixed_seg))) > 0
    mean = field[inside].mean(axis=0)
    np.testing.assert_allclose(mean, SHIFT_MM, atol=0.4, err_msg=f"{method}: mean field {mean}")


def test_voxelmorph_transformer_is_rlreg_warp() -> None:
    vxm = pytest.importorskip("voxelmorph")
    generator = torch.Generator().manual_seed(0)
    image = torch.rand((1, 2, 9, 10, 11), generator=generator)
    disp = 3 * torch.randn((1, 3, 9, 10, 11), generator=generator)
    torch.testing.assert_close(vxm.nn.modules.SpatialTransformer()(image, disp), warp(image, disp),
                               atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------- evaluation
def identity_fields(data: dict, folder: Path) -> Path:
    for pair in data["pairs"]:
        geometry = read_image(pair.fixed).geometry
        write_itk_warp(torch.zeros(1, 3, *geometry.size), geometry, folder / pair.id / "warp.nii.gz")
    return folder


@pytest.mark.bench  # runs ANTs or elastix (about 90 s for the module's fixtures) or trains
def test_evaluate_scores_peer_folders(data: dict, syn: dict, elastix: dict, tmp_path: Path) -> None:
    before = evaluate_fields(data["csv"], identity_fields(data, tmp_path / "identity"), output=tmp_path / "eval0")
    dice_before = {row.pair: row.dice_mean for row in before.pairs}
    for method, run in (("syn", syn), ("elastix", elastix)):
        evaluation = evaluate_fields(data["csv"], run["out"], output=tmp_path / f"eval_{method}")
        assert [row.status for row in evaluation.pairs] == ["done", "done"], evaluation.summary_lines()
        for row in evaluation.pairs:
            assert row.field == str(run["out"] / row.pair / "warp.nii.gz")
            assert row.dice_mean > dice_before[row.pair] + 0.1, (method, row.pair, row.dice_mean)
            assert math.isfinite(row.sdlogj) and row.hd95_mean is not None
    assert (tmp_path / "eval_syn" / "evaluation.json").is_file()


def test_evaluate_scores_greedy_folders(data: dict, greedy: dict, tmp_path: Path) -> None:
    before = evaluate_fields(data["csv"], identity_fields(data, tmp_path / "identity"), output=tmp_path / "eval0")
    dice_before = {row.pair: row.dice_mean for row in before.pairs}
    evaluation = evaluate_fields(data["csv"], greedy["out"], output=tmp_path / "eval_greedy")
    assert [row.status for row in evaluation.pairs] == ["done", "done"], evaluation.summary_lines()
    for row in evaluation.pairs:
        assert row.dice_mean > dice_before[row.pair] + 0.1, (row.pair, row.dice_mean)
        assert math.isfinite(row.sdlogj) and row.hd95_mean is not None


@pytest.mark.bench  # runs ANTs or elastix (about 90 s for the module's fixtures) or trains
def test_peer_record(data: dict, syn: dict, elastix: dict) -> None:
    for method, run in (("syn", syn), ("elastix", elastix)):
        assert run["statuses"] == [("shift", "done"), ("oblique", "done"), ("missing", "failed")]
        record = PeerRecord.from_json(json.loads((run["out"] / "oblique" / PEER_RECORD).read_text()))
        assert (record.method, record.parameters, record.threads) == (method, 0, 1)
        assert record.tool in ("antspyx", "itk-elastix") and record.version not in ("", "unknown")
        seconds = record.seconds
        assert 0 < seconds["registration"] <= seconds["total"] and seconds["read"] >= 0
        assert 0 < record.peak_rss_gib_before <= record.peak_rss_gib and record.cuda_peak_gib is None
        assert Path(record.outputs["warp"]).is_file() and Path(record.outputs["warped"]).is_file()
        assert "LPS" in record.conventions["warp.nii.gz"]
    syn_settings = PeerRecord.from_json(json.loads((syn["out"] / "oblique" / PEER_RECORD).read_text())).settings
    assert syn_settings["type_of_transform"] == "SyN" and syn_settings["random_seed"] == 1
    maps = PeerRecord.from_json(json.loads((elastix["out"] / "oblique" / PEER_RECORD).read_text())).settings
    assert [m["Transform"] for m in maps["parameter_maps"]] == [["AffineTransform"], ["BSplineTransform"]]


# ---------------------------------------------------------------------------------------------------- run_peer
@pytest.mark.bench  # runs ANTs or elastix (about 90 s for the module's fixtures) or trains
def test_run_peer_resumes_and_isolates_a_failure(data: dict, syn: dict) -> None:
    out = syn["out"]
    assert syn["statuses"] == [("shift", "done"), ("oblique", "done"), ("missing", "failed")]
    assert [r.moving for r in syn["records"]] == [str(p.moving) for p in data["pairs"]]
    error = json.loads((out / "missing" / ERROR_RECORD).read_text())
    assert "no_such_moving.nii.gz" in error["error"] and not (out / "missing" / PEER_RECORD).exists()
    stamps = {p.id: ((out / p.id / PEER_RECORD).stat().st_mtime_ns, (out / p.id / "warp.nii.gz").stat().st_mtime_ns)
              for p in data["pairs"]}
    statuses: list[str] = []
    again = run_peer("syn", [*data["pairs"], data["missing"]], out,
                     progress=lambda done, total, pair, status: statuses.append(status))
    assert statuses == ["skipped", "skipped", "failed"]
    assert [r.to_json() for r in again] == [r.to_json() for r in syn["records"]]
    assert stamps == {p.id: ((out / p.id / PEER_RECORD).stat().st_mtime_ns,
                             (out / p.id / "warp.nii.gz").stat().st_mtime_ns) for p in data["pairs"]}


@pytest.mark.slow
def test_syn_repeats_bit_identically_with_one_thread(data: dict, tmp_path: Path) -> None:
    """In a fresh process (ANTsPy's ITK fixes its thread count at its first use in a process)."""
    pytest.importorskip("ants")
    pair = data["pairs"][1]
    script = ("import sys; from pathlib import Path; from benchmarks.peers import register_syn\n"
              "for name in ('a', 'b'):\n"
              "    register_syn(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]) / name, threads=1)\n")
    subprocess.run([sys.executable, "-c", script, str(pair.fixed), str(pair.moving), str(tmp_path)], check=True,
                   cwd=Path(__file__).resolve().parents[2])  # the repository root, where `benchmarks` is
    first, second = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / name / "warp.nii.gz"))) for name in "ab")
    np.testing.assert_array_equal(first, second)


def test_run_peer_rejects_unknown_method(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown"):
        run_peer("demons", [], tmp_path)


# ---------------------------------------------------------------------------------------------------- VoxelMorph
def blob_sampler(shape: tuple[int, ...]):
    """Pairs of random smooth blobs, the moving one translated by up to 2 voxels; labels by intensity thresholds."""

    def sample(count: int, generator: torch.Generator, device: torch.device | str):
        ndim = len(shape)
        grid = identity_grid(shape)[:, :, None]  # (1, ndim, 1, *S)
        size = torch.tensor(shape, dtype=torch.float32).view(1, ndim, 1, *[1] * ndim)
        centres = (0.25 + 0.5 * torch.rand((count, ndim, 3, *[1] * ndim), generator=generator)) * (size - 1)
        width = 0.12 * size.min()
        fixed = torch.exp(-((grid - centres) ** 2).sum(1) / (2 * width**2)).amax(1, keepdim=True)
        shift = (torch.rand((count, ndim), generator=generator) - 0.5) * 4
        field = shift.view(count, ndim, *[1] * ndim).expand(count, ndim, *shape)
        fixed_seg = (fixed > 0.3).long() + (fixed > 0.7).long()
        moving, moving_seg = warp(fixed, field), warp(fixed_seg, field, "nearest")
        return fixed.to(device), moving.to(device), fixed_seg.to(device), moving_seg.to(device)

    return sample


@pytest.mark.bench  # runs ANTs or elastix (about 90 s for the module's fixtures) or trains
def test_voxelmorph_trains_reloads_and_registers(data: dict, tmp_path: Path) -> None:
    vxm = pytest.importorskip("voxelmorph")
    shape, budget = (32, 32, 32), 4.0
    checkpoint = train_voxelmorph(blob_sampler(shape), shape, budget, tmp_path / "vxm.pt", threads=2)
    saved = torch.load(checkpoint, weights_only=True)
    curve = saved["curve"]
    assert saved["steps"] == len(curve) >= 1 and math.isfinite(curve[-1]["loss"])
    assert saved["seconds"] >= budget and (len(curve) == 1 or curve[-2]["seconds"] < budget)  # no step starts late
    assert saved["shape"] == list(shape) and saved["variant"].startswith("label-supervised")
    config = VoxelMorphConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["config"].items()})
    fresh = vxm.nn.models.VxmPairwise(ndim=3, source_channels=1, target_channels=1,
                                      nb_features=list(config.nb_features))
    fresh.load_state_dict(saved["state_dict"])  # the checkpoint alone rebuilds the network
    assert saved["parameters"] == sum(p.numel() for p in fresh.parameters()) > 0
    with pytest.raises(ValueError, match="multiple of 32"):
        train_voxelmorph(blob_sampler((24, 24, 24)), (24, 24, 24), 1.0, tmp_path / "bad.pt")

    pair = data["pairs"][1]
    out = tmp_path / "vxm_out"
    records = run_peer("voxelmorph", [pair], out, model=checkpoint)
    assert [r.method for r in records] == ["voxelmorph"]
    record = records[0]
    assert record.parameters == saved["parameters"] and record.settings["network_grid"] == list(shape)
    assert 0 < record.seconds["deformable"] <= record.seconds["registration"] <= record.seconds["total"]
    assert (out / pair.id / "rlreg.json").is_file()  # written by rlreg's own finish()
    table = tmp_path / "one.csv"
    table.write_text("id,fixed,moving,fixed_seg,moving_seg\n"
                     f"{pair.id},{pair.fixed},{pair.moving},{pair.fixed_seg},{pair.moving_seg}\n")
    evaluation = evaluate_fields(table, out, output=tmp_path / "eval_vxm")
    row = evaluation.pairs[0]
    assert row.status == "done" and math.isfinite(row.dice_mean) and math.isfinite(row.sdlogj)
