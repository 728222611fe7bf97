"""Stage 3 of ``rlreg register``, on the device: the deformable registration of one or more prepared pairs.

A shipped RL agent (RL-I2IT, arXiv 2309.13672) run for T deterministic steps, optionally refined by instance
optimisation, or the instance optimisation alone (:func:`rlreg.instance.optimise_displacement`).
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rlreg import __version__, models
from rlreg.instance import InstanceConfig, level_factor, level_size, optimise_displacement
from rlreg.losses import lncc
from rlreg.pipelines.register.options import Progress
from rlreg.pipelines.register.preparation import Prepared
from rlreg.spatial import reorient, reorient_field_back, resize_displacement, warp

__all__ = ["Deformable", "deform", "split_iterations"]


@dataclass
class Deformable:
    """The deformable stage's result for one pair."""

    field: Tensor
    """(1, ndim, *W) voxel displacement on the working grid (CPU); with refinement, on the refinement grid."""
    history: list[Tensor]
    """Working-grid fields after each step (or snapshot), when asked for; the refined field last."""
    curve: list[dict[str, Any]]
    """Similarity (agent: LNCC) or loss (instance optimisation) after each step; refinement rows continue the step
    count and say ``"phase": "refine"``."""
    method: dict[str, Any]
    seconds: float
    """Device time of the batch this pair ran in, divided by the batch size."""


@functools.lru_cache(maxsize=4)
def _load_agent(name: str, checksum: str, device: str):
    """A shipped agent, loaded once per process, file and device (a batch calls :func:`deform` many times)."""
    return models.load(name, device=device)


def _run_agent(name: str, fixed: Tensor, moving: Tensor, steps: int | None, keep: bool,
               say: Progress, orientation: tuple[tuple[int, ...], tuple[bool, ...]] | None = None) -> list[Deformable]:
    """Run a shipped agent ``steps`` steps on ``(B, 1, *W)`` working images (reoriented to the agent's training
    orientation and back when ``orientation`` is given)."""
    from rlreg.networks import count_parameters
    from rlreg.rollout import rollout
    from rlreg.tasks.registration import RegistrationBatch, RegistrationTask

    card = models.card(name)
    agent = _load_agent(name, card["sha256"], str(fixed.device))
    steps = steps if steps is not None else int(card.get("recommended_steps", agent.config.task.max_steps))
    task = RegistrationTask(replace(agent.config.task, reward="lncc", max_steps=steps + 1))
    if orientation is not None:
        fixed, moving = reorient(fixed, *orientation), reorient(moving, *orientation)
    task.reset(RegistrationBatch(fixed, moving))
    batch = fixed.shape[0]
    history: list[Tensor] = []
    scores = [lncc(fixed, moving, window=9, reduction="batch").cpu()]

    def on_step(t: int, _result: object) -> None:
        scores.append(lncc(fixed, task.warped, window=9, reduction="batch").cpu())
        if keep:
            history.append(_back(task.field, orientation).cpu())
        say("deformable", t, steps)

    rollout(agent, task, steps, on_step)
    method = {"deformable": "rl-agent", "model": name, "model_version": card.get("version", __version__),
              "model_sha256": card["sha256"], "parameters": count_parameters(agent.planner) + count_parameters(
                  agent.actor), "steps": steps, "working_grid": list(fixed.shape[2:]), "card": card}
    method["orientation"] = None if orientation is None else {"perm": list(orientation[0]),
                                                               "flips": list(orientation[1])}
    field = _back(task.field, orientation).cpu()
    return [Deformable(field[b:b + 1], [h[b:b + 1] for h in history],
                       [{"step": t, "lncc": float(s[b])} for t, s in enumerate(scores)], dict(method), 0.0)
            for b in range(batch)]


def _back(field: Tensor, orientation: tuple[tuple[int, ...], tuple[bool, ...]] | None) -> Tensor:
    return field.clone() if orientation is None else reorient_field_back(field, *orientation)


