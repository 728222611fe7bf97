"""Training: vectorised environment, replay, soft actor-critic updates, evaluation, checkpoints, exact resume.

``rlreg train CONFIG.yaml [key=value ...]`` calls :func:`train`. The config is a :class:`TrainConfig` (nested
dataclasses; YAML keys mirror the field names, e.g. ``loop.total_steps=2000`` or ``agent.sac.aux_updates=actor``).
The task is the recipe's ``agent.task_name`` (default ``registration``), built through :data:`rlreg.tasks.TASKS`;
its data come from :data:`rlreg.data.registry.DATASETS` by ``data.dataset``. The loop sees the task only through the
:class:`~rlreg.tasks.base.Task` protocol, and its evaluations report the task's own score and metrics.

Resumable: every ``checkpoint_every`` steps ``state.pt`` holds the agent (weights, optimisers), the replay buffer,
the environment's pairs and fields, every random generator and the step counter (and, for a planner with memory,
each environment's carried memory), written atomically. ``--resume`` continues from it and, on CPU, reproduces the
uninterrupted run exactly.

A planner with memory (``network.memory="gru"``) acts each environment with the memory of its previous step, zeroed
where an episode starts; every stored transition keeps the memory before and after its step, which the update
uses (:mod:`rlreg.buffer`, :meth:`rlreg.sac.Agent.update`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rlreg.buffer import ReplayBuffer, Transition
from rlreg.config import from_dict
from rlreg.data.registry import DataConfig, training_data
from rlreg.io import atomic_output, save_torch
from rlreg.pipelines.qc_figures import save_training_curve
from rlreg.rollout import rollout
from rlreg.sac import Agent, AgentConfig, broadcast_parameters, load_checkpoint
from rlreg.tasks import StepResult, Task, task_spec

__all__ = ["EvalResult", "LoopConfig", "TrainConfig", "TrainSummary", "evaluate", "load_config", "train"]


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
    """Run folder: checkpoints (``model.pt`` from the latest evaluation, ``best.pt`` from the one with the highest
    held-out Dice), TensorBoard logs, metrics.jsonl and its picture curve.png."""
    amp: str = "auto"
    """Mixed precision: ``auto`` (bfloat16 autocast on CUDA, off on CPU), ``bf16`` (also on CPU) or ``off``."""
    eval_chunk: int = 250
    """Evaluation pairs run together (lower it for 3-D)."""
    init_from: str | None = None
    """Fine-tune: start from this checkpoint's or shipped model's weights (planner, actor, critics, temperature)
    instead of random ones; its agent config must equal the run's. The optimisers, replay buffer and step counter
    start afresh. Ignored when ``--resume`` finds a state file (that run already started from it)."""


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
    """Deterministic-policy evaluation on held-out items: the task's score and metrics after 0, 1, ..., T steps."""

    score_per_step: list[float]
    """Mean of the task's score (:attr:`Task.score`; registration: Dice of the segmentations) per step."""
    metrics_per_step: dict[str, list[float]]
    """Mean of each of the task's metrics (:meth:`Task.metrics`) per step."""
    score_name: str = "score"
    """The task's name for its score (:attr:`Task.score_name`), which prefixes the record's keys."""

    @property
    def best(self) -> tuple[int, float]:
        """The step with the highest mean score, and that score."""
        step = max(range(len(self.score_per_step)), key=self.score_per_step.__getitem__)
        return step, self.score_per_step[step]

    def record(self, step: int) -> dict[str, Any]:
        """One ``metrics.jsonl`` row: ``{name}_final``, ``{name}_best``, ``best_step``, ``{name}0`` and each
        metric after the last step (registration: ``dice_final``, ..., ``dice_any``, ``folding_percent``)."""
        name = self.score_name
        best_step, best = self.best
        metrics = {key: values[-1] for key, values in self.metrics_per_step.items()}
        return {"step": step, f"{name}_final": self.score_per_step[-1], f"{name}_best": best, "best_step": best_step,
                f"{name}0": self.score_per_step[0], **metrics}


