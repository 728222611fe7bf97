"""The RL-I2IT / SPAC agent: a stochastic planner, a deterministic actor and twin critics, trained by soft
actor-critic on the *plan* (meta-action) space plus a task auxiliary loss.

The whole update is :meth:`Agent.update`, in the order of the paper (RL-I2IT Alg. 1; SPAC Sec. 3):

1. critic target ``y = r + γ (1 - terminated) (min Q'(s', p') - α log π(p'|s'))`` under ``no_grad``;
2. twin-Q loss ``(Q1(s, p) - y)² + (Q2(s, p) - y)²``;
3. planner loss ``α log π(p|s) - min Q(s, p) + β KL(π(·|s) || N(0, I))`` with a reparameterised plan;
4. temperature loss ``-log α (log π + H_target)`` (automatic entropy tuning);
5. auxiliary loss of the task (registration: local NCC + smoothness (+ Dice)) on the actor's action, updating the
   actor only (official code) or the actor and the planner (paper): ``SACConfig.aux_updates``;
6. Polyak averaging of the target critics.

Truncation (step cap) is not termination: only ``terminated`` stops the bootstrap (CleanRL/SB3 practice).

A planner with memory (``network.memory="gru"``) recomputes the plan of ``state`` from the transition's stored
``memory`` and the target's next plan of ``next_state`` from its stored ``next_memory`` (R2D2's stored recurrent
state, Kapturowski et al. 2019, without burn-in); the critics score ``(state, plan)`` and see no memory.

The agent knows its task only through :mod:`rlreg.tasks.base` (the :class:`~rlreg.tasks.base.Task` protocol and the
:data:`~rlreg.tasks.base.TASKS` registry): a checkpoint names its task and stores the task's config beside the
networks' (format version 2; version 1 files, written before tasks had names, are registration).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlreg.buffer import Transition
from rlreg.config import from_dict
from rlreg.io import save_torch
from rlreg.networks import Actor, NetworkConfig, Planner, PlanOutput, TwinCritic, count_parameters
from rlreg.tasks.base import Task, task_spec

__all__ = ["FORMAT_VERSION", "ActOutput", "Agent", "AgentConfig", "SACConfig", "average_gradients",
           "broadcast_parameters", "load_checkpoint"]

FORMAT_VERSION = 2
"""Checkpoint format: 2 names the task (``task`` and ``config.task_name``); 1 (no name) is read as registration."""


@dataclass(frozen=True)
class SACConfig:
    """Soft actor-critic hyper-parameters (defaults from SPAC's official code unless noted)."""

    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak factor of the target critics."""
    lr_planner: float = 1e-4
    """Adam step of the planner."""
    lr_actor: float = 1e-4
    """Adam step of the actor."""
    lr_critic: float = 1e-4
    """Adam step of the twin critics."""
    lr_alpha: float = 1e-4
    """Adam step of the log-temperature."""
    init_log_alpha: float = -1.0
    """Initial log-temperature (SPAC)."""
    target_entropy: float | None = None
    """Entropy target of the plan; None -> ``-plan_dim / 4`` (SPAC hard-codes -16 for a 64-d plan)."""
    kl_weight: float = 0.01
    """Weight of KL(π || N(0, I)) in the planner loss."""
    rl_weight: float = 1.0
    """Weight of the SAC planner loss. 0 trains the step-wise loop with the auxiliary loss only (baseline b):
    no critic or temperature updates, and the training loop acts with the plan's mean."""
    aux_weight: float = 1.0
    """Weight of the task's auxiliary loss."""
    aux_updates: Literal["actor", "actor+planner"] = "actor+planner"
    """Which networks the auxiliary loss updates: the paper's ``actor+planner`` or the official code's ``actor``."""
    grad_clip: float | None = 10.0
    """Clip each network's gradient norm (None: no clipping)."""

    def __post_init__(self) -> None:
        if self.aux_updates not in ("actor", "actor+planner"):
            raise ValueError(f"aux_updates must be 'actor' or 'actor+planner', got {self.aux_updates!r}")
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 < self.tau <= 1.0:
            raise ValueError(f"need 0 <= gamma <= 1 and 0 < tau <= 1, got {self.gamma}, {self.tau}")


@dataclass(frozen=True)
class AgentConfig:
    """Everything needed to rebuild an agent, and the task it was trained on, from a checkpoint alone."""

    network: NetworkConfig = field(default_factory=NetworkConfig)
    sac: SACConfig = field(default_factory=SACConfig)
    task_name: str = "registration"
    """Name of the task in :data:`rlreg.tasks.TASKS`."""
    task: Any = None
    """The task's config (an instance of its :class:`~rlreg.tasks.base.TaskSpec` ``config`` class); ``None``
    means that class's defaults."""

    def __post_init__(self) -> None:
        spec = task_spec(self.task_name)
        if self.task is None:
            object.__setattr__(self, "task", spec.config())
        elif not isinstance(self.task, spec.config):
            raise ValueError(f"the config of task {self.task_name!r} must be a {spec.config.__name__}, got "
                             f"{type(self.task).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "") -> AgentConfig:
        """Rebuild from :meth:`to_dict` output (e.g. a checkpoint's ``config``) or a recipe's ``agent`` section; the
        ``task`` mapping is read with the config class of ``task_name`` (default ``"registration"``).

        Raises:
            ValueError: an unknown task name or config key, named with its dotted path.
        """
        data = dict(data)
        name = data.pop("task_name", "registration")
        task_values = data.pop("task", None) or {}
        config = from_dict(cls, data, where)
        task = from_dict(task_spec(name).config, task_values, f"{where}task.")
        return replace(config, task_name=name, task=task)


class ActOutput(NamedTuple):
    """One decision: the action, the plan that produced it and the planner's memory after it."""

    action: Tensor
    """``(N, out_channels, *S)`` action (registration: step displacement in voxels)."""
    plan: Tensor
    """``(N, plan_dim)`` plan (the stored meta-action)."""
    memory: Tensor | None = None
    """The planner's GRU memory to pass to the next :meth:`Agent.act` (``network.memory="gru"``), else ``None``."""


def _gaussian_log_prob(plan: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Sum over plan dimensions of the diagonal Gaussian log-density. ``(N, P)`` -> ``(N,)``."""
    z = (plan - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def _kl_to_standard_normal(mean: Tensor, log_std: Tensor) -> Tensor:
    """KL(N(mean, std²) || N(0, I)) summed over dimensions. ``(N, P)`` -> ``(N,)``."""
    return 0.5 * (mean.pow(2) + torch.exp(2 * log_std) - 1.0 - 2 * log_std).sum(-1)


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Average gradients over the processes of a ``torch.distributed`` job (data-parallel training); no-op alone.

    SAC steps several optimisers per update, each after its own backward pass over overlapping graphs (the
    planner loss reads the critics, the auxiliary loss reads the planner), which ``DistributedDataParallel``'s
    one-backward-per-forward hooks do not fit. So each optimiser's gradients are all-reduced explicitly, in one
    flat buffer, right before its step: every rank then takes the same step from the same weights, which is what
    DDP guarantees. A parameter without a gradient contributes zeros, so all ranks reduce buffers of one size.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    params = list(parameters)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def broadcast_parameters(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank of a ``torch.distributed`` job (no-op alone)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


class Agent(nn.Module):
    """Planner, actor, twin critics (with targets), temperature and their optimisers."""

    def __init__(self, config: AgentConfig) -> None:
        super().__init__()
        self.config = config
        self.planner = Planner(config.network)
        self.actor = Actor(config.network)
        self.critic = TwinCritic(config.network)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(float(config.sac.init_log_alpha)))
        sac = config.sac
        self.target_entropy = (sac.target_entropy if sac.target_entropy is not None
                               else -config.network.plan_dim / 4.0)
        self._optimisers: dict[str, torch.optim.Optimizer] | None = None
        self.updates = 0

    # ------------------------------------------------------------------------------------------------ optimisers
    def _optimiser(self, name: str) -> torch.optim.Optimizer:
        """The Adam optimiser of ``planner``, ``actor``, ``critic`` or ``alpha``, all built on first use: building
        the first Adam imports ``torch._dynamo`` (3-4 s on a loaded 2-core machine), which acting never needs."""
        if self._optimisers is None:
            sac = self.config.sac
            self._optimisers = {
                "planner": torch.optim.Adam(self.planner.parameters(), lr=sac.lr_planner),
                "actor": torch.optim.Adam(self.actor.parameters(), lr=sac.lr_actor),
                "critic": torch.optim.Adam(self.critic.parameters(), lr=sac.lr_critic),
                "alpha": torch.optim.Adam([self.log_alpha], lr=sac.lr_alpha),
            }
        return self._optimisers[name]

    @property
    def planner_opt(self) -> torch.optim.Optimizer:
        return self._optimiser("planner")

    @property
    def actor_opt(self) -> torch.optim.Optimizer:
        return self._optimiser("actor")

    @property
    def critic_opt(self) -> torch.optim.Optimizer:
        return self._optimiser("critic")

    @property
    def alpha_opt(self) -> torch.optim.Optimizer:
        return self._optimiser("alpha")

    # ------------------------------------------------------------------------------------------------ acting
    def parameter_counts(self) -> dict[str, int]:
        """Parameters per network (the critics are needed for training only)."""
        return {"planner": count_parameters(self.planner), "actor": count_parameters(self.actor),
                "critics": count_parameters(self.critic)}

    def _sample(self, out: PlanOutput, deterministic: bool) -> tuple[Tensor, Tensor]:
        noise = 0.0 if deterministic else torch.exp(out.log_std) * torch.randn_like(out.mean)
        plan = out.mean + noise
        return plan, _gaussian_log_prob(plan, out.mean, out.log_std)

    @torch.no_grad()
    def act(self, state: Tensor, deterministic: bool = True, memory: Tensor | None = None) -> ActOutput:
        """Decide one step. ``state`` ``(N, C, *S)`` -> action ``(N, out_channels, *S)`` and plan ``(N, P)``.

        ``deterministic=True`` uses the plan's mean (inference); otherwise a sample (exploration). ``memory`` is
        the previous decision's :attr:`ActOutput.memory` (``None``: a fresh episode, or a network without memory).
        """
        out = self.planner(state, memory)
        plan, _ = self._sample(out, deterministic)
        return ActOutput(self.actor(plan, out.skips, out.shape), plan, out.memory)

    # ------------------------------------------------------------------------------------------------ learning
    def _step(self, optimiser: torch.optim.Optimizer, module: nn.Module) -> None:
        average_gradients(module.parameters())
        if self.config.sac.grad_clip is not None:
            nn.utils.clip_grad_norm_(module.parameters(), self.config.sac.grad_clip)
        optimiser.step()

    def update(self, batch: Transition, task: Task) -> dict[str, float]:
        """One soft actor-critic + auxiliary update on a replay batch; returns the losses for logging.

        ``batch.memory`` / ``batch.next_memory`` ``(B, *M)`` (a planner with memory) are the planner's memories for
        ``state`` / ``next_state``; ``None`` (no memory) leaves the planner memoryless.
        """
        sac = self.config.sac
        if sac.rl_weight == 0:
            return self._update_auxiliary_only(batch, task)
        alpha = self.log_alpha.exp().detach()

        # 1. critic target, with the next plan from the current policy
        with torch.no_grad():
            next_out = self.planner(batch.next_state, batch.next_memory)
            next_plan, next_log_prob = self._sample(next_out, deterministic=False)
            q1_next, q2_next = self.critic_target(batch.next_state, next_plan)
            soft_value = torch.min(q1_next, q2_next) - alpha * next_log_prob
            target = batch.reward + sac.gamma * (1.0 - batch.terminated.to(soft_value.dtype)) * soft_value

        # 2. twin-Q loss on the stored plans
        q1, q2 = self.critic(batch.state, batch.plan)
        critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self._step(self.critic_opt, self.critic)

        # 3. planner loss: reparameterised plan scored by the (fixed) critics, plus the KL prior
        out = self.planner(batch.state, batch.memory)
        plan, log_prob = self._sample(out, deterministic=False)
        self.critic.requires_grad_(False)
        q1_pi, q2_pi = self.critic(batch.state, plan)
        self.critic.requires_grad_(True)
        kl = _kl_to_standard_normal(out.mean, out.log_std).mean()
        planner_loss = (alpha * log_prob - torch.min(q1_pi, q2_pi)).mean() + sac.kl_weight * kl

        # 4. temperature
        alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()

        # 5. auxiliary loss on the actor's field: through the plan and skips (paper) or the actor alone (code)
        if sac.aux_updates == "actor+planner":
            action = self.actor(plan, out.skips, out.shape)
        else:
            action = self.actor(plan.detach(), [s.detach() for s in out.skips], out.shape)
        aux_loss = task.auxiliary_loss(batch.state, action, batch.extras)

        self.planner_opt.zero_grad(set_to_none=True)
        self.actor_opt.zero_grad(set_to_none=True)
        (sac.rl_weight * planner_loss + sac.aux_weight * aux_loss).backward()
        self._step(self.planner_opt, self.planner)
        self._step(self.actor_opt, self.actor)
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        average_gradients([self.log_alpha])
        self.alpha_opt.step()

        # 6. Polyak averaging of the target critics
        with torch.no_grad():
            for target_p, p in zip(self.critic_target.parameters(), self.critic.parameters(), strict=True):
                target_p.lerp_(p, sac.tau)
        self.updates += 1
        losses = {"critic_loss": critic_loss, "planner_loss": planner_loss, "aux_loss": aux_loss, "alpha": alpha,
                  "entropy": -log_prob.mean(), "q": q1.mean(), "kl": kl}
        return {name: value.item() for name, value in losses.items()}

    def _update_auxiliary_only(self, batch: Transition, task: Task) -> dict[str, float]:
        """Baseline (b): the same step-wise planner-actor loop trained by the auxiliary loss alone (no critic,
        no entropy, deterministic plans)."""
        out = self.planner(batch.state, batch.memory)
        aux_loss = task.auxiliary_loss(batch.state, self.actor(out.mean, out.skips, out.shape), batch.extras)
        self.planner_opt.zero_grad(set_to_none=True)
        self.actor_opt.zero_grad(set_to_none=True)
        (self.config.sac.aux_weight * aux_loss).backward()
        self._step(self.planner_opt, self.planner)
        self._step(self.actor_opt, self.actor)
        self.updates += 1
        return {"aux_loss": aux_loss.item()}

    # ------------------------------------------------------------------------------------------------ checkpoints
    def checkpoint(self, **extra: Any) -> dict[str, Any]:
        """Everything to rebuild and continue: format version, config, weights, optimiser states, counters."""
        return {
            "format_version": FORMAT_VERSION,
            "task": self.config.task_name,
            "config": self.config.to_dict(),
            "state_dicts": {"planner": self.planner.state_dict(), "actor": self.actor.state_dict(),
                            "critic": self.critic.state_dict(), "critic_target": self.critic_target.state_dict(),
                            "log_alpha": self.log_alpha.detach().clone()},
            "optimizers": {"planner": self.planner_opt.state_dict(), "actor": self.actor_opt.state_dict(),
                           "critic": self.critic_opt.state_dict(), "alpha": self.alpha_opt.state_dict()},
            "updates": self.updates,
            "rng": {"torch": torch.get_rng_state(),
                    **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {})},
            **extra,
        }

    def save(self, path: str | os.PathLike[str], **extra: Any) -> Path:
        """Write :meth:`checkpoint` atomically (temporary file, then rename) and byte-reproducibly."""
        return save_torch(self.checkpoint(**extra), path)

    def load_checkpoint_dict(self, data: dict[str, Any], restore_rng: bool = False) -> None:
        """Load weights, optimiser states and counters from a :meth:`checkpoint` dict."""
        states = data["state_dicts"]
        self.planner.load_state_dict(states["planner"])
        self.actor.load_state_dict(states["actor"])
        self.critic.load_state_dict(states["critic"])
        # a shipped model holds no target critics (they only continue training): start them as the critics
        self.critic_target.load_state_dict(states.get("critic_target", states["critic"]))
        with torch.no_grad():
            self.log_alpha.copy_(states["log_alpha"])
        if "optimizers" in data:
            self.planner_opt.load_state_dict(data["optimizers"]["planner"])
            self.actor_opt.load_state_dict(data["optimizers"]["actor"])
            self.critic_opt.load_state_dict(data["optimizers"]["critic"])
            self.alpha_opt.load_state_dict(data["optimizers"]["alpha"])
        self.updates = int(data.get("updates", 0))
        if restore_rng and "rng" in data:
            torch.set_rng_state(data["rng"]["torch"].cpu())
            if "cuda" in data["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([s.cpu() for s in data["rng"]["cuda"]])


def load_checkpoint(path: str | os.PathLike[str], device: torch.device | str = "cpu",
                    restore_rng: bool = False, task: str | None = None) -> tuple[Agent, dict[str, Any]]:
    """Rebuild an :class:`Agent` from a checkpoint file alone (``weights_only=True``); returns it and the raw dict.

    Args:
        path: a file written by :meth:`Agent.save` (format 1 or 2).
        device: where the agent's tensors go.
        restore_rng: also restore the global torch (and CUDA) random state saved in the file.
        task: the task the caller runs the agent on; a checkpoint of another task is refused. ``None``: any task.

    Raises:
        ValueError: the file is not an rlreg checkpoint, has an unknown format version, names an unknown task or
            another task than ``task``; one line naming the file and the fix.
    """
    path = Path(path)
    try:
        data = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable rlreg checkpoint ({type(err).__name__}); "
                         "give a file written by `rlreg train` or Agent.save") from None
    if not isinstance(data, dict) or "format_version" not in data:
        raise ValueError(f"{path}: not an rlreg checkpoint (no format_version); give a file written by Agent.save")
    if data["format_version"] > FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {data['format_version']} is newer than this rlreg "
                         f"({FORMAT_VERSION}); upgrade rlreg")
    config = data["config"]
    saved_task = config.get("task_name", "registration") if isinstance(config, dict) else "registration"
    if task is not None and saved_task != task:
        raise ValueError(f"{path}: is a {saved_task!r} checkpoint, not a {task!r} one; give a model trained on "
                         f"the {task!r} task (its recipe's agent.task_name)")
    try:
        agent_config = AgentConfig.from_dict(config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}; this rlreg cannot rebuild its agent (upgrade rlreg or retrain)") from None
    agent = Agent(agent_config).to(device)
    agent.load_checkpoint_dict(data, restore_rng=restore_rng)
    return agent, data
