"""Deformable registration as a vectorised RL task: ``B`` image pairs step together on the device.

The state of pair ``b`` is ``[fixed, moving warped by the accumulated field]`` (``(2, *S)``). An action is a small
voxel displacement ``a_t`` (``(ndim, *S)``, conventions of :mod:`rlreg.spatial`); the accumulated field is updated
by composition, ``u_t = compose(u_{t-1}, a_t)``, i.e. ``u_t(x) = a_t(x) + u_{t-1}(x + a_t(x))``, and the
**original** moving image (and its segmentation, label-safely) is re-warped by ``u_t``: one resampling per step,
never a resampling of an already resampled image (SPAC, RL-I2IT).

Reward (``reward_scale x`` the change of a score, SPAC's ``100 x (Dice_t - Dice_{t-1})``):

* ``"dice"``: mean per-label Dice of the warped moving segmentation against the fixed one (labels ``1..L``;
  labels absent from both maps of a pair are left out of that pair's mean). Needs segmentations.
* ``"kmeans"``: the same Dice on K-means pseudo-labels of the images (RL-I2IT's label-free reward): fixed and
  original moving are clustered once per episode, the moving pseudo-labels are warped like a segmentation.
* ``"lncc"``: single-window squared local NCC of fixed and warped moving (a label-free fallback).

With a Dice score an episode **terminates** (no bootstrapping) when the score exceeds ``success_dice``, with a
``success_bonus`` added to the reward; it is **truncated** (bootstrapping) after ``max_steps`` steps otherwise.
Every quantity is computed batched on the device of the input images; nothing loops over pairs or labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from rlreg.losses import diffusion, lncc, multiscale_lncc
from rlreg.metrics import batch_dice, warped_soft_dice
from rlreg.spatial import InterpMode, compose, folding_percent, warp
from rlreg.tasks.base import StepResult

__all__ = ["REWARDS", "RegistrationBatch", "RegistrationConfig", "RegistrationTask", "kmeans_labels"]

REWARDS = ("dice", "lncc", "kmeans")
"""Accepted values of :attr:`RegistrationConfig.reward`."""


@dataclass(frozen=True)
class RegistrationConfig:
    """Episode, reward and auxiliary-loss settings of :class:`RegistrationTask` (saved with a checkpoint)."""

    max_steps: int = 20
    """Episode length cap in steps; reaching it truncates the episode (the value target still bootstraps)."""
    reward: str = "dice"
    """Score whose change is the reward: ``"dice"`` (segmentations), ``"kmeans"`` (Dice of K-means pseudo-labels of
    the images) or ``"lncc"`` (single-window squared local NCC); the last two need no segmentations."""
    reward_scale: float = 100.0
    """Reward per unit of score gain: ``reward = reward_scale * (score_t - score_{t-1})`` (SPAC: 100)."""
    success_dice: float = 0.98
    """Dice (``"dice"``/``"kmeans"`` rewards) above which an episode terminates as solved (SPAC: 0.98)."""
    success_bonus: float = 10.0
    """Reward added on the step that terminates an episode as solved (SPAC: 10)."""
    kmeans_clusters: int = 3
    """Intensity classes of the ``"kmeans"`` reward; the darkest is background, the others are scored labels."""
    kmeans_iterations: int = 10
    """Lloyd iterations of the 1-D K-means (a fixed count: no data-dependent stopping, no host sync)."""
    lncc_window: int = 9
    """Odd window width in voxels of the ``"lncc"`` reward's local NCC."""
    aux_windows: tuple[int, ...] = (9, 7, 5)
    """Odd LNCC windows (voxels) of the auxiliary similarity (SPAC / RL-I2IT: 9, 7, 5)."""
    aux_window_weights: tuple[float, ...] = (1.0, 0.5, 0.25)
    """Weight of each auxiliary LNCC window; the similarity is normalised by their sum (SPAC: 1, 1/2, 1/4)."""
    aux_downsample: bool = False
    """Evaluate auxiliary window ``k`` on images average-pooled ``k`` times, as SPAC's public code does."""
    aux_smoothness: float = 1.0
    """Weight of the diffusion regulariser of the step field in the auxiliary loss (SPAC: 1)."""
    aux_dice: float = 1.0
    """Weight of the soft-Dice term of the auxiliary loss when segmentations are stored as extras (0 disables)."""
    aux_dice_smooth: float = 1e-5
    """Smoothing added to numerator and denominator of the auxiliary soft Dice (a label absent from both scores 1)."""
    num_labels: int | None = None
    """Number of foreground labels of the segmentations (values ``0..num_labels``, 0 = background). ``None``:
    inferred at reset from the largest label present (one host sync per reset)."""

    def __post_init__(self) -> None:
        if self.reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {self.reward!r}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.kmeans_clusters < 2 or self.kmeans_iterations < 0:
            raise ValueError(f"need kmeans_clusters >= 2 and kmeans_iterations >= 0, got {self.kmeans_clusters} "
                             f"and {self.kmeans_iterations}")
        if self.lncc_window < 1 or self.lncc_window % 2 == 0:
            raise ValueError(f"lncc_window must be a positive odd integer, got {self.lncc_window}")
        if not self.aux_windows or len(self.aux_windows) != len(self.aux_window_weights):
            raise ValueError(f"need one weight per auxiliary window, got {self.aux_windows} and "
                             f"{self.aux_window_weights}")
        if self.aux_smoothness < 0 or self.aux_dice < 0:
            raise ValueError("aux_smoothness and aux_dice must be non-negative")
        if self.num_labels is not None and self.num_labels < 1:
            raise ValueError(f"num_labels must be >= 1 or None, got {self.num_labels}")