@torch.no_grad()
def evaluate(agent: Agent, batch: Any, *, steps: int, chunk: int = 250) -> EvalResult:
    """Run the deterministic policy ``steps`` steps on held-out items and record the task's score after each step.

    Args:
        agent: the agent; its config names the task, built afresh from :data:`rlreg.tasks.TASKS` per chunk.
        batch: the items, a ``NamedTuple`` of ``(N, ...)`` tensors (or ``None`` fields) as the task's data source
            samples them (registration: fixed, moving, fixed_seg, moving_seg).
        steps: ``T``, steps per episode.
        chunk: items run together.
    """
    spec = task_spec(agent.config.task_name)
    total = next(x for x in batch if x is not None).shape[0]
    per_step = torch.zeros(steps + 1, dtype=torch.float64)
    metrics: dict[str, Tensor] = {}
    name = "score"
    for start in range(0, total, chunk):
        part = type(batch)(*(None if x is None else x[start:start + chunk] for x in batch))
        task: Task = spec.task(agent.config.task)
        task.reset(part)
        name = task.score_name

        def record(t: int, _result: StepResult | None = None, task: Task = task) -> None:
            per_step[t] += task.score.double().sum()
            for key, value in task.metrics().items():
                metrics.setdefault(key, torch.zeros(steps + 1, dtype=torch.float64))[t] += value.double().sum()

        record(0)
        rollout(agent, task, steps, on_step=record)
    return EvalResult((per_step / total).tolist(), {key: (value / total).tolist() for key, value in metrics.items()},
                      name)


