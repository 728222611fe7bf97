"""``rlreg register`` / ``apply`` / ``invert`` end to end, and interop: the written fields, resampled by SimpleITK and
by ANTs (ANTsPy), reproduce rlreg's own ``warped.nii.gz`` on an oblique, anisotropic, axis-flipped phantom pair."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from phantoms import phantom, write_pair
from typer.testing import CliRunner

import rlreg.models as models
from rlreg.cli.main import app
from rlreg.io import Geometry, InputError, read_image
from rlreg.pipelines.register import (
    DEFAULT_BENDING,
    DEFAULT_INSTANCE_2D,
    DEFAULT_SMOOTHNESS,
    DIFFEOMORPHIC_SMOOTHNESS,
    RegisterOptions,
    RegisterSettings,
    apply_transform,
    finishing,
    invert_transform,
    prepare,
    register,
)
from rlreg.pipelines.register.outputs import WRITING_RECORD
from rlreg.transforms import chain_from_world, read_transform, world_jacobian

runner = CliRunner()


@pytest.fixture(scope="module", params=[2, 3], ids=["2d", "3d"])
def registered(request, tmp_path_factory):
    """One phantom pair per dimensionality, registered once with every export."""
    ndim = request.param
    folder = tmp_path_factory.mktemp(f"phantom{ndim}d")
    paths = write_pair(folder, ndim)
    formats = ("slicer", "l2r", "niftyreg", "fsl", "dicom") if ndim == 3 else ("slicer", "l2r")
    options = RegisterOptions(fixed=paths["fixed"], moving=paths["moving"], output=folder / "out",
                              fixed_seg=paths["fixed_seg"], moving_seg=paths["moving_seg"],
                              settings=RegisterSettings(steps=40, formats=formats, save_inverse=True,
                                                        body_part="HEAD"))
    result = register(options)
    return ndim, paths, folder / "out", result


def _interior(warp_path, fixed_path, moving_path) -> np.ndarray:
    """Fixed voxels whose moving sample point lies inside the moving grid (where every resampler agrees)."""
    fixed, moving = read_image(fixed_path), read_image(moving_path)
    chain = chain_from_world(read_transform(warp_path, fixed.geometry), fixed.geometry, moving.geometry)[0]
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=chain.dtype) for n in fixed.geometry.size],
                                      indexing="ij"))
    positions = chain + grid
    inside = torch.ones(fixed.geometry.size, dtype=torch.bool)
    for axis, n in enumerate(moving.geometry.size):
        inside &= (positions[axis] >= 0) & (positions[axis] <= n - 1)
    return inside.numpy()


def test_outputs_and_sidecar(registered) -> None:
    _ndim, paths, out, _result = registered
    report = json.loads((out / "rlreg.json").read_text())
    assert report["method"]["deformable"] == "instance-optimisation"  # honest about what ran
    assert report["inputs"]["fixed"]["sha256"] and report["inputs"]["moving"]["sha256"]
    assert set(report["seconds"]) >= {"read", "affine", "deformable", "write", "total"}
    qc = report["qc"]
    assert qc["dice_after"] > qc["dice_affine"] > qc["dice_before"]
    assert qc["lncc_after"] > qc["lncc_affine"]
    # The default's light diffusion (0.25, with bending energy) may fold a few voxels at this phantom's sharp edges
    # (0.011 % in 3-D); on the brain data it folds less than the diffusion-only loss did (docs/benchmarks.md).
    assert qc["folding_percent"] < 0.1 and qc["jacobian_max"] > qc["jacobian_min"]
    assert "antsApplyTransforms" in report["ants_command"]
    fixed = sitk.ReadImage(str(paths["fixed"]))
    for name in ("warped.nii.gz", "jacdet.nii.gz", "warped_seg.nii.gz"):
        image = sitk.ReadImage(str(out / name))
        assert image.GetSize() == fixed.GetSize()
        assert np.allclose(image.GetDirection(), fixed.GetDirection(), atol=1e-6)
        assert np.allclose(image.GetOrigin(), fixed.GetOrigin(), atol=1e-4)
    labels = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped_seg.nii.gz")))))
    assert labels <= {0, 1, 2, 3}  # label-safe: never an interpolated label


def test_warp_file_layout(registered) -> None:
    """warp.nii.gz: vector image, intent 1007, float32, 5-D in 3D, the fixed grid, sform = qform."""
    import nibabel as nib

    ndim, _paths, out, _ = registered
    field = sitk.ReadImage(str(out / "warp.nii.gz"))
    assert field.GetNumberOfComponentsPerPixel() == ndim and field.GetDimension() == ndim
    header = nib.load(str(out / "warp.nii.gz")).header
    assert int(header["intent_code"]) == 1007
    assert header.get_data_dtype() == np.float32
    if ndim == 3:
        assert tuple(header["dim"][:6]) == (5, *field.GetSize(), 1, 3)
        assert np.allclose(header.get_sform(), header.get_qform(), atol=1e-4)


@pytest.mark.parametrize("name", ["warp.nii.gz", "transform.h5"])
def test_simpleitk_resampling_matches_rlreg(registered, name) -> None:
    _ndim, paths, out, _ = registered
    fixed, moving = sitk.ReadImage(str(paths["fixed"])), sitk.ReadImage(str(paths["moving"]))
    if name.endswith(".h5"):
        transform = sitk.ReadTransform(str(out / name))
    else:
        transform = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(out / name)),
                                                              sitk.sitkVectorFloat64))
    theirs = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0))
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped.nii.gz")))
    inside = _interior(out / "warp.nii.gz", paths["fixed"], paths["moving"])
    assert inside.mean() > 0.5
    assert np.abs(theirs - ours)[inside].max() < 1e-3


@pytest.mark.parametrize("name", ["warp.nii.gz", "transform.h5"])
def test_ants_resampling_matches_rlreg(registered, name) -> None:
    ants = pytest.importorskip("ants")
    ndim, paths, out, _ = registered
    fixed, moving = ants.image_read(str(paths["fixed"])), ants.image_read(str(paths["moving"]))
    theirs = ants.apply_transforms(fixed, moving, [str(out / name)], interpolator="linear").numpy()
    theirs = theirs.transpose(*range(ndim)[::-1])  # ANTs arrays are (i, j, k); rlreg's are (k, j, i)
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped.nii.gz")))
    inside = _interior(out / "warp.nii.gz", paths["fixed"], paths["moving"])
    assert np.abs(theirs - ours)[inside].max() < 1e-3


def test_dicom_reads_back_to_the_same_field(registered) -> None:
    ndim, _paths, out, _ = registered
    if ndim == 2:
        pytest.skip("DICOM DSRO is 3D")
    from dicom_tools import dciodvfy_findings, dcmdump_text

    from rlreg.formats import read_dicom_field

    assert dciodvfy_findings(out / "registration.dcm") == []  # NIfTI inputs with --body-part: a valid object
    assert "(0018,0015) CS [HEAD]" in dcmdump_text(out / "registration.dcm")
    u, geometry = read_dicom_field(out / "registration.dcm")
    field = sitk.ReadImage(str(out / "warp.nii.gz"))
    image = sitk.GetImageFromArray(u.astype(np.float64), isVector=True)
    geometry.apply_to(image)
    dsro = sitk.DisplacementFieldTransform(image)
    itk = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    rng = np.random.default_rng(0)
    for index in rng.integers(1, np.asarray(field.GetSize()) - 1, size=(20, 3)):
        point = field.TransformContinuousIndexToPhysicalPoint([float(i) for i in index])
        assert np.allclose(dsro.TransformPoint(point), itk.TransformPoint(point), atol=1e-4)


def test_jacdet_is_the_jacobian_of_the_written_field(registered) -> None:
    _ndim, paths, out, _ = registered
    fixed = read_image(paths["fixed"])
    jac = world_jacobian(read_transform(out / "warp.nii.gz", fixed.geometry), fixed.geometry)
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "jacdet.nii.gz")))
    assert np.allclose(jac[0, 0].numpy(), written, atol=1e-4)


def test_inverse_warp_undoes_the_forward_one(registered, tmp_path) -> None:
    _ndim, paths, out, _ = registered
    # moving -> fixed -> moving through warped.nii.gz and the inverse: the phantom's labels come back
    back = tmp_path / "back_seg.nii.gz"
    apply_transform(out / "inverse_warp.nii.gz", paths["moving"], input_image=out / "warped_seg.nii.gz", output=back,
                    interp="label")
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(paths["moving_seg"])))
    returned = sitk.GetArrayFromImage(sitk.ReadImage(str(back)))
    inside = _interior(out / "inverse_warp.nii.gz", paths["moving"], paths["fixed"])
    assert (original == returned)[inside].mean() > 0.97
    summary = invert_transform(out / "warp.nii.gz", paths["fixed"], reference=paths["moving"],
                               output=tmp_path / "inv.nii.gz")
    assert summary["consistency_median_mm"] < 0.05


def test_apply_reproduces_warped_outputs(registered, tmp_path) -> None:
    _ndim, paths, out, _ = registered
    apply_transform(out / "transform.h5", paths["fixed"], input_image=paths["moving"], output=tmp_path / "w.nii.gz",
                    interp="linear")
    apply_transform(out / "warp.nii.gz", paths["fixed"], input_image=paths["moving_seg"], output=tmp_path / "s.nii.gz",
                    interp="label")
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped.nii.gz")))
    assert np.abs(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "w.nii.gz"))) - ours).max() < 1e-3
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped_seg.nii.gz")))
    assert (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "s.nii.gz"))) == seg).mean() > 0.999


def test_slicer_and_l2r_exports_agree_with_the_warp(registered) -> None:
    ndim, _paths, out, _ = registered
    itk = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warp.nii.gz")))
    slicer = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warp_slicer.nii.gz")))  # ITK >= 5.4: RAS -> LPS
    assert np.allclose(slicer[..., :ndim].reshape(itk.shape), itk, atol=1e-4)
    assert (out / "disp_fixed_moving.nii.gz").exists()


# ---------------------------------------------------------------------------------------------------- errors
def _fails_in_one_line(args, *needles) -> str:
    result = runner.invoke(app, ["register", *map(str, args), "--device", "cpu", "--steps", "2"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert str(needle) in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def pair3d(tmp_path_factory):
    return write_pair(tmp_path_factory.mktemp("errors"), 3)


def test_missing_and_unreadable_files(pair3d, tmp_path) -> None:
    _fails_in_one_line([tmp_path / "nope.nii.gz", pair3d["moving"], "-o", tmp_path / "o"], "nope.nii.gz", "not found")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"this is not an image")
    _fails_in_one_line([pair3d["fixed"], junk, "-o", tmp_path / "o"], "junk.nii.gz", "not a readable image")


def test_2d_with_3d_is_refused(pair3d, tmp_path) -> None:
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(pair3d["fixed"]))[:, :, 5], str(flat))
    _fails_in_one_line([pair3d["fixed"], flat, "-o", tmp_path / "o"], "flat.nii.gz", "same dimensionality")


def test_4d_nan_and_empty_inputs(pair3d, tmp_path) -> None:
    vol = sitk.ReadImage(str(pair3d["fixed"]))
    series = tmp_path / "series.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([vol, vol]), str(series))
    _fails_in_one_line([series, pair3d["moving"], "-o", tmp_path / "o"], "series.nii.gz", "pick one volume")
    array = sitk.GetArrayFromImage(vol)
    array[3, 4, 5] = np.nan
    nan = sitk.GetImageFromArray(array)
    nan.CopyInformation(vol)
    sitk.WriteImage(nan, str(tmp_path / "nan.nii.gz"))
    _fails_in_one_line([tmp_path / "nan.nii.gz", pair3d["moving"], "-o", tmp_path / "o"], "nan.nii.gz", "NaN")
    empty = sitk.GetImageFromArray(np.zeros_like(array))
    empty.CopyInformation(vol)
    sitk.WriteImage(empty, str(tmp_path / "empty.nii.gz"))
    _fails_in_one_line([pair3d["fixed"], tmp_path / "empty.nii.gz", "-o", tmp_path / "o"], "empty.nii.gz", "empty")


def test_model_of_the_wrong_dimensionality(pair3d, tmp_path) -> None:
    _fails_in_one_line([pair3d["fixed"], pair3d["moving"], "-o", tmp_path / "o", "--model", "digits"],
                       "fixed.nii.gz", "2-D")


def test_foreign_output_directory_is_left_alone(pair3d, tmp_path) -> None:
    theirs = tmp_path / "results"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("precious")
    _fails_in_one_line([pair3d["fixed"], pair3d["moving"], "-o", theirs], "results", "thesis.tex")
    assert (theirs / "thesis.tex").read_text() == "precious"


def test_interrupted_run_leaves_only_complete_files(pair3d, tmp_path, monkeypatch) -> None:
    def crash(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(finishing, "write_itk_transform", crash)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        register(RegisterOptions(fixed=pair3d["fixed"], moving=pair3d["moving"], output=out,
                                 settings=RegisterSettings(steps=2)))
    names = sorted(p.name for p in out.iterdir())
    assert "rlreg.json" not in names  # the run is visibly unfinished
    assert not [n for n in names if "tmp" in n]  # no temporary leftovers
    for name in (n for n in names if n != WRITING_RECORD):  # what was written is complete
        assert sitk.ReadImage(str(out / name)).GetNumberOfPixels() > 0
    # a re-run into the same folder (rlreg's own files) is allowed and completes
    monkeypatch.undo()
    register(RegisterOptions(fixed=pair3d["fixed"], moving=pair3d["moving"], output=out,
                             settings=RegisterSettings(steps=2)))
    assert (out / "rlreg.json").exists()


def test_read_image_errors_are_input_errors(tmp_path) -> None:
    with pytest.raises(InputError, match="no DICOM series"):
        read_image(tmp_path)


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_register_json_and_equivalent_ants_command(pair3d, tmp_path) -> None:
    out = tmp_path / "cli"
    result = runner.invoke(app, ["register", str(pair3d["fixed"]), str(pair3d["moving"]), "-o", str(out), "--steps",
                                 "4", "--device", "cpu", "--json", "--no-affine"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["method"]["affine"].startswith("none")
    assert report["ants_command"].startswith("antsApplyTransforms -d 3")
    assert json.loads((out / "rlreg.json").read_text())["qc"] == report["qc"]


def test_cli_apply_and_invert(registered, tmp_path) -> None:
    _ndim, paths, out, _ = registered
    result = runner.invoke(app, ["apply", "-t", str(out / "warp.nii.gz"), "-r", str(paths["fixed"]), "-i",
                                 str(paths["moving_seg"]), "-o", str(tmp_path / "seg.nii.gz"), "--interp", "label"])
    assert result.exit_code == 0, result.output
    assert Geometry.from_sitk(sitk.ReadImage(str(tmp_path / "seg.nii.gz"))) == Geometry.from_sitk(
        sitk.ReadImage(str(paths["fixed"])))
    result = runner.invoke(app, ["invert", "-t", str(out / "warp.nii.gz"), "-f", str(paths["fixed"]), "-r",
                                 str(paths["moving"]), "-o", str(tmp_path / "inv.nii.gz"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["consistency_median_mm"] < 0.05


# ---------------------------------------------------------------------------------------------------- digits
@pytest.mark.parametrize("suffix", [".png", ".nii.gz"])
def test_digits_model_through_the_cli(tmp_path, suffix) -> None:
    """The shipped digits agent registers 28x28 digits given as PNG or 2D NIfTI."""
    from PIL import Image as PILImage

    from rlreg.data.digits import split_mnist

    images, _ = split_mnist()["test"]
    paths = []
    for name, index in (("fixed", 0), ("moving", 1)):
        array = (images[index, 0].numpy() * 255).astype(np.uint8)
        path = tmp_path / f"{name}{suffix}"
        if suffix == ".png":
            PILImage.fromarray(array).save(path)
        else:
            sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.float32)), str(path))
        paths.append(path)
    out = tmp_path / "out"
    result = runner.invoke(app, ["register", str(paths[0]), str(paths[1]), "--model", "digits", "-o", str(out),
                                 "--device", "cpu", "--no-affine", "--save-steps", "-q"])
    assert result.exit_code == 0, result.output
    warped = sitk.ReadImage(str(out / "warped.nii.gz"))
    assert warped.GetSize() == (28, 28)
    report = json.loads((out / "rlreg.json").read_text())
    assert report["method"]["deformable"] == "rl-agent" and report["method"]["model"] == "digits"
    steps = report["method"]["steps"]
    assert [s["step"] for s in report["steps"]] == list(range(steps + 1))
    assert report["qc"]["lncc_after"] > report["qc"]["lncc_before"] + 0.2
    assert (out / "steps" / "registration.gif").exists()
    assert (out / "steps" / f"step_{steps:03d}_warp.nii.gz").exists()


# ---------------------------------------------------------------------------------------------------- default model
@pytest.fixture
def default3d(tmp_path, monkeypatch) -> str:
    """A temporary registry whose only model is a fresh (untrained) tiny 3D agent marked default, acting on a 2 mm
    grid; returns its name."""
    from rlreg.networks import NetworkConfig
    from rlreg.sac import Agent, AgentConfig

    folder = tmp_path / "models"
    torch.manual_seed(0)
    config = AgentConfig(network=NetworkConfig(ndim=3, widths=(4, 8), plan_dim=6, critic_widths=(4,), critic_hidden=8))
    path = Agent(config).save(folder / "tiny3d.pt")
    card = {"file": path.name, "sha256": models.sha256(path), "ndim": 3, "default": True, "working_spacing_mm": 2.0,
            "recommended_steps": 2, "max_steps": 2}
    (folder / "models.json").write_text(json.dumps({"tiny3d": card}))
    monkeypatch.setattr(models, "MODELS_DIR", folder)
    monkeypatch.setattr(models, "REGISTRY", folder / "models.json")
    return "tiny3d"


@pytest.fixture(scope="module")
def shifted3d(tmp_path_factory) -> dict:
    """24^3 phantoms at 1 mm on one axis-aligned grid, the moving object shifted by (2, -1.5, 1) mm and reshaped."""
    folder = tmp_path_factory.mktemp("shifted")
    paths = {}
    for name, centre, radii in (("fixed", (0.0, 0.0, 0.0), (7.0, 6.0, 6.5)), ("moving", (2.0, -1.5, 1.0),
                                                                             (7.5, 5.5, 6.5))):
        image, seg = phantom((24, 24, 24), (1.0, 1.0, 1.0), (-11.5, -11.5, -11.5), np.eye(3), centre, radii)
        paths[name], paths[f"{name}_seg"] = folder / f"{name}.nii.gz", folder / f"{name}_seg.nii.gz"
        sitk.WriteImage(image, str(paths[name]))
        sitk.WriteImage(seg, str(paths[f"{name}_seg"]))
    return paths


def test_the_default_model_of_the_input_dimensionality_runs(default3d, pair3d, tmp_path) -> None:
    report = register(RegisterOptions(pair3d["fixed"], pair3d["moving"], tmp_path / "default",
                                      settings=RegisterSettings(affine=False)))
    method = report.method
    assert method.deformable == "rl-agent" and method.model == default3d and method.model_asked == "default"
    assert method.steps == 2  # the card's recommended_steps
    # the fixed image (30 x 28 x 22 voxels of 1.2 x 0.9 x 1.5 mm, tensor order reversed) at 2 mm: extents 31.5,
    # 24.3, 34.8 mm -> round(e / 2) + 1
    assert method.stage["working_grid"] == [17, 13, 18]
    assert json.loads((tmp_path / "default" / "rlreg.json").read_text())["method"]["model"] == default3d

    result = runner.invoke(app, ["register", str(pair3d["fixed"]), str(pair3d["moving"]), "-o", str(tmp_path / "io"),
                                 "--model", "none", "--steps", "4", "--no-affine", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    method = json.loads(result.output)["method"]
    assert method["deformable"] == "instance-optimisation" and method["model"] is None
    assert method["model_asked"] == "none" and method["note"].startswith("--model none")


def test_refine_continues_the_agent_field(default3d, shifted3d, tmp_path) -> None:
    """An untrained agent barely moves; 30 refinement iterations from its field must raise LNCC and Dice."""
    runs = {}
    for refine in (0, 30):
        runs[refine] = register(RegisterOptions(shifted3d["fixed"], shifted3d["moving"], tmp_path / f"refine{refine}",
                                                fixed_seg=shifted3d["fixed_seg"], moving_seg=shifted3d["moving_seg"],
                                                settings=RegisterSettings(affine=False, refine=refine,
                                                                          save_steps=refine > 0)))
    plain, refined = runs[0], runs[30]
    assert plain.method.refine is None and set(plain.method.stage["seconds"]) == {"agent"}
    assert refined.qc.lncc_after > plain.qc.lncc_after + 0.05
    assert refined.qc.dice_after > plain.qc.dice_after + 0.02
    block = refined.method.refine
    assert block["iterations"] == 30 and block["factor"] == 2 and block["working_grid"] == [24, 24, 24]
    assert block["optimised_grid"] == [24, 24, 24]  # factor 2 would leave 12 < MIN_LEVEL_SIZE voxels: full grid
    assert block["lncc_after"] > block["lncc_before"]
    assert set(refined.method.stage["seconds"]) == {"agent", "refine"} and refined.method.stage["seconds"]["refine"] > 0
    written = json.loads((tmp_path / "refine30" / "rlreg.json").read_text())
    assert written["method"]["refine"]["lncc_after"] == pytest.approx(block["lncc_after"])
    # the curve: agent steps 0..2, then the 30 refinement iterations on the same (agent) grid
    assert [s["step"] for s in written["steps"]] == list(range(33))
    assert [s.get("phase") for s in written["steps"]][2:4] == [None, "refine"]
    assert written["steps"][-1]["lncc"] > written["steps"][2]["lncc"]
    # --save-steps: 2 agent steps, then the refined field, which is the one written
    table = json.loads((tmp_path / "refine30" / "steps" / "steps.json").read_text())
    assert len(table) == 3 and table[-1]["dice"] == pytest.approx(refined.qc.dice_after)


def test_refine_without_an_agent_is_refused(pair3d, tmp_path, monkeypatch) -> None:
    _fails_in_one_line([pair3d["fixed"], pair3d["moving"], "-o", tmp_path / "o", "--model", "none", "--refine", "5"],
                       "--refine 5", "--model none asks for it", "pick an agent with --model")
    monkeypatch.setattr(models, "REGISTRY", tmp_path / "no-models.json")  # nothing ships
    with pytest.raises(InputError, match="no default agent ships for 3-D inputs"):
        prepare(RegisterOptions(pair3d["fixed"], pair3d["moving"], tmp_path / "p", settings=RegisterSettings(refine=5)))
    with pytest.raises(InputError, match="--refine -1: must be >= 0"):
        RegisterOptions(pair3d["fixed"], pair3d["moving"], tmp_path / "p", settings=RegisterSettings(refine=-1))


def test_refine_settings_split_device_batches_and_batch_runs(default3d, shifted3d, tmp_path) -> None:
    from rlreg.pipelines.batch import _settings_record

    def options(**kwargs) -> RegisterOptions:
        return RegisterOptions(shifted3d["fixed"], shifted3d["moving"], tmp_path / "p",
                               settings=RegisterSettings(affine=False, **kwargs))

    keys = {prepare(options(**kwargs)).batch_key for kwargs in ({}, {"refine": 30}, {"refine": 30, "refine_factor": 1},
                                                                {"refine": 10})}
    assert len(keys) == 4
    plain = _settings_record(options().settings)
    assert plain["models_used"]["3-D"].startswith(f"{default3d} sha256:")
    assert plain["models_used"]["2-D"] == "instance-optimisation"
    assert _settings_record(options(refine=30).settings) != plain
    assert _settings_record(options(model="none").settings)["models_used"]["3-D"] == "instance-optimisation"


def test_diffeomorphic_option_reaches_the_optimiser_and_does_not_fold(tmp_path) -> None:
    """3-D: ``--diffeomorphic`` is a velocity field at the tuned weight 0.5 (``--smoothness`` still overrides it),
    recorded in rlreg.json, with no folded voxel; without it the displacement default runs. 2-D: the tuned default
    is a velocity field already (``DEFAULT_INSTANCE_2D``), and the weights override it the same way."""
    paths = write_pair(tmp_path / "p3", 3)
    base = ["register", str(paths["fixed"]), str(paths["moving"]), "--model", "none", "--steps", "30", "--json"]
    out = runner.invoke(app, [*base, "-o", str(tmp_path / "svf"), "--diffeomorphic"])
    assert out.exit_code == 0, out.output
    record = json.loads(out.stdout)
    assert record["method"]["config"]["diffeomorphic"] is True
    assert record["method"]["config"]["smoothness"] == DIFFEOMORPHIC_SMOOTHNESS
    assert record["qc"]["folding_percent"] == 0.0
    out = runner.invoke(app, [*base, "-o", str(tmp_path / "svf2"), "--diffeomorphic", "--smoothness", "2"])
    assert json.loads(out.stdout)["method"]["config"]["smoothness"] == 2.0
    out = runner.invoke(app, [*base, "-o", str(tmp_path / "plain")])
    config = json.loads(out.stdout)["method"]["config"]
    assert config["diffeomorphic"] is False
    assert (config["smoothness"], config["bending"]) == (DEFAULT_SMOOTHNESS,
                                                         DEFAULT_BENDING)
    paths = write_pair(tmp_path / "p2", 2)
    base = ["register", str(paths["fixed"]), str(paths["moving"]), "--model", "none", "--steps", "30", "--json"]
    out = runner.invoke(app, [*base, "-o", str(tmp_path / "plain2d")])
    record = json.loads(out.stdout)
    tuned = json.loads(json.dumps(asdict(DEFAULT_INSTANCE_2D)))
    assert record["method"]["config"] == tuned | {"iterations": [17, 9, 4]}  # --steps 30 split as 60 : 30 : 15
    assert record["method"]["config"]["diffeomorphic"] is True and record["qc"]["folding_percent"] == 0.0
    out = runner.invoke(app, [*base, "-o", str(tmp_path / "flat"), "--bending", "0.5", "--smoothness", "1"])
    config = json.loads(out.stdout)["method"]["config"]
    assert (config["smoothness"], config["bending"], config["diffeomorphic"]) == (1.0, 0.5, True)
    for flag in ("--bending", "--smoothness"):  # a negative weight is a usage error, not a traceback
        out = runner.invoke(app, [*base, "-o", str(tmp_path / "negative"), flag, "-1"])
        assert out.exit_code == 2 and "must be >= 0" in out.output
        assert not (tmp_path / "negative").exists()


def test_ants_command_quotes_paths_for_the_shell() -> None:
    import shlex
    from pathlib import Path

    from rlreg.pipelines.register.outputs import ants_command

    fixed, moving = Path("dir with spaces/fïxed 1.nii.gz"), Path("it's/moving.nii.gz")
    out = Path("out dir")
    words = shlex.split(ants_command(3, fixed, moving=moving, out=out))
    assert words == ["antsApplyTransforms", "-d", "3", "-i", str(moving), "-r", str(fixed), "-t",
                     str(out / "warp.nii.gz"), "-o", str(out / "warped_ants.nii.gz")]


def test_overview_leaves_out_the_jacobian_beyond_the_fitted_box(tmp_path) -> None:
    """Instance optimisation fits the field in a box around the foreground and continues it outside: overview.png
    draws the Jacobian inside that box only (light gray beyond), and the box covers the whole object."""
    from PIL import Image as PILImage

    from rlreg.pipelines.figures import OUTSIDE_GRAY
    from rlreg.pipelines.register.finishing import fitted_region

    yy, xx = np.mgrid[:64, :72]
    paths = []
    for name, (cy, cx) in (("f", (30, 34)), ("m", (32, 36))):
        disc = ((yy - cy) ** 2 / 64 + (xx - cx) ** 2 / 100 < 1).astype(np.uint8) * 200
        paths.append(tmp_path / f"{name}.png")
        PILImage.fromarray(disc).save(paths[-1])
    options = RegisterOptions(fixed=paths[0], moving=paths[1], output=tmp_path / "out",
                              settings=RegisterSettings(model="none", steps=5, affine=False))
    region = fitted_region(prepare(options))
    assert region is not None and 0 < region.sum() < region.size
    assert region[22:39, 24:45].all() and not region[0, 0]  # the fixed disc inside, a far corner outside
    register(options)
    picture = np.asarray(PILImage.open(tmp_path / "out" / "overview.png").convert("RGB"))
    assert (picture == OUTSIDE_GRAY).all(-1).sum() > 0


def test_typed_records_serialise_to_rlreg_json_keys_in_order() -> None:
    """QC, method and timing records give ``rlreg.json``'s keys in its order: Dice only with label maps, the
    deformable stage's own entries between the device entries and the note, the matrix last."""
    from rlreg.pipelines.register import MethodRecord, QualityRecord, TimingRecord

    qc = QualityRecord(lncc_before=0.1, lncc_affine=0.2, lncc_after=0.3, folding_percent=0.0, sdlogj=0.1,
                       jacobian_min=0.5, jacobian_max=2.0)
    assert list(qc.to_json()) == ["lncc_before", "lncc_affine", "lncc_after", "folding_percent", "sdlogj",
                                  "jacobian_min", "jacobian_max"] and not qc.has_dice
    with_dice = QualityRecord(**qc.to_json(), dice_before=0.1, dice_affine=0.2, dice_after=0.3)
    assert list(with_dice.to_json())[-3:] == ["dice_before", "dice_affine", "dice_after"]
    method = MethodRecord(affine="none (--no-affine)", device="cpu", cpu_threads=1, model_asked="default",
                          stage={"deformable": "rl-agent", "model": "digits", "steps": 3, "refine": {"iterations": 2}},
                          note=None, affine_matrix_lps=[[1.0]])
    assert list(method.to_json()) == ["affine", "device", "cpu_threads", "model_asked", "deformable", "model", "steps",
                                      "refine", "affine_matrix_lps"]
    assert (method.deformable, method.model, method.steps, method.refine) == ("rl-agent", "digits", 3,
                                                                                {"iterations": 2})
    seconds = TimingRecord(read=1.0, affine=2.0, deformable=3.0, write=4.0, total=10.0)
    assert seconds.to_json() == {"read": 1.0, "affine": 2.0, "deformable": 3.0, "write": 4.0, "total": 10.0}


def test_register_returns_what_rlreg_json_holds(registered) -> None:
    _ndim, _paths, out, result = registered
    assert json.loads(json.dumps(result.to_json())) == json.loads((out / "rlreg.json").read_text())
