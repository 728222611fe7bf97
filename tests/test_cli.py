"""The ``rlreg`` command line through Typer's CliRunner, and the one-line error contract."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

import rlreg.models as models
from rlreg.cli.main import app

runner = CliRunner()


def test_help_lists_only_working_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for built in ("demo", "train", "register", "apply", "invert", "batch", "evaluate", "report", "models", "inpaint",
                  "translate", "stylize"):
        assert f" {built} " in result.output
    assert " benchmark " not in result.output  # benchmarks run as `python -m benchmarks.NAME`, not as a product command
    for name in ("batch", "evaluate", "report", "models"):  # each subcommand's own help works too
        assert runner.invoke(app, [name, "--help"]).exit_code == 0


def test_help_shows_the_defaults_written_in_option_help() -> None:
    """Help is plain text: the ``[default: ...]`` notes in option help print as written."""
    result = runner.invoke(app, ["register", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "Agent steps [default: model's]" in text
    # the help's numbers (written out, so that --help needs no torch) are the defaults the command really uses
    from rlreg.pipelines.register import DEFAULT_INSTANCE, DEFAULT_INSTANCE_2D, DIFFEOMORPHIC_INSTANCE

    assert (f"[default: {DEFAULT_INSTANCE.smoothness:g} in 3-D; {DEFAULT_INSTANCE_2D.smoothness:g} in 2-D; "
            f"{DIFFEOMORPHIC_INSTANCE.smoothness:g} with --diffeomorphic]") in text
    assert f"[default: {DEFAULT_INSTANCE.bending:g} in 3-D; 0 in 2-D or with --diffeomorphic]" in text
    assert DEFAULT_INSTANCE_2D.bending == DIFFEOMORPHIC_INSTANCE.bending == 0


def _command_paths(command, path=()) -> list[tuple[str, ...]]:
    """Every command and subcommand of the CLI, as argument lists."""
    paths = [path]
    for name, sub in getattr(command, "commands", {}).items():
        paths += _command_paths(sub, (*path, name))
    return paths


def test_every_help_reads_whole_at_80_columns() -> None:
    """No help text is cut with an ellipsis at 80 columns: not in option names, words of option help, nor the
    command summaries of a group; and brackets in help (``rlreg[distributed]``) print as written."""
    import typer.main

    paths = _command_paths(typer.main.get_command(app))
    assert ("register",) in paths and ("models", "info") in paths
    for path in paths:
        result = runner.invoke(app, [*path, "--help"], terminal_width=80, env={"COLUMNS": "80"})
        assert result.exit_code == 0, (path, result.output)
        body = [line for line in result.output.splitlines() if not line.startswith("Usage:")]
        # Rich cuts with "\u2026"; click ends a cut command summary with "..." (an argument's "name..." is no cut)
        assert not any("\u2026" in line or line.endswith("...") for line in body), (path, result.output)
        assert max(len(line) for line in body) <= 80, (path, result.output)
    batch = " ".join(runner.invoke(app, ["batch", "--help"], terminal_width=80).output.split())
    assert "ray (pip install 'rlreg[distributed]')" in batch


def test_help_does_not_import_torch() -> None:
    """``--help`` must be instant: the CLI module may not pull torch or SimpleITK at import time."""
    code = ("import sys; import rlreg.cli.main as m; "
            "print(any(k in sys.modules for k in ('torch', 'SimpleITK', 'monai')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    code = ("import sys; from typer.testing import CliRunner; from rlreg.cli.main import app; "
            "CliRunner().invoke(app, ['models', 'list']); print('torch' in sys.modules)")  # listing is quick too
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


def test_models_list_and_info_show_the_shipped_digits_model() -> None:
    table = runner.invoke(app, ["models", "list"])
    assert table.exit_code == 0, table.output
    header, *lines = table.output.splitlines()
    assert header.split()[:3] == ["name", "task", "ndim"] and "headline metric" in header
    row = next(line for line in lines if line.startswith("digits "))
    assert row.split()[:5] == ["digits", "registration", "2", "-", "222,052"]
    assert "28x28" in row and "dice05_best 0.8826" in row
    digits = next(r for r in json.loads(runner.invoke(app, ["models", "list", "--json"]).output)
                  if r["name"] == "digits")
    assert digits["default"] is False and digits["working_grid"] == [28, 28] and digits["file_size_bytes"] > 0

    info = runner.invoke(app, ["models", "info", "digits"])
    assert info.exit_code == 0, info.output
    assert "not a default" in info.output and "checksum ok" in info.output and "training_data" in info.output
    data = json.loads(runner.invoke(app, ["models", "info", "digits", "--json"]).output)
    assert data["card"] == models.available()["digits"]
    assert data["file"]["checksum"] == "ok" and data["file"]["size_bytes"] == digits["file_size_bytes"]


def test_models_info_of_an_unknown_name_fails_in_one_line() -> None:
    result = runner.invoke(app, ["models", "info", "brain"])
    assert result.exit_code == 2
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no shipped model named 'brain'; available: ")
    assert "digits" in lines[0]


def test_models_of_a_registry_with_a_default_and_a_damaged_file(tmp_path, monkeypatch) -> None:
    (tmp_path / "brain.pt").write_bytes(b"0" * 2500)
    card = {"file": "brain.pt", "sha256": "f" * 64, "ndim": 3, "default": True, "working_spacing_mm": 2.0,
            "parameters": 1234, "recommended_steps": 10, "metrics": {"dice": 0.8}, "headline_metric": "dice"}
    (tmp_path / "models.json").write_text(json.dumps({"brain": card}))
    monkeypatch.setattr(models, "MODELS_DIR", tmp_path)
    monkeypatch.setattr(models, "REGISTRY", tmp_path / "models.json")
    row = runner.invoke(app, ["models", "list"]).output.splitlines()[1]
    assert row.split() == ["brain", "registration", "3", "3-D", "1,234", "2", "mm", "10", "dice", "0.8", "2.5", "kB"]
    info = runner.invoke(app, ["models", "info", "brain"])
    assert info.exit_code == 1 and "the default for 3-D inputs" in info.output and "checksum mismatch" in info.output
    assert json.loads(runner.invoke(app, ["models", "info", "brain", "--json"]).output)["file"]["checksum"] == (
        "mismatch")
