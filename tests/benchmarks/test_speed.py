"""The side-by-side speed benchmark: folding inside the brain from a written field, and the targets it checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.models import row_key
from benchmarks.speed import BEGIN, END, brain_folding, render
from rlreg.data.pairs import read_pairs
from rlreg.io import Geometry, write_image
from rlreg.transforms import write_itk_warp


def _row(method: str, threads: int, dice: float, seconds: float, folding: float = 0.0) -> dict:
    return {"method": method, "threads": threads, "dice_mean": dice, "dice_sd": 0.01, "hd95_mm": 2.0,
            "folding_percent": folding, "brain_folding_percent": folding, "seconds_per_pair": seconds,
            "model_seconds_per_pair": seconds / 2}


def test_brain_folding_counts_only_folded_brain_voxels(tmp_path: Path) -> None:
    shape = (12, 12, 12)
    geometry = Geometry(size=shape, spacing=(1.0,) * 3, origin=(0.0,) * 3, direction=tuple(np.eye(3).ravel()))
    fixed = torch.zeros(1, 1, *shape)
    fixed[..., 2:10, 2:10, 2:10] = 1.0  # the brain: 512 voxels
    write_image(fixed, geometry, tmp_path / "fixed.nii.gz", np.float32)
    field = torch.zeros(1, 3, *shape, dtype=torch.float64)
    field[0, 0, 4:6, 4:6, 4:6] = torch.tensor([0.0, -3.0]).view(2, 1, 1)  # a slab where x + u(x) runs backwards
    field[0, 0, 0:2, 0:2, 0:2] = torch.tensor([0.0, -5.0]).view(2, 1, 1)  # folds outside the brain: not counted
    (tmp_path / "pairs.csv").write_text("fixed,moving\nfixed.nii.gz,fixed.nii.gz\n")
    folder = tmp_path / "method"
    pair_id = read_pairs(tmp_path / "pairs.csv")[0].id  # the folder rlreg batch and the peers write the pair to
    (folder / pair_id).mkdir(parents=True)
    write_itk_warp(field.float(), geometry, folder / pair_id / "warp.nii.gz")
    from rlreg.transforms import world_jacobian

    expected_jac = world_jacobian(field.float(), geometry)
    brain = fixed > 0.01
    expected = float(100.0 * (expected_jac[brain] <= 0).double().mean())
    assert expected > 0
    assert brain_folding(folder, tmp_path / "pairs.csv") == pytest.approx([expected])
    assert brain_folding(tmp_path / "missing", tmp_path / "pairs.csv") == []


def test_render_checks_each_target_per_thread_count() -> None:
    rows = {row_key("rlreg-instance", 1): _row("rlreg-instance", 1, 0.60, 4.0),
            row_key("syn", 1): _row("syn", 1, 0.50, 9.0), row_key("greedy", 1): _row("greedy", 1, 0.55, 8.0),
            row_key("rlreg-instance", 2): _row("rlreg-instance", 2, 0.555, 5.0, folding=0.2),
            row_key("syn", 2): _row("syn", 2, 0.50, 6.0), row_key("greedy", 2): _row("greedy", 2, 0.55, 12.0)}
    text = render({"abagen2": {"pairs": 4, "threads": [1, 2], "rows": rows}}, {"cpu": "test"}, "python -m x")
    assert text.startswith(BEGIN) and text.rstrip().endswith(END)
    assert "1 thread(s): speed met, Dice margin met, folding met" in text
    assert "2 thread(s): speed missed, Dice margin missed, folding missed" in text
    assert "| rlreg | 1 | 0.600 ± 0.010 |" in text and "0.44x | 0.50x |" in text
