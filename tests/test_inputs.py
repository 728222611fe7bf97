"""Input validation: label maps and masks on the right grid with integer labels, one-line errors (exit code 2) for
corrupt files and bad options, and warnings for inputs that run but may mislead."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from phantoms import write_pair
from typer.testing import CliRunner

from rlreg.cli.main import app
from rlreg.io import Geometry, InputError, grid_difference, read_image, read_label_map
from rlreg.pipelines import evaluate as evaluate_module
from rlreg.pipelines.register import label_overlap_warning

runner = CliRunner()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return write_pair(tmp_path_factory.mktemp("inputs"), 3)


def _one_line_error(args, *needles) -> str:
    result = runner.invoke(app, [*map(str, args)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert str(needle) in lines[0], lines[0]
    return lines[0]


def _register(pair, out, *extra) -> list:
    return ["register", pair["fixed"], pair["moving"], "-o", out, "--device", "cpu", "--steps", "2", *extra]


def _edited(source, target, edit) -> None:
    """Write ``source`` to ``target`` after ``edit(image)`` changed its header or voxels in place."""
    image = sitk.ReadImage(str(source))
    image = edit(image) or image
    sitk.WriteImage(image, str(target))


# ---------------------------------------------------------------------------------------------------- grids
def test_segmentation_with_a_shifted_origin_is_refused(pair, tmp_path) -> None:
    def shift(image):
        origin = list(image.GetOrigin())
        origin[0] += 10.0
        image.SetOrigin(origin)

    shifted = tmp_path / "seg_shifted.nii.gz"
    _edited(pair["fixed_seg"], shifted, shift)
    _one_line_error(_register(pair, tmp_path / "o", "--fixed-seg", shifted, "--moving-seg", pair["moving_seg"]),
                    shifted, "origin differs by 10 mm along x", pair["fixed"], "antsApplyTransforms",
                    f"-i {shifted} -r {pair['fixed']} ")  # the paths as given, so the hint runs as printed


def test_segmentation_with_a_flipped_axis_is_refused(pair, tmp_path) -> None:
    def flip(image):
        direction = np.asarray(image.GetDirection()).reshape(3, 3)
        direction[:, 0] *= -1
        image.SetDirection(direction.ravel().tolist())

    flipped = tmp_path / "seg_flipped.nii.gz"
    _edited(pair["moving_seg"], flipped, flip)
    _one_line_error(_register(pair, tmp_path / "o", "--fixed-seg", pair["fixed_seg"], "--moving-seg", flipped),
                    flipped, "direction differs", "index axis i points the other way", pair["moving"])


def test_mask_with_another_spacing_is_refused(pair, tmp_path) -> None:
    mask = tmp_path / "mask.nii.gz"
    _edited(pair["fixed_seg"], mask, lambda image: image.SetSpacing([2 * s for s in image.GetSpacing()]))
    _one_line_error(_register(pair, tmp_path / "o", "--fixed-mask", mask), mask, "spacing", "give the mask")


def test_nifti_float32_header_round_off_is_accepted(tmp_path) -> None:
    """An image kept in double precision (NRRD) and its label map saved as NIfTI (float32 header) share a grid."""
    image = sitk.Image(6, 5, 4, sitk.sitkUInt8)
    image.SetSpacing((0.2, 0.3, 0.5))
    image.SetOrigin((987.654321, -876.543219, 765.432198))
    angle = 0.3
    image.SetDirection((np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0.0, 0.0, -1.0))
    sitk.WriteImage(image, str(tmp_path / "seg.nii.gz"))
    exact, rounded = Geometry.from_sitk(image), Geometry.from_sitk(sitk.ReadImage(str(tmp_path / "seg.nii.gz")))
    assert rounded != exact  # the header did round
    assert grid_difference(rounded, exact) is None
    moved = Geometry(exact.size, exact.spacing, (exact.origin[0], exact.origin[1] + 0.01, exact.origin[2]),
                     exact.direction)
    assert grid_difference(moved, exact) == "origin differs by 0.01 mm along y from the reference's"


def test_evaluate_refuses_a_label_map_on_another_grid(pair, tmp_path) -> None:
    shifted = tmp_path / "seg_shifted.nii.gz"
    _edited(pair["fixed_seg"], shifted, lambda image: image.SetOrigin([v + 5.0 for v in image.GetOrigin()]))
    fixed = read_image(pair["fixed"]).geometry
    with pytest.raises(InputError, match="origin differs by \\(5, 5, 5\\) mm"):
        evaluate_module._read_labels(shifted, fixed, "fixed label map", pair["fixed"])
    labels = evaluate_module._read_labels(pair["fixed_seg"], fixed, "fixed label map", pair["fixed"])
    assert labels.dtype == torch.int64


# ---------------------------------------------------------------------------------------------------- label values
def test_non_integer_labels_are_refused_not_truncated(pair, tmp_path) -> None:
    def fractional(image):
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        array[array > 0] += 0.37
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(image)
        return out

    seg = tmp_path / "seg_float.nii.gz"
    _edited(pair["fixed_seg"], seg, fractional)
    _one_line_error(_register(pair, tmp_path / "o", "--fixed-seg", seg, "--moving-seg", pair["moving_seg"]),
                    seg, "non-integer values (e.g. 1.37)", "not an intensity image")


def test_an_intensity_image_given_as_segmentation_is_refused(pair, tmp_path) -> None:
    _one_line_error(_register(pair, tmp_path / "o", "--fixed-seg", pair["fixed"], "--moving-seg", pair["moving"]),
                    pair["fixed"], "non-integer values")


def test_integer_labels_stored_as_floats_are_read_exactly(pair, tmp_path) -> None:
    seg = tmp_path / "seg_float_ints.nrrd"
    _edited(pair["fixed_seg"], seg, lambda image: sitk.Cast(image, sitk.sitkFloat64) * 1000.0)
    labels = read_label_map(seg).data
    assert labels.dtype == torch.int64
    assert set(torch.unique(labels).tolist()) == {0, 1000, 2000, 3000}


def test_label_maps_sharing_few_labels_warn() -> None:
    ones = torch.tensor([[0, 1, 2, 3, 4]])
    assert label_overlap_warning(ones, ones, fixed_path=None, moving_path=None) is None
    half_shared = label_overlap_warning(ones, torch.tensor([[0, 1, 2, 8, 9]]), fixed_path=None, moving_path=None)
    assert half_shared is None
    few = label_overlap_warning(ones, torch.tensor([[0, 1, 7, 8, 9]]), fixed_path="f.nii.gz",
                                moving_path="m.nii.gz")
    assert few is not None and few.startswith("f.nii.gz and m.nii.gz share only 1 labels")
    assert "share no label" in str(label_overlap_warning(ones, -ones, fixed_path="f", moving_path="m"))


def test_disjoint_label_maps_warn_on_stderr_and_in_the_sidecar(pair, tmp_path) -> None:
    negated = tmp_path / "seg_negated.nii.gz"
    _edited(pair["fixed_seg"], negated, lambda image: -image)
    out = tmp_path / "o"
    result = runner.invoke(app, [*map(str, _register(pair, out, "--fixed-seg", negated, "--moving-seg",
                                                        pair["moving_seg"], "--quiet", "--no-affine"))])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "share no label" in warnings[0] and str(negated) in warnings[0]
    record = json.loads((out / "rlreg.json").read_text())
    assert record["warnings"] == [warnings[0][len("warning: "):]]
    assert record["qc"]["dice_after"] == 0.0


# ---------------------------------------------------------------------------------------------------- corrupt files
@pytest.fixture
def truncated(pair, tmp_path):
    data = pair["moving"].read_bytes()
    path = tmp_path / "truncated.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    return path


def test_a_truncated_nifti_is_one_line_in_register(pair, truncated, tmp_path) -> None:
    _one_line_error(["register", pair["fixed"], truncated, "-o", tmp_path / "o", "--device", "cpu"],
                    truncated, "cut short", "copy it again")


def test_a_truncated_nifti_is_refused_even_without_the_value_check(truncated) -> None:
    """ITK's reader fills a cut gzip stream with zeros; every reader of rlreg refuses it instead."""
    with pytest.raises(InputError, match="cut short"):
        read_image(truncated, check_values=False)


