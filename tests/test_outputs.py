"""``rlreg register``'s output folder: only the last run's files, every option checked before the heavy work, one-line
errors for unwritable folders, affine-only runs (``--steps 0``) and their ANTs-style ``affine.mat``."""

from __future__ import annotations

import errno
import json
import locale
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from phantoms import write_pair
from typer.testing import CliRunner

from rlreg.cli.main import app
from rlreg.io import InputError
from rlreg.pipelines.batch import BatchOptions
from rlreg.pipelines.register import (
    RegisterOptions,
    RegisterSettings,
    apply_transform,
    finishing,
    invert_transform,
    preparation,
    prepare,
    register,
)
from rlreg.pipelines.register import outputs as outputs_module

runner = CliRunner()


@pytest.fixture(scope="module")
def pair2d(tmp_path_factory) -> dict[str, Path]:
    paths = write_pair(tmp_path_factory.mktemp("pair2d"), 2)
    other = paths["moving"].with_name("other.nii.gz")  # a second "subject": another name, so another l2r file
    shutil.copy(paths["moving"], other)
    return paths | {"other": other}


@pytest.fixture(scope="module")
def pair3d(tmp_path_factory) -> dict[str, Path]:
    return write_pair(tmp_path_factory.mktemp("pair3d"), 3)


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _no_affine_stage(*_args, **_kwargs):
    raise AssertionError("the affine stage ran although the options could be refused before it")


# ---------------------------------------------------------------------------------------------------- stale outputs
def test_a_rerun_leaves_only_its_own_outputs(pair2d, tmp_path) -> None:
    out = tmp_path / "out"
    first = RegisterOptions(fixed=pair2d["fixed"], moving=pair2d["moving"], output=out, fixed_seg=pair2d["fixed_seg"],
                            moving_seg=pair2d["moving_seg"],
                            settings=RegisterSettings(affine=False, steps=4, save_inverse=True, save_steps=True,
                                                      formats=("slicer", "l2r")))
    register(first)
    assert {"warped_seg.nii.gz", "inverse_warp.nii.gz", "warp_slicer.nii.gz", "disp_fixed_moving.nii.gz",
            "steps/step_004_warp.nii.gz"} <= _files(out)
    (out / ".notes").write_text("mine")  # hidden files are not rlreg's: check_output_dir allows them, and they stay
    second = register(RegisterOptions(fixed=pair2d["fixed"], moving=pair2d["other"], output=out,
                                      settings=RegisterSettings(affine=False, steps=2)))
    listed = {str(Path(path).relative_to(out)) for path in second.outputs.values()}
    assert _files(out) == listed | {".notes"}
    assert not (out / "steps").exists()


def test_save_steps_rerun_drops_the_surplus_steps(pair2d, tmp_path) -> None:
    out = tmp_path / "out"
    options = RegisterOptions(fixed=pair2d["fixed"], moving=pair2d["moving"], output=out,
                              settings=RegisterSettings(affine=False, steps=20, save_steps=True))
    register(options)
    assert (out / "steps" / "step_010_warp.nii.gz").exists()  # ten snapshots of the instance optimisation
    register(replace(options, settings=replace(options.settings, model="digits", steps=2)))  # an agent: two steps
    steps = sorted(p.name for p in (out / "steps").iterdir())
    assert steps == ["registration.gif", "step_001_warp.nii.gz", "step_001_warped.nii.gz", "step_002_warp.nii.gz",
                     "step_002_warped.nii.gz", "steps.json"]


