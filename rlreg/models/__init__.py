"""Models shipped inside the package (no downloads), with a card and a checksum verified at load.

``models.json`` beside this file maps each model's name to its card: its file, SHA-256, dimensionality, what it was
trained on, and the metrics measured when it was exported (``python -m benchmarks.export_model``, a maintainer's tool
in the repository, not installed). Card fields read here:

* ``file``, ``sha256``, ``ndim`` (2 or 3): required.
* ``default`` (bool): run this model when ``rlreg register`` is given no ``--model`` and the input has its ``ndim``;
  at most one default per ``ndim``.
* ``working_grid`` (voxels per tensor axis, e.g. ``[28, 28]``) *or* ``working_spacing_mm`` (isotropic mm): the grid
  the agent acts on; see :func:`working_grid`. Neither: the fixed image's own grid.
* ``recommended_steps``, ``parameters`` (a count, or network name -> count), ``metrics`` and ``headline_metric``
  (the name of the ``metrics`` entry that sums the model up; default: the first ``*_best``): shown by
  ``rlreg models``.

The name :data:`NO_MODEL` (``"none"``) is reserved: it asks for the classical instance optimisation instead.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # torch is imported by load() only, so listing the models (rlreg models) stays quick
    import torch

__all__ = ["MODELS_DIR", "NO_MODEL", "available", "card", "check_cards", "default_for", "headline_metric", "load",
           "model_path", "resolve", "summary", "verify", "working_grid"]

MODELS_DIR = Path(__file__).parent
REGISTRY = MODELS_DIR / "models.json"
NO_MODEL = "none"
"""The model name that asks for no agent: the classical instance optimisation (``rlreg register --model none``)."""


def available() -> dict[str, dict[str, Any]]:
    """Name -> model card of every shipped model.

    Raises:
        ValueError: an inconsistent registry (see :func:`check_cards`).
    """
    if not REGISTRY.exists():
        return {}
    cards = json.loads(REGISTRY.read_text())
    check_cards(cards)
    return cards


def check_cards(cards: dict[str, dict[str, Any]]) -> None:
    """Check what rlreg relies on: the reserved name is unused, at most one default per ``ndim``, one working grid.

    Raises:
        ValueError: naming the card and the problem.
    """
    if NO_MODEL in cards:
        raise ValueError(f"{REGISTRY}: a model may not be named {NO_MODEL!r} (it asks for no model)")
    defaults: dict[int, list[str]] = {}
    for name, item in cards.items():
        ndim = int(item["ndim"])
        if not isinstance(item.get("default", False), bool):
            raise ValueError(f"{REGISTRY}: model {name!r}: 'default' must be true or false, got {item['default']!r}")
        if item.get("default", False):
            defaults.setdefault(ndim, []).append(name)
        if "working_grid" in item and "working_spacing_mm" in item:
            raise ValueError(f"{REGISTRY}: model {name!r} gives both working_grid and working_spacing_mm; keep one")
        if "working_grid" in item and len(item["working_grid"]) != ndim:
            raise ValueError(f"{REGISTRY}: model {name!r}: working_grid {item['working_grid']} is not {ndim}-D")
        if "working_spacing_mm" in item and not float(item["working_spacing_mm"]) > 0:
            raise ValueError(f"{REGISTRY}: model {name!r}: working_spacing_mm must be > 0, got "
                             f"{item['working_spacing_mm']!r}")
    for ndim, names in sorted(defaults.items()):
        if len(names) > 1:
            raise ValueError(f"{REGISTRY}: {len(names)} models are the default for {ndim}-D inputs "
                             f"({', '.join(sorted(names))}); mark at most one with \"default\": true")


def card(name: str) -> dict[str, Any]:
    """The card of a shipped model.

    Raises:
        ValueError: unknown name; the message lists the shipped ones.
    """
    cards = available()
    if name not in cards:
        raise ValueError(f"no shipped model named {name!r}; available: {', '.join(sorted(cards)) or 'none'}")
    return cards[name]


def default_for(ndim: int) -> str | None:
    """Name of the model marked ``"default": true`` for ``ndim``-D inputs, or ``None`` when none ships."""
    return next((name for name, item in available().items() if item.get("default") and int(item["ndim"]) == ndim),
                None)


def resolve(name: str | None, ndim: int) -> str | None:
    """The model to run on an ``ndim``-D input when ``name`` is asked for: ``None`` means the default for ``ndim``,
    :data:`NO_MODEL` none; returns ``None`` for the instance optimisation (no agent). Names are not checked here."""
    if name is None:
        return default_for(ndim)
    return None if name == NO_MODEL else name


def working_grid(item: dict[str, Any], size: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[int, ...]:
    """The grid a model acts on for a fixed image of ``size`` voxels and ``spacing`` mm (both per tensor axis).

    ``working_grid`` in the card is taken as is; ``working_spacing_mm`` ``s`` resamples the fixed image's field of
    view to isotropic ``s`` mm: ``n_a = round((size_a - 1) * spacing_a / s) + 1``, never more than ``size_a`` (the
    grid is coarsened, never refined). Neither: the fixed grid itself.
    """
    if "working_grid" in item:
        return tuple(int(n) for n in item["working_grid"])
    if "working_spacing_mm" not in item:
        return tuple(size)
    extent = (np.asarray(size, dtype=np.float64) - 1) * np.asarray(spacing, dtype=np.float64)
    grid = np.minimum(np.asarray(size), np.round(extent / float(item["working_spacing_mm"])) + 1)
    return tuple(int(n) for n in grid)


def headline_metric(item: dict[str, Any]) -> tuple[str, float] | None:
    """The metric named by the card's ``headline_metric``; failing that, the first metric named ``*_best``."""
    metrics = item.get("metrics") or {}
    name = item.get("headline_metric") or next((k for k in metrics if k.endswith("_best")), None)
    return None if name is None or name not in metrics else (name, metrics[name])


