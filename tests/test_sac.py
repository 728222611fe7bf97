"""The SAC agent: update mechanics, auxiliary-update switch, stored planner memories, checkpoints, determinism."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from rlreg.buffer import Transition
from rlreg.networks import NetworkConfig
from rlreg.sac import Agent, AgentConfig, SACConfig, load_checkpoint
from rlreg.tasks.registration import RegistrationBatch, RegistrationConfig, RegistrationTask


def tiny_config(ndim: int = 2, **sac) -> AgentConfig:
    return AgentConfig(network=NetworkConfig(ndim=ndim, widths=(4, 8), plan_dim=6, critic_widths=(4, 8),
                                             critic_hidden=16, max_step=1.0),
                       sac=SACConfig(**sac), task=RegistrationConfig(num_labels=1, aux_dice=0.0))


def squares(batch: int, shape=(15, 17), shift: int = 2) -> tuple[torch.Tensor, ...]:
    fixed = torch.zeros(batch, 1, *shape)
    fixed[..., 4:10, 5:12] = 1.0
    moving = torch.roll(fixed, shift, dims=-1)
    return fixed, moving, fixed.long(), moving.long()


def transition_batch(agent: Agent, batch: int = 4) -> tuple[Transition, RegistrationTask]:
    task = RegistrationTask(agent.config.task)
    state = task.reset(RegistrationBatch(*squares(batch)))
    decision = agent.act(state, deterministic=False)
    result = task.step(decision.action)
    return Transition(state, decision.plan, result.reward, result.state, result.terminated, None), task


def memory_transitions(agent: Agent, batch: int = 4) -> tuple[Transition, RegistrationTask]:
    """Two steps of a ``memory="gru"`` agent; the second step's transition with its memories before and after."""
    task = RegistrationTask(agent.config.task)
    first = agent.act(task.reset(RegistrationBatch(*squares(batch))), deterministic=False)
    state = task.step(first.action).state
    decision = agent.act(state, deterministic=False, memory=first.memory)
    result = task.step(decision.action)
    assert first.memory is not None and decision.memory is not None
    return Transition(state, decision.plan, result.reward, result.state, result.terminated, None, first.memory,
                      decision.memory), task


def gru_config(**sac) -> AgentConfig:
    config = tiny_config(**sac)
    return replace(config, network=replace(config.network, memory="gru"))