def test_a_killed_runs_files_and_temporaries_go_with_the_next_run(pair2d, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    register(RegisterOptions(fixed=pair2d["fixed"], moving=pair2d["moving"], output=out,  # a finished run first: its
                             settings=RegisterSettings(affine=False, steps=10, save_steps=True)))  # steps/ must go too
    options = RegisterOptions(fixed=pair2d["fixed"], moving=pair2d["moving"], output=out,
                              settings=RegisterSettings(affine=False, steps=2, save_inverse=True, formats=("slicer",)))

    def killed(*_args, **_kwargs):
        # what SIGKILL leaves while a file is written: its hidden temporaries, no rlreg.json
        (out / ".warped.k4x.tmp.nii").write_bytes(b"\0" * 1024)
        (out / ".warped.k4x.tmp.nii.gz").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(finishing, "export_formats", killed)
    with pytest.raises(KeyboardInterrupt):
        register(options)
    assert {"inverse_warp.nii.gz", "steps/step_001_warp.nii.gz"} <= _files(out) and "rlreg.json" not in _files(out)
    monkeypatch.undo()
    result = register(RegisterOptions(fixed=pair2d["fixed"], moving=pair2d["moving"], output=out,
                                      settings=RegisterSettings(affine=False, steps=2)))
    assert _files(out) == {str(Path(path).relative_to(out)) for path in result.outputs.values()}


def test_rerun_never_deletes_what_rlreg_did_not_record(pair2d, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "disp_theirs.nii.gz").write_bytes(b"someone else's field")  # an l2r-like name rlreg never wrote here
    register(RegisterOptions(fixed=pair2d["fixed"], moving=pair2d["moving"], output=out,
                             settings=RegisterSettings(affine=False, steps=2)))
    assert (out / "disp_theirs.nii.gz").read_bytes() == b"someone else's field"


# ---------------------------------------------------------------------------------------------------- early checks
@pytest.mark.parametrize("fmt", ["fsl", "dicom"])
def test_3d_only_formats_on_2d_inputs_are_refused_before_the_affine(pair2d, tmp_path, monkeypatch, fmt) -> None:
    monkeypatch.setattr(preparation, "affine_register", _no_affine_stage)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=f"--format {fmt}: writes 3-D fields only"):
        prepare(RegisterOptions(fixed=pair2d["fixed"], moving=pair2d["moving"], output=out,
                                settings=RegisterSettings(formats=(fmt,), save_steps=True)))
    assert not out.exists()


@pytest.fixture
def keep_ctype():
    """GDCM's DICOM writer (sitk.WriteImage to .dcm, used here to build series) sets the C library's LC_CTYPE to "C"
    and leaves it there, which turns Python's default text encoding into ASCII for every later test: restore it."""
    saved_ctype = locale.setlocale(locale.LC_CTYPE)
    yield
    locale.setlocale(locale.LC_CTYPE, saved_ctype)


def test_dicom_without_frame_of_reference_is_refused_before_the_affine(pair3d, tmp_path, monkeypatch,
                                                                       keep_ctype) -> None:
    pydicom = pytest.importorskip("pydicom")
    monkeypatch.setattr(preparation, "affine_register", _no_affine_stage)
    series = _write_series(pydicom, pair3d, tmp_path / "series", frame_of_reference=False)
    with pytest.raises(InputError, match="no FrameOfReferenceUID"):
        prepare(RegisterOptions(fixed=series, moving=pair3d["moving"], output=tmp_path / "out",
                                settings=RegisterSettings(formats=("dicom",))))


def test_dicom_refusal_names_the_one_series_without_a_body_part(pair3d, tmp_path, monkeypatch, keep_ctype) -> None:
    """A NIfTI fixed image and a DICOM series that names no body part: the message points at the series."""
    pydicom = pytest.importorskip("pydicom")
    monkeypatch.setattr(preparation, "affine_register", _no_affine_stage)
    series = _write_series(pydicom, pair3d, tmp_path / "series", frame_of_reference=True)
    with pytest.raises(InputError, match=f"the DICOM series {series} does not name which body part"):
        prepare(RegisterOptions(fixed=pair3d["fixed"], moving=series, output=tmp_path / "out",
                                settings=RegisterSettings(formats=("dicom",))))
    assert not (tmp_path / "out").exists()


