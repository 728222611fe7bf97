"""Register one pair end to end: ``rlreg register fixed moving -o out/``.

The modules, by job:

* :mod:`~rlreg.pipelines.register.options`: which pair (:class:`RegisterOptions`) and how to register it
  (:class:`RegisterSettings`, frozen), with the tuned instance-optimisation defaults;
* :mod:`~rlreg.pipelines.register.results`: :class:`RegisterResult` and its typed QC, method and timing records;
* the stages: :mod:`~rlreg.pipelines.register.preparation` (read, normalise, affine),
  :mod:`~rlreg.pipelines.register.deformation` (agent or instance optimisation, on the device, batched) and
  :mod:`~rlreg.pipelines.register.finishing` (resample, measure, write; :func:`register` runs all three);
* :mod:`~rlreg.pipelines.register.outputs`: the output-folder contract (file names, conventions, writers, how runs
  share a folder);
* :mod:`~rlreg.pipelines.register.apply`: ``rlreg apply`` and ``rlreg invert``.
"""

from __future__ import annotations

from rlreg.pipelines.register.apply import apply_transform, invert_transform
from rlreg.pipelines.register.deformation import Deformable, deform, split_iterations
from rlreg.pipelines.register.finishing import finish, qc_similarity, quality_warnings, register, step_scores
from rlreg.pipelines.register.options import (
    DEFAULT_BENDING,
    DEFAULT_INSTANCE,
    DEFAULT_INSTANCE_2D,
    DEFAULT_SMOOTHNESS,
    DIFFEOMORPHIC_INSTANCE,
    DIFFEOMORPHIC_SMOOTHNESS,
    FORMATS,
    Progress,
    RegisterOptions,
    RegisterSettings,
    instance_settings,
)
from rlreg.pipelines.register.outputs import CONVENTIONS, ERROR_RECORD, SIDECAR, remove_temporary_files
from rlreg.pipelines.register.preparation import Prepared, label_overlap_warning, prepare
from rlreg.pipelines.register.results import MethodRecord, QualityRecord, RegisterResult, TimingRecord

__all__ = ["CONVENTIONS", "DEFAULT_BENDING", "DEFAULT_INSTANCE", "DEFAULT_INSTANCE_2D", "DEFAULT_SMOOTHNESS",
           "DIFFEOMORPHIC_INSTANCE", "DIFFEOMORPHIC_SMOOTHNESS", "ERROR_RECORD", "FORMATS", "SIDECAR", "Deformable",
           "MethodRecord", "Prepared", "Progress", "QualityRecord", "RegisterOptions", "RegisterResult",
           "RegisterSettings", "TimingRecord", "apply_transform", "deform", "finish", "instance_settings",
           "invert_transform", "label_overlap_warning", "prepare", "qc_similarity", "quality_warnings", "register",
           "remove_temporary_files", "split_iterations", "step_scores"]
