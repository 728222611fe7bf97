"""The inpainting and translation benchmarks: classical baselines, the parameter-matched one-step network and its
budgeted training, the side-by-side evaluation, its markdown section and grid, and the ablation."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from benchmarks import i2i_baselines as baselines
from benchmarks import i2i_eval
from rlreg.metrics import psnr
from rlreg.perceptual import VGG16Features
from rlreg.tasks.image import ImageBatch


class Waves:
    """A tiny data source of smooth RGB images: inpainting items (centre hole) or translation items (grey -> RGB)."""

    def __init__(self, kind: str, size: int = 32, channels: int = 3) -> None:
        self.kind, self.size, self.channels = kind, size, channels

    def sample(self, count: int, generator: torch.Generator, device: str = "cpu") -> ImageBatch:
        s = self.size
        y, x = torch.meshgrid(torch.linspace(0, 1, s), torch.linspace(0, 1, s), indexing="ij")
        p = torch.rand(count, self.channels, 3, generator=generator)
        image = (0.5 * p[..., 0, None, None] * x + 0.5 * p[..., 1, None, None] * y
                 + 0.25 * torch.sin(6 * (x + y + p[..., 2, None, None])) + 0.25).clamp(0, 1)
        if self.kind == "inpainting":
            mask = torch.zeros(count, 1, s, s)
            mask[..., s // 4:3 * s // 4, s // 4:3 * s // 4] = 1
            return ImageBatch((image * (1 - mask)).to(device), image.to(device), mask.to(device))
        return ImageBatch(image.mean(1, keepdim=True).to(device), image.to(device), None)


def _inpainting_batch(count: int = 3, channels: int = 3) -> ImageBatch:
    return Waves("inpainting", channels=channels).sample(count, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", list(baselines.CLASSICAL))
def test_classical_inpainting_keeps_the_known_pixels_and_fills_the_hole(name: str, channels: int) -> None:
    batch = _inpainting_batch(channels=channels)
    assert batch.mask is not None
    out = baselines.CLASSICAL[name](batch.source, batch.mask)
    known = ~batch.mask.bool().expand_as(out)
    assert out.shape == batch.target.shape and torch.equal(out[known], batch.source[known])
    assert torch.all(psnr(out, batch.target, batch.mask) > psnr(batch.source, batch.target, batch.mask) + 3)


def test_smooth_fills_beat_the_mean_on_smooth_images() -> None:
    batch = _inpainting_batch()
    assert batch.mask is not None
    mean = psnr(baselines.inpaint_mean(batch.source, batch.mask), batch.target, batch.mask).mean()
    for fill in (baselines.inpaint_biharmonic, baselines.inpaint_telea, baselines.inpaint_navier_stokes):
        assert psnr(fill(batch.source, batch.mask), batch.target, batch.mask).mean() > mean


@pytest.mark.parametrize("target", [60_000, 250_000, 1_200_000])
def test_unet_width_matches_a_parameter_count(target: int) -> None:
    config = baselines.match_unet(target, in_channels=4, out_channels=3)
    found = baselines.count_parameters(baselines.UNet(config))
    assert abs(found - target) <= 0.05 * target
    with pytest.raises(ValueError, match="5%"):
        baselines.match_unet(500, in_channels=4, out_channels=3, tolerance=0.05)


def test_unet_runs_on_any_size_within_zero_one() -> None:
    net = baselines.UNet(baselines.UNetConfig(2, 1, base_width=4, depth=3))
    out = net(torch.rand(2, 2, 21, 30))
    assert out.shape == (2, 1, 21, 30) and out.min() >= 0 and out.max() <= 1


def test_peak_memory_sees_an_allocation_inside_the_block() -> None:
    import numpy as np

    with i2i_eval.PeakMemory() as idle:
        pass
    with i2i_eval.PeakMemory() as busy:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched, held for 25 samples
        time.sleep(0.05)
        del block
    assert busy.peak_mib > 50 and idle.peak_mib < 20


def test_table_section_and_grid(tmp_path) -> None:
    batch = _inpainting_batch(count=2)
    methods = [(name, "classical", lambda b, f=fill: f(b.source, b.mask), None, None)
               for name, fill in list(baselines.CLASSICAL.items()) if name in ("mean fill", "Telea (OpenCV)")]
    results, outputs = i2i_eval.evaluate_methods("inpainting", batch, methods, VGG16Features())
    assert [r.name for r in results] == ["mean fill", "Telea (OpenCV)"]
    for r in results:
        assert set(r.metrics) == set(i2i_eval.METRICS) and all(math.isfinite(v) for v in r.metrics.values())
        assert r.seconds_per_image > 0 and r.peak_mib >= 0
    assert results[1].metrics["psnr_hole"] > results[0].metrics["psnr_hole"]
    markdown = tmp_path / "benchmarks.md"
    markdown.write_text("# rlreg benchmarks\n\n<!-- digits:begin -->\nkeep me\n<!-- digits:end -->\n")
    figure = i2i_eval.example_grid("inpainting", batch, outputs, tmp_path / "img" / "grid.png")
    machine = {"cpu": "cpu", "torch": "t", "threads": 1, "python": "3", "date": "today", "load": "0"}
    for _ in range(2):  # the second run replaces the section
        i2i_eval.write_table_section("inpainting", "inpaint-photos", results, markdown, figure, "cmd --x", machine,
                                     2, 0)
    text = markdown.read_text()
    assert "keep me" in text and text.count("## Inpainting: `inpaint-photos`") == 1
    assert "`cmd --x`" in text and "uncalibrated" in text and "(img/grid.png)" in text
    assert "| Telea (OpenCV) | **" in text  # best PSNR in the hole is bold
    assert figure.stat().st_size > 3_000


@pytest.mark.bench  # about 10 s: two seconds of training per task, twice
@pytest.mark.parametrize("kind", ["inpainting", "translation"])
def test_onestep_trains_for_its_budget_resumes_and_reloads(kind: str, tmp_path) -> None:
    source = Waves(kind)
    in_channels = 4 if kind == "inpainting" else 1
    unet = baselines.match_unet(40_000, in_channels, 3, depth=3)
    checkpoint = tmp_path / "onestep.pt"
    settings = baselines.OneStepSettings(batch_size=4)
    first = baselines.train_onestep(kind, source, 1.5, 0, 1, checkpoint, unet, settings)
    assert first.seconds >= 1.5 and first.updates >= 1 and checkpoint.exists()
    again = baselines.train_onestep(kind, source, 1.5, 0, 1, checkpoint, unet, settings)
    assert again.updates == first.updates  # finished: returned as it is
    more = baselines.train_onestep(kind, source, 3.0, 0, 1, checkpoint, unet, settings)
    assert more.seconds >= 3.0 and more.updates > first.updates
    loaded = baselines.load_onestep(checkpoint)  # weights_only
    assert loaded.updates == more.updates and loaded.parameters == baselines.count_parameters(more.net)
    batch = source.sample(2, torch.Generator().manual_seed(9))
    with torch.no_grad():
        out = baselines.predict_onestep(kind, loaded.net, batch)
        assert torch.equal(out, baselines.predict_onestep(kind, more.net, batch))
    if kind == "inpainting":
        assert batch.mask is not None
        known = ~batch.mask.bool().expand_as(out)
        assert torch.equal(out[known], batch.source[known])
    with pytest.raises(ValueError, match="another network"):
        baselines.train_onestep(kind, source, 4.0, 1, 1, checkpoint, unet, settings)
    json.dumps(torch.load(checkpoint, weights_only=True)["settings"])  # plain values


RECIPE = """
agent:
  task_name: {kind}
  network: {{ndim: 2, in_channels: 4, out_channels: 3, widths: [8, 16, 16], plan_dim: 32, plan_grid: 2,
            down_kernel: 4, padding: reflect, max_step: 0.5, critic_widths: [8, 16]}}
  task: {{channels: 3, max_steps: 2, disc_widths: [8, 16]{extra}}}
