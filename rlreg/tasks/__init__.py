"""Tasks the RL agent core solves: each implements the small :class:`Task` interface (reset, observe, step, score,
auxiliary loss, extras) and is registered by name in :data:`TASKS`. Registration is the first; the image-to-image
translation tasks of RL-I2IT plug in beside it (``docs/architecture.md``)."""

from __future__ import annotations

from rlreg.tasks.base import TASKS, DataSource, StepResult, Task, TaskSpec, task_spec
from rlreg.tasks.registration import (
    REWARDS,
    RegistrationBatch,
    RegistrationConfig,
    RegistrationTask,
    kmeans_labels,
)

TASKS.setdefault("registration", TaskSpec(RegistrationConfig, RegistrationTask))

__all__ = [
    "REWARDS",
    "TASKS",
    "DataSource",
    "RegistrationBatch",
    "RegistrationConfig",
    "RegistrationTask",
    "StepResult",
    "Task",
    "TaskSpec",
    "kmeans_labels",
    "task_spec",
]
