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
                    shifted, "origin differs by 10 mm along x", pair["fixed"], "antsApplyTransforms")


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
    assert label_overlap_warning(ones, ones, None, None) is None
    assert label_overlap_warning(ones, torch.tensor([[0, 1, 2, 8, 9]]), None, None) is None  # half shared
    few = label_overlap_warning(ones, torch.tensor([[0, 1, 7, 8, 9]]), "f.nii.gz", "m.nii.gz")
    assert few is not None and few.startswith("f.nii.gz and m.nii.gz share only 1 labels")
    assert "share no label" in str(label_overlap_warning(ones, -ones, "f", "m"))


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