def test_nan_hint_fits_the_format(pair, tmp_path) -> None:
    image = sitk.ReadImage(str(pair["fixed"]))
    array = sitk.GetArrayFromImage(image)
    array[2, 3, 4] = np.nan
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(image)
    sitk.WriteImage(bad, str(tmp_path / "nan.nrrd"))
    message = _one_line_error(["register", tmp_path / "nan.nrrd", pair["moving"], "-o", tmp_path / "o"], "NaN")
    assert "fslmaths" not in message and "nan_clean.nrrd" in message
    sitk.WriteImage(bad, str(tmp_path / "nan.nii.gz"))
    message = _one_line_error(["register", tmp_path / "nan.nii.gz", pair["moving"], "-o", tmp_path / "o"], "NaN")
    assert "fslmaths nan.nii.gz -nan nan_clean.nii.gz" in message and "fixed.nii.gz" not in message


def test_a_constant_image_is_called_constant(pair, tmp_path) -> None:
    constant = tmp_path / "const.nii.gz"
    _edited(pair["fixed"], constant, lambda image: image * 0 + 7.0)
    _one_line_error(["register", constant, pair["moving"], "-o", tmp_path / "o"], "is constant (every voxel is 7.0)")


def test_an_empty_folder_prints_no_itk_warning(tmp_path, capfd) -> None:
    with pytest.raises(InputError, match="no DICOM series"):
        read_image(tmp_path)
    assert "WARNING" not in capfd.readouterr().err


