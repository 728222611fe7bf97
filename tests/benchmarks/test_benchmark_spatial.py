"""Smoke test of the spatial benchmark: quick mode into a markdown file that already holds another section."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks import spatial as bench


def test_quick_benchmark_updates_only_its_section(tmp_path: Path) -> None:
    output = tmp_path / "docs" / "benchmarks.md"
    output.parent.mkdir()
    other = ("<!-- training:begin -->\n## Training\n\n| model | it/s |\n|---|---:|\n| spac | 3.0 |\n"
             "<!-- training:end -->")
    output.write_text(f"# rlreg benchmarks\n\n{other}\n", encoding="utf-8")

    rows = bench.main(device="cpu", repeats=2, output=output, quick=True)
    bench.main(device="cpu", repeats=2, output=output, quick=True)  # a rerun replaces, never duplicates

    ops = {bench.BASELINE, bench.BASELINE_BACKWARD, "warp bilinear", "warp label", "compose",
           "jacobian_determinant", "warp fwd+bwd (w.r.t. displacement)"}
    assert {(row.case, row.op) for row in rows} == {(case.name, op) for case in bench.QUICK_CASES for op in ops}
    for row in rows:
        assert math.isfinite(row.ratio) and row.ratio > 0, row
        assert math.isfinite(row.voxels_per_second) and row.voxels_per_second > 0, row

    text = output.read_text(encoding="utf-8")
    assert text.startswith("# rlreg benchmarks\n")
    assert other in text  # the other benchmark's section survives verbatim
    assert text.count(bench.SECTION_BEGIN) == 1 and text.count("## Spatial core") == 1
    # the CUDA block is stubbed with the command that fills it
    assert "Not measured yet. On a machine with CUDA, run: `python -m benchmarks.spatial --device cuda`." in text
    table = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| quick")]
    assert len(table) == len(rows)  # one table row per timed operation, once
    for cells in table:
        ratio = float(cells[4])
        assert math.isfinite(ratio) and ratio > 0, cells
    assert not list(output.parent.glob(".*.tmp"))  # the atomic write left no temp file


def test_quick_command_line_prints_and_writes_nothing(tmp_path, monkeypatch, capsys) -> None:
    """``python -m benchmarks.spatial --quick`` prints its table and, without ``--output``, writes no file."""
    monkeypatch.chdir(tmp_path)
    assert bench.cli(["--quick", "--device", "cpu", "--repeats", "1"]) == 0
    printed = capsys.readouterr().out
    assert "warp bilinear" in printed and "grid_sample" in printed
    assert "`python -m benchmarks.spatial --device cpu --repeats 1 --quick`" in printed  # the command it names
    assert not list(tmp_path.iterdir())


def test_unavailable_device_is_a_one_line_usage_error(capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SystemExit) as stop:
        bench.cli(["--quick", "--device", "cuda"])
    assert stop.value.code == 2
    assert "CUDA" in capsys.readouterr().err
