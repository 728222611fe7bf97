"""The agent's networks for 2D and 3D image tasks: stochastic planner, deterministic actor, twin critics.

One code path serves both dimensions: layers come from small factories keyed on ``config.ndim``, and nothing is
locked to an image size (no buffers, no flatten of a size-dependent map), so one network runs on ``(28, 28)``
digits, ``(27, 31)`` slices and ``(13, 17, 11)`` or ``128**3`` volumes alike.

Conventions follow :mod:`rlreg.spatial`: states are ``(N, C, *S)`` images (registration: ``C = 2``, fixed and
warped moving), actions ``(N, out_channels, *S)`` (registration: a displacement in **voxels**, channel ``c``
displacing tensor axis ``c``; an image task: an image update).

* :class:`Planner` (SPAC's stochastic planner, an encoder): state ``(N, C, *S)`` -> diagonal Gaussian plan
  ``mean, log_std`` ``(N, plan_dim)`` plus the encoder features (U-Net skips) for the actor.
* :class:`Actor` (deterministic decoder): plan ``(N, plan_dim)`` + skips -> action ``(N, out_channels, *S)``,
  bounded smoothly by ``max_step * tanh`` instead of a gradient-killing clamp.
* :class:`Critic` / :class:`TwinCritic`: ``Q(state, plan) -> (N,)``; the critics score the low-dimensional plan,
  never the dense field.

The defaults are the registration networks: no normalisation layers (batch statistics are unreliable in RL, with
replay batches of a few transitions, acting with one batch size and learning with another, targets computed by
copies; instance norm would discard the absolute intensity differences between the fixed and warped channels that
the state is made of; the official SPAC code uses plain conv + LeakyReLU layers as well), zero padding, 3x3(x3)
convolutions, a plan vector and no memory. The variants RL-I2IT uses for its image-to-image tasks are options of
the same classes (:class:`NetworkConfig`): instance normalisation, reflection padding, 4x4(x4) stride-2
convolutions, a plan shaped as a ``plan_grid**ndim`` feature map, and a convolutional GRU memory on the planner's
bottleneck that carries information across steps (and, for video, across frames: the memory is returned by the
planner and passed back in by whoever runs the episode, :func:`rlreg.rollout.rollout`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Actor",
    "ConvGRU",
    "Critic",
    "NetworkConfig",
    "PlanOutput",
    "Planner",
    "TwinCritic",
    "count_parameters",
]

_NEGATIVE_SLOPE = 0.2
"""LeakyReLU slope of every hidden layer (VoxelMorph's choice)."""
_FLOW_INIT_STD = 1e-5
"""Std of the normal init of the actor's last conv (VoxelMorph's flow layer), so a fresh actor steps ~0 voxels."""


# ------------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class NetworkConfig:
    """Sizes of the planner, actor and critics; saved in checkpoints (``NetworkConfig(**dataclasses.asdict(c))``).

    Lists given for the width fields (e.g. after a JSON round-trip) are stored as tuples.
    """

    ndim: int = 2
    """Spatial dimension of the images: 2 or 3."""
    in_channels: int = 2
    """Channels of the state (registration: ``[fixed, warped moving]``)."""
    out_channels: int | None = None
    """Channels of the action: ``None`` means ``ndim`` (a displacement field); an image task sets its image's
    channels (an image update)."""
    widths: tuple[int, ...] = (16, 32, 32, 32)
    """Planner encoder channels per level; level ``k`` works at ``1 / 2**k`` resolution (level 0 at full
    resolution). The actor's decoder mirrors them. Inputs are padded to a multiple of ``2**(len(widths) - 1)``."""
    plan_dim: int = 64
    """Size of the Gaussian plan (SPAC's meta-action: 64 in 3D)."""
    plan_grid: int = 4
    """The plan <-> feature-map bridges (planner, actor and critic) use a ``plan_grid**ndim`` map, whatever the image
    size (the official 3D code reaches a ``4**3`` map at ``128**3``)."""
    max_step: float = 1.0
    """Bound of each action component (registration: voxels): ``action = max_step * tanh(raw)``."""
    log_std_min: float = -5.0
    """Lower bound of the plan's log standard deviation (reached smoothly through ``tanh``). SPAC bounds the
    log-*variance* to [-10, 2], i.e. the log-std to [-5, 1]."""
    log_std_max: float = 1.0
    """Upper bound of the plan's log standard deviation."""
    critic_widths: tuple[int, ...] = (16, 32, 32)
    """Channels of the critic's image encoder; each level is one stride-2 conv."""
    critic_hidden: int = 128
    """Width of the critic's two hidden MLP layers."""
    norm: Literal["none", "instance"] = "none"
    """Normalisation after every conv of the planner and actor blocks: none (registration) or instance
    normalisation with affine parameters (RL-I2IT's style-transfer planner). The critic stays unnormalised."""
    padding: Literal["zeros", "reflect"] = "zeros"
    """Padding mode of every conv: zeros (registration) or reflection (RL-I2IT's image tasks). Reflection needs
    every feature map to be larger than the padding (inputs of at least ``2 * multiple`` voxels per axis)."""
    down_kernel: Literal[3, 4] = 3
    """Kernel of the stride-2 (downsampling) convs of the planner and critic: 3 (padding 1, ``ceil(n / 2)``) or 4
    (padding 1, ``floor(n / 2)``: the pix2pix-style encoders of RL-I2IT's image tasks)."""
    plan_shape: Literal["vector", "map"] = "vector"
    """``vector``: the plan is a linear function of the pooled features, decoded by a linear bridge (SPAC 3D).
    ``map``: the plan is a ``(plan_dim / plan_grid**ndim)``-channel ``plan_grid**ndim`` feature map made by a
    1x1 conv and decoded by a 1x1 conv (the digits paper's 1x7x7 plan); still passed around flattened
    ``(N, plan_dim)``, so ``plan_dim`` must be a multiple of ``plan_grid**ndim``."""
    memory: Literal["none", "gru"] = "none"
    """``gru``: a convolutional GRU on the planner's deepest feature map carries a memory across steps (RL-I2IT's
    step-wise GRU; passed across frames it is the frame-wise one). Acting carries it (:func:`rlreg.rollout.rollout`);
    training stores it with every transition and replays each plan from the memory it was acted with
    (:class:`rlreg.buffer.Transition`, :meth:`rlreg.sac.Agent.update`)."""

    def __post_init__(self) -> None:
        for name in ("widths", "critic_widths"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if self.ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {self.ndim!r}")
        if self.out_channels is None:
            object.__setattr__(self, "out_channels", self.ndim)
        for name in ("in_channels", "out_channels", "plan_dim", "plan_grid", "critic_hidden"):
            value = getattr(self, name)
            if not _is_positive_int(value):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("widths", "critic_widths"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not value or not all(_is_positive_int(w) for w in value):
                raise ValueError(f"{name} must be a non-empty tuple of positive integers, got {value!r}")
        if not (isinstance(self.max_step, (int, float)) and math.isfinite(self.max_step) and self.max_step > 0):
            raise ValueError(f"max_step must be a positive finite number of voxels, got {self.max_step!r}")
        bounds = (self.log_std_min, self.log_std_max)
        if not all(isinstance(b, (int, float)) and math.isfinite(b) for b in bounds):
            raise ValueError(f"log_std_min and log_std_max must be finite numbers, got {bounds}")
        if not self.log_std_min < self.log_std_max:
            raise ValueError(f"log_std_min must be < log_std_max, got {bounds}")
        choices = {"norm": ("none", "instance"), "padding": ("zeros", "reflect"), "down_kernel": (3, 4),
                   "plan_shape": ("vector", "map"), "memory": ("none", "gru")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.plan_shape == "map" and self.plan_dim % self.plan_grid**self.ndim:
            raise ValueError(f"plan_shape 'map' needs plan_dim to be a multiple of plan_grid**ndim = "
                             f"{self.plan_grid**self.ndim}, got {self.plan_dim}")

    @property
    def multiple(self) -> int:
        """Spatial sizes are padded to a multiple of this (``2**(len(widths) - 1)``) inside the planner."""
        return 2 ** (len(self.widths) - 1)

    @property
    def action_channels(self) -> int:
        """Channels of the actor's output (``out_channels``, which is ``ndim`` unless set)."""
        assert self.out_channels is not None  # resolved in __post_init__
        return self.out_channels

    @property
    def plan_channels(self) -> int:
        """Channels of a ``plan_shape="map"`` plan: ``plan_dim / plan_grid**ndim``."""
        return self.plan_dim // self.plan_grid**self.ndim


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# ------------------------------------------------------------------------------------------------- layers
_CONV: dict[int, type[nn.Module]] = {2: nn.Conv2d, 3: nn.Conv3d}
_INSTANCE_NORM: dict[int, type[nn.Module]] = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_ADAPTIVE_AVG_POOL = {2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
_LINEAR_MODE = {2: "bilinear", 3: "trilinear"}


def _weight_and_bias(layer: nn.Module) -> tuple[Tensor, Tensor]:
    """The weight and bias of a conv or linear layer (every one built here has a bias)."""
    weight, bias = layer.weight, layer.bias
    if not isinstance(weight, Tensor) or not isinstance(bias, Tensor):
        raise TypeError(f"{type(layer).__name__}: needs a weight and a bias tensor to initialise")
    return weight, bias


def _he_init(layer: nn.Module) -> nn.Module:
    """He (Kaiming) normal init for a conv/linear layer followed by LeakyReLU(0.2), zero bias; returns ``layer``.

    PyTorch's default init scales each layer's output std by about ``1/sqrt(3)``; through the actor's eight decoder
    convs that shrinks the plan's contribution ~1000-fold relative to the shallow skips, so a fresh actor would
    all but ignore its plan. He init keeps the signal scale through depth.
    """
    weight, bias = _weight_and_bias(layer)
    nn.init.kaiming_normal_(weight, a=_NEGATIVE_SLOPE, nonlinearity="leaky_relu")
    nn.init.zeros_(bias)
    return layer


def _conv(ndim: int, in_channels: int, out_channels: int, stride: int = 1, kernel: int = 3,
          padding_mode: str = "zeros") -> nn.Module:
    """Convolution with padding 1: 3x3(x3) keeps the size at stride 1 and gives ``ceil(n / 2)`` at stride 2;
    4x4(x4) (stride 2 only) gives ``floor(n / 2)``."""
    return _CONV[ndim](in_channels, out_channels, kernel_size=kernel, stride=stride, padding=1,
                       padding_mode=padding_mode)


def _conv_block(config: NetworkConfig, in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """Two convs with LeakyReLU(0.2), each followed by instance norm if configured; the first may have stride 2
    (halving the size, with a ``down_kernel`` kernel). Without norm the layer indices are those of the shipped
    checkpoints (``0`` and ``2``)."""
    ndim = config.ndim
    first = config.down_kernel if stride == 2 else 3
    layers: list[nn.Module] = []
    for cin, kernel, conv_stride in ((in_channels, first, stride), (out_channels, 3, 1)):
        layers.append(_he_init(_conv(ndim, cin, out_channels, conv_stride, kernel, config.padding)))
        if config.norm == "instance":
            layers.append(_INSTANCE_NORM[ndim](out_channels, affine=True))
        layers.append(nn.LeakyReLU(_NEGATIVE_SLOPE))
    return nn.Sequential(*layers)


class ConvGRU(nn.Module):
    """Convolutional GRU cell (Ballas et al., ICLR 2016) over ``(N, C, *S)`` feature maps, 3x3(x3) gates.

    ``z, r = sigmoid(conv([x, h]))``, ``c = tanh(conv([x, r * h]))``, ``h' = (1 - z) h + z c``; a missing ``h``
    is zero. The memory RL-I2IT's video style transfer carries across steps and frames.
    """

    def __init__(self, ndim: int, channels: int, padding_mode: str = "zeros") -> None:
        super().__init__()
        self.gates = _conv(ndim, 2 * channels, 2 * channels, padding_mode=padding_mode)
        self.candidate = _conv(ndim, 2 * channels, channels, padding_mode=padding_mode)

    def forward(self, x: Tensor, hidden: Tensor | None) -> Tensor:
        """``x``, ``hidden`` ``(N, C, *S)`` (``hidden`` may be ``None``) -> new hidden state ``(N, C, *S)``."""
        if hidden is None:
            hidden = torch.zeros_like(x)
        elif hidden.shape != x.shape:
            raise ValueError(f"memory must be {tuple(x.shape)} (the planner's deepest features), "
                             f"got {tuple(hidden.shape)}")
        update, reset = torch.sigmoid(self.gates(torch.cat([x, hidden], dim=1))).chunk(2, dim=1)
        candidate = torch.tanh(self.candidate(torch.cat([x, reset * hidden], dim=1)))
        return (1.0 - update) * hidden + update * candidate


def _check_state(state: Tensor, config: NetworkConfig, owner: str) -> None:
    if state.ndim != config.ndim + 2 or state.shape[1] != config.in_channels:
        raise ValueError(f"{owner} expects a state (N, {config.in_channels}, *S) with {config.ndim} spatial dims, "
                         f"got shape {tuple(state.shape)}")


def _check_plan(plan: Tensor, config: NetworkConfig, owner: str, batch: int | None = None) -> None:
    if plan.ndim != 2 or plan.shape[1] != config.plan_dim or (batch is not None and plan.shape[0] != batch):
        expected = f"({batch if batch is not None else 'N'}, {config.plan_dim})"
        raise ValueError(f"{owner} expects a plan {expected}, got shape {tuple(plan.shape)}")


# ------------------------------------------------------------------------------------------------- planner
class PlanOutput(NamedTuple):
    """What the :class:`Planner` returns."""

    mean: Tensor
    """``(N, plan_dim)`` mean of the Gaussian plan."""
    log_std: Tensor
    """``(N, plan_dim)`` log standard deviation, already bounded to ``[log_std_min, log_std_max]``."""
    skips: list[Tensor]
    """Encoder features, one per level: level ``k`` is ``(N, widths[k], *P / 2**k)`` on the padded grid ``P``."""
    shape: tuple[int, ...]
    """The original (unpadded) spatial size ``S`` of the state; the actor crops its output back to it."""
    memory: Tensor | None = None
    """``(N, widths[-1], *P / 2**(depth - 1))`` the GRU memory after this state (``memory="gru"``), else ``None``."""


class Planner(nn.Module):
    """Stochastic planner: state -> diagonal Gaussian plan (the meta-action) and U-Net skip features.

    Encoder: per level two 3x3(x3) convs with LeakyReLU(0.2); level 0 at full resolution, every next level starts
    with a stride-2 conv. With ``memory="gru"`` a :class:`ConvGRU` turns the last feature map and the previous
    memory into the new memory, which replaces that map (as feature and as the actor's deepest skip). The last
    feature map is average-pooled to ``plan_grid**ndim``, flattened and mapped linearly to the plan's mean and raw
    log-std (``plan_shape="map"``: a 1x1 conv on the pooled map, then flattened); the log-std is bounded smoothly,
    ``log_std_min + (log_std_max - log_std_min) * (tanh(raw) + 1) / 2`` (as SPAC does for its log-variance).
    Hidden layers use He init; the head keeps PyTorch's default (smaller) init, so a fresh planner's mean is
    ``O(0.1)`` and its log-std spreads around the midpoint of the bounds.

    Any spatial size works: the state is **zero-padded at the high end** of each axis to a multiple of
    ``2**(len(widths) - 1)`` so that the decoder's x2 upsamplings land exactly on the skip sizes. Zero padding
    matches the background of the normalised images and :func:`rlreg.spatial.warp`'s default outside value, so
    the padding looks like more background rather than stretched border intensities.
    """

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        ndim, widths = config.ndim, config.widths
        channels = (config.in_channels, *widths)
        self.levels = nn.ModuleList(
            _conv_block(config, channels[k], channels[k + 1], stride=1 if k == 0 else 2) for k in range(len(widths))
        )
        if config.memory == "gru":
            self.memory = ConvGRU(ndim, widths[-1], config.padding)
        self.head: nn.Module
        if config.plan_shape == "map":
            self.head = _CONV[ndim](widths[-1], 2 * config.plan_channels, kernel_size=1)
        else:
            self.head = nn.Linear(widths[-1] * config.plan_grid**ndim, 2 * config.plan_dim)

    def forward(self, state: Tensor, memory: Tensor | None = None) -> PlanOutput:
        """Plan for a batch of states.

        Args:
            state: ``(N, in_channels, *S)`` state (registration: fixed and warped moving image, intensities about
                ``[0, 1]``), any spatial size ``S``.
            memory: the previous :attr:`PlanOutput.memory` (``memory="gru"``), or ``None`` for a zero memory
                (first step); must be ``None`` without a memory.

        Returns:
            :class:`PlanOutput` with ``mean`` and bounded ``log_std`` ``(N, plan_dim)``, the per-level skip
            features on the padded grid, ``shape = S`` and the new memory.
        """
        config = self.config
        _check_state(state, config, "Planner")
        shape = tuple(int(n) for n in state.shape[2:])
        padded = [-(-n // config.multiple) * config.multiple for n in shape]
        pad: list[int] = []
        for n, p in zip(reversed(shape), reversed(padded), strict=True):
            pad += [0, p - n]  # F.pad lists the last axis first
        x = F.pad(state, pad) if any(pad) else state
        skips: list[Tensor] = []
        for level in self.levels:
            x = level(x)
            skips.append(x)
        new_memory = None
        if config.memory == "gru":
            x = new_memory = self.memory(x, memory)
            skips[-1] = x
        elif memory is not None:
            raise ValueError("this planner has no memory (network.memory='none'); pass memory=None")
        pooled = _ADAPTIVE_AVG_POOL[config.ndim](x, config.plan_grid)
        if config.plan_shape == "map":
            mean, raw_log_std = (half.flatten(1) for half in self.head(pooled).chunk(2, dim=1))
        else:
            mean, raw_log_std = self.head(pooled.flatten(1)).chunk(2, dim=1)
        span = config.log_std_max - config.log_std_min
        log_std = config.log_std_min + 0.5 * span * (torch.tanh(raw_log_std) + 1.0)
        return PlanOutput(mean, log_std, skips, shape, new_memory)


# ------------------------------------------------------------------------------------------------- actor
class Actor(nn.Module):
    """Deterministic actor: plan + planner skips -> bounded action (a nearest-upsampling U-Net decoder).

    ``Linear(plan_dim -> widths[-1] * plan_grid**ndim)`` (``plan_shape="map"``: a 1x1 conv of the plan map) gives
    a ``plan_grid**ndim`` feature map, resized
    (bi/trilinearly) to the deepest skip's size and concatenated with it; a conv block follows. Then, level by
    level up to full resolution: nearest x2 upsampling, concatenation with the next shallower skip, conv block
    (decoder level ``k`` has ``widths[k]`` channels). A last 3x3(x3) conv gives ``out_channels`` channels; it is
    initialised with ``N(0, 1e-5)`` weights and zero bias (VoxelMorph's flow layer), so a fresh actor's action is
    about zero. The output is ``max_step * tanh(raw)``, cropped back to the state's original size.
    """

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        ndim, widths = config.ndim, config.widths
        self.bridge: nn.Module
        if config.plan_shape == "map":
            self.bridge = _he_init(_CONV[ndim](config.plan_channels, widths[-1], kernel_size=1))
        else:
            self.bridge = _he_init(nn.Linear(config.plan_dim, widths[-1] * config.plan_grid**ndim))
        depth = len(widths)
        blocks = [_conv_block(config, 2 * widths[-1], widths[-1])]
        blocks += [_conv_block(config, widths[k + 1] + widths[k], widths[k]) for k in reversed(range(depth - 1))]
        self.blocks = nn.ModuleList(blocks)  # deepest first
        self.flow = _conv(ndim, widths[0], config.action_channels, padding_mode=config.padding)
        flow_weight, flow_bias = _weight_and_bias(self.flow)
        nn.init.normal_(flow_weight, mean=0.0, std=_FLOW_INIT_STD)
        nn.init.zeros_(flow_bias)

    def forward(self, plan: Tensor, skips: Sequence[Tensor], shape: Sequence[int]) -> Tensor:
        """Action (registration: a step displacement) for a batch of plans.

        Args:
            plan: ``(N, plan_dim)`` plan (a Gaussian sample in training, the mean at test time).
            skips: the planner's per-level features (:attr:`PlanOutput.skips`), shallowest first.
            shape: the original spatial size ``S`` (:attr:`PlanOutput.shape`).

        Returns:
            ``(N, out_channels, *S)`` action (registration: voxels), every component in ``(-max_step, max_step)``.
        """
        config = self.config
        ndim = config.ndim
        if len(skips) != len(config.widths):
            raise ValueError(f"Actor expects {len(config.widths)} skip features, got {len(skips)}")
        shape = tuple(int(n) for n in shape)
        if len(shape) != ndim:
            raise ValueError(f"shape {shape} must have {ndim} spatial dims")
        if any(p < n for p, n in zip(skips[0].shape[2:], shape, strict=True)):
            raise ValueError(f"skips of spatial size {tuple(skips[0].shape[2:])} are smaller than shape {shape}")
        deepest = skips[-1]
        _check_plan(plan, config, "Actor", batch=deepest.shape[0])
        grid = (config.plan_grid,) * ndim
        if config.plan_shape == "map":
            x = F.leaky_relu(self.bridge(plan.view(plan.shape[0], config.plan_channels, *grid)), _NEGATIVE_SLOPE)
        else:
            x = F.leaky_relu(self.bridge(plan), _NEGATIVE_SLOPE).view(plan.shape[0], config.widths[-1], *grid)
        if tuple(deepest.shape[2:]) != grid:
            x = F.interpolate(x, size=deepest.shape[2:], mode=_LINEAR_MODE[ndim], align_corners=False)
        x = self.blocks[0](torch.cat([x, deepest], dim=1))
        for block, skip in zip(self.blocks[1:], reversed(skips[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[2:], mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
        step = config.max_step * torch.tanh(self.flow(x))
        return step[(slice(None), slice(None), *(slice(0, n) for n in shape))]


# ------------------------------------------------------------------------------------------------- critics
class Critic(nn.Module):
    """Soft Q-function ``Q(state, plan)``: it scores the low-dimensional plan, not the dense field.

    Image encoder: one stride-2 conv (``down_kernel``, ``padding``) with LeakyReLU(0.2) per entry of
    ``critic_widths``; the result is
    average-pooled to ``plan_grid**ndim`` (any input size) and flattened, so Q keeps *where* the state is
    misaligned (as the official SPAC critic does with a conv over its final ``4**3`` map) and can relate it to the
    plan, whose actor bridge is spatial too. The features are concatenated with the plan and an MLP
    ``(critic_hidden, critic_hidden) -> 1`` with LeakyReLU(0.2) gives Q.
    """

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        ndim = config.ndim
        channels = (config.in_channels, *config.critic_widths)
        layers: list[nn.Module] = []
        for k in range(len(config.critic_widths)):
            conv = _conv(ndim, channels[k], channels[k + 1], 2, config.down_kernel, config.padding)
            layers += [_he_init(conv), nn.LeakyReLU(_NEGATIVE_SLOPE)]
        self.encoder = nn.Sequential(*layers)
        features = config.critic_widths[-1] * config.plan_grid**ndim
        self.mlp = nn.Sequential(
            _he_init(nn.Linear(features + config.plan_dim, config.critic_hidden)),
            nn.LeakyReLU(_NEGATIVE_SLOPE),
            _he_init(nn.Linear(config.critic_hidden, config.critic_hidden)),
            nn.LeakyReLU(_NEGATIVE_SLOPE),
            nn.Linear(config.critic_hidden, 1),
        )

    def forward(self, state: Tensor, plan: Tensor) -> Tensor:
        """``(N, in_channels, *S)`` state (any ``S``), ``(N, plan_dim)`` plan -> ``(N,)`` Q-values."""
        config = self.config
        _check_state(state, config, "Critic")
        _check_plan(plan, config, "Critic", batch=state.shape[0])
        pooled = _ADAPTIVE_AVG_POOL[config.ndim](self.encoder(state), config.plan_grid)
        return self.mlp(torch.cat([pooled.flatten(1), plan], dim=1)).squeeze(1)


class TwinCritic(nn.Module):
    """Two independent :class:`Critic` networks (clipped double-Q): ``forward(state, plan) -> (q1, q2)``."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.q1 = Critic(config)
        self.q2 = Critic(config)

    def forward(self, state: Tensor, plan: Tensor) -> tuple[Tensor, Tensor]:
        """``(N, in_channels, *S)`` state, ``(N, plan_dim)`` plan -> two ``(N,)`` Q-value tensors."""
        return self.q1(state, plan), self.q2(state, plan)


def count_parameters(module: nn.Module) -> int:
    """Number of parameter values (elements) of ``module``, each shared parameter counted once."""
    return sum(p.numel() for p in module.parameters())
