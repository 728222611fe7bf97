"""Export a trained checkpoint as a shipped model: optimiser state stripped, card and checksum in models.json.

A maintainer's tool (it writes ``rlreg/models/*.pt`` and ``rlreg/models/models.json``), run from the repository
root: ``python -m benchmarks.export_model runs/brain-3d/model.pt brain-3d --card card.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from rlreg.io import atomic_output, save_torch
from rlreg.models import MODELS_DIR, REGISTRY, available, sha256

__all__ = ["export_model"]


def export_model(checkpoint: Path, name: str, card: dict[str, Any], directory: Path = MODELS_DIR) -> Path:
    """Write ``<directory>/<name>.pt`` (weights, config, no optimisers) and its card into ``models.json``; the card
    names the task, and for an image-to-image model its image (and source) channels, from the checkpoint."""
    data = torch.load(checkpoint, map_location="cpu", weights_only=True)
    keep = {k: data[k] for k in ("format_version", "config", "state_dicts", "updates")}
    target = directory / f"{name}.pt"
    save_torch(keep, target)  # byte-reproducible: exporting the same weights again keeps the checksum
    registry = directory / REGISTRY.name
    cards = json.loads(registry.read_text()) if registry.exists() else {}
    config = keep["config"]
    image = {key: config["task"][key] for key in ("channels", "source_channels") if key in config["task"]}
    cards[name] = {"file": target.name, "sha256": sha256(target), "ndim": config["network"]["ndim"],
                   "task_name": config.get("task_name", "registration"), "max_steps": config["task"]["max_steps"],
                   **image, **card}
    with atomic_output(registry) as tmp:
        tmp.write_text(json.dumps(cards, indent=2) + "\n")
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.export_model", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("name")
    parser.add_argument("--card", type=Path, help="JSON file with the model card (training data, metrics, ...)")
    args = parser.parse_args(argv)
    card = json.loads(args.card.read_text()) if args.card else {}
    path = export_model(args.checkpoint, args.name, card)
    print(f"exported {path}; shipped models: {sorted(available())}")


if __name__ == "__main__":
    main()