class RegistrationBatch(NamedTuple):
    """``B`` image pairs to register, the batch of :meth:`RegistrationTask.reset` (any object with these four fields
    works, e.g. the digits and synthetic data sources' batches)."""

    fixed: Tensor
    """``(B, 1, *S)`` float fixed images (2D or 3D), e.g. intensities normalised to ``[0, 1]``."""
    moving: Tensor
    """``(B, 1, *S)`` moving images on the same grid."""
    fixed_seg: Tensor | None = None
    """``(B, 1, *S)`` integer segmentation of ``fixed`` (values ``0..L``), or ``None``."""
    moving_seg: Tensor | None = None
    """``(B, 1, *S)`` integer segmentation of ``moving``; both or neither must be given."""


# ------------------------------------------------------------------------------------------------- functions
def kmeans_labels(images: Tensor, clusters: int, iterations: int = 10) -> Tensor:
    """K-means pseudo-labels of the intensities of each image, ``0..clusters-1`` ordered by cluster mean intensity.

    Batched 1-D Lloyd iterations per image. In one dimension the clusters are intervals of the sorted intensities
    separated by the midpoints of adjacent centres, so each image is sorted once and every iteration only needs a
    ``searchsorted`` for the ``clusters - 1`` boundaries and cumulative sums (float64) for the cluster means:
    ``O(V log V)`` once, then ``O(clusters log V)`` per iteration, ``O(V)`` memory, no random numbers. Centres start
    at the intensity quantiles ``(k + 1/2) / clusters``, each lifted to at least ``min + k (max - min) / clusters`` so
    that a large flat background (many tied quantiles) cannot collapse several clusters into one. Centres stay
    sorted, so label ``k`` is the ``k``-th darkest cluster and pseudo-labels of two images are comparable. An empty
    cluster keeps its previous centre; a constant image gets label 0 everywhere.

    Args:
        images: ``(B, 1, *S)`` float images.
        clusters: number of classes ``K >= 2``.
        iterations: Lloyd iterations (fixed count).

    Returns:
        ``(B, 1, *S)`` int64 labels on the device of ``images``.
    """
    if images.ndim < 3 or images.shape[1] != 1:
        raise ValueError(f"images must be (B, 1, *S), got {tuple(images.shape)}")
    if clusters < 2:
        raise ValueError(f"clusters must be >= 2, got {clusters}")
    batch = images.shape[0]
    values = images.detach().reshape(batch, -1)
    if not values.is_floating_point():
        values = values.to(torch.get_default_dtype())
    ordered = values.sort(dim=1).values.contiguous()
    n = ordered.shape[1]
    acc = torch.float64
    k = torch.arange(clusters, device=values.device, dtype=acc)
    quantile_index = ((k + 0.5) / clusters * (n - 1)).round().long()
    low, high = ordered[:, :1].to(acc), ordered[:, -1:].to(acc)
    centres = torch.maximum(ordered[:, quantile_index].to(acc), low + (high - low) * k / clusters)
    cumulative = torch.cat([ordered.new_zeros(batch, 1, dtype=acc), ordered.to(acc).cumsum(1)], dim=1)
    first = torch.zeros(batch, 1, dtype=torch.long, device=values.device)
    last = torch.full_like(first, n)
    for _ in range(iterations):
        # Cluster j holds the sorted values in (mid_{j-1}, mid_j]: boundaries are counts of values <= each midpoint.
        mids = ((centres[:, 1:] + centres[:, :-1]) / 2).to(ordered.dtype).contiguous()
        edges = torch.cat([first, torch.searchsorted(ordered, mids, right=True), last], dim=1)
        sums = cumulative.gather(1, edges[:, 1:]) - cumulative.gather(1, edges[:, :-1])
        counts = (edges[:, 1:] - edges[:, :-1]).to(acc)
        centres = torch.where(counts > 0, sums / counts.clamp_min(1.0), centres).sort(dim=1).values
    mids = ((centres[:, 1:] + centres[:, :-1]) / 2).to(ordered.dtype).contiguous()
    # Number of midpoints strictly below the value: a value on a midpoint joins the darker cluster, as above.
    labels = torch.searchsorted(mids, values.contiguous(), right=False)
    return labels.reshape(images.shape)


