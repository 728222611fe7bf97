"""Running an agent on a task: ``T`` deterministic steps, the loop every caller shares.

Inference (``rlreg register``), the training loop's evaluation and the benchmarks all run the policy the same way:
at test time the plan is the Gaussian's mean and the agent takes a fixed number of steps (RL-I2IT Sec. 3; SPAC
Sec. 3.4: "the number of steps trades accuracy for time"). The recurrent memory of a ``network.memory="gru"`` agent
is carried from step to step and returned, so a video task passes it on to the next frame's rollout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from rlreg.tasks.base import StepResult, Task

__all__ = ["Acting", "RolloutResult", "rollout"]


class _Decision(Protocol):
    @property
    def action(self) -> Tensor: ...

    @property
    def memory(self) -> Tensor | None: ...


class Acting(Protocol):
    """What a rollout needs from an agent: :meth:`rlreg.sac.Agent.act`."""

    def act(self, state: Tensor, deterministic: bool = True, memory: Tensor | None = None) -> _Decision:
        """Action ``(N, A, *S)`` for state ``(N, C, *S)``, and the memory after it."""
        ...


class RolloutResult(NamedTuple):
    """Where a rollout ended."""

    state: Tensor
    """``(B, C, *S)`` the task's state after the last step."""
    memory: Tensor | None
    """The agent's memory after the last step (``None`` without one): the next frame's starting memory."""
    steps: int
    """Steps taken."""


def rollout(agent: Acting, task: Task, steps: int, on_step: Callable[[int, StepResult], None] | None = None,
            memory: Tensor | None = None) -> RolloutResult:
    """Run the deterministic policy (the plan's mean) ``steps`` steps on a task that has been reset.

    Args:
        agent: the agent (:class:`rlreg.sac.Agent`).
        task: a :class:`~rlreg.tasks.base.Task` after :meth:`~rlreg.tasks.base.Task.reset`; its episodes advance in
            place (read its fields, e.g. the registration's accumulated field, afterwards or in ``on_step``).
        steps: ``T >= 0``. Episodes are not restarted when they terminate: every one takes ``T`` steps.
        on_step: called as ``on_step(t, result)`` after step ``t = 1..T`` with the step's :class:`StepResult`.
        memory: the agent's starting memory (``None``: a fresh one).

    Returns:
        :class:`RolloutResult` with the last state, the memory after the last step and ``T``.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    state = task.observe()
    with torch.no_grad():
        for t in range(1, steps + 1):
            decision = agent.act(state, deterministic=True, memory=memory)
            memory = decision.memory
            result = task.step(decision.action)
            state = result.state
            if on_step is not None:
                on_step(t, result)
    return RolloutResult(state, memory, steps)