def _write_series(pydicom, pair3d, series: Path, *, frame_of_reference: bool) -> Path:
    """The fixed phantom as a DICOM series (no BodyPartExamined), with or without a FrameOfReferenceUID."""
    series.mkdir()
    volume = sitk.Cast(sitk.ReadImage(str(pair3d["fixed"])) * 1000, sitk.sitkInt16)
    for k in range(volume.GetSize()[2]):
        path = series / f"slice{k:03d}.dcm"
        image = volume[:, :, k]
        image.SetMetaData("0020|0032", "\\".join(map(str, volume.TransformIndexToPhysicalPoint((0, 0, k)))))
        image.SetMetaData("0020|0037", "\\".join(map(str, volume.GetDirection()[0:7:3] + volume.GetDirection()[1:8:3])))
        sitk.WriteImage(image, str(path))
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.InstanceNumber = "1.2.3.4.1", "1.2.3.4", k + 1
        if not frame_of_reference and "FrameOfReferenceUID" in ds:
            del ds.FrameOfReferenceUID
        elif frame_of_reference:
            ds.FrameOfReferenceUID = "1.2.3.4.2"
        if "BodyPartExamined" in ds:
            del ds.BodyPartExamined
        ds.save_as(path)
    return series


def test_dicom_without_a_body_part_is_refused_before_the_affine(pair3d, tmp_path, monkeypatch) -> None:
    """NIfTI inputs name no body part, which a DSRO must state: the run asks for --body-part and writes nothing."""
    monkeypatch.setattr(preparation, "affine_register", _no_affine_stage)
    out = tmp_path / "out"
    command = ["register", str(pair3d["fixed"]), str(pair3d["moving"]), "-o", str(out), "--format", "dicom"]
    for extra, expected in (([], "--body-part"), (["--laterality", "R"], "--body-part"),
                            (["--body-part", "brain"], "not a DICOM body part"),
                            (["--body-part", "KNEE", "--laterality", "right"], "give R or L")):
        result = runner.invoke(app, command + extra)
        assert result.exit_code == 2, result.output
        message = result.output.strip()
        assert len(message.splitlines()) == 1 and expected in message, message
        assert not out.exists()
    result = runner.invoke(app, ["batch", str(tmp_path / "pairs.csv"), "-o", str(out), "--body-part", "Brain"])
    assert result.exit_code == 2 and "not a DICOM body part" in result.output and not out.exists()