# ---------------------------------------------------------------------------------------------------- devices
@pytest.mark.parametrize("device", ["gpu", "mps"])
def test_a_device_rlreg_does_not_run_on_is_one_line(pair, tmp_path, device) -> None:
    _one_line_error(["register", pair["fixed"], pair["moving"], "-o", tmp_path / "o", "--device", device],
                    f"--device {device}", "use --device auto, cpu")


# ---------------------------------------------------------------------------------------------------- apply -o
@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    """A 2-D 8-bit PNG, its label map and a zero field on its grid: applying the field must give them back."""
    folder = tmp_path_factory.mktemp("picture")
    from rlreg.transforms import write_itk_warp

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(20, 24), dtype=np.uint8)
    labels = (image > 128).astype(np.uint8) * 3
    sitk.WriteImage(sitk.GetImageFromArray(image), str(folder / "image.png"))
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(folder / "labels.png"))
    geometry = read_image(folder / "image.png").geometry
    write_itk_warp(torch.zeros(1, 2, *geometry.size), geometry, folder / "warp.nii.gz")
    return {"folder": folder, "image": image, "labels": labels}


def _apply(picture, output, *extra) -> list:
    folder = picture["folder"]
    return ["apply", "-t", folder / "warp.nii.gz", "-r", folder / "image.png", "-i", folder / "image.png", "-o",
            output, *extra]


def test_apply_to_a_folder_or_a_name_without_extension_is_one_line(picture, tmp_path) -> None:
    _one_line_error(_apply(picture, tmp_path), tmp_path, "is a folder", "warped.nii.gz")
    _one_line_error(_apply(picture, tmp_path / "result"), "result", "no image extension", "result.nii.gz")
    _one_line_error(_apply(picture, tmp_path / "result.jpg"), "result.jpg", "lossy", "result.png")


def test_apply_writes_a_2d_png_in_the_input_type(picture, tmp_path) -> None:
    result = runner.invoke(app, [*map(str, _apply(picture, tmp_path / "out.png"))])
    assert result.exit_code == 0, result.output
    written = sitk.ReadImage(str(tmp_path / "out.png"))
    assert written.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), picture["image"])
    folder = picture["folder"]
    args = [*_apply(picture, tmp_path / "labels.png", "--interp", "label")]
    args[args.index(folder / "image.png", 5)] = folder / "labels.png"  # the input, not the reference
    result = runner.invoke(app, [*map(str, args)])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels.png"))),
                                  picture["labels"])


