"""Tasks the RL agent core solves: each implements the small :class:`Task` interface (reset, observe, step, score,
auxiliary loss, extras) and is registered by name in :data:`TASKS`. Registration is the first; the image-to-image
translation tasks of RL-I2IT plug in beside it (``docs/architecture.md``)."""

from __future__ import annotations

from rlreg.tasks.base import TASKS, DataSource, StepResult, Task, TaskSpec, task_spec
from rlreg.tasks.image import ImageBatch, ImageTaskConfig, masked_psnr
from rlreg.tasks.inpainting import InpaintingConfig, InpaintingTask, pushpull_fill
from rlreg.tasks.registration import (
    REWARDS,
    RegistrationBatch,
    RegistrationConfig,
    RegistrationTask,
    kmeans_labels,
)
from rlreg.tasks.style import StyleConfig, StyleTask, StylizeResult, stylize
from rlreg.tasks.translation import TranslationConfig, TranslationTask
from rlreg.tasks.video_style import ClipBatch, VideoStyleConfig, VideoStyleTask

TASKS.setdefault("registration", TaskSpec(RegistrationConfig, RegistrationTask))
TASKS.setdefault("inpainting", TaskSpec(InpaintingConfig, InpaintingTask))
TASKS.setdefault("translation", TaskSpec(TranslationConfig, TranslationTask))
TASKS.setdefault("style", TaskSpec(StyleConfig, StyleTask))
TASKS.setdefault("video-style", TaskSpec(VideoStyleConfig, VideoStyleTask))

__all__ = [
    "REWARDS",
    "TASKS",
    "ClipBatch",
    "DataSource",
    "ImageBatch",
    "ImageTaskConfig",
    "InpaintingConfig",
    "InpaintingTask",
    "RegistrationBatch",
    "RegistrationConfig",
    "RegistrationTask",
    "StepResult",
    "StyleConfig",
    "StyleTask",
    "StylizeResult",
    "Task",
    "TaskSpec",
    "TranslationConfig",
    "TranslationTask",
    "VideoStyleConfig",
    "VideoStyleTask",
    "kmeans_labels",
    "masked_psnr",
    "pushpull_fill",
    "stylize",
    "task_spec",
]
