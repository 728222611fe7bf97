"""The small interface between the RL agent core and a task (registration, or an image-to-image translation).

A task holds ``B`` episodes that step together on one device (a vectorised environment). The agent only needs to
observe the state, apply an action to every episode, and evaluate the task's auxiliary loss on replayed
transitions; everything else (what the state means, how the reward is measured) stays inside the task.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

from torch import Tensor

__all__ = ["StepResult", "Task"]


class StepResult(NamedTuple):
    """What one :meth:`Task.step` returns for the ``B`` episodes of the batch.

    ``terminated`` and ``truncated`` are kept apart as in CleanRL / Gymnasium: a terminated episode reached a goal
    state, so its value target does **not** bootstrap; a truncated one only hit the step cap, so its target
    **does** bootstrap through ``next_state``.
    """

    state: Tensor
    """``(B, C, *S)`` next observation."""
    reward: Tensor
    """``(B,)`` float reward of the transition."""
    terminated: Tensor
    """``(B,)`` bool: success (e.g. Dice above the threshold); do not bootstrap."""
    truncated: Tensor
    """``(B,)`` bool: step cap reached without success; bootstrap through it."""
    score: Tensor
    """``(B,)`` the task's quality measure after the step (Dice for registration), for logging."""


@runtime_checkable
class Task(Protocol):
    """What the agent core needs from a task. Registration implements it; translation tasks will too."""

    def observe(self) -> Tensor:
        """Current state ``(B, C, *S)``."""
        ...

    def step(self, action: Tensor) -> StepResult:
        """Apply an action ``(B, A, *S)`` to every episode and return the transition's outcome."""
        ...

    def auxiliary_loss(self, state: Tensor, action: Tensor, extras: Tensor | None) -> Tensor:
        """Scalar task loss of ``action`` taken in ``state``, differentiable with respect to ``action``.

        ``extras`` is what :meth:`extras` returned when the transition was recorded (read back from the replay
        buffer), or ``None``.
        """
        ...

    def extras(self) -> Tensor | None:
        """Per-episode tensors ``(B, ...)`` the auxiliary loss needs that are not in the state (e.g. segmentations),
        to be stored in the replay buffer next to the state; ``None`` if the task needs none."""
        ...
