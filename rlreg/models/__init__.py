"""Models shipped inside the package (no downloads), with a card and a checksum verified at load.

``models.json`` beside this file maps each model's name to its card: its file, SHA-256, dimensionality, what it was
trained on, and the metrics measured when it was exported (``python -m benchmarks.export_model``, a maintainer's tool
in the repository, not installed). Card fields read here:

* ``file``, ``sha256``, ``ndim`` (2 or 3): required.
* ``task_name``: the task in :data:`rlreg.tasks.TASKS` the agent was trained on (``"registration"`` when absent):
  ``rlreg register`` runs registration models only, ``rlreg inpaint`` inpainting and ``rlreg translate`` translation
  models.
* ``default`` (bool): run this model when its command is given no ``--model`` and the input has its ``ndim`` (and,
  for an image-to-image model, its ``channels``); at most one default per task, ``ndim`` and ``channels``.
* ``channels`` (image-to-image models): channels of the images the model produces (1: grey / MRI, 3: RGB);
  ``source`` (translation models): the map it reads, ``"edges"``, ``"superpixels"``, ``"labels"`` (integer label
  maps, coloured by ``rlreg.data.maps.label_colour_map``) or ``"tissue"``; ``style`` (style-transfer models, tasks
  ``style`` and ``video-style``): the painting it paints in (``rlreg stylize --style NAME`` picks the model by it).
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

__all__ = ["MODELS_DIR", "NO_MODEL", "TASK_WORDS", "available", "card", "check_cards", "default_for", "for_task",
           "headline_metric", "load", "model_path", "resolve", "summary", "task_of", "verify", "working_grid"]

MODELS_DIR = Path(__file__).parent
REGISTRY = MODELS_DIR / "models.json"
NO_MODEL = "none"
"""The model name that asks for no agent: the classical instance optimisation (``rlreg register --model none``)."""
REGISTRATION = "registration"
TASK_WORDS = {"registration": ("a registration", "rlreg register"), "inpainting": ("an inpainting", "rlreg inpaint"),
              "translation": ("a translation", "rlreg translate"), "style": ("a style-transfer", "rlreg stylize"),
              "video-style": ("a video style-transfer", "rlreg stylize")}
"""Task name -> (how messages name a model of that task, the command that runs it)."""


def task_of(item: dict[str, Any]) -> str:
    """The task a card's model was trained on: its ``task_name``, ``"registration"`` when absent."""
    return str(item.get("task_name", REGISTRATION))


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
    defaults: dict[tuple[str, int, Any], list[str]] = {}
    for name, item in cards.items():
        ndim = int(item["ndim"])
        if not isinstance(item.get("default", False), bool):
            raise ValueError(f"{REGISTRY}: model {name!r}: 'default' must be true or false, got {item['default']!r}")
        if item.get("default", False):
            defaults.setdefault((task_of(item), ndim, item.get("channels")), []).append(name)
        if "working_grid" in item and "working_spacing_mm" in item:
            raise ValueError(f"{REGISTRY}: model {name!r} gives both working_grid and working_spacing_mm; keep one")
        if "working_grid" in item and len(item["working_grid"]) != ndim:
            raise ValueError(f"{REGISTRY}: model {name!r}: working_grid {item['working_grid']} is not {ndim}-D")
        if "working_spacing_mm" in item and not float(item["working_spacing_mm"]) > 0:
            raise ValueError(f"{REGISTRY}: model {name!r}: working_spacing_mm must be > 0, got "
                             f"{item['working_spacing_mm']!r}")
    for (task, ndim, channels), names in sorted(defaults.items(), key=str):
        if len(names) > 1:
            what = ("" if channels is None else f"{channels}-channel ") + f"{ndim}-D inputs"
            what += "" if task == REGISTRATION else f" of the {task} task"
            raise ValueError(f"{REGISTRY}: {len(names)} models are the default for {what} "
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


def for_task(task: str) -> dict[str, dict[str, Any]]:
    """Name -> card of the shipped models trained on ``task`` (a name in :data:`rlreg.tasks.TASKS`)."""
    return {name: item for name, item in available().items() if task_of(item) == task}


def default_for(ndim: int) -> str | None:
    """Name of the registration model marked ``"default": true`` for ``ndim``-D inputs (what ``rlreg register``
    runs without ``--model``), or ``None`` when none ships."""
    return next((name for name, item in for_task(REGISTRATION).items()
                 if item.get("default") and int(item["ndim"]) == ndim), None)


def resolve(name: str | None, ndim: int) -> str | None:
    """The registration model to run on an ``ndim``-D input when ``name`` is asked for: ``None`` means the default
    for ``ndim``, :data:`NO_MODEL` none; returns ``None`` for the instance optimisation (no agent). Unknown names are
    not checked here.

    Raises:
        ValueError: ``name`` is a shipped model of another task (e.g. an inpainting model); the one-line message
            says which command runs it and which models register.
    """
    if name is None:
        return default_for(ndim)
    if name == NO_MODEL:
        return None
    item = available().get(name)
    if item is not None and task_of(item) != REGISTRATION:
        task = task_of(item)
        article, command = TASK_WORDS.get(task, (f"a {task}", "its own command"))
        registering = ", ".join(sorted(for_task(REGISTRATION))) or "none ships"
        raise ValueError(f"--model {name}: is {article} model (run it with {command}), not a registration model; "
                         f"give a registration model ({registering}) or --model none")
    return name


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
    row = {"name": name, "task": task_of(item), "ndim": int(item["ndim"]), "channels": item.get("channels"),
           "default": bool(item.get("default", False)), "style": item.get("style"),
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
    """Rebuild a shipped :class:`rlreg.sac.Agent` (planner, actor, critics; no optimiser state) for the task its
    card names (format 1 checkpoints, which predate task names, are registration).

    Raises:
        ValueError: unknown name, a checksum mismatch, or a file whose task differs from its card's.
    """
    from rlreg.sac import load_checkpoint

    agent, _ = load_checkpoint(model_path(name), device=device, task=task_of(card(name)))
    return agent.eval()
