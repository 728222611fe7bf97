"""Resolve the compute device once, at the edge (CLI and pipelines); library code follows its tensors."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device, checked to exist.

    Raises:
        ValueError: a name torch does not know (``gpu``), a device rlreg is not tested on (``mps``, ``xpu``), or
            a CUDA device that is absent; the one-line message says what to give instead.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: unknown device; use --device auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: rlreg runs on the CPU or on CUDA GPUs; use --device auto, cpu, cuda or "
                         "cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered "
                         "from 0; use --device cuda or cuda:0")
    return device
