"""rlreg: step-wise deformable medical image registration with deep reinforcement learning (RL-I2IT / SPAC).

The library layer: spatial transforms (:mod:`rlreg.spatial`), losses (:mod:`rlreg.losses`) and metrics
(:mod:`rlreg.metrics`). Command-line and orchestration code live in :mod:`rlreg.cli` and :mod:`rlreg.pipelines`.
"""

from __future__ import annotations

__version__ = "0.1.0"