def test_unwritable_output_folder_is_one_line_before_the_affine(pair2d, tmp_path, monkeypatch) -> None:
    def read_only(*_args, **_kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(preparation, "affine_register", _no_affine_stage)
    monkeypatch.setattr(outputs_module.tempfile, "mkstemp", read_only)
    result = runner.invoke(app, ["register", str(pair2d["fixed"]), str(pair2d["moving"]), "-o",
                                 str(tmp_path / "out")])
    assert result.exit_code == 2
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "Read-only file system" in message and "-o" in message


def test_too_little_disk_space_is_refused_before_the_affine(pair2d, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(preparation, "affine_register", _no_affine_stage)
    monkeypatch.setattr(outputs_module.shutil, "disk_usage", lambda _path: shutil._ntuple_diskusage(1, 1, 1000))
    with pytest.raises(InputError, match="MiB free"):
        prepare(RegisterOptions(fixed=pair2d["fixed"], moving=pair2d["moving"], output=tmp_path / "out"))


def test_disk_full_while_writing_is_one_line_and_leaves_no_outputs(pair2d, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    register(RegisterOptions(fixed=pair2d["fixed"], moving=pair2d["moving"], output=out,
                             settings=RegisterSettings(affine=False, steps=2)))

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(finishing, "write_itk_transform", full)
    result = runner.invoke(app, ["register", str(pair2d["fixed"]), str(pair2d["moving"]), "-o", str(out),
                                 "--no-affine", "--steps", "2"])
    assert result.exit_code == 2
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "No space left on device" in message and str(out) in message
    assert _files(out) == set()  # no outputs without an rlreg.json: neither this run's nor the earlier run's


# ---------------------------------------------------------------------------------------------------- option ranges
@pytest.mark.parametrize(("field", "value"), [("steps", -5), ("refine", -1), ("refine_factor", 0),
                                              ("smoothness", -1.0), ("smoothness", float("nan")), ("bending", -0.5),
                                              ("max_working_voxels", 0)])
def test_register_settings_are_range_checked(field, value) -> None:
    with pytest.raises(InputError) as caught:
        RegisterSettings(**{field: value})
    assert len(str(caught.value).splitlines()) == 1
    with pytest.raises(InputError):  # replace() re-runs the checks
        replace(RegisterSettings(), **{field: value})


def test_register_settings_are_frozen_and_options_name_the_pair() -> None:
    settings = RegisterSettings(steps=3)
    with pytest.raises(AttributeError):
        settings.steps = 4  # type: ignore[misc]
    options = RegisterOptions(Path("f"), Path("m"), Path("o"), settings=settings)
    assert options.settings is settings and RegisterOptions(Path("f"), Path("m"), Path("o")).settings.steps is None


@pytest.mark.parametrize(("field", "value"), [("batch_size", 0), ("workers", -1), ("ray_cpus", 0)])
def test_batch_options_are_range_checked(field, value) -> None:
    with pytest.raises(InputError):
        BatchOptions("pairs.csv", Path("out"), **{field: value})


def test_cli_negative_steps_is_one_line(pair2d, tmp_path) -> None:
    result = runner.invoke(app, ["register", str(pair2d["fixed"]), str(pair2d["moving"]), "-o", str(tmp_path / "o"),
                                 "--steps", "-5"])
    assert result.exit_code == 2 and result.output.strip() == "error: --steps -5: must be >= 0 (0 = affine only, " \
                                                               "none = the default)"


def test_steps_beyond_the_cards_max_steps_are_refused(pair2d, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(preparation, "affine_register", _no_affine_stage)
    with pytest.raises(InputError, match="trained on episodes of 20 steps"):
        prepare(RegisterOptions(fixed=pair2d["fixed"], moving=pair2d["moving"], output=tmp_path / "o",
                                settings=RegisterSettings(model="digits", steps=21)))


@pytest.mark.parametrize("steps", [1, 2, 5, 105])
def test_instance_steps_are_exactly_the_iterations(pair2d, tmp_path, steps) -> None:
    result = register(RegisterOptions(fixed=pair2d["fixed"], moving=pair2d["moving"], output=tmp_path / "o",
                                      settings=RegisterSettings(affine=False, steps=steps, max_working_voxels=400)))
    assert result.method.steps == sum(result.method.stage["config"]["iterations"]) == steps


# ---------------------------------------------------------------------------------------------------- affine only
@pytest.fixture(scope="module")
def affine_only(pair3d, tmp_path_factory):
    out = tmp_path_factory.mktemp("affine_only") / "out"
    result = runner.invoke(app, ["register", str(pair3d["fixed"]), str(pair3d["moving"]), "-o", str(out),
                                 "--steps", "0", "--json"])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.output)


def test_affine_only_is_described_truthfully(affine_only) -> None:
    out, report = affine_only
    assert report["method"]["deformable"] == "none" and report["method"]["steps"] == 0
    assert "affine only" in report["method"]["note"]
    qc = report["qc"]
    assert qc["folding_percent"] == 0.0 and qc["sdlogj"] == 0.0 and qc["lncc_after"] == qc["lncc_affine"]
    assert qc["jacobian_min"] == pytest.approx(qc["jacobian_max"], rel=1e-4)  # an affine: one volume change
    transform = sitk.ReadTransform(str(out / "transform.h5"))
    assert transform.GetName() in ("AffineTransform", "CompositeTransform")
    assert transform.GetName() == "AffineTransform" or transform.GetNumberOfTransforms() == 1


def _inside_moving(fixed: Path, moving: Path, transform: Path | sitk.Transform) -> np.ndarray:
    """Fixed voxels that ``transform`` maps inside the moving grid (where every resampler agrees), ``(k, j, i)``;
    within half a voxel along an axis one voxel thick."""
    grid, image = sitk.ReadImage(str(fixed)), sitk.ReadImage(str(moving))
    mapping = transform if isinstance(transform, sitk.Transform) else sitk.ReadTransform(str(transform))
    size = np.maximum(np.asarray(image.GetSize()), 1.5)
    inside = np.zeros(grid.GetSize()[::-1], dtype=bool)
    for index in np.ndindex(*grid.GetSize()):
        point = mapping.TransformPoint(grid.TransformIndexToPhysicalPoint(index))
        position = np.asarray(image.TransformPhysicalPointToContinuousIndex(point))
        inside[index[::-1]] = bool(np.all((position >= -1e-6) & (position <= size - 1 + 1e-6)))
    return inside


def _resampled_like_ants(out: Path, fixed: Path, moving: Path, transform: Path) -> tuple[np.ndarray, np.ndarray]:
    """``antsApplyTransforms -r fixed -i moving -t affine.mat`` done by SimpleITK, and rlreg's warped image."""
    theirs = sitk.Resample(sitk.ReadImage(str(moving), sitk.sitkFloat32), sitk.ReadImage(str(fixed)),
                           sitk.ReadTransform(str(transform)), sitk.sitkLinear, 0.0)
    return sitk.GetArrayFromImage(theirs), sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped.nii.gz")))


def test_affine_mat_reproduces_the_affine_only_result(pair3d, affine_only) -> None:
    out, report = affine_only
    header = (out / "affine.mat").read_bytes()[:200]
    assert b"AffineTransform_double_3_3" in header and b"fixed" in header  # ITK's MATLAB transform layout
    theirs, ours = _resampled_like_ants(out, pair3d["fixed"], pair3d["moving"], out / "affine.mat")
    inside = _inside_moving(pair3d["fixed"], pair3d["moving"], out / "affine.mat")
    assert inside.mean() > 0.5 and np.abs(theirs - ours)[inside].max() < 1e-3
    matrix = np.array(report["method"]["affine_matrix_lps"])
    mat = sitk.ReadTransform(str(out / "affine.mat"))
    assert np.allclose(np.reshape(sitk.AffineTransform(mat).GetMatrix(), (3, 3)), matrix[:3, :3], atol=1e-6)


def test_ants_applies_affine_mat_like_rlreg(pair3d, affine_only) -> None:
    ants = pytest.importorskip("ants")
    out, _ = affine_only
    fixed, moving = ants.image_read(str(pair3d["fixed"])), ants.image_read(str(pair3d["moving"]))
    theirs = ants.apply_transforms(fixed, moving, [str(out / "affine.mat")], interpolator="linear").numpy()
    theirs = theirs.transpose(2, 1, 0)
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped.nii.gz")))
    inside = _inside_moving(pair3d["fixed"], pair3d["moving"], out / "affine.mat")
    assert inside.mean() > 0.5 and np.abs(theirs - ours)[inside].max() < 1e-3


@pytest.mark.parametrize(("flags", "refused"), [(["--no-affine"], "nothing would be registered"),
                                                (["--refine", "5"], "--refine"), (["--save-steps"], "--save-steps"),
                                                (["--smoothness", "2"], "--smoothness")])
def test_affine_only_refuses_deformable_settings(pair2d, tmp_path, flags, refused) -> None:
    result = runner.invoke(app, ["register", str(pair2d["fixed"]), str(pair2d["moving"]), "-o", str(tmp_path / "o"),
                                 "--steps", "0", *flags])
    assert result.exit_code == 2 and refused in result.output and len(result.output.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------------- one-slice volumes
def _slice(source: Path, target: Path, cut: tuple[slice, ...]) -> Path:
    sitk.WriteImage(sitk.ReadImage(str(source))[cut], str(target))
    return target


def test_one_slice_volumes_take_their_label_maps_and_refuse_a_shifted_one(pair3d, tmp_path) -> None:
    """Label maps of two slices in different planes lie on their own slices' grids (not on the fixed plane the moving
    slice is registered in): accepted, and warped_seg lies on the fixed slice's 3-D grid; a map whose slice sits
    elsewhere along the normal is refused."""
    axial = (slice(None), slice(None))
    cut = {"fixed": (*axial, slice(11, 12)), "moving": (*axial, slice(13, 14))}
    files = {key: _slice(pair3d[key], tmp_path / f"{key}.nii.gz", cut[key]) for key in cut}
    segs = {key: _slice(pair3d[f"{key}_seg"], tmp_path / f"{key}_seg.nii.gz", cut[key]) for key in cut}
    result = register(RegisterOptions(fixed=files["fixed"], moving=files["moving"], output=tmp_path / "out",
                                      fixed_seg=segs["fixed"], moving_seg=segs["moving"],
                                      settings=RegisterSettings(steps=10)))
    assert result.qc.dice_after is not None
    warped_seg, reference = (sitk.ReadImage(str(path)) for path in (tmp_path / "out" / "warped_seg.nii.gz",
                                                                     files["fixed"]))
    assert warped_seg.GetSize() == reference.GetSize()
    assert np.allclose(warped_seg.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    elsewhere = _slice(pair3d["moving_seg"], tmp_path / "elsewhere.nii.gz", (*axial, slice(15, 16)))
    with pytest.raises(InputError, match="origin differs"):
        prepare(RegisterOptions(fixed=files["fixed"], moving=files["moving"], output=tmp_path / "refused",
                                fixed_seg=segs["fixed"], moving_seg=elsewhere))


def test_one_slice_volumes_come_back_on_their_3d_grid(pair3d, tmp_path) -> None:
    axial = (slice(None), slice(None))
    fixed = _slice(pair3d["fixed"], tmp_path / "fslice.nii.gz", (*axial, slice(11, 12)))
    moving = _slice(pair3d["moving"], tmp_path / "mslice.nii.gz", (*axial, slice(13, 14)))  # another plane
    out = tmp_path / "out"
    result = register(RegisterOptions(fixed=fixed, moving=moving, output=out,
                                      settings=RegisterSettings(steps=20, save_inverse=True, formats=("l2r",))))
    reference = sitk.ReadImage(str(fixed))
    for name, grid in (("warped.nii.gz", fixed), ("jacdet.nii.gz", fixed), ("warp.nii.gz", fixed),
                       ("inverse_warp.nii.gz", moving)):
        image, like = sitk.ReadImage(str(out / name)), sitk.ReadImage(str(grid))
        assert image.GetDimension() == 3, name
        assert np.allclose(image.GetOrigin(), like.GetOrigin(), atol=1e-4), name
        assert np.allclose(image.GetDirection(), like.GetDirection(), atol=1e-6), name
    assert sitk.ReadImage(str(out / "warped.nii.gz")).GetSize() == reference.GetSize()
    warp = sitk.ReadImage(str(out / "warp.nii.gz"))
    assert warp.GetNumberOfComponentsPerPixel() == 3
    normal = np.reshape(reference.GetDirection(), (3, 3))[:, 2]
    offset = normal @ (np.asarray(sitk.ReadImage(str(moving)).GetOrigin()) - reference.GetOrigin())
    through = sitk.GetArrayFromImage(warp) @ normal
    assert abs(offset) > 1 and np.allclose(through, offset, atol=1e-3)  # exactly onto the moving slice's plane
    back = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "inverse_warp.nii.gz"))) @ normal
    assert np.allclose(back, -offset, atol=1e-3)
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped.nii.gz")))
    moving_image = sitk.ReadImage(str(moving), sitk.sitkFloat32)
    for transform in (sitk.DisplacementFieldTransform(sitk.Cast(warp, sitk.sitkVectorFloat64)),
                      sitk.ReadTransform(str(out / "transform.h5"))):
        theirs = sitk.GetArrayFromImage(sitk.Resample(moving_image, reference, transform, sitk.sitkLinear, 0.0))
        inside = _inside_moving(fixed, moving, transform)
        assert inside.mean() > 0.5 and np.abs(theirs - ours)[inside].max() < 1e-3
    assert result.ants_command.startswith("antsApplyTransforms -d 3")
    assert json.loads((out / "rlreg.json").read_text())["inputs"]["fixed"]["size_xyz"] == list(reference.GetSize())
    l2r = sitk.ReadImage(str(out / "disp_fslice_mslice.nii.gz"))
    assert l2r.GetNumberOfPixels() * l2r.GetNumberOfComponentsPerPixel() == 3 * reference.GetNumberOfPixels()
    # rlreg's own apply and invert read those files back on the slices' 3-D grids
    apply_transform(out / "warp.nii.gz", fixed, input_image=moving, output=tmp_path / "applied.nii.gz")
    applied = sitk.ReadImage(str(tmp_path / "applied.nii.gz"))
    assert applied.GetSize() == reference.GetSize() and np.allclose(applied.GetOrigin(), reference.GetOrigin())
    assert np.abs(sitk.GetArrayFromImage(applied) - ours).max() < 1e-5
    invert_transform(out / "warp.nii.gz", fixed, reference=moving, output=tmp_path / "inverse.nii.gz")
    again = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "inverse.nii.gz")))
    assert np.abs(again - sitk.GetArrayFromImage(sitk.ReadImage(str(out / "inverse_warp.nii.gz")))).max() < 1e-4


