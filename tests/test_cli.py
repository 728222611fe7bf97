"""The ``rlreg`` command line through Typer's CliRunner, and the one-line error contract."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from rlreg.cli.main import app

runner = CliRunner()


def test_help_lists_only_working_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "demo" in result.output and "benchmark" in result.output and "train" in result.output
    for planned in ("register", "batch", "evaluate"):  # not built yet: must not be advertised
        assert f" {planned} " not in result.output


def test_help_does_not_import_torch() -> None:
    """``--help`` must be instant: the CLI module may not pull torch or SimpleITK at import time."""
    code = ("import sys; import rlreg.cli.main as m; "
            "print(any(k in sys.modules for k in ('torch', 'SimpleITK', 'monai')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("rlreg ")


def test_demo_with_unknown_donor_fails_in_one_line(tmp_path) -> None:
    result = runner.invoke(app, ["demo", "--fixed", "nobody", "-o", str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 2
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "nobody" in lines[0] and "choose one of" in lines[0]
    assert "Traceback" not in result.output


def test_unavailable_device_fails_in_one_line(tmp_path) -> None:
    import torch

    if torch.cuda.is_available():
        return
    result = runner.invoke(app, ["demo", "--device", "cuda", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "CUDA is not available" in result.output


def test_benchmark_quick_prints_and_writes_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["benchmark", "spatial", "--quick", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "warp" in result.output and "grid_sample" in result.output
    assert not (tmp_path / "docs").exists()