def test_apply_png_output_of_a_3d_image_is_one_line(pair, tmp_path) -> None:
    from rlreg.transforms import write_itk_warp

    geometry = read_image(pair["fixed"]).geometry
    write_itk_warp(torch.zeros(1, 3, *geometry.size), geometry, tmp_path / "warp.nii.gz")
    _one_line_error(["apply", "-t", tmp_path / "warp.nii.gz", "-r", pair["fixed"], "-i", pair["moving"], "-o",
                     tmp_path / "out.png"], "out.png", "3-D", "out.nii.gz")


def test_picture_array_rescales_float_intensities_to_16_bit() -> None:
    from rlreg.io import picture_array

    out = picture_array(np.array([[-1000.0, 0.0], [1000.0, 3000.0]]), labels=False)
    assert out.dtype == np.uint16 and out.min() == 0 and out.max() == 65535
    assert picture_array(np.array([[0, 300]]), labels=True).dtype == np.uint16
    with pytest.raises(InputError, match="do not fit a PNG"):
        picture_array(np.array([[-1, 2]]), labels=True, source="seg.nii.gz")


# ---------------------------------------------------------------------------------------------------- batch lists
def _batch(source, out, *extra) -> object:
    return runner.invoke(app, ["batch", str(source), "-o", str(out), "--workers", "0", "--device", "cpu", "--steps",
                               "2", "--no-affine", *map(str, extra)])


def test_a_dataset_json_with_a_non_string_path_is_one_line(tmp_path) -> None:
    dataset = tmp_path / "dataset.json"
    dataset.write_text(json.dumps({"registration_val": [{"fixed": 1, "moving": None}]}))
    _one_line_error(["batch", dataset, "-o", tmp_path / "out"], "dataset.json", "registration_val[0].fixed is 1",
                    "not a path")


def test_a_csv_with_a_utf8_bom_keeps_its_header(tmp_path) -> None:
    from rlreg.data.pairs import read_pairs

    listed = tmp_path / "pairs.csv"
    listed.write_bytes(b"\xef\xbb\xbffixed,moving\na.nii.gz,b.nii.gz\n")
    pairs = read_pairs(listed)
    assert len(pairs) == 1 and pairs[0].fixed == tmp_path / "a.nii.gz" and pairs[0].id == "a__b"


def test_repeated_rows_are_registered_once_with_a_warning(tmp_path) -> None:
    from rlreg.data.pairs import read_pairs

    listed = tmp_path / "pairs.csv"
    listed.write_text("fixed,moving\na.nii.gz,b.nii.gz\nc.nii.gz,b.nii.gz\n./a.nii.gz,b.nii.gz\n")
    warnings: list[str] = []
    assert [p.id for p in read_pairs(listed, warnings=warnings)] == ["a__b", "c__b"]
    assert warnings == [f"{listed}:4: repeats {listed}:2 (a.nii.gz, b.nii.gz); the pair is registered once"]
    result = _batch(listed, tmp_path / "out")  # the files are missing: both pairs fail, quickly
    assert result.exit_code == 1
    assert f"warning: {warnings[0]}" in result.output
    assert "2 failed, of 2 pairs" in result.output


def test_batch_missing_file_names_the_list_folder(tmp_path, monkeypatch) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "pairs.csv").write_text("fixed,moving\n../data/a.nii.gz,../data/b.nii.gz\n")
    monkeypatch.chdir(tmp_path)
    result = _batch("lists/pairs.csv", tmp_path / "out")
    assert result.exit_code == 1
    failed = [line for line in result.output.splitlines() if "failed a__b" in line]
    assert len(failed) == 1 and "relative paths in pairs.csv are taken from its folder" in failed[0]
    assert str(lists) in failed[0] and str(tmp_path / "data" / "a.nii.gz") in failed[0]


def test_batch_truncated_file_error_names_the_file(pair, truncated, tmp_path) -> None:
    listed = tmp_path / "pairs.csv"
    listed.write_text(f"fixed,moving\n{pair['fixed']},{truncated}\n")
    result = _batch(listed, tmp_path / "out")
    assert result.exit_code == 1
    failed = [line for line in result.output.splitlines() if line.strip().startswith("failed ")]
    assert len(failed) == 1 and str(truncated) in failed[0] and "cut short" in failed[0]
    assert "EOFError" not in result.output