def test_ants_applies_a_one_slice_warp_in_3d(pair3d, tmp_path) -> None:
    ants = pytest.importorskip("ants")
    cut = (slice(None), slice(13, 14), slice(None))  # a coronal-like cut of an oblique grid, the same plane twice
    fixed = _slice(pair3d["fixed"], tmp_path / "f.nii.gz", cut)
    shifted = sitk.ReadImage(str(pair3d["fixed"]))
    shifted.SetOrigin(tuple(np.asarray(shifted.GetOrigin()) + np.reshape(shifted.GetDirection(), (3, 3))[:, 0] * 2))
    sitk.WriteImage(shifted, str(tmp_path / "shifted.nii.gz"))
    moving = _slice(tmp_path / "shifted.nii.gz", tmp_path / "m.nii.gz", cut)
    out = tmp_path / "out"
    register(RegisterOptions(fixed=fixed, moving=moving, output=out, settings=RegisterSettings(affine=False, steps=20)))
    warp = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warp.nii.gz")))
    normal = np.reshape(sitk.ReadImage(str(fixed)).GetDirection(), (3, 3))[:, 1]
    assert np.abs(warp @ normal).max() < 1e-4 and np.abs(warp).max() > 0.5  # in-plane only: the same plane
    f, m = ants.image_read(str(fixed)), ants.image_read(str(moving))
    theirs = ants.apply_transforms(f, m, [str(out / "warp.nii.gz")], interpolator="linear").numpy()
    ours = ants.image_read(str(out / "warped.nii.gz")).numpy()
    assert theirs.shape == ours.shape == f.shape and np.abs(theirs - ours).max() < 1e-3


