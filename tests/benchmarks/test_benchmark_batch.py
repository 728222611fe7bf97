"""The batch benchmark's loop of Greedy: per pair, Greedy's affine, deformable and reslice commands from and to files,
and its row beside rlreg's (pairs per hour quoted against it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from phantoms import write_pair

from benchmarks.batch import GREEDY_LOOP, BatchCase, greedy_loop, render_section


def test_greedy_loop_registers_each_pair_from_files(tmp_path: Path) -> None:
    pytest.importorskip("picsl_greedy")
    from rlreg.io import read_label_map
    from rlreg.metrics.dice import mean_dice

    paths = write_pair(tmp_path / "pair", 3)
    table = tmp_path / "pairs.csv"
    table.write_text("fixed,moving,fixed_seg,moving_seg\n"
                     f"{paths['fixed']},{paths['moving']},{paths['fixed_seg']},{paths['moving_seg']}\n")
    greedy_loop(table, tmp_path / "out", threads=1)
    folder = tmp_path / "out" / "0"
    record = json.loads((folder / "greedy.json").read_text())
    assert set(record["seconds"]) == {"affine", "deformable", "reslice"} and min(record["seconds"].values()) > 0
    assert f"-o {folder / 'affine.mat'}" in record["commands"]["affine"]
    assert f"-it {folder / 'affine.mat'} -o {folder / 'warp.nii.gz'}" in record["commands"]["deformable"]
    assert np.loadtxt(folder / "affine.mat").shape == (4, 4)
    warped_seg = read_label_map(folder / "warped_seg.nii.gz")
    fixed_seg, moving_seg = read_label_map(paths["fixed_seg"]), read_label_map(paths["moving_seg"])
    assert set(np.unique(warped_seg.data.numpy())) <= set(np.unique(moving_seg.data.numpy()))  # nearest neighbour
    assert sitk.ReadImage(str(folder / "warped.nii.gz")).GetSize() == sitk.ReadImage(str(paths["fixed"])).GetSize()
    assert float(mean_dice(warped_seg.data, fixed_seg.data)) > 0.8


def test_rows_are_quoted_against_the_loop_of_greedy() -> None:
    stages = {"read": 1.0, "affine": 1.0, "deformable": 2.0, "write": 1.0}
    cases = [BatchCase("loop of rlreg register (baseline)", "loop", 0, 100.0, 4, 144.0, stages, 900.0, 0.5),
             BatchCase("rlreg batch (local engine)", "batch", 0, 40.0, 4, 360.0, stages, 900.0, 0.5),
             BatchCase(GREEDY_LOOP, "greedy", 0, 60.0, 4, 240.0, stages, 300.0, 0.52)]
    text = render_section(cases, "python -m benchmarks.batch", {"cpu": "cpu", "torch": "2", "load": "0",
                                                               "date": "today"}, 4)
    assert "| rlreg batch (local engine) | 40 | 4 | 360 | 2.50x | 1.50x |" in text
    assert f"| {GREEDY_LOOP} | 60 | 4 | 240 | 1.67x | 1.00x |" in text
