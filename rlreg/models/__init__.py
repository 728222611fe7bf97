"""Models shipped inside the package (no downloads), with a card and a checksum verified at load.

``models.json`` beside this file lists each model: its file, SHA-256, dimensionality, what it was trained on, and
the metrics measured when it was exported (``rlreg.pipelines.export_model``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["MODELS_DIR", "available", "load", "model_path"]

MODELS_DIR = Path(__file__).parent
REGISTRY = MODELS_DIR / "models.json"


def available() -> dict[str, dict[str, Any]]:
    """Name -> model card of every shipped model."""
    if not REGISTRY.exists():
        return {}
    return json.loads(REGISTRY.read_text())


def sha256(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files in sorted order (e.g. a DICOM series), as hex."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for item in files:
        with item.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def model_path(name: str) -> Path:
    """Path of a shipped model's file, after checking its checksum.

    Raises:
        ValueError: unknown name (the message lists the shipped ones) or a file whose checksum does not match.
    """
    cards = available()
    if name not in cards:
        raise ValueError(f"no shipped model named {name!r}; available: {', '.join(sorted(cards)) or 'none'}")
    path = MODELS_DIR / cards[name]["file"]
    if not path.exists() or sha256(path) != cards[name]["sha256"]:
        raise ValueError(f"{path}: missing or its checksum does not match models.json; reinstall rlreg")
    return path


def load(name: str, device: torch.device | str = "cpu"):
    """Rebuild a shipped :class:`rlreg.sac.Agent` (planner, actor, critics; no optimiser state)."""
    from rlreg.sac import load_checkpoint

    agent, _ = load_checkpoint(model_path(name), device=device)
    return agent.eval()
