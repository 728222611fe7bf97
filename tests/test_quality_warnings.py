"""``register`` warns (stderr and ``rlreg.json``'s ``warnings``) when its deformable result should not be trusted, and
degenerate intensity scales register like ordinary ones."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import SimpleITK as sitk
from phantoms import write_pair
from typer.testing import CliRunner

from rlreg.cli.main import app
from rlreg.pipelines.register import QualityRecord, RegisterOptions, RegisterSettings, quality_warnings, register

runner = CliRunner()


def test_quality_warnings_name_a_similarity_drop_and_folding() -> None:
    fine = QualityRecord(lncc_before=0.1, lncc_affine=0.30, lncc_after=0.35, folding_percent=0.01, sdlogj=0.1,
                         jacobian_min=0.5, jacobian_max=1.5)
    assert quality_warnings(fine) == []
    dropped = quality_warnings(replace(fine, lncc_after=0.25))
    assert len(dropped) == 1 and "lowered the similarity" in dropped[0] and "0.300" in dropped[0]
    folded = quality_warnings(replace(fine, folding_percent=26.0))
    assert len(folded) == 1 and "26.00 %" in folded[0]
    assert quality_warnings(fine, affine_volume_ratio=1.52, grid=(96, 90, 93)) == []  # two adult brains differ so
    shrunk = quality_warnings(fine, affine_volume_ratio=0.16, grid=(96, 90, 93))
    assert len(shrunk) == 1 and "scales the volume by 0.16" in shrunk[0]
    tiny = quality_warnings(fine, affine_volume_ratio=1.0, grid=(3, 3, 3))
    assert len(tiny) == 1 and "3x3x3 voxels" in tiny[0]


def test_a_tiny_pair_at_default_settings_is_warned_about(tmp_path) -> None:
    """A random 3x3x3 pair with every default: whatever each stage does, rlreg.json says the result is not to be
    trusted."""
    rng = np.random.default_rng(1)
    paths = []
    for name in ("fixed", "moving"):
        paths.append(tmp_path / f"{name}.nii.gz")
        sitk.WriteImage(sitk.GetImageFromArray(rng.random((3, 3, 3)).astype(np.float32)), str(paths[-1]))
    result = runner.invoke(app, ["register", *map(str, paths), "-o", str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "rlreg.json").read_text())
    assert any("3x3x3 voxels" in warning for warning in record["warnings"])
    assert "warning: the fixed grid is only 3x3x3 voxels" in result.stderr


def test_a_folding_field_is_warned_about_on_stderr_and_in_the_sidecar(tmp_path) -> None:
    """A 3x3x3 pair without regularisation folds a third of its voxels: exit 0, but never silently."""
    rng = np.random.default_rng(0)
    paths = []
    for name in ("fixed", "moving"):
        paths.append(tmp_path / f"{name}.nii.gz")
        sitk.WriteImage(sitk.GetImageFromArray(rng.random((3, 3, 3)).astype(np.float32)), str(paths[-1]))
    out = tmp_path / "out"
    result = runner.invoke(app, ["register", *map(str, paths), "-o", str(out), "--smoothness", "0", "--bending", "0",
                                 "--steps", "30", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "rlreg.json").read_text())
    assert record["qc"]["folding_percent"] > 1.0
    assert any("folds" in warning for warning in record["warnings"])
    assert [line for line in result.stderr.splitlines() if line.startswith("warning: ")] == [
        f"warning: {warning}" for warning in record["warnings"]]


def test_a_moving_image_scaled_by_1e30_registers_like_the_unscaled_one(tmp_path) -> None:
    paths = write_pair(tmp_path, 3)
    huge = tmp_path / "huge.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(paths["moving"]), sitk.sitkFloat32) * 1e30, str(huge))
    results = [register(RegisterOptions(paths["fixed"], moving, tmp_path / name, settings=RegisterSettings(steps=10)))
               for name, moving in (("plain", paths["moving"]), ("huge", huge))]
    plain, scaled = (np.asarray(r.method.affine_matrix_lps) for r in results)
    np.testing.assert_allclose(scaled, plain, atol=1e-3)
    for key in ("lncc_before", "lncc_affine"):
        assert abs(getattr(results[1].qc, key) - getattr(results[0].qc, key)) < 1e-3