def summary(name: str, check: bool = False) -> dict[str, Any]:
    """One model at a glance (``rlreg models``): the card's key facts, its file's path and size, and with ``check``
    the checksum status (:func:`verify`, reads the whole file)."""
    item = card(name)
    path = MODELS_DIR / item["file"]
    headline = headline_metric(item)
    parameters = item.get("parameters")  # a count, or a count per network
    row = {"name": name, "ndim": int(item["ndim"]), "default": bool(item.get("default", False)),
           "parameters": sum(parameters.values()) if isinstance(parameters, dict) else parameters,
           "working_grid": item.get("working_grid"), "working_spacing_mm": item.get("working_spacing_mm"),
           "recommended_steps": item.get("recommended_steps"),
           "headline_metric": None if headline is None else {"name": headline[0], "value": headline[1]},
           "path": str(path), "file_size_bytes": path.stat().st_size if path.is_file() else None}
    if check:
        row["checksum"] = verify(name)
    return row


def sha256(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files in sorted order (e.g. a DICOM series), as hex."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for item in files:
        with item.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def verify(name: str) -> Literal["ok", "missing", "mismatch"]:
    """Whether a shipped model's file is present and matches the SHA-256 of its card (reads the whole file)."""
    item = card(name)
    path = MODELS_DIR / item["file"]
    if not path.is_file():
        return "missing"
    return "ok" if sha256(path) == item["sha256"] else "mismatch"


def model_path(name: str) -> Path:
    """Path of a shipped model's file, after checking its checksum.

    Raises:
        ValueError: unknown name (the message lists the shipped ones) or a file whose checksum does not match.
    """
    path = MODELS_DIR / card(name)["file"]
    if verify(name) != "ok":
        raise ValueError(f"{path}: missing or its checksum does not match models.json; reinstall rlreg")
    return path


def load(name: str, device: torch.device | str = "cpu"):
    """Rebuild a shipped :class:`rlreg.sac.Agent` (planner, actor, critics; no optimiser state); every shipped
    model is a registration agent (format 1 checkpoints, which predate task names, are registration)."""
    from rlreg.sac import load_checkpoint

    agent, _ = load_checkpoint(model_path(name), device=device, task="registration")
    return agent.eval()
