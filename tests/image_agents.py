"""Tiny randomly initialised inpainting and translation agents saved as checkpoints, a temporary model registry, so
the ``rlreg inpaint`` / ``rlreg translate`` / ``rlreg stylize`` tests do not depend on the shipped models, and the
check of their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import rlreg.models as models


def image_agent(path: Path, task: str = "inpainting", channels: int = 3, source_channels: int = 1,
                max_steps: int = 3, seed: int = 0) -> Path:
    """Save a small random agent of ``task`` (``inpainting``: state = image + mask; ``translation``: state = source
    + image) at ``path``; returns the path."""
    from rlreg.networks import NetworkConfig
    from rlreg.sac import Agent, AgentConfig
    from rlreg.tasks import task_spec

    spec = task_spec(task)
    if task == "inpainting":
        in_channels, task_config = channels + 1, spec.config(channels=channels, max_steps=max_steps)
    else:
        in_channels = source_channels + channels
        task_config = spec.config(source_channels=source_channels, channels=channels, max_steps=max_steps)
    network = NetworkConfig(ndim=2, in_channels=in_channels, out_channels=channels, widths=(8, 8), plan_dim=16,
                            plan_grid=2, critic_widths=(8, 8), critic_hidden=16)
    torch.manual_seed(seed)
    return Agent(AgentConfig(network=network, task_name=task, task=task_config)).save(path)


def registry(folder: Path, monkeypatch, checkpoints: dict[str, tuple[Path, dict]]) -> None:
    """Point :mod:`rlreg.models` at a registry in ``folder`` holding ``name -> (checkpoint, card fields)``."""
    folder.mkdir(parents=True, exist_ok=True)
    cards = {}
    for name, (checkpoint, card) in checkpoints.items():
        target = folder / f"{name}.pt"
        target.write_bytes(Path(checkpoint).read_bytes())
        cards[name] = {"file": target.name, "sha256": models.sha256(target), "ndim": 2, **card}
    (folder / "models.json").write_text(json.dumps(cards))
    monkeypatch.setattr(models, "MODELS_DIR", folder)
    monkeypatch.setattr(models, "REGISTRY", folder / "models.json")


def gif_seconds(path: Path | str) -> float:
    """Playing time of an animated GIF: one frame per step at 0.4 s (PIL merges identical consecutive frames and
    adds their durations, so the time, not the frame count, says how many steps it shows)."""
    from PIL import Image, ImageSequence

    with Image.open(path) as gif:
        return sum(frame.info["duration"] for frame in ImageSequence.Iterator(gif)) / 1000


def one_line_error(result, *fragments: str) -> str:
    """Check that a CliRunner ``result`` failed with exit code 2 and one ``error: ...`` line holding every fragment;
    returns the line."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