# ---------------------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainSummary:
    """What :func:`train` returns."""

    history: list[dict[str, Any]]
    """The evaluations' ``metrics.jsonl`` records (:meth:`EvalResult.record`), oldest first."""
    parameters: dict[str, int]
    """Parameters per network (:meth:`rlreg.sac.Agent.parameter_counts`)."""
    seconds: float
    """Wall time of this call's loop."""
    env_steps_per_s: float | None
    """Environment transitions (steps x ``num_envs``) per second of acting, ``None`` if none ran."""
    updates_per_s: float | None
    """Gradient updates per second of updating, ``None`` if none ran."""
    model: str
    """Path of the latest evaluated model (``model.pt``)."""
    state: str
    """Path of this rank's resumable state file."""
    world_size: int
    """Processes of a data-parallel run (1 alone)."""
    rank: int
    """This process's rank."""

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for JSON."""
        return asdict(self)


def train(config: TrainConfig, resume: bool = False,
          *, progress: Callable[[int, int, dict[str, float]], None] | None = None) -> TrainSummary:
    """Train an agent on the recipe's task; returns a :class:`TrainSummary` (evaluations, throughput, parameter
    counts, paths).

    Args:
        config: the run's configuration (saved inside every checkpoint).
        resume: continue from ``<output>/state.pt`` if it exists.
        progress: called as ``progress(step, total, metrics)`` after every environment step.
    """
    loop = config.loop
    rank, world, device = _distributed_setup(loop.device)
    lead = rank == 0  # only rank 0 evaluates, logs and writes the model; every rank keeps its own state file
    out = Path(loop.output)
    train_pairs, eval_pairs = training_data(config.data)  # an unknown dataset fails before anything is written
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / ("state.pt" if world == 1 else f"state.rank{rank}.pt")
    eval_batch = eval_pairs.sample(loop.eval_pairs, torch.Generator().manual_seed(loop.seed + 1), device)

    torch.manual_seed(loop.seed)
    # every rank draws its own pairs, buffer samples and exploration noise; weights start equal (same seed, then
    # a broadcast from rank 0) and stay equal (gradients are averaged before every optimiser step)
    data_gen = torch.Generator().manual_seed(loop.seed + 2 + 1000 * rank)
    sample_gen = torch.Generator().manual_seed(loop.seed + 3 + 1000 * rank)
    agent = Agent(config.agent).to(device)
    if loop.init_from is not None and not (resume and state_path.exists()):
        _load_weights(agent, Path(loop.init_from), config.agent)
    broadcast_parameters(agent)
    torch.manual_seed(loop.seed + 1000 * rank)
    autocast = _autocast(loop.amp, device)
    buffer = ReplayBuffer(loop.buffer_capacity, device)
    task: Task = task_spec(config.agent.task_name).task(config.agent.task)
    state = task.reset(train_pairs.sample(loop.num_envs, data_gen, device))
    start_step, history = 0, []
    memory: Tensor | None = None  # (num_envs, *M) each environment's planner memory; None: zero (fresh episodes)
    if resume and state_path.exists():
        saved = torch.load(state_path, map_location=device, weights_only=True)
        saved_task = saved["agent"]["config"].get("task_name", "registration")
        if saved_task != config.agent.task_name:
            raise ValueError(f"{state_path}: holds a {saved_task!r} run, not a {config.agent.task_name!r} one; resume "
                             "with the recipe it was started with, or choose a new loop.output")
        if AgentConfig.from_dict(saved["agent"]["config"]) != config.agent:
            raise ValueError(f"{state_path}: was trained with another agent config; resume with the same recipe and "
                             "overrides, or choose a new loop.output")
        stored = saved["buffer"]["storage"]
        if config.agent.network.memory != "none" and saved["buffer"]["size"] and "memory" not in stored:
            raise ValueError(f"{state_path}: its replay buffer holds no planner memories (written before training "
                             "stored them); start the run afresh in a new loop.output")
        agent.load_checkpoint_dict(saved["agent"], restore_rng=True)
        buffer.load_state_dict(saved["buffer"])
        task.load_state_dict(saved["task"])
        state = task.observe()
        data_gen.set_state(saved["generators"]["data"].cpu())
        sample_gen.set_state(saved["generators"]["sample"].cpu())
        start_step, history = int(saved["step"]), list(saved["history"])
        memory = saved.get("memory")
        # evaluations logged after the last checkpoint are redone: keep metrics.jsonl in step with the state
        if lead:
            with atomic_output(out / "metrics.jsonl") as tmp:
                tmp.write_text("".join(json.dumps(record) + "\n" for record in history))
    if lead:
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))

    writer = None
    if lead:
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
        with autocast():
            decision = agent.act(state, deterministic=config.agent.sac.rl_weight == 0, memory=memory)
        result = task.step(decision.action.float())
        memory_before = memory
        if decision.memory is not None and memory_before is None:  # a None memory acts as zeros (ConvGRU)
            memory_before = torch.zeros_like(decision.memory)
        keep = result.score > loop.min_store_score
        if bool(keep.any()):
            buffer.add(Transition(state[keep], decision.plan[keep], result.reward[keep], result.state[keep],
                                  result.terminated[keep], None if extras_before is None else extras_before[keep],
                                  None if memory_before is None else memory_before[keep],
                                  None if decision.memory is None else decision.memory[keep]))
        done = result.terminated | result.truncated
        state = result.state
        memory = decision.memory
        if bool(done.any()):
            state = task.reset_done(done, train_pairs.sample(loop.num_envs, data_gen, device))
            if memory is not None:  # restarted episodes start from a zero memory
                memory = memory.masked_fill(done.view(-1, *[1] * (memory.ndim - 1)), 0.0)
        extras_before = task.extras()
        env_time += time.perf_counter() - t0
        metrics.update({"reward": float(result.reward.mean()), task.score_name: float(result.score.mean())})

        if step >= loop.warmup_steps and step % loop.update_every == 0 and len(buffer) >= loop.batch_size:
            t0 = time.perf_counter()
            for _ in range(loop.updates_per_round):
                with autocast():
                    metrics.update(agent.update(buffer.sample(loop.batch_size, sample_gen), task))
                updates_done += 1
            update_time += time.perf_counter() - t0
        if writer is not None and step % 10 == 0:
            for key, value in metrics.items():
                writer.add_scalar(f"train/{key}", value, step)
        done_steps = step + 1
        out_of_time = _agree(loop.max_seconds is not None and time.perf_counter() - started >= loop.max_seconds,
                             world, device)
        last = done_steps == loop.total_steps or out_of_time
        if lead and (done_steps % loop.eval_every == 0 or last):
            with autocast():
                result_eval = evaluate(agent, eval_batch, steps=loop.eval_steps, chunk=loop.eval_chunk)
            name = result_eval.score_name
            best = result_eval.best[1]
            record = result_eval.record(done_steps)
            history.append(record)
            metrics[f"eval_{name}"] = result_eval.score_per_step[-1]
            if writer is not None:
                for key, value in record.items():
                    writer.add_scalar(f"eval/{key}", value, done_steps)
            with (out / "metrics.jsonl").open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            save_training_curve(out / "curve.png", history, name=name)
            agent.save(out / "model.pt", train_config=config.to_dict(), eval=asdict(result_eval))
            if best >= max(r[f"{name}_best"] for r in history):  # SAC's evaluations are noisy: keep the best one too
                agent.save(out / "best.pt", train_config=config.to_dict(), eval=asdict(result_eval), step=done_steps)
        if done_steps % loop.checkpoint_every == 0 or last:
            # the agent's checkpoint carries the global torch (and CUDA) RNG used for exploration
            save_torch({"agent": agent.checkpoint(), "buffer": buffer.state_dict(), "task": task.state_dict(),
                        "generators": {"data": data_gen.get_state(), "sample": sample_gen.get_state()},
                        "step": done_steps, "history": history,
                        **({} if memory is None else {"memory": memory})}, state_path)
        if progress is not None:
            progress(done_steps, loop.total_steps, metrics)
        if out_of_time:
            break
    if writer is not None:
        writer.close()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    elapsed = time.perf_counter() - started
    steps_run = done_steps - start_step
    return TrainSummary(history, agent.parameter_counts(), elapsed,
                        steps_run * loop.num_envs / env_time if env_time else None,
                        updates_done / update_time if update_time else None,
                        str(out / "model.pt"), str(state_path), world, rank)


def _load_weights(agent: Agent, path: Path, config: AgentConfig) -> None:
    """Copy the weights (not the optimiser states) of the checkpoint or shipped model at ``path`` into ``agent``."""
    # a clear one-line ValueError for an unreadable or newer file, or one of another task
    source, data = load_checkpoint(path, task=config.task_name)
    if source.config != config:
        raise ValueError(f"{path}: was trained with another agent config; fine-tune it with the recipe it was trained "
                         "with (its config is inside the file)")
    agent.load_checkpoint_dict({"state_dicts": data["state_dicts"]})


def _distributed_setup(name: str) -> tuple[int, int, torch.device]:
    """Rank, world size and device. Under ``torchrun`` (``WORLD_SIZE`` > 1) join the process group: NCCL with one
    GPU per local rank on CUDA, gloo on CPU."""
    from rlreg.pipelines.device import resolve_device

    device = resolve_device(name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def _agree(flag: bool, world: int, device: torch.device) -> bool:
    """True on every rank as soon as it is true on one (e.g. the wall-time budget), so all ranks stop together."""
    if world == 1:
        return flag
    import torch.distributed as dist

    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def _autocast(mode: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """Context factory for mixed precision: bfloat16 autocast on CUDA (``auto``/``bf16``) or CPU (``bf16``).

    bfloat16 keeps float32's exponent range, so no loss scaling is needed; the spatial transforms
    (``grid_sample``) run in float32 under autocast.
    """
    if mode not in ("auto", "bf16", "off"):
        raise ValueError(f"loop.amp must be auto, bf16 or off, got {mode!r}")
    enabled = mode == "bf16" or (mode == "auto" and device.type == "cuda")
    return functools.partial(torch.autocast, device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext


def main(argv: list[str] | None = None) -> int:
    """``python -m rlreg.pipelines.train RECIPE [key=value ...] [--resume]``: the entry point ``torchrun`` launches.

    ``torchrun --nproc_per_node 2 -m rlreg.pipelines.train pipelines/recipes/brain-3d.yaml`` trains data-parallel
    (one process per GPU, NCCL; or gloo processes on CPU). Prints rank 0's summary as JSON.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rlreg.pipelines.train", description=main.__doc__)
    parser.add_argument("config", type=Path, help="YAML recipe")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's state file(s)")
    args = parser.parse_args(argv)
    summary = train(load_config(args.config, args.overrides), resume=args.resume)
    if summary.rank == 0:
        values = summary.to_dict()
        print(json.dumps({k: v for k, v in values.items() if k != "history"} | {"last": summary.history[-1:]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