def params(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def test_update_changes_every_network_and_moves_targets_by_polyak() -> None:
    torch.manual_seed(0)
    agent = Agent(tiny_config(tau=0.5))
    batch, task = transition_batch(agent)
    before = {name: params(getattr(agent, name)) for name in ("planner", "actor", "critic", "critic_target")}
    alpha_before = float(agent.log_alpha.detach())
    logs = agent.update(batch, task)
    assert {"critic_loss", "planner_loss", "aux_loss", "alpha", "entropy"} <= set(logs)
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    for name in ("planner", "actor", "critic"):
        assert not torch.equal(before[name], params(getattr(agent, name))), name
    # target = lerp(target_old, critic_new, tau): with tau = 0.5 the target sits halfway
    expected = before["critic_target"] + 0.5 * (params(agent.critic) - before["critic_target"])
    assert torch.allclose(params(agent.critic_target), expected, atol=1e-6)
    assert float(agent.log_alpha.detach()) != alpha_before


def test_actor_only_auxiliary_updates_leave_planner_to_rl() -> None:
    """With rl_weight=0 and aux_updates='actor', nothing trains the planner at all."""
    torch.manual_seed(0)
    agent = Agent(tiny_config(rl_weight=0.0, aux_updates="actor"))
    batch, task = transition_batch(agent)
    # rl_weight=0 is baseline (b): the auxiliary loss updates actor and planner through the plan's mean
    planner_before, actor_before = params(agent.planner), params(agent.actor)
    critic_before = params(agent.critic)
    agent.update(batch, task)
    assert not torch.equal(actor_before, params(agent.actor))
    assert not torch.equal(planner_before, params(agent.planner))
    assert torch.equal(critic_before, params(agent.critic))  # no critic in baseline (b)


def test_aux_switch_controls_planner_gradients() -> None:
    torch.manual_seed(1)
    both = Agent(tiny_config(aux_updates="actor+planner", kl_weight=0.0))
    actor_only = Agent(tiny_config(aux_updates="actor", kl_weight=0.0))
    actor_only.load_state_dict(both.state_dict())
    batch, task = transition_batch(both)
    # Same weights, same RNG for the sampled plans: the planners differ only by the auxiliary gradient.
    torch.manual_seed(5)
    both.update(batch, task)
    torch.manual_seed(5)
    actor_only.update(batch, task)
    assert not torch.equal(params(both.planner), params(actor_only.planner))


def test_critic_target_masks_terminal() -> None:
    """Reproduce step 1 of the update by hand: terminated rows do not bootstrap, the others (including
    truncated ones, which are not flagged terminated) do."""
    torch.manual_seed(3)
    agent = Agent(tiny_config(gamma=0.5, tau=1e-9, lr_critic=1e-12))
    batch, task = transition_batch(agent, batch=3)
    batch = batch._replace(terminated=torch.tensor([True, False, True]), reward=torch.tensor([1.0, 2.0, 3.0]))
    state_rng = torch.get_rng_state()
    with torch.no_grad():
        out = agent.planner(batch.next_state)
        noise = torch.randn_like(out.mean)
        plan = out.mean + out.log_std.exp() * noise
        logp = torch.distributions.Normal(out.mean, out.log_std.exp()).log_prob(plan).sum(-1)
        soft = torch.min(*agent.critic_target(batch.next_state, plan)) - agent.log_alpha.exp() * logp
        target = batch.reward + 0.5 * (1 - batch.terminated.float()) * soft
        q1, q2 = agent.critic(batch.state, batch.plan)
        expected = ((q1 - target) ** 2).mean() + ((q2 - target) ** 2).mean()
    torch.set_rng_state(state_rng)
    logs = agent.update(batch, task)
    assert logs["critic_loss"] == pytest.approx(float(expected), rel=1e-4)


def test_checkpoint_round_trip_gives_identical_actions(tmp_path) -> None:
    torch.manual_seed(0)
    agent = Agent(tiny_config(ndim=3))
    state = torch.rand(2, 2, 9, 11, 7)
    path = agent.save(tmp_path / "agent.pt", note="hello")
    loaded, raw = load_checkpoint(path)
    assert raw["format_version"] == 2 and raw["task"] == "registration" and raw["note"] == "hello"
    assert loaded.config == agent.config
    assert torch.equal(agent.act(state).action, loaded.act(state).action)
    assert [p.name for p in tmp_path.iterdir()] == ["agent.pt"]


def test_seeded_updates_are_deterministic() -> None:
    def run() -> torch.Tensor:
        torch.manual_seed(7)
        agent = Agent(tiny_config())
        batch, task = transition_batch(agent)
        for _ in range(3):
            agent.update(batch, task)
        return params(agent.planner)

    assert torch.equal(run(), run())


def test_load_rejects_foreign_files(tmp_path) -> None:
    bad = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="no format_version"):
        load_checkpoint(bad)
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable rlreg checkpoint"):
        load_checkpoint(bad)


def test_config_round_trip() -> None:
    config = tiny_config()
    assert AgentConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        AgentConfig.from_dict({"sac": {"gamma": 0.9, "nope": 1}})
    with pytest.raises(ValueError, match="aux_updates"):
        SACConfig(aux_updates="critic")


