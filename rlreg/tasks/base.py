"""The small interface between the RL agent core and a task (registration, or an image-to-image translation).

A task holds ``B`` episodes that step together on one device (a vectorised environment). The agent core (the
networks, :class:`rlreg.sac.Agent`, the replay buffer and :func:`rlreg.rollout.rollout`) knows a task only through
:class:`Task`: it observes the state, applies an action to every episode, reads the score, and evaluates the task's
auxiliary loss on replayed transitions; what the state means and how the reward is measured stay inside the task.
Episodes start from a task-specific *batch* (registration: fixed and moving images with optional segmentations)
drawn from a :class:`DataSource`.

:data:`TASKS` maps a task's name to its :class:`TaskSpec` (config class and task class); ``rlreg.tasks`` registers
the shipped tasks in it. The layers and the walk-through "add a task in five steps" are in ``docs/architecture.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar, runtime_checkable

import torch
from torch import Tensor

__all__ = ["TASKS", "DataSource", "StepResult", "Task", "TaskSpec", "task_spec"]

BatchT_co = TypeVar("BatchT_co", covariant=True)


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


class DataSource(Protocol[BatchT_co]):
    """Where a task's episodes come from: ``sample(count, generator, device)`` draws ``count`` items.

    The batch type is the task's own (registration: :class:`rlreg.tasks.registration.RegistrationBatch` or any
    object with the same fields). Random numbers come from ``generator`` (a CPU ``torch.Generator``) only, so a
    seeded generator gives the same items on any device.
    """

    def sample(self, count: int, generator: torch.Generator, device: torch.device | str = "cpu") -> BatchT_co:
        """``count`` new items built on ``device``."""
        ...


@runtime_checkable
class Task(Protocol):
    """What the agent core, the training loop and the rollout need from a task.

    Call order: :meth:`reset` once, then :meth:`observe` / :meth:`step` as often as wanted, :meth:`reset_done` to
    replace finished episodes. :meth:`auxiliary_loss` is called by the agent's update on *replayed* transitions and
    must not depend on the current episodes beyond fixed settings.
    """

    score_name: str
    """Name of :attr:`score` in logs and evaluation records (registration: ``"dice"``)."""

    def reset(self, batch: Any) -> Tensor:
        """Start ``B`` new episodes from a batch of the task's data source; returns the state ``(B, C, *S)``."""
        ...

    def reset_done(self, done: Tensor, batch: Any) -> Tensor:
        """Restart the episodes where ``done`` ``(B,)`` is true from the same rows of ``batch`` (a full batch of
        ``B`` items; other rows are ignored); the others continue untouched. Returns the state ``(B, C, *S)``."""
        ...

    def observe(self) -> Tensor:
        """Current state ``(B, C, *S)``."""
        ...

    def step(self, action: Tensor) -> StepResult:
        """Apply an action ``(B, A, *S)`` (the actor's output) to every episode and return the transition's outcome.

        The action is not part of the autograd graph of the environment; the task casts it to its own dtype.
        """
        ...

    @property
    def score(self) -> Tensor:
        """``(B,)`` the task's quality measure of the current episodes (higher is better)."""
        ...

    def metrics(self) -> dict[str, Tensor]:
        """Further ``(B,)`` measures of the current episodes that evaluations report next to :attr:`score`
        (registration: the paper's Dice of images binarised at 0, the folding percentage); may be empty."""
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

    def state_dict(self) -> dict[str, Any]:
        """The running episodes (tensors, numbers, ``None``: ``weights_only``-safe), for resumable training."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output: the episodes continue exactly where they were saved."""
        ...


@dataclass(frozen=True)
class TaskSpec:
    """A task as the registry knows it: ``task(config)`` builds an empty task; ``config()`` its default settings.

    ``config`` is a frozen dataclass saved inside every checkpoint (:class:`rlreg.sac.AgentConfig`), so an agent and
    its task rebuild from the file alone.
    """

    config: type[Any]
    """The task's config dataclass (every field has a default)."""
    task: type[Any]
    """The class implementing :class:`Task`, built as ``task(config)``."""


TASKS: dict[str, TaskSpec] = {}
"""Task name -> :class:`TaskSpec`. ``rlreg.tasks`` registers ``"registration"``; a new task adds its own entry
(see ``docs/architecture.md``, "Add a task in five steps")."""


def task_spec(name: str) -> TaskSpec:
    """The registered task called ``name``.

    Raises:
        ValueError: an unknown name; the message lists the registered ones.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; registered tasks: {', '.join(sorted(TASKS)) or 'none'}")
    return TASKS[name]
