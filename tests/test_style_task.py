"""The style and video-style tasks on the agent core: losses, rewards, episodes, clips with exact flows, training."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from rlreg.data.registry import DATASETS, DataConfig
from rlreg.networks import NetworkConfig
from rlreg.perceptual import gram_matrix, load_vgg16, style_grams, style_loss, total_variation
from rlreg.sac import Agent, AgentConfig, SACConfig, load_checkpoint
from rlreg.spatial import warp
from rlreg.tasks import TASKS, ClipBatch, StyleConfig, StyleTask, VideoStyleConfig, VideoStyleTask, stylize
from rlreg.tasks.image import ImageBatch
from rlreg.tasks.video_style import temporal_loss


@pytest.fixture(scope="module")
def vgg():
    torch.set_num_threads(1)
    return load_vgg16()


def _stripes(size: int = 32, period: int = 4) -> torch.Tensor:
    """A ``(1, 3, size, size)`` red/blue stripe 'painting'."""
    columns = (torch.arange(size) // (period // 2)) % 2
    image = torch.zeros(1, 3, size, size)
    image[:, 0] = columns.float()
    image[:, 2] = 1 - columns.float()
    return image


def _content(count: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    smooth = torch.rand(count, 3, size // 8, size // 8, generator=generator)
    return torch.nn.functional.interpolate(smooth, size=(size, size), mode="bilinear", align_corners=False)


def test_gram_matrix_is_size_normalised_and_style_loss_zero_on_itself(vgg) -> None:
    features = torch.rand(2, 4, 8, 8)
    tiled = features.repeat(1, 1, 2, 2)  # the same statistics on a 4x larger map
    assert torch.allclose(gram_matrix(features), gram_matrix(tiled), atol=1e-6)
    style = _stripes()
    grams = style_grams(vgg, style)
    assert float(style_loss(grams, grams).max()) == 0.0
    assert float(style_loss(style_grams(vgg, _content(1)), grams)[0]) > 0.0
    assert total_variation(torch.zeros(1, 3, 8, 8)).item() == 0.0
    assert total_variation(_stripes()).item() == pytest.approx(2 / 3 * 15 / 31)  # 15 of 31 column pairs flip


def test_registry_has_both_style_tasks() -> None:
    assert TASKS["style"].task is StyleTask and TASKS["style"].config is StyleConfig
    assert TASKS["video-style"].task is VideoStyleTask and TASKS["video-style"].config is VideoStyleConfig


def test_style_config_rejects_grey_and_unknown_layers() -> None:
    with pytest.raises(ValueError, match="RGB"):
        StyleConfig(channels=1)
    with pytest.raises(ValueError, match="relu9_9"):
        StyleConfig(style_layers=("relu1_2", "relu9_9"))


def test_style_episode_starts_at_content_and_rewards_style_gain(vgg) -> None:
    task = StyleTask(StyleConfig(max_steps=2))
    content = _content()
    state = task.reset(ImageBatch(content, _stripes().expand(2, -1, -1, -1)))
    assert torch.equal(state, content)
    assert torch.allclose(task.score, torch.zeros(2))
    before = task.metrics()["style_loss"].clone()
    # a step towards the painting lowers the style loss: positive reward, positive score; content loss appears
    result = task.step(0.5 * (_stripes() - content))
    after = task.metrics()["style_loss"]
    assert bool((after < before).all())
    assert torch.allclose(result.reward, torch.log(before / after), rtol=1e-4)
    assert bool((result.score > 0).all()) and bool((task.metrics()["content_loss"] > 0).all())
    assert not bool(result.truncated.any())
    assert bool(task.step(torch.zeros_like(content)).truncated.all())


def test_style_task_learns_one_style_only(vgg) -> None:
    task = StyleTask(StyleConfig())
    two_styles = torch.cat([_stripes(), _stripes().flip(-1)])
    with pytest.raises(ValueError, match="one style"):
        task.reset(ImageBatch(_content(), two_styles))


def test_auxiliary_loss_reaches_the_action_and_prefers_the_style(vgg) -> None:
    task = StyleTask(StyleConfig(tv_weight=0.0))
    content = _content()
    task.reset(ImageBatch(content, _stripes()))
    action = torch.zeros_like(content, requires_grad=True)
    loss = task.auxiliary_loss(content, action, task.extras())
    loss.backward()
    assert action.grad is not None and float(action.grad.abs().sum()) > 0
    towards = task.auxiliary_loss(content, 0.5 * (_stripes() - content), task.extras())
    assert float(towards.detach()) < float(loss.detach())


def test_state_dict_round_trip_continues_identically(vgg) -> None:
    task = StyleTask(StyleConfig())
    task.reset(ImageBatch(_content(), _stripes()))
    task.step(0.1 * torch.ones(2, 3, 32, 32))
    copy = StyleTask(StyleConfig())
    copy.load_state_dict(task.state_dict())
    action = -0.2 * torch.ones(2, 3, 32, 32)
    ours, theirs = task.step(action), copy.step(action)
    assert torch.equal(ours.state, theirs.state) and torch.allclose(ours.reward, theirs.reward)


def test_stylize_needs_no_vgg_and_steps_set_the_degree() -> None:
    network = NetworkConfig(in_channels=3, out_channels=3, widths=(4, 8), norm="instance", padding="reflect",
                            plan_shape="map", plan_dim=16, plan_grid=2, critic_widths=(4,), max_step=0.3)
    torch.manual_seed(0)
    agent = Agent(AgentConfig(network=network, task_name="style", task=StyleConfig()))
    with torch.no_grad():
        agent.actor.flow.weight.normal_(0, 0.5)  # a visible action
    content = _content(1, 24)
    none = stylize(agent, content, 0)
    assert torch.equal(none.image, content) and none.memory is None
    run = stylize(agent, content, 3, keep_frames=True)
    assert len(run.frames) == 4 and torch.equal(run.frames[-1], run.image)
    distances = [float((frame - content).abs().mean()) for frame in run.frames]
    assert distances[0] == 0.0 and distances[1] > 0.0
    assert all(float(frame.min()) >= 0.0 and float(frame.max()) <= 1.0 for frame in run.frames)


# ------------------------------------------------------------------------------------------------- video
def _clips(frames: int = 3, size: int = 32, noise: float = 0.0, brightness: float = 0.0) -> tuple:
    from rlreg.data.style_clips import clip_datasets

    train, test = clip_datasets({"style": "starry-night", "style_size": 32, "size": size, "frames": frames,
                                 "noise": noise, "brightness": brightness})
    return train, test


def _needs_paintings() -> None:
    from rlreg.data.paintings import painting_catalogue

    if "starry-night" not in painting_catalogue():
        import os

        if os.environ.get("RLREG_REQUIRE_SYSTEM_DATA") == "1":
            pytest.fail("opencv-doc is not installed (run .ci/system-packages.sh)")
        pytest.skip("opencv-doc (starry_night.jpg) is not installed")


def test_clip_flows_are_exact_inside_their_valid_mask() -> None:
    _needs_paintings()
    train, _ = _clips(frames=3, size=40)
    batch = train.sample(3, torch.Generator().manual_seed(1))
    assert batch.frames.shape == (3, 3, 3, 40, 40) and batch.flows.shape == (3, 2, 2, 40, 40)
    assert batch.valid.shape == (3, 2, 1, 40, 40) and batch.style.shape[:2] == (3, 3)
    for k in range(1, 3):
        back = warp(batch.frames[:, k - 1], batch.flows[:, k - 1])
        valid = batch.valid[:, k - 1]
        error = float(((back - batch.frames[:, k]).abs() * valid).sum() / (3 * valid.sum()))
        shuffled = float(((batch.frames[:, k - 1] - batch.frames[:, k]).abs() * valid).sum() / (3 * valid.sum()))
        assert float(valid.mean()) > 0.8
        assert error < 0.02 and error < 0.5 * shuffled, (error, shuffled)
    again = train.sample(3, torch.Generator().manual_seed(1))
    assert torch.equal(again.frames, batch.frames)


def test_temporal_loss_counts_only_valid_pixels() -> None:
    image, other = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    valid = torch.zeros(1, 1, 4, 4)
    assert float(temporal_loss(image, other, valid)) == 0.0
    valid[..., :2] = 1
    assert float(temporal_loss(image, other, valid)) == pytest.approx(1.0)


def _toy_clip(frames: int = 2, size: int = 24) -> ClipBatch:
    content = _content(2, size)
    clip = torch.stack([content.roll(k, dims=-1) for k in range(frames)], 1)
    flows = torch.zeros(2, frames - 1, 2, size, size)
    flows[:, :, 1] = -1.0  # frame k's pixel was one column to the left in frame k-1
    valid = torch.ones(2, frames - 1, 1, size, size)
    valid[..., 0] = 0
    return ClipBatch(clip, flows, valid, _stripes(32))


def test_video_episode_walks_the_frames_and_warps_the_previous_steps(vgg) -> None:
    config = VideoStyleConfig(max_steps=2, frames=2)
    task = VideoStyleTask(config)
    clip = _toy_clip()
    state = task.reset(clip)
    assert torch.equal(state, clip.frames[:, 0])
    first_extras = task.extras()
    assert first_extras.shape == (2, 7, 24, 24) and float(first_extras[:, 6].sum()) == 0.0  # no previous frame
    images = []
    for _ in range(2):
        result = task.step(0.05 * torch.ones(2, 3, 24, 24))
        images.append(task.current[:, len(images)].clone())
        assert not bool(result.truncated.any())
    assert torch.equal(result.state, clip.frames[:, 1])  # the next frame initialises the image
    extras = task.extras()
    assert torch.equal(extras[:, :3], clip.frames[:, 1])
    assert torch.allclose(extras[:, 3:6, :, 1:], images[0][..., :-1])  # step 1 of frame 0, moved one column
    task.step(torch.zeros(2, 3, 24, 24))
    assert torch.allclose(task.extras()[:, 3:6, :, 1:], images[1][..., :-1])
    assert bool(task.step(torch.zeros(2, 3, 24, 24)).truncated.all())


def test_video_auxiliary_loss_adds_the_temporal_term(vgg) -> None:
    clip = _toy_clip()
    plain = VideoStyleTask(VideoStyleConfig(max_steps=1, frames=2, temporal_weight=0.0))
    temporal = VideoStyleTask(VideoStyleConfig(max_steps=1, frames=2, temporal_weight=100.0))
    for task in (plain, temporal):
        task.reset(clip)
        task.step(0.2 * torch.ones(2, 3, 24, 24))
    action = torch.zeros(2, 3, 24, 24)
    state = plain.observe()
    loss_plain = plain.auxiliary_loss(state, action, plain.extras())
    loss_temporal = temporal.auxiliary_loss(state, action, temporal.extras())
    assert float(loss_temporal) > float(loss_plain) + 0.1


def test_video_state_dict_round_trip(vgg) -> None:
    task = VideoStyleTask(VideoStyleConfig(max_steps=1, frames=2))
    task.reset(_toy_clip())
    task.step(0.1 * torch.ones(2, 3, 24, 24))
    copy = VideoStyleTask(VideoStyleConfig(max_steps=1, frames=2))
    copy.load_state_dict(task.state_dict())
    assert torch.equal(copy.extras(), task.extras())
    ours, theirs = task.step(torch.zeros(2, 3, 24, 24)), copy.step(torch.zeros(2, 3, 24, 24))
    assert torch.equal(ours.truncated, theirs.truncated) and torch.allclose(ours.reward, theirs.reward)


@pytest.mark.parametrize("name", ["style-starry-night", "style-the-kiss", "video-style-starry-night"])
def test_style_recipes_build_an_agent_whose_state_fits_the_task(name: str) -> None:
    import rlreg.pipelines
    from rlreg.pipelines.train import load_config

    config = load_config(Path(rlreg.pipelines.__file__).parent / "recipes" / f"{name}.yaml")
    network, task_config = config.agent.network, config.agent.task
    assert config.data.dataset in DATASETS
    assert network.in_channels == network.out_channels == 3
    assert network.norm == "instance" and network.padding == "reflect"  # the paper's style networks
    assert len(network.critic_widths) == 7
    assert task_config.style == config.data.options["style"]
    assert (network.memory == "gru") == (config.agent.task_name == "video-style")


def test_video_style_learns_through_train(tmp_path, vgg) -> None:
    """The whole loop runs with memory carried over frames, and the checkpoint restores its task."""
    _needs_paintings()
    from rlreg.pipelines.train import LoopConfig, TrainConfig, train

    network = NetworkConfig(in_channels=3, out_channels=3, widths=(4, 8), norm="instance", padding="reflect",
                            plan_shape="map", plan_dim=16, plan_grid=2, critic_widths=(4,), critic_hidden=16,
                            memory="gru", max_step=0.3)
    agent = AgentConfig(network=network, sac=SACConfig(lr_actor=1e-3, lr_planner=1e-3), task_name="video-style",
                        task=VideoStyleConfig(max_steps=1, frames=2, style="starry-night"))
    data = DataConfig(dataset="style-clips", options={"style": "starry-night", "style_size": 32, "size": 24,
                                                       "frames": 2})
    loop = LoopConfig(num_envs=2, total_steps=6, warmup_steps=2, batch_size=2, buffer_capacity=20, eval_every=6,
                      eval_pairs=2, eval_steps=2, checkpoint_every=6, output=str(tmp_path / "run"), device="cpu")
    summary = train(TrainConfig(agent=agent, data=data, loop=loop))
    assert summary.history and "style_removed_final" in summary.history[-1]
    saved, _ = load_checkpoint(tmp_path / "run" / "model.pt", task="video-style")
    assert dataclasses.asdict(saved.config.task) == dataclasses.asdict(agent.task)


def test_content_term_is_anchored_to_the_state_or_to_the_photo(vgg) -> None:
    content = _content()
    stylised = 0.5 * (content + _stripes())
    losses = {}
    for anchor in ("state", "content"):
        task = StyleTask(StyleConfig(content_anchor=anchor, style_weight=0.0, tv_weight=0.0))
        task.reset(ImageBatch(content, _stripes()))
        losses[anchor] = float(task.auxiliary_loss(stylised, torch.zeros_like(content), task.extras()))
    assert losses["state"] == 0.0  # staying put costs no content from the state's own image
    assert losses["content"] > 0.0  # but the photo's content has been left behind
    with pytest.raises(ValueError, match="content_anchor"):
        StyleConfig(content_anchor="photo")  # type: ignore[arg-type]
