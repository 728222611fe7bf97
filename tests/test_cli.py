"""The ``rlreg`` command line through Typer's CliRunner, and the one-line error contract."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from rlreg.cli.main import app

runner = CliRunner()


def test_help_lists_only_working_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for built in ("demo", "benchmark", "train", "register", "apply", "invert", "batch", "evaluate", "report"):
        assert f" {built} " in result.output
    for name in ("batch", "evaluate", "report"):  # each subcommand's own help works too
        assert runner.invoke(app, [name, "--help"]).exit_code == 0


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


def test_train_command_runs_a_tiny_recipe_and_reports_json(tmp_path) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "agent:\n  network: {widths: [4, 8], plan_dim: 6, critic_widths: [4, 8], critic_hidden: 16}\n"
        "  task: {num_labels: 1, aux_dice: 0.0}\n"
        "loop: {device: cpu, num_envs: 4, warmup_steps: 1, batch_size: 4, eval_pairs: 8, eval_steps: 2,\n"
        "       eval_every: 2, checkpoint_every: 2, total_steps: 2}\n")
    result = runner.invoke(app, ["train", str(recipe), f"loop.output={tmp_path / 'run'}", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["history"][-1]["step"] == 2 and (tmp_path / "run" / "model.pt").exists()
    bad = runner.invoke(app, ["train", str(recipe), "loop.bogus=1"])
    assert bad.exit_code == 2 and "unknown config keys ['loop.bogus']" in bad.output