# ------------------------------------------------------------------------------------------------- task
class RegistrationTask:
    """``B`` registration episodes stepping together on the device of the images (implements :class:`Task`).

    Readable attributes after :meth:`reset`: ``fixed``, ``moving`` ``(B, 1, *S)`` float; ``fixed_seg``,
    ``moving_seg`` ``(B, 1, *S)`` integer or ``None``; ``field`` ``(B, ndim, *S)`` accumulated voxel displacement;
    ``warped`` ``(B, 1, *S)`` original moving image warped by ``field`` (bilinear); ``warped_seg`` (label-safe
    warp of ``moving_seg``, or ``None``); ``score`` ``(B,)`` current score; ``steps`` ``(B,)`` int64 steps taken in
    the current episode; ``num_labels`` (foreground labels of the segmentations, or ``None`` without them).
    """

    fixed: Tensor
    moving: Tensor
    fixed_seg: Tensor | None
    moving_seg: Tensor | None
    field: Tensor
    warped: Tensor
    warped_seg: Tensor | None
    score: Tensor
    steps: Tensor
    num_labels: int | None

    score_name = "dice"
    """Evaluation records call the score Dice (with ``reward="lncc"`` it is the single-window LNCC)."""

    def __init__(self, config: RegistrationConfig) -> None:
        self.config = config
        self._ready = False
        self.score = torch.zeros(0)  # (B,) after reset
        # Label maps the Dice score is computed on: the segmentations ("dice") or K-means pseudo-labels ("kmeans").
        self._fixed_labels: Tensor | None = None
        self._moving_labels: Tensor | None = None
        self._warped_labels: Tensor | None = None
        self._score_labels = 0

    # ------------------------------------------------------------------------------------------ episodes
    def reset(self, batch: RegistrationBatch) -> Tensor:
        """Start ``B`` new episodes with a zero field.

        Args:
            batch: the pairs (:class:`RegistrationBatch` or any object with its fields). Segmentations are stored
                in ``fixed_seg``'s dtype: a compact one (``uint8``, ``int16``) keeps replay extras small.

        Returns:
            ``(B, 2, *S)`` state ``[fixed, moving]``.
        """
        fixed, moving, fixed_seg, moving_seg = batch.fixed, batch.moving, batch.fixed_seg, batch.moving_seg
        self._check_inputs(fixed, moving, fixed_seg, moving_seg)
        if self.config.reward == "dice" and fixed_seg is None:
            raise ValueError('reward="dice" needs fixed_seg and moving_seg; use reward="kmeans" or "lncc" to '
                             "register without segmentations")
        with torch.no_grad():
            self.fixed = fixed.detach()
            self.moving = moving.detach().to(fixed.dtype)
            self.fixed_seg = self.moving_seg = None
            if fixed_seg is not None and moving_seg is not None:
                self.fixed_seg, self.moving_seg = fixed_seg.detach(), moving_seg.detach().to(fixed_seg.dtype)
            self.num_labels = self._infer_num_labels(self.fixed_seg, self.moving_seg, None)
            self._set_score_labels()
            self.field = torch.zeros((fixed.shape[0], fixed.ndim - 2, *fixed.shape[2:]), dtype=fixed.dtype,
                                     device=fixed.device)
            self.steps = torch.zeros(fixed.shape[0], dtype=torch.long, device=fixed.device)
            self._ready = True
            self._refresh(fresh=True)
        return self.observe()

    def reset_done(self, done: Tensor, batch: RegistrationBatch) -> Tensor:
        """Replace the pairs where ``done`` is true by new ones; the other episodes continue untouched.

        Args:
            done: ``(B,)`` bool, typically ``terminated | truncated`` of the last step.
            batch: full-batch pairs as in :meth:`reset`; only rows where ``done`` is true are read. Segmentations
                are required exactly when the task was reset with them.

        Returns:
            ``(B, 2, *S)`` state: new pairs start at ``[fixed, moving]`` with a zero field and step counter.
        """
        fixed, moving, fixed_seg, moving_seg = batch.fixed, batch.moving, batch.fixed_seg, batch.moving_seg
        self._require_reset()
        self._check_inputs(fixed, moving, fixed_seg, moving_seg)
        if fixed.shape != self.fixed.shape:
            raise ValueError(f"new pairs {tuple(fixed.shape)} must match the batch {tuple(self.fixed.shape)}")
        if (fixed_seg is None) != (self.fixed_seg is None):
            raise ValueError("segmentations must be given to reset_done exactly when they were given to reset")
        if done.shape != (fixed.shape[0],):
            raise ValueError(f"done must be ({fixed.shape[0]},), got {tuple(done.shape)}")
        with torch.no_grad():
            done = done.to(device=fixed.device, dtype=torch.bool)
            rows = done.view(-1, *[1] * (fixed.ndim - 1))
            self.fixed = torch.where(rows, fixed.detach().to(self.fixed.dtype), self.fixed)
            self.moving = torch.where(rows, moving.detach().to(self.moving.dtype), self.moving)
            if fixed_seg is not None and moving_seg is not None:
                assert self.fixed_seg is not None and self.moving_seg is not None
                self.fixed_seg = torch.where(rows, fixed_seg.detach().to(self.fixed_seg.dtype), self.fixed_seg)
                self.moving_seg = torch.where(rows, moving_seg.detach().to(self.moving_seg.dtype), self.moving_seg)
                new_fixed = torch.where(rows, fixed_seg, 0)
                new_moving = torch.where(rows, moving_seg, 0)
                self.num_labels = self._infer_num_labels(new_fixed, new_moving, self.num_labels)
            if self.config.reward == "kmeans":
                assert self._fixed_labels is not None and self._moving_labels is not None
                clusters, iterations = self.config.kmeans_clusters, self.config.kmeans_iterations
                self._fixed_labels = torch.where(rows, kmeans_labels(fixed, clusters, iterations), self._fixed_labels)
                self._moving_labels = torch.where(rows, kmeans_labels(moving, clusters, iterations),
                                                  self._moving_labels)
            else:
                self._set_score_labels()
            self.field = torch.where(rows, torch.zeros_like(self.field), self.field)
            self.steps = torch.where(done, torch.zeros_like(self.steps), self.steps)
            self._refresh(fresh=rows)
        return self.observe()

    # ------------------------------------------------------------------------------------------ Task interface
    def observe(self) -> Tensor:
        """``(B, 2, *S)`` state ``[fixed, moving warped by the accumulated field]``."""
        self._require_reset()
        return torch.cat([self.fixed, self.warped], dim=1)

    def step(self, action: Tensor) -> StepResult:
        """Compose a step field into every pair's accumulated field and re-warp the original moving data.

        ``field <- compose(field, action)`` (``u_t(x) = a_t(x) + u_{t-1}(x + a_t(x))``); ``warped`` and
        ``warped_seg`` are the original ``moving`` / ``moving_seg`` resampled once by the new field (bilinear /
        label-safe). The action is detached: the environment is not part of the autograd graph.

        Args:
            action: ``(B, ndim, *S)`` step displacement in voxels (pull-back, channel ``c`` = tensor axis ``c``).

        Returns:
            :class:`StepResult` with ``reward = reward_scale * (score_t - score_{t-1})`` (+ ``success_bonus`` when
            terminated); ``terminated = score > success_dice`` for Dice scores (never for ``"lncc"``);
            ``truncated = steps >= max_steps & ~terminated``. Rewards and scores in the images' dtype.
        """
        self._require_reset()
        if action.shape != self.field.shape:
            raise ValueError(f"action must be (B, ndim, *S) = {tuple(self.field.shape)}, got {tuple(action.shape)}")
        cfg = self.config
        with torch.no_grad():
            previous = self.score
            self.field = compose(self.field, action.detach().to(self.field.dtype))
            self.steps = self.steps + 1
            self._refresh()
            if cfg.reward == "lncc":
                terminated = torch.zeros_like(self.steps, dtype=torch.bool)
            else:
                terminated = self.score > cfg.success_dice
            reward = cfg.reward_scale * (self.score - previous) + cfg.success_bonus * terminated.to(self.score.dtype)
            truncated = (self.steps >= cfg.max_steps) & ~terminated
        return StepResult(self.observe(), reward, terminated, truncated, self.score)

    def metrics(self) -> dict[str, Tensor]:
        """``(B,)`` measures for evaluations: ``dice_any``, the Dice of the images binarised at ``> 0`` (the
        paper's digits measure; the moving one warped label-safely by the field), and ``folding_percent``, the
        percentage of voxels with a non-positive Jacobian determinant of the accumulated field."""
        self._require_reset()
        fixed_any, moving_any = (self.fixed > 0).long(), (self.moving > 0).long()
        fresh = bool((self.steps == 0).all())
        warped_any = moving_any if fresh else warp(moving_any, self.field, InterpMode.LABEL)
        return {"dice_any": batch_dice(warped_any, fixed_any, 1), "folding_percent": folding_percent(self.field)}

    def extras(self) -> Tensor | None:
        """``(B, 2, *S)`` ``[fixed_seg, warped_seg]`` in the segmentations' dtype, or ``None`` without them."""
        self._require_reset()
        if self.fixed_seg is None or self.warped_seg is None:
            return None
        return torch.cat([self.fixed_seg, self.warped_seg], dim=1)

    def auxiliary_loss(self, state: Tensor, action: Tensor, extras: Tensor | None) -> Tensor:
        """One-step auxiliary loss of taking ``action`` in ``state`` (SPAC / RL-I2IT), differentiable in ``action``.

        ``1 - multiscale_lncc(fixed, warp(warped, action)) + aux_smoothness * diffusion(action)``, plus, when
        ``extras`` holds segmentations and ``aux_dice > 0``,
        ``aux_dice * (1 - soft_dice(onehot(fixed_seg), warp(onehot(warped_seg), action)))`` over labels ``1..L``
        (one-hot warped bilinearly so the term has a gradient; computed by :func:`warped_soft_dice` without
        building the one-hot maps, memory ``O(2**ndim B V)`` whatever ``L``). The step is applied to the state's
        warped image (the one-step view of the replayed transition), not composed with a field.

        Args:
            state: ``(B, 2, *S)`` ``[fixed, warped moving]`` (e.g. sampled from the replay buffer).
            action: ``(B, ndim, *S)`` step field in voxels, typically the actor's output with a graph.
            extras: ``(B, 2, *S)`` integer ``[fixed_seg, warped_seg]`` from :meth:`extras`, or ``None``.

        Returns:
            Scalar loss (mean over the batch), dtype of ``action``.
        """
        cfg = self.config
        ndim = state.ndim - 2
        if state.shape[1] != 2 or action.shape != (state.shape[0], ndim, *state.shape[2:]):
            raise ValueError(f"state must be (B, 2, *S) and action (B, ndim, *S); got {tuple(state.shape)} and "
                             f"{tuple(action.shape)}")
        fixed, warped = state[:, :1].to(action.dtype), state[:, 1:2].to(action.dtype)
        moved = warp(warped, action)
        loss = 1.0 - multiscale_lncc(fixed, moved, cfg.aux_windows, cfg.aux_window_weights,
                                     downsample=cfg.aux_downsample)
        if cfg.aux_smoothness > 0:
            loss = loss + cfg.aux_smoothness * diffusion(action)
        if extras is not None and cfg.aux_dice > 0:
            if extras.shape != state.shape:
                raise ValueError(f"extras must be (B, 2, *S) = {tuple(state.shape)}, got {tuple(extras.shape)}")
            num_labels = self.num_labels if self._ready and self.num_labels is not None else None
            if num_labels is None:  # not reset with segmentations: infer from the extras (one host sync)
                num_labels = max(int(extras.max()), 1)
            dice = warped_soft_dice(extras[:, :1], extras[:, 1:2], action, num_labels, cfg.aux_dice_smooth)
            loss = loss + cfg.aux_dice * (1.0 - dice.mean())
        return loss

    # ------------------------------------------------------------------------------------------ resuming
    _STATE_TENSORS = ("fixed", "moving", "fixed_seg", "moving_seg", "field", "score", "steps", "_fixed_labels",
                      "_moving_labels")

    def state_dict(self) -> dict[str, Any]:
        """The running episodes, for resumable training: tensors, ints and ``None`` only (``weights_only``-safe).

        Warped data are not saved: :meth:`load_state_dict` recomputes them from the field.
        """
        self._require_reset()
        state: dict[str, Any] = {name: getattr(self, name) for name in self._STATE_TENSORS}
        state.update(num_labels=self.num_labels, score_labels=self._score_labels)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output: the episodes continue exactly where they were saved."""
        for name in self._STATE_TENSORS:
            setattr(self, name, state[name])
        self.num_labels, self._score_labels = state["num_labels"], int(state["score_labels"])
        self._ready = True
        with torch.no_grad():
            saved_score = self.score
            # Episodes that have not stepped yet have a zero field and read the original data as after a reset.
            self._refresh(fresh=(self.steps == 0).view(-1, *[1] * (self.fixed.ndim - 1)))
            self.score = saved_score

    # ------------------------------------------------------------------------------------------ internals
    def _require_reset(self) -> None:
        if not self._ready:
            raise RuntimeError("call reset() before using the task")

    @staticmethod
    def _check_inputs(fixed: Tensor, moving: Tensor, fixed_seg: Tensor | None, moving_seg: Tensor | None) -> None:
        if fixed.ndim not in (4, 5) or fixed.shape[1] != 1:
            raise ValueError(f"fixed must be (B, 1, *S) with 2 or 3 spatial dims, got {tuple(fixed.shape)}")
        if not fixed.is_floating_point():
            raise ValueError(f"images must be floating point, got {fixed.dtype}")
        if moving.shape != fixed.shape:
            raise ValueError(f"moving {tuple(moving.shape)} must have the shape of fixed {tuple(fixed.shape)}")
        if (fixed_seg is None) != (moving_seg is None):
            raise ValueError("give both fixed_seg and moving_seg, or neither")
        for name, seg in (("fixed_seg", fixed_seg), ("moving_seg", moving_seg)):
            if seg is not None and seg.shape != fixed.shape:
                raise ValueError(f"{name} {tuple(seg.shape)} must have the shape of fixed {tuple(fixed.shape)}")

    def _infer_num_labels(self, fixed_seg: Tensor | None, moving_seg: Tensor | None,
                          current: int | None) -> int | None:
        """Configured ``num_labels``, else the largest label present (and at least ``current``), else ``None``."""
        if fixed_seg is None or moving_seg is None:
            return None
        if self.config.num_labels is not None:
            return self.config.num_labels
        largest = int(torch.maximum(fixed_seg.max(), moving_seg.max()))  # one host sync, only here
        return max(largest, current or 0, 1)

    def _set_score_labels(self) -> None:
        """Choose the label maps the score is computed on (segmentations or fresh K-means pseudo-labels)."""
        cfg = self.config
        if cfg.reward == "dice":
            assert self.num_labels is not None
            self._fixed_labels, self._moving_labels = self.fixed_seg, self.moving_seg
            self._score_labels = self.num_labels
        elif cfg.reward == "kmeans":
            self._fixed_labels = kmeans_labels(self.fixed, cfg.kmeans_clusters, cfg.kmeans_iterations)
            self._moving_labels = kmeans_labels(self.moving, cfg.kmeans_clusters, cfg.kmeans_iterations)
            self._score_labels = cfg.kmeans_clusters - 1  # cluster 0, the darkest, is background
        else:
            self._fixed_labels = self._moving_labels = None

    def _refresh(self, fresh: Tensor | bool = False) -> None:
        """Re-warp the original moving data by ``field`` and recompute ``score`` (call under ``no_grad``).

        ``fresh`` marks episodes whose field was just zeroed: ``True`` (all of them), ``False`` (none) or a
        ``(B, 1, ..., 1)`` bool tensor. Fresh rows take the original moving data as is: bit-exact, which a
        zero-field resampling is only up to rounding, and with ``True`` nothing is resampled at all.
        """

        def rewarp(data: Tensor, mode: InterpMode) -> Tensor:
            if fresh is True:
                return data
            warped = warp(data, self.field, mode)
            return warped if fresh is False else torch.where(fresh, data, warped)

        self.warped = rewarp(self.moving, InterpMode.BILINEAR)
        self.warped_seg = None if self.moving_seg is None else rewarp(self.moving_seg, InterpMode.LABEL)
        if self.config.reward == "lncc":
            score = lncc(self.fixed, self.warped, self.config.lncc_window, reduction="batch")
        else:
            assert self._fixed_labels is not None and self._moving_labels is not None
            if self.config.reward == "dice" and self.warped_seg is not None:
                self._warped_labels = self.warped_seg
            else:
                self._warped_labels = rewarp(self._moving_labels, InterpMode.LABEL)
            score = batch_dice(self._warped_labels, self._fixed_labels, self._score_labels)
        self.score = score.to(self.fixed.dtype)
