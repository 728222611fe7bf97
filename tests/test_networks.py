"""Shapes, bounds, gradient paths, dtype and config invariants of :mod:`rlreg.networks`."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rlreg.networks import Actor, Critic, NetworkConfig, Planner, PlanOutput, TwinCritic, count_parameters

SHAPES = [(27, 31), (28, 28), (13, 17, 11)]
SMALL = {2: (9, 13), 3: (7, 9, 6)}


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """One intra-op thread: the tensors are tiny and OpenMP contention on a busy 2-core machine only slows them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(ndim: int, dtype: torch.dtype = torch.float32, seed: int = 0, **kwargs) -> tuple[Planner, Actor, TwinCritic]:
    torch.manual_seed(seed)
    config = NetworkConfig(ndim=ndim, **kwargs)
    return Planner(config).to(dtype), Actor(config).to(dtype), TwinCritic(config).to(dtype)


def state(batch: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((batch, 2, *shape), generator=gen, dtype=torch.float64).to(dtype)


# ------------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("batch", [1, 3])
def test_output_shapes(shape: tuple[int, ...], batch: int) -> None:
    ndim = len(shape)
    planner, actor, critic = make(ndim)
    config = planner.config
    s = state(batch, shape)
    out = planner(s)
    assert isinstance(out, PlanOutput)
    assert out.mean.shape == out.log_std.shape == (batch, config.plan_dim)
    assert out.shape == shape
    padded = tuple(-(-n // 8) * 8 for n in shape)  # 4 levels: multiple of 2**3
    assert len(out.skips) == len(config.widths)
    for k, (skip, width) in enumerate(zip(out.skips, config.widths, strict=True)):
        assert skip.shape == (batch, width, *(p // 2**k for p in padded))
    step = actor(out.mean, out.skips, out.shape)
    assert step.shape == (batch, ndim, *shape)
    q1, q2 = critic(s, out.mean)
    assert q1.shape == q2.shape == (batch,)


@pytest.mark.parametrize("widths", [(8,), (4, 8), (4, 8, 8, 8, 8)])
def test_depths(widths: tuple[int, ...]) -> None:
    """Any number of levels, including a single full-resolution one and one deeper than the image allows."""
    planner, actor, critic = make(2, widths=widths, critic_widths=(4,))
    s = state(2, (5, 7))
    out = planner(s)
    assert actor(out.mean, out.skips, out.shape).shape == (2, 2, 5, 7)
    assert critic(s, out.mean)[0].shape == (2,)


def test_zero_padding_at_high_end() -> None:
    """Planner pads with zeros after the last voxel of each axis: an explicitly padded state plans the same."""
    planner, _, _ = make(2, torch.float64)
    s = state(2, (27, 29), torch.float64)
    explicit = F.pad(s, (0, 3, 0, 5))  # to (32, 32)
    implicit, padded = planner(s), planner(explicit)
    torch.testing.assert_close(implicit.mean, padded.mean)
    torch.testing.assert_close(implicit.log_std, padded.log_std)
    for a, b in zip(implicit.skips, padded.skips, strict=True):
        torch.testing.assert_close(a, b)
    assert padded.shape == (32, 32)


def test_no_padding_when_divisible() -> None:
    planner, _, _ = make(2)
    assert planner(state(1, (16, 24))).skips[0].shape[2:] == (16, 24)


@pytest.mark.parametrize("ndim", [2, 3])
def test_samples_independent_of_batch(ndim: int) -> None:
    """No batch statistics anywhere: a sample's outputs do not depend on the rest of the batch."""
    planner, actor, critic = make(ndim, torch.float64)
    s = state(3, SMALL[ndim], torch.float64)
    out = planner(s)
    step = actor(out.mean, out.skips, out.shape)
    q1, q2 = critic(s, out.mean)
    one = planner(s[1:2])
    torch.testing.assert_close(one.mean, out.mean[1:2])
    torch.testing.assert_close(actor(one.mean, one.skips, one.shape), step[1:2])
    q1_one, q2_one = critic(s[1:2], one.mean)
    torch.testing.assert_close(q1_one, q1[1:2])
    torch.testing.assert_close(q2_one, q2[1:2])


# ------------------------------------------------------------------------------------------------- bounds
@pytest.mark.parametrize("ndim", [2, 3])
def test_step_bounded_for_huge_plans(ndim: int) -> None:
    planner, actor, _ = make(ndim, max_step=0.5)
    nn.init.normal_(actor.flow.weight, std=1.0)  # a trained-looking last layer, so the tanh really saturates
    out = planner(state(2, SMALL[ndim]))
    for scale in (1e3, 1e8):
        plan = scale * torch.randn(2, actor.config.plan_dim, generator=torch.Generator().manual_seed(1))
        step = actor(plan, out.skips, out.shape)
        assert torch.isfinite(step).all()
        assert step.abs().max() <= 0.5
        assert step.abs().max() > 0.45  # saturated, so the bound (not a small output) is what is tested


@pytest.mark.parametrize("ndim", [2, 3])
def test_fresh_actor_steps_near_zero(ndim: int) -> None:
    planner, actor, _ = make(ndim)
    out = planner(state(3, SMALL[ndim]))
    for plan in (out.mean, 10.0 * torch.randn_like(out.mean)):
        step = actor(plan, out.skips, out.shape)
        assert step.abs().max() < 1e-2
    assert actor.flow.weight.std() < 1e-4
    assert torch.count_nonzero(actor.flow.bias) == 0


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e8])
def test_log_std_inside_bounds(scale: float) -> None:
    planner, _, _ = make(2, log_std_min=-3.0, log_std_max=0.5)
    out = planner(scale * state(3, (20, 22)) - 0.5 * scale)
    assert torch.isfinite(out.log_std).all()
    assert (out.log_std >= -3.0).all()
    assert (out.log_std <= 0.5).all()


def test_log_std_golden() -> None:
    """raw 0 -> the midpoint; huge raw -> exactly the bounds."""
    planner, _, _ = make(2, log_std_min=-3.0, log_std_max=0.5, plan_dim=4)
    dim = planner.config.plan_dim
    with torch.no_grad():
        planner.head.weight.zero_()
        planner.head.bias.zero_()
    s = state(2, (10, 12))
    torch.testing.assert_close(planner(s).log_std, torch.full((2, dim), -1.25))
    with torch.no_grad():
        planner.head.bias[dim:dim + 2] = 1e4
        planner.head.bias[dim + 2:] = -1e4
    log_std = planner(s).log_std
    torch.testing.assert_close(log_std, torch.tensor([[0.5, 0.5, -3.0, -3.0]] * 2))


# ------------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("ndim", [2, 3])
def test_actor_loss_reaches_plan_and_planner_through_skips(ndim: int) -> None:
    planner, actor, _ = make(ndim)
    shape = SMALL[ndim]
    out = planner(state(2, shape))
    plan = out.mean.detach().requires_grad_(True)  # so the encoder can only be reached through the skips
    weights = torch.randn((2, ndim, *shape), generator=torch.Generator().manual_seed(3))
    leaves = [skip.detach().requires_grad_(True) for skip in out.skips]
    grads = torch.autograd.grad((actor(plan, leaves, out.shape) * weights).sum(), leaves)
    assert all(g.abs().sum() > 0 for g in grads)  # every skip is used, not only the deepest one
    (actor(plan, out.skips, out.shape) * weights).sum().backward()
    assert plan.grad is not None and plan.grad.abs().sum() > 0
    for level in planner.levels:
        assert level[0].weight.grad is not None and level[0].weight.grad.abs().sum() > 0
    assert planner.head.weight.grad is None  # the plan was detached: no path through the head
    assert actor.flow.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("ndim", [2, 3])
def test_q_loss_reaches_plan(ndim: int) -> None:
    planner, _, critic = make(ndim)
    s = state(2, SMALL[ndim])
    plan = planner(s).mean
    plan.retain_grad()
    q1, q2 = critic(s, plan)
    torch.min(q1, q2).sum().backward()
    assert plan.grad is not None and plan.grad.abs().sum() > 0
    assert planner.head.weight.grad.abs().sum() > 0  # rsample-style path: critic -> plan -> planner


def test_twin_critics_are_independent() -> None:
    _, _, critic = make(2)
    s = state(2, (12, 10))
    plan = torch.randn(2, critic.config.plan_dim)
    q1, q2 = critic(s, plan)
    assert not torch.allclose(q1, q2)
    assert {id(p) for p in critic.q1.parameters()}.isdisjoint(id(p) for p in critic.q2.parameters())
    assert isinstance(critic.q1, Critic)
    torch.testing.assert_close(critic.q1(s, plan), q1)


# ------------------------------------------------------------------------------------------------- dtype
@pytest.mark.parametrize("ndim", [2, 3])
def test_dtype_follows_module_and_input(ndim: int) -> None:
    planner, actor, critic = make(ndim, torch.float64)
    s = state(2, SMALL[ndim], torch.float64)
    out = planner(s)
    assert out.mean.dtype == out.log_std.dtype == torch.float64
    assert all(skip.dtype == torch.float64 for skip in out.skips)
    assert actor(out.mean, out.skips, out.shape).dtype == torch.float64
    assert all(q.dtype == torch.float64 for q in critic(s, out.mean))


# ------------------------------------------------------------------------------------------------- errors
def test_bad_inputs_raise() -> None:
    planner, actor, critic = make(2)
    s = state(2, (12, 12))
    out = planner(s)
    with pytest.raises(ValueError, match="state"):
        planner(torch.rand(2, 3, 12, 12))
    with pytest.raises(ValueError, match="state"):
        planner(torch.rand(2, 2, 12, 12, 12))
    with pytest.raises(ValueError, match="skip"):
        actor(out.mean, out.skips[:-1], out.shape)
    with pytest.raises(ValueError, match="plan"):
        actor(out.mean[:, :10], out.skips, out.shape)
    with pytest.raises(ValueError, match="shape"):
        actor(out.mean, out.skips, (12, 12, 12))
    with pytest.raises(ValueError, match="smaller"):
        actor(out.mean, out.skips, (40, 12))
    with pytest.raises(ValueError, match="plan"):
        critic(s, out.mean[:1])


# ------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("kwargs", [
    {"ndim": 1}, {"ndim": 4}, {"in_channels": 0}, {"widths": ()}, {"widths": (16, 0)}, {"widths": (16.0,)},
    {"plan_dim": 0}, {"plan_grid": 0}, {"max_step": 0.0}, {"max_step": -1.0}, {"max_step": float("inf")},
    {"log_std_min": 2.0, "log_std_max": 2.0}, {"log_std_min": 3.0}, {"log_std_max": float("nan")},
    {"critic_widths": ()}, {"critic_hidden": 0}, {"plan_dim": True},
], ids=str)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        NetworkConfig(**kwargs)


def test_config_frozen_and_round_trips() -> None:
    config = NetworkConfig(ndim=3, widths=(8, 16, 16), plan_dim=32, max_step=0.5, critic_widths=(8, 16))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.ndim = 2  # type: ignore[misc]
    assert NetworkConfig(**dataclasses.asdict(config)) == config
    from_json = NetworkConfig(**json.loads(json.dumps(dataclasses.asdict(config))))  # lists become tuples again
    assert from_json == config
    assert isinstance(from_json.widths, tuple)
    assert hash(from_json) == hash(config)


def test_checkpoint_round_trip(tmp_path) -> None:
    """Config + state dict rebuild identical networks (the checkpoint pattern of the agent)."""
    planner, actor, _ = make(2, plan_dim=16)
    path = tmp_path / "nets.pt"
    torch.save({"config": dataclasses.asdict(planner.config), "planner": planner.state_dict(),
                "actor": actor.state_dict()}, path)
    saved = torch.load(path, weights_only=True)
    config = NetworkConfig(**saved["config"])
    planner2, actor2 = Planner(config), Actor(config)
    planner2.load_state_dict(saved["planner"])
    actor2.load_state_dict(saved["actor"])
    s = state(1, (11, 13))
    out, out2 = planner(s), planner2(s)
    torch.testing.assert_close(out2.mean, out.mean)
    torch.testing.assert_close(actor2(out2.mean, out2.skips, out2.shape), actor(out.mean, out.skips, out.shape))


# ------------------------------------------------------------------------------------------------- sizes
def test_count_parameters() -> None:
    planner, actor, critic = make(3)
    for module in (planner, actor, critic):
        assert count_parameters(module) == sum(p.numel() for p in module.parameters())
    assert count_parameters(critic) == count_parameters(critic.q1) + count_parameters(critic.q2)
    linear = nn.Linear(3, 4)
    assert count_parameters(nn.Sequential(linear, nn.ReLU(), linear)) == 16  # shared weights counted once
    assert count_parameters(nn.ReLU()) == 0


def test_default_networks_are_lightweight() -> None:
    """method.md: SPAC's 3D planner + actor have about 2.35M parameters; rlreg's default stays well below."""
    planner, actor, _ = make(3)
    assert count_parameters(planner) + count_parameters(actor) < 1_200_000


# ------------------------------------------------------------------------------------------------- image-task variants
VARIANTS = {
    "instance-norm": {"norm": "instance"},
    "reflect": {"padding": "reflect"},
    "conv4": {"down_kernel": 4},
    "plan-map": {"plan_shape": "map", "plan_grid": 2},
    "gru": {"memory": "gru"},
    "image-update": {"out_channels": 3, "in_channels": 3},
    "all": {"norm": "instance", "padding": "reflect", "down_kernel": 4, "plan_shape": "map", "plan_grid": 2,
            "memory": "gru", "out_channels": 1, "in_channels": 1},
}
VARIANT_SHAPES = {2: (16, 12), 3: (8, 12, 8)}


def variant(ndim: int, name: str, seed: int = 0) -> tuple[Planner, Actor, TwinCritic]:
    kwargs = {"widths": (4, 8, 8), "critic_widths": (4, 8), "critic_hidden": 16, "plan_dim": 2**ndim * 3,
              **VARIANTS[name]}
    return make(ndim, seed=seed, **kwargs)


def variant_state(config: NetworkConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((batch, config.in_channels, *VARIANT_SHAPES[config.ndim]), generator=gen)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name", VARIANTS)
def test_variants_give_the_shapes_and_pass_gradients(ndim: int, name: str) -> None:
    """Every variant is the same classes: action ``(N, out_channels, *S)`` within the bound, Q ``(N,)``, and the
    auxiliary-style loss on the action reaches the planner's first layer and the plan."""
    planner, actor, critic = variant(ndim, name)
    config = planner.config
    s = variant_state(config)
    out = planner(s)
    assert out.mean.shape == out.log_std.shape == (2, config.plan_dim)
    plan = out.mean.detach().requires_grad_(True)
    action = actor(plan, out.skips, out.shape)
    assert action.shape == (2, config.action_channels, *VARIANT_SHAPES[ndim])
    assert action.abs().max() < config.max_step
    q1, q2 = critic(s, plan)
    assert q1.shape == q2.shape == (2,)
    (action.square().sum() * 1e6 + q1.sum()).backward()
    first = planner.levels[0][0].weight
    assert plan.grad is not None and plan.grad.abs().sum() > 0
    assert first.grad is not None and first.grad.abs().sum() > 0
    if config.memory == "gru":
        assert out.memory is not None and out.memory.shape == out.skips[-1].shape
    else:
        assert out.memory is None


@pytest.mark.parametrize("ndim", [2, 3])
def test_gru_memory_changes_the_plan_and_the_action(ndim: int) -> None:
    """The memory is state: the same observation after another history gives another decision."""
    planner, actor, _ = variant(ndim, "gru")
    s = variant_state(planner.config)
    with torch.no_grad():
        fresh = planner(s)
        again = planner(s, fresh.memory)
        other = planner(variant_state(planner.config, seed=5))
        after_other = planner(s, other.memory)
    assert not torch.equal(fresh.memory, again.memory)
    assert not torch.allclose(fresh.mean, again.mean) and not torch.allclose(again.mean, after_other.mean)
    with torch.no_grad():
        assert not torch.allclose(actor(fresh.mean, fresh.skips, fresh.shape),
                                  actor(fresh.mean, again.skips, again.shape))
    with pytest.raises(ValueError, match="memory must be"):
        planner(s, fresh.memory[:, :1])
    plain, _, _ = variant(ndim, "reflect")
    with pytest.raises(ValueError, match="has no memory"):
        plain(s, fresh.memory)


def test_plan_map_has_one_conv_channel_group_per_grid_cell() -> None:
    """``plan_shape="map"``: the head and bridge are 1x1 convs, so a plan value moves only its own grid cell's
    bridge features (the digits paper's 1x7x7 plan)."""
    planner, actor, _ = variant(2, "plan-map")
    assert isinstance(planner.head, nn.Conv2d) and isinstance(actor.bridge, nn.Conv2d)
    assert planner.config.plan_channels == 3
    with pytest.raises(ValueError, match="multiple of plan_grid"):
        NetworkConfig(plan_shape="map", plan_dim=10, plan_grid=2)


def test_variant_config_validation_and_defaults() -> None:
    assert NetworkConfig(ndim=3).out_channels == 3 and NetworkConfig(ndim=2, out_channels=1).action_channels == 1
    for bad in ({"norm": "batch"}, {"padding": "circular"}, {"down_kernel": 5}, {"plan_shape": "cube"},
                {"memory": "lstm"}, {"out_channels": 0}):
        with pytest.raises(ValueError):
            NetworkConfig(**bad)


def test_default_parameter_names_are_unchanged() -> None:
    """The defaults build the networks of the shipped checkpoints: same parameter names and shapes."""
    planner, actor, critic = make(2)
    names = {"planner": [n for n, _ in planner.named_parameters()], "actor": [n for n, _ in actor.named_parameters()]}
    assert names["planner"] == ["levels.0.0.weight", "levels.0.0.bias", "levels.0.2.weight", "levels.0.2.bias",
                                "levels.1.0.weight", "levels.1.0.bias", "levels.1.2.weight", "levels.1.2.bias",
                                "levels.2.0.weight", "levels.2.0.bias", "levels.2.2.weight", "levels.2.2.bias",
                                "levels.3.0.weight", "levels.3.0.bias", "levels.3.2.weight", "levels.3.2.bias",
                                "head.weight", "head.bias"]
    assert names["actor"][:2] == ["bridge.weight", "bridge.bias"] and names["actor"][-2:] == ["flow.weight",
                                                                                               "flow.bias"]
    assert [n for n, _ in critic.named_parameters()][:4] == ["q1.encoder.0.weight", "q1.encoder.0.bias",
                                                             "q1.encoder.2.weight", "q1.encoder.2.bias"]
