"""The inpainting and translation tasks on the shared agent core: exactness outside the hole, rewards, the
adversarial auxiliary loss, resumable state, checkpoints that name their task, and learning through train()."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rlreg.data.registry import DATASETS, DataConfig
from rlreg.networks import NetworkConfig
from rlreg.rollout import rollout
from rlreg.sac import Agent, AgentConfig, SACConfig, load_checkpoint
from rlreg.tasks import (
    TASKS,
    ImageBatch,
    InpaintingConfig,
    InpaintingTask,
    TranslationConfig,
    TranslationTask,
    masked_psnr,
    pushpull_fill,
)
from rlreg.tasks.adversarial import PatchDiscriminator


def _photos(count: int, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1]: a few low-frequency cosines per channel."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    images = torch.zeros(count, channels, size, size)
    for _ in range(3):
        fy, fx, phase = (torch.rand(count, channels, 1, 1, generator=g) * 3 for _ in range(3))
        images += torch.cos(6.28 * (fy * y + fx * x) + phase)
    images = images - images.amin((2, 3), keepdim=True)
    return images / images.amax((2, 3), keepdim=True).clamp_min(1e-6)


def _centre_mask(count: int, size: int = 32) -> torch.Tensor:
    mask = torch.zeros(count, 1, size, size)
    mask[..., size // 4:3 * size // 4, size // 4:3 * size // 4] = 1
    return mask


def _inpainting_batch(count: int = 4, channels: int = 3, size: int = 32, seed: int = 0) -> ImageBatch:
    image, mask = _photos(count, channels, size, seed), _centre_mask(count, size)
    return ImageBatch(image * (1 - mask), image, mask)


def test_registry_has_both_image_tasks() -> None:
    assert TASKS["inpainting"].task is InpaintingTask and TASKS["inpainting"].config is InpaintingConfig
    assert TASKS["translation"].task is TranslationTask and TASKS["translation"].config is TranslationConfig


# ------------------------------------------------------------------------------------------------- push-pull
def test_pushpull_keeps_known_pixels_and_interpolates_a_ramp() -> None:
    ramp = torch.linspace(0, 1, 40).view(1, 1, 1, 40).expand(1, 2, 40, 40).clone()
    mask = torch.zeros(1, 1, 40, 40)
    mask[..., 10:30, 12:28] = 1
    filled = pushpull_fill(ramp * (1 - mask), mask)
    assert torch.equal(filled[mask.expand_as(filled) == 0], ramp[mask.expand_as(ramp) == 0])
    hole = mask.expand_as(ramp) > 0
    fill_error = (filled[hole] - ramp[hole]).abs().mean()
    mean_error = (ramp[~hole].mean() - ramp[hole]).abs().mean()
    assert fill_error < 0.5 * mean_error  # smooth data: a far better guess than the mean of the known pixels


def test_pushpull_works_in_3d_and_with_odd_sizes() -> None:
    volume = torch.full((2, 1, 9, 7, 5), 0.3)
    mask = torch.zeros(2, 1, 9, 7, 5)
    mask[:, :, 3:6, 2:5, 1:4] = 1
    filled = pushpull_fill(volume * (1 - mask), mask)
    assert filled.shape == volume.shape
    torch.testing.assert_close(filled, volume)  # a constant image is filled with that constant


def test_pushpull_rejects_a_mask_of_another_size() -> None:
    with pytest.raises(ValueError, match="mask"):
        pushpull_fill(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 8, 9))


# ------------------------------------------------------------------------------------------------- inpainting
def test_inpainting_state_layout_and_exactness_outside_the_hole() -> None:
    batch = _inpainting_batch()
    task = InpaintingTask(InpaintingConfig(channels=3, max_steps=3))
    state = task.reset(batch)
    assert state.shape == (4, 4, 32, 32)
    torch.testing.assert_close(state[:, 3:], batch.mask)
    known = batch.mask.expand_as(batch.target) == 0
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        result = task.step(torch.rand(4, 3, 32, 32, generator=g) - 0.5)
        assert torch.equal(task.image[known], batch.target[known])  # bit for bit, at every step
        assert task.image.min() >= 0 and task.image.max() <= 1
    assert bool(result.truncated.all()) and not bool(result.terminated.any())


def test_inpainting_score_is_hole_psnr_and_reward_its_scaled_gain() -> None:
    batch = _inpainting_batch()
    task = InpaintingTask(InpaintingConfig(channels=3, reward_scale=0.1))
    task.reset(batch)
    before = task.score.clone()
    torch.testing.assert_close(before, masked_psnr(task.image, batch.target, batch.mask))
    perfect = (batch.target - task.image) * batch.mask  # the residual that completes every hole
    result = task.step(perfect)
    assert bool((result.score > before + 20).all())
    torch.testing.assert_close(result.reward, 0.1 * (result.score - before))
    whole = task.metrics()["psnr_whole"]
    assert bool((whole > 60).all())


def test_inpainting_initial_fills() -> None:
    batch = _inpainting_batch(channels=1)
    pushpull = InpaintingTask(InpaintingConfig(channels=1)).reset(batch)[:, :1]
    mean = InpaintingTask(InpaintingConfig(channels=1, initial_fill="mean")).reset(batch)[:, :1]
    hole = batch.mask > 0
    assert torch.equal(pushpull[~hole], mean[~hole])
    assert bool((masked_psnr(pushpull, batch.target, batch.mask) > masked_psnr(mean, batch.target, batch.mask)).all())
    per_image = mean[hole].view(4, -1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image))  # flat per image


def test_inpainting_rejects_wrong_channels_and_missing_mask() -> None:
    task = InpaintingTask(InpaintingConfig(channels=3))
    with pytest.raises(ValueError, match="3"):
        task.reset(_inpainting_batch(channels=1))
    batch = _inpainting_batch()
    with pytest.raises(ValueError, match="mask"):
        task.reset(ImageBatch(batch.source, batch.target, None))


def test_reset_done_restarts_only_finished_episodes() -> None:
    task = InpaintingTask(InpaintingConfig(channels=3, max_steps=2))
    task.reset(_inpainting_batch(seed=0))
    task.step(torch.full((4, 3, 32, 32), 0.2))
    image_before = task.image.clone()
    fresh = _inpainting_batch(seed=5)
    done = torch.tensor([True, False, True, False])
    task.reset_done(done, fresh)
    assert torch.equal(task.image[1], image_before[1]) and torch.equal(task.target[1], _inpainting_batch().target[1])
    assert torch.equal(task.target[0], fresh.target[0])
    assert task.steps.tolist() == [0, 1, 0, 1]


def test_auxiliary_loss_trains_the_discriminator_and_reaches_the_action() -> None:
    torch.manual_seed(0)
    batch = _inpainting_batch()
    task = InpaintingTask(InpaintingConfig(channels=3, adv_weight=0.5, disc_widths=(8, 16)))
    state = task.reset(batch)
    action = torch.zeros(4, 3, 32, 32, requires_grad=True)
    task.auxiliary_loss(state, action, task.extras()).backward()
    assert action.grad is not None
    hole = batch.mask.expand_as(action) > 0
    assert action.grad[hole].abs().sum() > 0 and action.grad[~hole].abs().sum() == 0  # only the hole is produced
    network = task.adversary.network
    assert isinstance(network, PatchDiscriminator)
    weights = [p.detach().clone() for p in network.parameters()]
    task.auxiliary_loss(state, action.detach(), task.extras())
    assert any(not torch.equal(w, p) for w, p in zip(weights, network.parameters(), strict=True))
    assert all(p.grad is None or not p.requires_grad for p in network.parameters())  # frozen for the generator


def test_l1_only_needs_no_discriminator() -> None:
    task = InpaintingTask(InpaintingConfig(channels=3, adv_weight=0.0))
    state = task.reset(_inpainting_batch())
    loss = task.auxiliary_loss(state, torch.zeros(4, 3, 32, 32), task.extras())
    assert task.adversary.network is None and loss > 0
    assert task.state_dict()["adversary"] == {}


def test_state_dict_round_trip_continues_identically() -> None:
    config = InpaintingConfig(channels=3, disc_widths=(8, 16))
    task = InpaintingTask(config)
    state = task.reset(_inpainting_batch())
    task.step(torch.full((4, 3, 32, 32), 0.1))
    task.auxiliary_loss(state, torch.zeros(4, 3, 32, 32), task.extras())
    copy = InpaintingTask(config)
    copy.load_state_dict(task.state_dict())
    assert torch.equal(copy.observe(), task.observe()) and torch.equal(copy.score, task.score)
    for a, b in zip(task.adversary.state_dict()["network"].values(),
                    copy.adversary.state_dict()["network"].values(), strict=True):
        assert torch.equal(a, b)
    action = torch.full((4, 3, 32, 32), -0.05)
    assert torch.equal(task.step(action).reward, copy.step(action).reward)


# ------------------------------------------------------------------------------------------------- translation
def test_translation_state_steps_and_conditional_discriminator() -> None:
    target = _photos(2, 3)
    source = target.mean(1, keepdim=True)
    task = TranslationTask(TranslationConfig(source_channels=1, channels=3, initial_value=0.5, adv_weight=0.1,
                                             disc_widths=(8, 16)))
    state = task.reset(ImageBatch(source, target))
    assert state.shape == (2, 4, 32, 32)
    torch.testing.assert_close(state[:, :1], source)
    assert torch.equal(state[:, 1:], torch.full_like(target, 0.5))
    result = task.step(target - 0.5)
    torch.testing.assert_close(task.image, target)
    assert bool((result.score > 60).all())
    task.auxiliary_loss(state, torch.zeros(2, 3, 32, 32), task.extras())
    assert task.adversary.network is not None and task.adversary.in_channels == 4
    with pytest.raises(ValueError, match="source map must have 1 channels"):
        task.reset(ImageBatch(target, target))


# ------------------------------------------------------------------------------------------------- agent & training
def _network(in_channels: int, out_channels: int) -> NetworkConfig:
    return NetworkConfig(ndim=2, in_channels=in_channels, out_channels=out_channels, widths=(8, 16, 16), plan_dim=32,
                         plan_grid=2, down_kernel=4, padding="reflect", max_step=0.5, critic_widths=(8, 16))


def test_checkpoint_names_its_task_and_restores_its_config(tmp_path) -> None:
    config = AgentConfig(network=_network(2, 1), task_name="inpainting",
                         task=InpaintingConfig(channels=1, max_steps=4, initial_fill="mean"))
    agent = Agent(config)
    agent.save(tmp_path / "model.pt")
    loaded, data = load_checkpoint(tmp_path / "model.pt", task="inpainting")
    assert loaded.config == config and data["task"] == "inpainting"
    with pytest.raises(ValueError, match="inpainting"):
        load_checkpoint(tmp_path / "model.pt", task="registration")
    task = TASKS[loaded.config.task_name].task(loaded.config.task)
    batch = _inpainting_batch(count=2, channels=1)
    task.reset(batch)
    rollout(loaded, task, 3)
    known = batch.mask == 0
    assert torch.equal(task.image[known], batch.target[known])


class _InvertSource:
    """Translation toy data: the target is the colour negative of a smooth grey source."""

    def sample(self, count: int, generator: torch.Generator, device: torch.device | str = "cpu") -> ImageBatch:
        seed = int(torch.randint(1 << 30, (1,), generator=generator))
        source = _photos(count, 1, 16, seed)
        return ImageBatch(source.to(device), (1 - source).to(device))


def test_translation_learns_through_train(tmp_path, monkeypatch) -> None:
    from rlreg.pipelines.train import LoopConfig, TrainConfig, train

    monkeypatch.setitem(DATASETS, "invert-toy", lambda data: (_InvertSource(), _InvertSource()))
    torch.manual_seed(0)
    agent = AgentConfig(network=_network(2, 1), sac=SACConfig(lr_actor=1e-3, lr_planner=1e-3, lr_critic=1e-3),
                        task_name="translation",
                        task=TranslationConfig(source_channels=1, channels=1, max_steps=2, adv_weight=0.0))
    loop = LoopConfig(num_envs=8, total_steps=150, warmup_steps=5, batch_size=16, buffer_capacity=500,
                      eval_every=150, eval_pairs=16, eval_steps=2, checkpoint_every=150, output=str(tmp_path / "run"),
                      device="cpu")
    summary = train(TrainConfig(agent=agent, data=DataConfig(dataset="invert-toy"), loop=loop))
    record = summary.history[-1]
    assert record["psnr_final"] > record["psnr0"] + 3.0, record
    saved, _ = load_checkpoint(tmp_path / "run" / "model.pt", task="translation")
    assert dataclasses.asdict(saved.config.task) == dataclasses.asdict(agent.task)


@pytest.mark.parametrize("name", ["inpaint-photo", "inpaint-mri", "translate-labels-t1", "translate-edges-photo"])
def test_image_recipes_build_an_agent_whose_state_fits_the_task(name: str) -> None:
    from pathlib import Path

    import rlreg.pipelines
    from rlreg.pipelines.train import load_config

    config = load_config(Path(rlreg.pipelines.__file__).parent / "recipes" / f"{name}.yaml")
    network, task_config = config.agent.network, config.agent.task
    assert config.data.dataset in DATASETS
    assert network.plan_dim == 256 and network.down_kernel == 4  # the paper's plan and 4x4 stride-2 convs
    assert network.out_channels == task_config.channels
    task = TASKS[config.agent.task_name].task(task_config)
    channels = task_config.channels
    source_channels = channels if name.startswith("inpaint") else task_config.source_channels
    image = torch.rand(1, channels, 32, 32)
    mask = _centre_mask(1) if name.startswith("inpaint") else None
    state = task.reset(ImageBatch(torch.rand(1, source_channels, 32, 32), image, mask))
    assert state.shape[1] == network.in_channels
