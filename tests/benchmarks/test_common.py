"""The benchmarks' shared helpers: a child's own peak memory, marked sections of a markdown file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from benchmarks.common import RECIPES, results_path, run_child, write_section

BEGIN, END = "<!-- example:begin -->", "<!-- example:end -->"


def test_run_child_reports_each_childs_own_peak(tmp_path):
    """A big child then a small one: the small one must not inherit the big peak, nor this (torch-sized) process's."""
    big = run_child([sys.executable, "-c", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"],
                    tmp_path / "big.out")
    small = run_child([sys.executable, "-S", "-c", "print('ok')"], tmp_path / "small.out")
    failed = run_child([sys.executable, "-S", "-c", "import sys; sys.exit(3)"], tmp_path / "failed.out")
    assert big.returncode == 0 and big.peak_rss_mib > 300
    assert small.returncode == 0 and small.stdout == "ok\n"
    assert small.peak_rss_mib < 60
    assert failed.returncode == 3


def test_write_section_replaces_only_its_section(tmp_path):
    path = tmp_path / "benchmarks.md"
    write_section(path, f"{BEGIN}\nfirst\n{END}", BEGIN, END)
    assert path.read_text().startswith("# rlreg benchmarks\n") and "first" in path.read_text()
    path.write_text(f"# rlreg benchmarks\n\nintro\n\n{BEGIN}\nold\n{END}\n\n<!-- other:begin -->\nkeep\n"
                    "<!-- other:end -->\n")
    write_section(path, f"{BEGIN}\nnew\n{END}", BEGIN, END)
    assert path.read_text() == (f"# rlreg benchmarks\n\nintro\n\n{BEGIN}\nnew\n{END}\n\n<!-- other:begin -->\n"
                                "keep\n<!-- other:end -->\n")
    other = tmp_path / "other.md"
    other.write_text("# title\n\ntext\n")
    write_section(other, f"{BEGIN}\nappended\n{END}", BEGIN, END)
    assert other.read_text() == f"# title\n\ntext\n\n{BEGIN}\nappended\n{END}\n"
    other.write_text(f"{BEGIN}\n{BEGIN}\n{END}\n")
    with pytest.raises(ValueError, match="expected one"):
        write_section(other, f"{BEGIN}\nx\n{END}", BEGIN, END)
    with pytest.raises(ValueError, match="must start"):
        write_section(other, "no markers", BEGIN, END)


def test_results_sit_beside_the_work_folder_and_recipes_are_the_installed_ones():
    assert results_path(Path("out/benchmark_batch")) == Path("out/benchmark_batch.json")
    assert (RECIPES / "digits.yaml").is_file() and (RECIPES / "brain-3d.yaml").is_file()
