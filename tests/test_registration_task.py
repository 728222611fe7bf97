"""The registration task: state, composition, rewards, episode ends, partial resets, Dice, K-means, auxiliary loss."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from rlreg.losses import soft_dice
from rlreg.metrics import batch_dice, warped_soft_dice
from rlreg.spatial import compose, warp
from rlreg.tasks import (
    RegistrationBatch,
    RegistrationConfig,
    RegistrationTask,
    StepResult,
    Task,
    kmeans_labels,
)

SHAPES = {2: (20, 18), 3: (12, 14, 10)}
B = 3


def square_pair(ndim: int, shift: int = 2, batch: int = B) -> tuple[torch.Tensor, ...]:
    """Fixed and moving images/segs: a box (label 1) inside a bigger box (label 2), moving shifted by ``shift``
    voxels along axis 0. Pair ``b`` has the inner box at a different place so the pairs differ."""
    shape = SHAPES[ndim]
    fixed_seg = torch.zeros((batch, 1, *shape), dtype=torch.long)
    for b in range(batch):
        outer = tuple(slice(3, n - 4) for n in shape)
        inner = tuple(slice(5 + (b % 2), 9 + (b % 2)) for _ in shape)
        fixed_seg[(b, 0, *outer)] = 2
        fixed_seg[(b, 0, *inner)] = 1
    moving_seg = torch.roll(fixed_seg, shifts=shift, dims=2)
    intensity = torch.tensor([0.0, 1.0, 0.5])
    return intensity[fixed_seg], intensity[moving_seg], fixed_seg, moving_seg


def constant_action(values: list[float], ndim: int, batch: int = B) -> torch.Tensor:
    shape = SHAPES[ndim]
    return torch.tensor(values[:ndim]).view(1, ndim, *[1] * ndim).expand(batch, ndim, *shape).clone()


def smooth_action(ndim: int, amplitude: float, seed: int, batch: int = B) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn((batch, ndim) + (3,) * ndim, generator=gen)
    field = F.interpolate(coarse, size=SHAPES[ndim], mode="bilinear" if ndim == 2 else "trilinear",
                          align_corners=True)
    return field / field.abs().amax() * amplitude


def blob(ndim: int, centre_shift: float = 0.0, batch: int = B) -> torch.Tensor:
    """Smooth Gaussian blob images ``(batch, 1, *S)``; the blob centre is moved by ``centre_shift`` along axis 0."""
    shape = SHAPES[ndim]
    axes = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    r2 = sum((x - (n / 2 + (centre_shift if a == 0 else 0.0))) ** 2 / (0.3 * n) ** 2
             for a, (x, n) in enumerate(zip(axes, shape, strict=True)))
    return torch.exp(-r2).expand(batch, 1, *shape).clone()


# ------------------------------------------------------------------------------------------------- interface
@pytest.mark.parametrize("ndim", [2, 3])
def test_reset_state_and_zero_action(ndim: int) -> None:
    fixed, moving, fseg, mseg = square_pair(ndim)
    task = RegistrationTask(RegistrationConfig())
    assert isinstance(task, Task)
    state = task.reset(RegistrationBatch(fixed, moving, fseg, mseg))
    assert state.shape == (B, 2, *SHAPES[ndim])
    assert torch.equal(state[:, 0:1], fixed) and torch.equal(state[:, 1:2], moving)
    assert torch.equal(task.field, torch.zeros(B, ndim, *SHAPES[ndim]))
    assert task.steps.dtype == torch.long and torch.equal(task.steps, torch.zeros(B, dtype=torch.long))
    assert torch.equal(task.extras(), torch.cat([fseg, mseg], 1))
    start = task.score.clone()
    result = task.step(torch.zeros(B, ndim, *SHAPES[ndim]))
    assert isinstance(result, StepResult)
    assert torch.allclose(result.state, state, atol=1e-6)
    assert torch.equal(result.reward, torch.zeros(B))
    assert torch.equal(result.score, start)
    assert not result.terminated.any() and not result.truncated.any()
    assert torch.equal(task.steps, torch.ones(B, dtype=torch.long))


@pytest.mark.parametrize("ndim", [2, 3])
def test_translation_improves_dice_with_scaled_reward(ndim: int) -> None:
    fixed, moving, fseg, mseg = square_pair(ndim, shift=2)
    task = RegistrationTask(RegistrationConfig())
    task.reset(RegistrationBatch(fixed, moving, fseg, mseg))
    before = task.score.clone()
    # Pull-back: warped(x) = moving(x + u), the moving box sits 2 voxels further along axis 0, so u = +1 halfway.
    result = task.step(constant_action([1.0, 0.0, 0.0], ndim))
    assert (result.score > before + 0.05).all()
    assert torch.allclose(result.reward, 100.0 * (result.score - before), atol=1e-4)
    assert (result.reward > 0).all() and not result.terminated.any()
    # The second voxel aligns the pair exactly: Dice 1 > 0.98 terminates with the bonus.
    previous = result.score.clone()
    result = task.step(constant_action([1.0, 0.0, 0.0], ndim))
    assert torch.allclose(result.score, torch.ones(B))
    assert result.terminated.all() and not result.truncated.any()
    assert torch.allclose(result.reward, 100.0 * (1.0 - previous) + 10.0, atol=1e-4)
    assert torch.allclose(task.warped, fixed, atol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_steps_compose_and_rewarp_the_original(ndim: int) -> None:
    _, moving, fseg, mseg = square_pair(ndim)
    fixed = moving + 0.1  # any fixed image; only the warping is checked
    moving = blob(ndim) + moving
    a1, a2 = smooth_action(ndim, 0.9, seed=1), smooth_action(ndim, 0.9, seed=2)
    task = RegistrationTask(RegistrationConfig())
    task.reset(RegistrationBatch(fixed, moving, fseg, mseg))
    task.step(a1)
    task.step(a2)
    field = compose(a1, a2)
    assert torch.allclose(task.field, field, atol=1e-6)
    assert torch.allclose(task.warped, warp(moving, field), atol=1e-6)
    assert torch.equal(task.warped_seg, warp(mseg, field, "label"))
    # Re-warping the already warped image would blur it: a visibly different result.
    assert (task.warped - warp(warp(moving, a1), a2)).abs().max() > 1e-2


@pytest.mark.parametrize("ndim", [2, 3])
def test_labels_stay_in_the_original_set(ndim: int) -> None:
    gen = torch.Generator().manual_seed(0)
    values = torch.tensor([0, 2, 5])
    mseg = values[torch.randint(0, 3, (B, 1, *SHAPES[ndim]), generator=gen)]
    fseg = values[torch.randint(0, 3, (B, 1, *SHAPES[ndim]), generator=gen)]
    task = RegistrationTask(RegistrationConfig())
    task.reset(RegistrationBatch(fseg.float(), mseg.float(), fseg, mseg))
    assert task.num_labels == 5
    for seed in range(3):
        task.step(smooth_action(ndim, 1.0, seed))
    assert task.warped_seg.dtype == mseg.dtype
    assert set(task.warped_seg.unique().tolist()) <= {0, 2, 5}
    assert torch.allclose(task.score, batch_dice(task.warped_seg, fseg, 5).to(task.score))


def test_identical_pair_terminates_with_bonus() -> None:
    fixed, _, fseg, _ = square_pair(2)
    task = RegistrationTask(RegistrationConfig(success_bonus=7.0, max_steps=1))  # success wins over the cap
    task.reset(RegistrationBatch(fixed, fixed.clone(), fseg, fseg.clone()))
    assert torch.equal(task.score, torch.ones(B))
    result = task.step(torch.zeros(B, 2, *SHAPES[2]))
    assert result.terminated.all() and not result.truncated.any()
    assert torch.equal(result.reward, torch.full((B,), 7.0))


def test_truncation_at_max_steps() -> None:
    fixed, moving, fseg, mseg = square_pair(2)
    task = RegistrationTask(RegistrationConfig(max_steps=3))
    task.reset(RegistrationBatch(fixed, moving, fseg, mseg))
    zero = torch.zeros(B, 2, *SHAPES[2])
    flags = [task.step(zero) for _ in range(3)]
    assert [bool(r.truncated.any()) for r in flags] == [False, False, True]
    assert flags[-1].truncated.all() and not flags[-1].terminated.any()


@pytest.mark.parametrize("ndim", [2, 3])
def test_reset_done_replaces_only_done_rows(ndim: int) -> None:
    fixed, moving, fseg, mseg = square_pair(ndim)
    task = RegistrationTask(RegistrationConfig(reward="kmeans"))
    task.reset(RegistrationBatch(fixed, moving, fseg, mseg))
    task.step(smooth_action(ndim, 0.8, seed=3))
    before = {name: getattr(task, name).clone() for name in ("fixed", "moving", "field", "warped", "warped_seg",
                                                              "score", "steps")}
    new_fixed, new_moving = blob(ndim), blob(ndim, centre_shift=1.0)
    new_fseg, new_mseg = (new_fixed > 0.5).long(), (new_moving > 0.5).long()
    done = torch.tensor([False, True, False])
    state = task.reset_done(done, RegistrationBatch(new_fixed, new_moving, new_fseg, new_mseg))
    for name, old in before.items():
        assert torch.equal(getattr(task, name)[~done], old[~done]), name
    assert torch.equal(state[1, 0:1], new_fixed[1]) and torch.equal(state[1, 1:2], new_moving[1])
    assert torch.equal(task.field[1], torch.zeros_like(task.field[1]))
    assert int(task.steps[1]) == 0 and torch.equal(task.steps[~done], torch.ones(2, dtype=torch.long))
    assert torch.equal(task.warped_seg[1], new_mseg[1])
    expected = batch_dice(kmeans_labels(new_moving, 3), kmeans_labels(new_fixed, 3), 2)[1]
    assert torch.allclose(task.score[1], expected)


# ------------------------------------------------------------------------------------------------- functions
def test_kmeans_orders_clusters_by_intensity_and_is_deterministic() -> None:
    gen = torch.Generator().manual_seed(0)
    classes = torch.zeros(2, 1, 30, 30, dtype=torch.long)
    classes[:, :, 5:25, 5:25] = 1
    classes[:, :, 10:20, 10:20] = 2  # background 5/9 of the image: several quantiles tie at 0
    levels = torch.tensor([[0.0, 0.45, 0.9], [0.0, 0.8, 0.3]])  # image 1: the middle ring is brightest
    images = torch.stack([levels[b][classes[b]] for b in range(2)])
    images = images + 0.03 * torch.randn(images.shape, generator=gen)
    labels = kmeans_labels(images, 3)
    assert labels.dtype == torch.long and labels.shape == images.shape
    assert torch.equal(labels[0], classes[0])
    rank = torch.tensor([0, 2, 1])  # intensity rank of each class in image 1
    assert torch.equal(labels[1], rank[classes[1]])
    assert torch.equal(kmeans_labels(images, 3), labels)
    assert torch.equal(kmeans_labels(torch.full((1, 1, 4, 4), 0.3), 3), torch.zeros(1, 1, 4, 4, dtype=torch.long))


# ------------------------------------------------------------------------------------------------- reward modes
@pytest.mark.parametrize("reward", ["lncc", "kmeans"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_label_free_rewards(reward: str, ndim: int) -> None:
    fixed, moving = blob(ndim), blob(ndim, centre_shift=2.0)
    task = RegistrationTask(RegistrationConfig(reward=reward))
    task.reset(RegistrationBatch(fixed, moving))
    assert task.extras() is None and task.warped_seg is None
    before = task.score.clone()
    result = task.step(constant_action([2.0, 0.0, 0.0], ndim))
    assert torch.allclose(task.warped[..., 2:-2, :, :] if ndim == 3 else task.warped[..., 2:-2, :],
                          fixed[..., 2:-2, :, :] if ndim == 3 else fixed[..., 2:-2, :], atol=1e-5)
    assert (result.score > before).all()
    if reward == "lncc":
        assert not result.terminated.any()
        assert torch.allclose(result.reward, 100.0 * (result.score - before), atol=1e-4)
    else:
        assert result.terminated.all()
        assert torch.allclose(result.reward, 100.0 * (result.score - before) + 10.0, atol=1e-4)


def test_dice_reward_without_segmentations_raises() -> None:
    task = RegistrationTask(RegistrationConfig(reward="dice"))
    with pytest.raises(ValueError, match="needs fixed_seg"):
        task.reset(RegistrationBatch(blob(2), blob(2)))
    with pytest.raises(ValueError, match="reward must be one of"):
        RegistrationConfig(reward="psnr")


# ------------------------------------------------------------------------------------------------- auxiliary loss
@pytest.mark.parametrize("ndim", [2, 3])
def test_auxiliary_loss_gradient_and_direction(ndim: int) -> None:
    fixed, moving = blob(ndim), blob(ndim, centre_shift=1.5)
    fseg, mseg = (fixed > 0.4).long() * 2, (moving > 0.4).long() * 2
    task = RegistrationTask(RegistrationConfig())
    state = task.reset(RegistrationBatch(fixed, moving, fseg, mseg))
    extras = task.extras()
    for ex in (None, extras):
        action = torch.zeros(B, ndim, *SHAPES[ndim], requires_grad=True)
        loss = task.auxiliary_loss(state, action, ex)
        assert loss.ndim == 0
        (grad,) = torch.autograd.grad(loss, action)
        assert torch.isfinite(grad).all() and grad.abs().max() > 1e-6
        right = task.auxiliary_loss(state, constant_action([1.5, 0.0, 0.0], ndim), ex)
        wrong = task.auxiliary_loss(state, constant_action([-1.5, 0.0, 0.0], ndim), ex)
        assert right < loss.detach() < wrong
    # The Dice term is active with extras and vanishes with its weight.
    wrong = constant_action([-1.5, 0.0, 0.0], ndim)
    assert task.auxiliary_loss(state, wrong, extras) > task.auxiliary_loss(state, wrong, None) + 1e-3
    no_dice = RegistrationTask(RegistrationConfig(aux_dice=0.0))
    no_dice.reset(RegistrationBatch(fixed, moving, fseg, mseg))
    assert torch.allclose(no_dice.auxiliary_loss(state, wrong, extras), task.auxiliary_loss(state, wrong, None))


def test_state_dict_round_trip_continues_the_episodes() -> None:
    fixed, moving, fseg, mseg = square_pair(2)
    task = RegistrationTask(RegistrationConfig(reward="kmeans"))
    task.reset(RegistrationBatch(fixed, moving, fseg, mseg))
    task.step(smooth_action(2, 0.8, seed=4))
    task.reset_done(torch.tensor([True, False, False]), RegistrationBatch(fixed, moving, fseg, mseg))
    stream = io.BytesIO()
    torch.save(task.state_dict(), stream)
    stream.seek(0)
    restored = RegistrationTask(RegistrationConfig(reward="kmeans"))
    restored.load_state_dict(torch.load(stream, weights_only=True))
    assert torch.equal(restored.observe(), task.observe()) and torch.equal(restored.extras(), task.extras())
    action = smooth_action(2, 0.8, seed=5)
    a, b = task.step(action), restored.step(action)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("ndim", [2, 3])
def test_warped_soft_dice_equals_the_one_hot_route(ndim: int) -> None:
    gen = torch.Generator().manual_seed(ndim)
    num_labels = 4
    fseg = torch.randint(0, 6, (B, 1, *SHAPES[ndim]), generator=gen)  # 5 is out of range: background
    mseg = torch.randint(0, 5, (B, 1, *SHAPES[ndim]), generator=gen)
    mseg[0][mseg[0] == 3] = 0
    fseg[0][fseg[0] == 3] = 0  # label 3 absent from both maps of pair 0
    action = smooth_action(ndim, 2.9, seed=ndim).double().requires_grad_()  # reaches outside the grid

    def one_hot(labels: torch.Tensor) -> torch.Tensor:
        labels = torch.where(labels <= num_labels, labels, 0)
        return F.one_hot(labels[:, 0], num_labels + 1).movedim(-1, 1)[:, 1:].double()

    expected = soft_dice(warp(one_hot(mseg), action), one_hot(fseg), reduction="batch")
    result = warped_soft_dice(fseg, mseg, action, num_labels)
    assert torch.allclose(result, expected, atol=1e-12)
    (g_expected,) = torch.autograd.grad(expected.sum(), action)
    (g_result,) = torch.autograd.grad(result.sum(), action)
    assert g_result.abs().max() > 1e-6 and torch.allclose(g_result, g_expected, atol=1e-12)
    # Through the task: the auxiliary loss adds aux_dice * (1 - mean soft Dice) when extras are given.
    task = RegistrationTask(RegistrationConfig(aux_dice=0.5, num_labels=num_labels))
    state = task.reset(RegistrationBatch(fseg.float(), mseg.float(), fseg, mseg))
    with_dice = task.auxiliary_loss(state, action.detach(), task.extras())
    without = task.auxiliary_loss(state, action.detach(), None)
    assert torch.allclose(with_dice - without, 0.5 * (1.0 - expected.detach().mean()), atol=1e-10)