def test_format_1_checkpoints_read_as_registration(tmp_path) -> None:
    """A file written before tasks had names (format 1: no ``task``, no ``config.task_name``) is a registration
    agent, and acts as the saved one."""
    torch.manual_seed(0)
    agent = Agent(tiny_config())
    data = agent.checkpoint()
    data["format_version"] = 1
    del data["task"], data["config"]["task_name"]
    path = tmp_path / "v1.pt"
    torch.save(data, path)
    loaded, raw = load_checkpoint(path, task="registration")
    assert raw["format_version"] == 1 and loaded.config == agent.config
    assert loaded.config.task_name == "registration" and isinstance(loaded.config.task, RegistrationConfig)
    state = torch.rand(1, 2, 12, 10)
    assert torch.equal(agent.act(state).action, loaded.act(state).action)


def test_task_names_are_checked(tmp_path) -> None:
    """An unknown task name, a config of another task's class, and a checkpoint of an unknown task are one-line
    errors that list the registered tasks."""
    with pytest.raises(ValueError, match=r"unknown task 'colourisation'; registered tasks: .*registration"):
        AgentConfig(task_name="colourisation")
    with pytest.raises(ValueError, match="must be a RegistrationConfig"):
        AgentConfig(task=SACConfig())
    with pytest.raises(ValueError, match=r"unknown config keys \['task.nope'\]"):
        AgentConfig.from_dict({"task": {"nope": 1}})
    data = Agent(tiny_config()).checkpoint()
    data["config"]["task_name"] = "colourisation"
    torch.save(data, tmp_path / "x.pt")
    with pytest.raises(ValueError, match=r"x.pt: unknown task 'colourisation'.*upgrade rlreg or retrain"):
        load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(ValueError, match=r"is a 'colourisation' checkpoint, not a 'registration' one"):
        load_checkpoint(tmp_path / "x.pt", task="registration")


def _update_logs(agent: Agent, batch: Transition, task: RegistrationTask) -> dict[str, float]:
    """The losses of one update of a copy of ``agent`` from a fixed random state."""
    torch.manual_seed(11)
    return copy.deepcopy(agent).update(batch, task)


def test_update_recomputes_plans_from_the_stored_memories() -> None:
    """The planner (and with it the auxiliary loss) reads ``memory``; the critic target reads ``next_memory``."""
    torch.manual_seed(0)
    agent = Agent(gru_config())
    batch, task = memory_transitions(agent)
    assert batch.memory is not None and batch.next_memory is not None and batch.memory.abs().sum() > 0
    base = _update_logs(agent, batch, task)
    other_memory = _update_logs(agent, batch._replace(memory=batch.memory + 1.0), task)
    assert other_memory["planner_loss"] != base["planner_loss"] and other_memory["aux_loss"] != base["aux_loss"]
    assert other_memory["critic_loss"] == base["critic_loss"]  # critics score (state, plan) only
    other_next = _update_logs(agent, batch._replace(next_memory=batch.next_memory + 1.0), task)
    assert other_next["critic_loss"] != base["critic_loss"]
    # a zero stored memory is the planner's fresh memory
    zeros = batch._replace(memory=torch.zeros_like(batch.memory), next_memory=torch.zeros_like(batch.next_memory))
    assert _update_logs(agent, zeros, task) == _update_logs(agent, batch._replace(memory=None, next_memory=None),
                                                            task)


def test_auxiliary_only_update_reads_the_stored_memory() -> None:
    torch.manual_seed(0)
    agent = Agent(gru_config(rl_weight=0.0))
    batch, task = memory_transitions(agent)
    assert batch.memory is not None
    base = _update_logs(agent, batch, task)["aux_loss"]
    assert _update_logs(agent, batch._replace(memory=batch.memory + 1.0), task)["aux_loss"] != base


def test_a_memoryless_planner_refuses_stored_memories() -> None:
    torch.manual_seed(0)
    batch, task = memory_transitions(Agent(gru_config()))
    with pytest.raises(ValueError, match="has no memory"):
        Agent(tiny_config()).update(batch, task)
