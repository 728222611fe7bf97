"""The agent core is task-agnostic: a toy denoising task, written here and nowhere in the package, registers itself
in ``rlreg.tasks.TASKS``, trains through the real :func:`rlreg.pipelines.train.train`, and its held-out PSNR rises.

The task is the worked example of ``docs/architecture.md`` ("Add a task in five steps"): the state is the current
image, an action is a bounded residual (``max_step * tanh``, one channel), the reward is the PSNR gain of the step,
and the auxiliary loss is the L1 distance of ``state + action`` to the clean image (the image tasks' L1 term,
RL-I2IT Sec. 4), the clean image riding in the replay buffer as the task's extras.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import pytest
import torch
from torch import Tensor

from rlreg.data.registry import DATASETS
from rlreg.pipelines.train import load_config, train
from rlreg.sac import load_checkpoint
from rlreg.tasks import TASKS, StepResult, Task, TaskSpec

SIZE = 16


class NoisyBatch(NamedTuple):
    """``B`` images to denoise: the clean target and its noisy copy, ``(B, 1, SIZE, SIZE)`` each."""

    clean: Tensor
    noisy: Tensor


class NoisySquares:
    """Data source: a bright axis-aligned rectangle on a dark background, plus Gaussian noise of std ``noise``."""

    def __init__(self, noise: float = 0.2) -> None:
        self.noise = noise

    def sample(self, count: int, generator: torch.Generator, device: torch.device | str = "cpu") -> NoisyBatch:
        corners = torch.randint(0, SIZE // 2, (count, 2), generator=generator)
        sizes = torch.randint(4, SIZE // 2 + 1, (count, 2), generator=generator)
        axis = torch.arange(SIZE)
        rows = (axis >= corners[:, :1]) & (axis < corners[:, :1] + sizes[:, :1])
        cols = (axis >= corners[:, 1:]) & (axis < corners[:, 1:] + sizes[:, 1:])
        clean = 0.2 + 0.6 * (rows[:, :, None] & cols[:, None, :]).float().unsqueeze(1)
        noisy = clean + self.noise * torch.randn(clean.shape, generator=generator)
        return NoisyBatch(clean.to(device), noisy.to(device))


@dataclass(frozen=True)
class DenoiseConfig:
    max_steps: int = 4
    """Episode length; reaching it truncates the episode."""
    reward_scale: float = 1.0
    """Reward per dB of PSNR gained."""


def psnr(image: Tensor, clean: Tensor) -> Tensor:
    """``(B,)`` peak signal-to-noise ratio in dB for intensities in ``[0, 1]``."""
    mse = (image - clean).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return -10.0 * torch.log10(mse)


class DenoiseTask:
    """``B`` denoising episodes: the state is the current image ``(B, 1, S, S)``, the action a residual added to it."""

    score_name = "psnr"

    def __init__(self, config: DenoiseConfig) -> None:
        self.config = config
        self.score = torch.zeros(0)

    def reset(self, batch: NoisyBatch) -> Tensor:
        self.clean, self.image = batch.clean.clone(), batch.noisy.clone()
        self.steps = torch.zeros(self.clean.shape[0], dtype=torch.long, device=self.clean.device)
        self.score = psnr(self.image, self.clean)
        return self.observe()

    def reset_done(self, done: Tensor, batch: NoisyBatch) -> Tensor:
        rows = done.view(-1, 1, 1, 1)
        self.clean = torch.where(rows, batch.clean, self.clean)
        self.image = torch.where(rows, batch.noisy, self.image)
        self.steps = torch.where(done, 0, self.steps)
        self.score = psnr(self.image, self.clean)
        return self.observe()

    def observe(self) -> Tensor:
        return self.image

    def step(self, action: Tensor) -> StepResult:
        previous = self.score
        self.image = self.image + action.detach().to(self.image.dtype)
        self.steps = self.steps + 1
        self.score = psnr(self.image, self.clean)
        reward = self.config.reward_scale * (self.score - previous)
        terminated = torch.zeros_like(self.steps, dtype=torch.bool)
        return StepResult(self.image, reward, terminated, self.steps >= self.config.max_steps, self.score)

    def metrics(self) -> dict[str, Tensor]:
        return {"mae": (self.image - self.clean).abs().flatten(1).mean(1)}

    def auxiliary_loss(self, state: Tensor, action: Tensor, extras: Tensor | None) -> Tensor:
        assert extras is not None
        return (state.to(action.dtype) + action - extras.to(action.dtype)).abs().mean()

    def extras(self) -> Tensor | None:
        return self.clean

    def state_dict(self) -> dict[str, Any]:
        return {"clean": self.clean, "image": self.image, "steps": self.steps, "score": self.score}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clean, self.image, self.steps, self.score = (state[k] for k in ("clean", "image", "steps", "score"))


RECIPE = [
    "agent.task_name=denoise", "agent.task.max_steps=4",
    "agent.network.in_channels=1", "agent.network.out_channels=1", "agent.network.widths=[8, 16]",
    "agent.network.plan_dim=8", "agent.network.critic_widths=[8, 16]", "agent.network.critic_hidden=32",
    "agent.network.max_step=0.1", "agent.sac.lr_planner=1.0e-3", "agent.sac.lr_actor=1.0e-3",
    "agent.sac.lr_critic=1.0e-3", "agent.sac.lr_alpha=1.0e-3",
    "data.dataset=noisy-squares",
    "loop.device=cpu", "loop.seed=0", "loop.num_envs=8", "loop.warmup_steps=10", "loop.batch_size=16",
    "loop.total_steps=120", "loop.eval_every=120", "loop.checkpoint_every=120", "loop.eval_pairs=32",
    "loop.eval_steps=4", "loop.eval_chunk=32",
]


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny 16x16 networks only lose to thread hand-offs on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def denoise(monkeypatch):
    """Register the toy task and its data the way a new task would (``docs/architecture.md``, steps 4 and 5)."""
    monkeypatch.setitem(TASKS, "denoise", TaskSpec(DenoiseConfig, DenoiseTask))
    monkeypatch.setitem(DATASETS, "noisy-squares", lambda data: (NoisySquares(), NoisySquares()))


def test_the_toy_task_implements_the_protocol(denoise) -> None:
    task = DenoiseTask(DenoiseConfig())
    assert isinstance(task, Task)
    state = task.reset(NoisySquares().sample(3, torch.Generator().manual_seed(0)))
    assert state.shape == (3, 1, SIZE, SIZE) and task.score.shape == (3,)


def test_denoising_trains_through_the_registry_and_psnr_rises(tmp_path, denoise, one_thread) -> None:
    """The real train(): held-out PSNR after the deterministic rollout beats the noisy input by over 1 dB."""
    started = time.perf_counter()
    summary = train(load_config(None, [*RECIPE, f"loop.output={tmp_path}"]))
    seconds = time.perf_counter() - started
    record = summary.history[-1]
    assert set(record) == {"step", "psnr_final", "psnr_best", "best_step", "psnr0", "mae"}
    assert record["psnr_final"] > record["psnr0"] + 1.0, record
    assert seconds < 90, seconds
    agent, data = load_checkpoint(tmp_path / "model.pt", task="denoise")
    assert data["task"] == "denoise" and agent.config.task == DenoiseConfig(max_steps=4)
    with pytest.raises(ValueError, match=r"is a 'denoise' checkpoint, not a 'registration' one"):
        load_checkpoint(tmp_path / "model.pt", task="registration")


def test_a_checkpoint_of_another_task_is_refused_in_one_line(tmp_path, denoise) -> None:
    """Fine-tuning a denoising run from a registration model names the file, both tasks and the fix."""
    from rlreg.sac import Agent, AgentConfig

    source = Agent(AgentConfig()).save(tmp_path / "registration.pt")
    config = load_config(None, [*RECIPE, "loop.total_steps=1", f"loop.init_from={source}",
                                f"loop.output={tmp_path / 'run'}"])
    with pytest.raises(ValueError) as caught:
        train(config)
    message = str(caught.value)
    assert "\n" not in message and str(source) in message
    assert "'registration' checkpoint, not a 'denoise' one" in message and "agent.task_name" in message


def test_a_datasets_own_options_reach_its_factory(monkeypatch) -> None:
    """A dataset registered from outside the pipelines gets its recipe options (``data.options``) untouched."""
    from rlreg.data.registry import training_data

    seen: dict[str, object] = {}

    def factory(data):
        seen.update(data.options)
        return NoisySquares(), NoisySquares()

    monkeypatch.setitem(DATASETS, "noisy-squares", factory)
    config = load_config(None, ["data.dataset=noisy-squares", "data.options.noise=0.25", "data.options.size=16"])
    training_data(config.data)
    assert seen == {"noise": 0.25, "size": 16}
    assert config.to_dict()["data"]["options"] == {"noise": 0.25, "size": 16}  # saved with the recipe