def _refine(results: list[Deformable], working: tuple[Tensor, Tensor], refine: tuple[Tensor, Tensor],
            mask: Tensor | None, config: InstanceConfig, keep: bool, say: Progress) -> None:
    """Continue the agents' fields by instance optimisation (one pyramid level) on the refinement grid, in place.

    Args:
        results: the agent's results; each field is resized onto the refinement grid ``R`` (vectors rescaled),
            optimised, and replaced (``(1, ndim, *R)``).
        working: ``(B, 1, *W)`` fixed and moving images on the agent's grid: the curve continues there (LNCC,
            window 9, every few iterations), so its refinement rows compare with the agent's steps.
        refine: ``(B, 1, *R)`` fixed and moving images the refinement fits; ``method["refine"]`` records the LNCC
            (window 9) on this grid before and after.
        mask: optional ``(B, 1, *R)`` similarity weights.
    """
    fixed, moving = refine
    start = resize_displacement(torch.cat([r.field for r in results]).to(fixed.device), fixed.shape[2:])
    total = sum(config.iterations)
    record_every = -(-total // 40)  # at most 40 rows
    curve: list[tuple[int, Tensor]] = []
    # before any crop to the foreground
    optimised_grid = list(level_size(fixed.shape[2:], level_factor(config.levels[0], fixed.shape[2:])))

    def score(images: tuple[Tensor, Tensor], field: Tensor) -> Tensor:
        with torch.no_grad():
            return lncc(images[0], warp(images[1], resize_displacement(field, images[0].shape[2:])), window=9,
                        reduction="batch").cpu()

    def on_field(_level: int, iteration: int, current: Tensor) -> None:
        say("refine", iteration + 1, total)
        if (iteration + 1) % record_every == 0 or iteration + 1 == total:
            curve.append((iteration + 1, score(working, current)))

    before = score(refine, start)
    refined = optimise_displacement(fixed, moving, config, initial=start, field_callback=on_field, mask=mask)
    after = score(refine, refined)
    refined = refined.cpu()
    for b, result in enumerate(results):
        steps = result.curve[-1]["step"]
        result.curve += [{"step": steps + done, "lncc": float(values[b]), "phase": "refine"} for done, values in curve]
        result.field = refined[b:b + 1]
        if keep:
            result.history.append(result.field.clone())
        result.method["refine"] = {
            "iterations": total, "factor": config.levels[0], "working_grid": list(fixed.shape[2:]),
            "optimised_grid": list(optimised_grid), "lncc_before": float(before[b]), "lncc_after": float(after[b]),
            "config": asdict(config)}


def split_iterations(config: InstanceConfig, steps: int) -> InstanceConfig:
    """``config`` running exactly ``steps`` (>= 1) iterations in all: split across its pyramid levels in its own
    proportions (largest remainders, at least one per level); with fewer iterations than levels, only the finest
    ``steps`` levels run, one iteration each."""
    levels, weights = config.levels, np.asarray(config.iterations, dtype=np.float64)
    if steps < len(levels):
        return replace(config, levels=levels[-steps:], iterations=(1,) * steps)
    share = steps * weights / weights.sum()
    iterations = np.maximum(1, np.floor(share)).astype(int)
    while iterations.sum() > steps:  # the minimum of one per level overshot: take from the largest
        iterations[int(np.argmax(iterations))] -= 1
    for index in np.argsort(-(share - iterations), kind="stable")[: steps - int(iterations.sum())]:
        iterations[index] += 1
    return replace(config, iterations=tuple(int(n) for n in iterations))


def _run_instance(fixed: Tensor, moving: Tensor, config: InstanceConfig, steps: int | None, keep: bool,
                  say: Progress, mask: Tensor | None = None) -> list[Deformable]:
    if steps is not None:
        config = split_iterations(config, steps)
    total = sum(config.iterations)
    offsets = np.cumsum((0, *config.iterations))
    marks = set(np.linspace(0, total, 11).round().astype(int)[1:].tolist()) if keep else set()
    history: list[Tensor] = []
    curve: list[tuple[int, Tensor]] = []
    record_every = max(1, total // 40)

    def on_step(level: int, iteration: int, losses: Tensor) -> None:
        done = int(offsets[level]) + iteration + 1
        say("deformable", done, total)
        if done % record_every == 0 or done == total:
            curve.append((done, losses))

    def on_field(level: int, iteration: int, current: Tensor) -> None:
        if int(offsets[level]) + iteration + 1 in marks:
            history.append(resize_displacement(current, fixed.shape[2:]).cpu())

    disp = optimise_displacement(fixed, moving, config, callback=on_step, field_callback=on_field if keep else None,
                                 mask=mask).cpu()
    method = {"deformable": "instance-optimisation", "model": None, "steps": total, "config": asdict(config),
              "working_grid": list(fixed.shape[2:])}
    return [Deformable(disp[b:b + 1], [h[b:b + 1] for h in history],
                       [{"step": step, "loss": float(losses[b])} for step, losses in curve], method, 0.0)
            for b in range(fixed.shape[0])]


def deform(batch: list[Prepared], device: torch.device | str = "cpu", *,
           progress: Progress | None = None) -> list[Deformable]:
    """Stage 3, on ``device``: the deformable registration of one or more pairs sharing a :attr:`~Prepared.batch_key`.

    The pairs run as one device batch; each gets the field it would get alone (the agent acts per sample; the
    instance optimisation sums per-pair losses, see :func:`rlreg.instance.optimise_displacement`).
    """
    say = progress or (lambda *_: None)
    if not batch:
        return []
    if len({p.batch_key for p in batch}) != 1:
        raise ValueError("deform: the pairs of one batch must share their batch_key (method, steps, grids, refinement)")
    device = torch.device(device)

    def elapsed_since(start: float) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    def stacked(tensors: list[Tensor | None]) -> Tensor | None:
        return None if tensors[0] is None else torch.cat(tensors).to(device)  # type: ignore[arg-type]

    t0 = time.perf_counter()
    first = batch[0].options.settings
    if first.affine_only:
        method = {"deformable": "none", "model": None, "steps": 0}
        return [Deformable(torch.zeros(1, p.fixed.ndim, *p.working_fixed.shape[2:]), [], [], dict(method), 0.0)
                for p in batch]
    fixed = torch.cat([p.working_fixed for p in batch]).to(device)
    moving = torch.cat([p.working_moving for p in batch]).to(device)
    if batch[0].model is None:
        results = _run_instance(fixed, moving, batch[0].instance, first.steps, first.save_steps, say,
                                stacked([p.working_mask for p in batch]))
        seconds = elapsed_since(t0)
    else:
        results = _run_agent(batch[0].model, fixed, moving, first.steps, first.save_steps, say, batch[0].orientation)
        split = {"agent": elapsed_since(t0) / len(batch)}
        if first.refine:  # the batch key guarantees every pair has its refinement-grid images
            t1 = time.perf_counter()
            config = replace(batch[0].instance, levels=(first.refine_factor,), iterations=(first.refine,))
            fitted = [p.fitted_images for p in batch]
            refine_images = (torch.cat([f for f, _ in fitted]).to(device), torch.cat([m for _, m in fitted]).to(device))
            _refine(results, (fixed, moving), refine_images, stacked([p.refine_mask for p in batch]), config,
                    first.save_steps, say)
            split["refine"] = elapsed_since(t1) / len(batch)
        seconds = elapsed_since(t0)
        for result in results:
            result.method["seconds"] = dict(split)
    for result in results:
        result.seconds = seconds / len(batch)
    return results