def test_slices_in_other_orientations_are_refused_and_2d_stays_2d(pair3d, tmp_path) -> None:
    fixed = _slice(pair3d["fixed"], tmp_path / "f.nii.gz", (slice(None), slice(None), slice(5, 6)))
    moving = _slice(pair3d["moving"], tmp_path / "m.nii.gz", (slice(None), slice(10, 11), slice(None)))
    with pytest.raises(InputError, match="not parallel"):
        prepare(RegisterOptions(fixed=fixed, moving=moving, output=tmp_path / "o"))
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(pair3d["fixed"]))[:, :, 5], str(flat))  # a genuine 2-D image
    from rlreg.io import read_image

    assert read_image(flat).volume is None and read_image(fixed).volume is not None


@pytest.mark.parametrize(("command", "flag", "value"), [("register", "--refine", "-1"),
                                                        ("register", "--refine-factor", "0"),
                                                        ("register", "--smoothness", "-1.5"),
                                                        ("batch", "--bending", "-2.5"), ("batch", "--workers", "-1"),
                                                        ("batch", "--batch-size", "0")])
def test_cli_out_of_range_options_are_one_line(pair2d, tmp_path, command, flag, value) -> None:
    inputs = [str(pair2d["fixed"]), str(pair2d["moving"])] if command == "register" else [str(tmp_path / "p.csv")]
    result = runner.invoke(app, [command, *inputs, "-o", str(tmp_path / "o"), flag, value])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag} {value}: must be ") and ">= " in lines[0]
