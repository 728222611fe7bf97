"""Tasks the RL agent core solves: each implements the small :class:`Task` interface (observe, step, auxiliary loss,
extras). Registration is the first; the image-to-image translation tasks of RL-I2IT plug in beside it."""

from __future__ import annotations

from rlreg.tasks.base import StepResult, Task
from rlreg.tasks.registration import (
    REWARDS,
    RegistrationConfig,
    RegistrationTask,
    kmeans_labels,
)

__all__ = [
    "REWARDS",
    "RegistrationConfig",
    "RegistrationTask",
    "StepResult",
    "Task",
    "kmeans_labels",
]