data: {{dataset: {dataset}}}
loop: {{num_envs: 4, warmup_steps: 2, batch_size: 4, buffer_capacity: 200, eval_pairs: 4, eval_steps: 2,
        eval_chunk: 4, checkpoint_every: 1000, device: cpu}}
"""


@pytest.mark.bench  # about 1 min: three 2-second trainings, then a side-by-side run of every row
@pytest.mark.parametrize("kind", ["inpainting", "translation"])
def test_ablation_then_side_by_side_run_end_to_end(kind: str, tmp_path, monkeypatch) -> None:
    from rlreg.data.registry import DATASETS

    dataset = f"waves-{kind}"
    monkeypatch.setitem(DATASETS, dataset, lambda data: (Waves(kind), Waves(kind)))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(kind=kind, dataset=dataset,
                                    extra="" if kind == "inpainting" else ", source_channels: 1"))
    markdown, runs = tmp_path / "benchmarks.md", tmp_path / "ablation"
    module = "inpaint" if kind == "inpainting" else "translate"
    prog = f"python -m benchmarks.{module}"
    ablation = ["ablation", "--dataset", dataset, "--recipe", str(recipe), "--seeds", "0", "1",
                "--budget-minutes", str(1.5 / 60), "--items", "3", "--threads", "1", "--output", str(markdown),
                "--runs", str(runs)]
    i2i_eval.main(kind, prog, [dataset], ablation)
    records = sorted(p.name for p in runs.glob("*.json"))
    assert records == sorted(f"{m}-seed{s}.json" for m in i2i_eval.ABLATION_METHODS for s in (0, 1))
    first = {p.name: p.stat().st_mtime_ns for p in runs.glob("*.json")}
    text = markdown.read_text()
    assert text.count(f"<!-- i2i-{dataset}-ablation:begin -->") == 1 and " ± " in text
    for method in i2i_eval.ABLATION_METHODS:
        assert f"| {method} | 0, 1 |" in text
    params = {m: json.loads((runs / f"{m}-seed0.json").read_text())["parameters"] for m in i2i_eval.ABLATION_METHODS}
    assert abs(params["one-step"] - params["rl"]) <= 0.05 * params["rl"] and params["aux-only"] == params["rl"]
    i2i_eval.main(kind, prog, [dataset], ablation)  # resumable: every run is read back, none retrained
    assert {p.name: p.stat().st_mtime_ns for p in runs.glob("*.json")} == first

    side = ["--dataset", dataset, "--recipe", str(recipe), "--items", "4", "--threads", "1",
            "--model", str(runs / "rl-seed0" / "model.pt"),
            "--aux-only-model", str(runs / "aux-only-seed0" / "model.pt"),
            "--onestep", str(runs / "one-step-seed0.pt"), "--output", str(markdown),
            "--image-dir", str(tmp_path / "img"), "--runs", str(tmp_path / "bench")]
    i2i_eval.main(kind, prog, [dataset], side)
    text = markdown.read_text()
    section = text[text.index(f"<!-- i2i-{dataset}:begin -->"):text.index(f"<!-- i2i-{dataset}:end -->")]
    assert f"`{prog} --dataset {dataset}" in section and "uncalibrated" in section
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    names = [row.split(" | ")[0][2:] for row in rows]
    expected = (list(baselines.CLASSICAL) if kind == "inpainting" else []) + [
        "one-step U-Net" if kind == "inpainting" else "pix2pix-style U-Net", "aux-only step-wise (2 steps)",
        "RL (full) (2 steps)"]
    assert names == expected
    assert (tmp_path / "img" / f"bench_{dataset}.png").stat().st_size > 5_000
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert all(math.isfinite(r["metrics"]["psnr_whole"]) and r["seconds_per_image"] > 0 for r in results)
    assert ("psnr_hole" in results[0]["metrics"]) == (kind == "inpainting")


def test_bad_command_lines_end_in_one_line(tmp_path, monkeypatch) -> None:
    from benchmarks import inpaint, translate
    from rlreg.data.registry import DATASETS

    with pytest.raises(SystemExit, match="dataset 'nope' is unknown"):
        inpaint.main(["--dataset", "nope", "--recipe", "pipelines/recipes/inpaint-photo.yaml"])
    with pytest.raises(SystemExit, match="no default recipe for other; pass --recipe PATH"):
        translate.main(["--dataset", "other"])
    monkeypatch.setitem(DATASETS, "waves-inpainting", lambda data: (Waves("inpainting"), Waves("inpainting")))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(kind="inpainting", dataset="waves-inpainting", extra=""))
    with pytest.raises(SystemExit, match=r"missing\.pt: no such checkpoint") as caught:
        inpaint.main(["--dataset", "waves-inpainting", "--recipe", str(recipe), "--model",
                      str(tmp_path / "missing.pt")])
    assert "\n" not in str(caught.value)
    with pytest.raises(SystemExit, match="--onestep-budget-minutes"):
        inpaint.main(["--dataset", "waves-inpainting", "--recipe", str(recipe), "--items", "2", "--output",
                      str(tmp_path / "b.md"), "--runs", str(tmp_path / "runs")])
    assert not (tmp_path / "b.md").exists()
