"""The one rollout loop: T deterministic steps, a per-step callback, the recurrent memory carried and returned."""

from __future__ import annotations

import pytest
import torch

from rlreg.networks import NetworkConfig
from rlreg.rollout import rollout
from rlreg.sac import Agent, AgentConfig
from rlreg.tasks.registration import RegistrationBatch, RegistrationConfig, RegistrationTask


def agent(memory: str = "none") -> Agent:
    torch.manual_seed(0)
    network = NetworkConfig(widths=(4, 8), plan_dim=6, critic_widths=(4, 8), critic_hidden=16, memory=memory)
    return Agent(AgentConfig(network=network, task=RegistrationConfig(reward="lncc"))).eval()


def pair(seed: int = 0) -> RegistrationBatch:
    generator = torch.Generator().manual_seed(seed)
    return RegistrationBatch(torch.rand(2, 1, 12, 10, generator=generator),
                             torch.rand(2, 1, 12, 10, generator=generator))


def test_rollout_equals_the_hand_written_loop_and_calls_back_every_step() -> None:
    policy = agent()
    by_hand = RegistrationTask(policy.config.task)
    state = by_hand.reset(pair())
    for _ in range(3):
        state = by_hand.step(policy.act(state, deterministic=True).action).state
    task = RegistrationTask(policy.config.task)
    task.reset(pair())
    seen: list[tuple[int, float]] = []
    result = rollout(policy, task, 3, on_step=lambda t, step: seen.append((t, float(step.score.mean()))))
    assert torch.equal(task.field, by_hand.field) and torch.equal(result.state, state)
    assert [t for t, _ in seen] == [1, 2, 3] and seen[-1][1] == pytest.approx(float(task.score.mean()))
    assert result.steps == 3 and result.memory is None
    assert rollout(policy, task, 0).steps == 0
    with pytest.raises(ValueError, match="steps must be >= 0"):
        rollout(policy, task, -1)


def test_rollout_carries_the_memory_across_steps_and_frames() -> None:
    """With a GRU planner the memory changes the decisions: a rollout continued from the last frame's memory acts
    differently from a fresh one on the same frame (the frame-wise memory of video tasks)."""
    policy = agent("gru")
    first = RegistrationTask(policy.config.task)
    first.reset(pair(0))
    previous = rollout(policy, first, 2)
    assert previous.memory is not None
    fields = []
    for memory in (None, previous.memory):
        task = RegistrationTask(policy.config.task)
        task.reset(pair(1))
        rollout(policy, task, 2, memory=memory)
        fields.append(task.field)
    assert not torch.allclose(fields[0], fields[1])
