"""Export a trained checkpoint as a shipped model: optimiser state stripped, card and checksum in models.json.

A maintainer's tool (it writes ``rlreg/models/*.pt`` and ``rlreg/models/models.json``), run from the repository
root: ``python -m benchmarks.export_model runs/brain-3d/model.pt brain-3d --card card.json``.

``--recommend-steps N`` sets the card's ``recommended_steps`` to the step count with the best mean score on ``N``
items of the run's **training** data (never the held-out split), running up to the task's ``max_steps``.
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
    names the task, and for an image-to-image model its image (and source) channels and style painting, from the
    checkpoint."""
    data = torch.load(checkpoint, map_location="cpu", weights_only=True)
    keep = {k: data[k] for k in ("format_version", "config", "state_dicts", "updates")}
    # the target critics only continue training; loading starts them as copies of the critics
    keep["state_dicts"] = {k: v for k, v in keep["state_dicts"].items() if k != "critic_target"}
    target = directory / f"{name}.pt"
    save_torch(keep, target)  # byte-reproducible: exporting the same weights again keeps the checksum
    registry = directory / REGISTRY.name
    cards = json.loads(registry.read_text()) if registry.exists() else {}
    config = keep["config"]
    image = {key: config["task"][key] for key in ("channels", "source_channels", "style") if key in config["task"]}
    cards[name] = {"file": target.name, "sha256": sha256(target), "ndim": config["network"]["ndim"],
                   "task_name": config.get("task_name", "registration"), "max_steps": config["task"]["max_steps"],
                   **image, **card}
    with atomic_output(registry) as tmp:
        tmp.write_text(json.dumps(cards, indent=2) + "\n")
    return target


def steps_on_training_data(checkpoint: Path, items: int, seed: int = 0) -> tuple[int, list[float]]:
    """The step count ``0..max_steps`` with the highest mean task score on ``items`` training items of the run that
    wrote ``checkpoint`` (its ``train_config``), and the mean score per step."""
    from rlreg.config import from_dict
    from rlreg.data.registry import training_data
    from rlreg.pipelines.train import TrainConfig, evaluate
    from rlreg.sac import load_checkpoint

    agent, data = load_checkpoint(checkpoint, task=None)
    if "train_config" not in data:
        raise ValueError(f"{checkpoint}: holds no train_config (write it with rlreg train)")
    config = from_dict(TrainConfig, data["train_config"])
    train_source, _ = training_data(config.data)
    batch = train_source.sample(items, torch.Generator().manual_seed(seed), "cpu")
    result = evaluate(agent, batch, steps=int(agent.config.task.max_steps), chunk=16)
    return result.best[0], result.score_per_step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.export_model", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("name")
    parser.add_argument("--card", type=Path, help="JSON file with the model card (training data, metrics, ...)")
    parser.add_argument("--recommend-steps", type=int, default=0, metavar="N",
                        help="choose recommended_steps on N items of the run's training data")
    args = parser.parse_args(argv)
    card = json.loads(args.card.read_text()) if args.card else {}
    if args.recommend_steps:
        best, scores = steps_on_training_data(args.checkpoint, args.recommend_steps)
        card["recommended_steps"] = best
        card["training_score_per_step"] = [round(x, 3) for x in scores]
        print(f"recommended_steps {best}: training-data score per step {[round(x, 3) for x in scores]}")
    path = export_model(args.checkpoint, args.name, card)
    print(f"exported {path}; shipped models: {sorted(available())}")


if __name__ == "__main__":
    main()
