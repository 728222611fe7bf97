"""Shipped models: listed with a card, checksum-verified, rebuilt from the package alone, and they register digits."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import rlreg.models as models
from rlreg.pipelines.export_model import export_model
from rlreg.sac import Agent, AgentConfig


def test_digits_model_is_shipped_and_registers_held_out_digits() -> None:
    from rlreg.pipelines.digits import DigitPairs, split_mnist
    from rlreg.tasks.registration import RegistrationTask

    cards = models.available()
    assert "digits" in cards and cards["digits"]["ndim"] == 2
    agent = models.load("digits")
    pairs = DigitPairs(*split_mnist()["test"]).sample(64, torch.Generator().manual_seed(99))
    task = RegistrationTask(agent.config.task)
    state = task.reset(*pairs)
    before = float(task.score.mean())
    for _ in range(cards["digits"]["max_steps"]):
        state = task.step(agent.act(state).action).state
    assert float(task.score.mean()) > before + 0.3


def test_export_strips_optimisers_and_checksum_is_enforced(tmp_path, monkeypatch) -> None:
    agent = Agent(AgentConfig())
    checkpoint = agent.save(tmp_path / "trained.pt")
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    path = export_model(checkpoint, "toy", {"trained_on": "nothing"}, directory=shipped)
    data = torch.load(path, weights_only=True)
    assert "optimizers" not in data and data["format_version"] == 1
    monkeypatch.setattr(models, "MODELS_DIR", shipped)
    monkeypatch.setattr(models, "REGISTRY", shipped / "models.json")
    card = models.available()["toy"]
    assert card["trained_on"] == "nothing" and card["ndim"] == 2
    loaded = models.load("toy")
    state = torch.rand(1, 2, 28, 28)
    assert torch.equal(loaded.act(state).action, agent.act(state).action)
    shutil.copy(path, tmp_path / "backup.pt")
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ValueError, match="checksum"):
        models.load("toy")
    with pytest.raises(ValueError, match="no shipped model named 'nope'; available: toy"):
        models.load("nope")
    assert json.loads((shipped / "models.json").read_text())["toy"]["file"] == "toy.pt"
