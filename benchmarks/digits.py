"""The digits-transform benchmark (RL-I2IT's MNIST experiment) with its baselines, on the same wall-time budget.

Variants, each trained for ``budget_s`` seconds on the 4000 training digits, then evaluated on fixed pairs of the
1000 held-out digits (any-class pairs, as in the paper, and same-class pairs, reported separately):

* ``rl``: the step-wise agent, soft actor-critic + auxiliary loss updating actor and planner (the paper);
* ``rl-actor-aux``: the same with the auxiliary loss updating the actor only (the official code), baseline (c);
* ``aux-only``: the same step-wise loop trained by the auxiliary loss alone, no critic, no RL, baseline (b);
* ``onestep``: a one-step VoxelMorph-style U-Net of similar size, same losses, baseline (a).

Writes the ``## Digits transform`` section of ``docs/benchmarks.md`` (between markers) and two pictures:
Dice per step for every variant, and a grid of example registrations step by step.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from benchmarks.common import RECIPES
from rlreg.io import atomic_output, save_torch
from rlreg.losses import diffusion, multiscale_lncc
from rlreg.metrics import batch_dice
from rlreg.onestep import OneStepConfig, OneStepNet
from rlreg.spatial import folding_percent, warp

__all__ = ["VariantResult", "run_benchmark"]

BEGIN, END = "<!-- digits:begin -->", "<!-- digits:end -->"
RECIPE = RECIPES / "digits.yaml"
VARIANTS = {
    "rl": ["agent.sac.aux_updates=actor+planner"],
    "rl-actor-aux": ["agent.sac.aux_updates=actor"],
    "aux-only": ["agent.sac.rl_weight=0.0"],
}


@dataclass
class VariantResult:
    """One trained variant's evaluation."""

    name: str
    parameters: int
    train_seconds: float
    updates: int
    dice_any: list[float]
    """Mean Dice@0.5 after 0..T steps, any-class test pairs."""
    dice_any_gt0: list[float]
    """The same with the paper's binarisation (pixel > 0)."""
    dice_same: list[float]
    """Mean Dice@0.5 after 0..T steps, same-class test pairs."""
    folding_percent: float
    seconds_per_pair: float
    """Inference time per pair for T steps (batched), CPU."""
    env_steps_per_s: float | None = None
    """Training throughput: pair-steps of the vectorised environment per second of environment time."""
    updates_per_s: float | None = None
    """Training throughput: gradient updates per second of update time."""


def _train_agent(name: str, overrides: list[str], budget_s: float, output: Path, seed: int) -> tuple[object, dict]:
    from rlreg.pipelines.train import load_config, train
    from rlreg.sac import load_checkpoint

    config = load_config(RECIPE, [*overrides, f"loop.output={output / name}", f"loop.seed={seed}",
                                  "loop.total_steps=1000000", "loop.eval_every=1000000", "loop.checkpoint_every=500",
                                  f"loop.max_seconds={budget_s}", "loop.eval_pairs=200"])
    summary = train(config)
    agent, _ = load_checkpoint(output / name / "model.pt")
    return agent, summary


def _train_onestep(budget_s: float, seed: int, output: Path) -> tuple[OneStepNet, int]:
    """Baseline (a): one U-Net decision trained with the agent's auxiliary losses (LNCC 9/7/5 + diffusion)."""
    from rlreg.data.digits import DigitPairs, split_mnist

    torch.manual_seed(seed)
    net = OneStepNet(OneStepConfig(ndim=2))
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-4)
    pairs = DigitPairs(*split_mnist()["train"], mode="any")
    generator = torch.Generator().manual_seed(seed + 2)
    start, updates = time.perf_counter(), 0
    while time.perf_counter() - start < budget_s:
        batch = pairs.sample(64, generator)
        disp = net(batch.fixed, batch.moving)
        loss = 1.0 - multiscale_lncc(batch.fixed, warp(batch.moving, disp)) + diffusion(disp)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        updates += 1
    save_torch({"state_dict": net.state_dict(), "config": net.config.__dict__}, output / "onestep.pt")
    return net, updates


@torch.no_grad()
def _evaluate_agent(agent, pairs, steps: int) -> tuple[list[float], list[float], float, float]:
    from rlreg.pipelines.train import evaluate

    start = time.perf_counter()
    result = evaluate(agent, pairs, steps=steps)
    seconds = (time.perf_counter() - start) / pairs.fixed.shape[0]
    return (result.score_per_step, result.metrics_per_step["dice_any"], result.metrics_per_step["folding_percent"][-1],
            seconds)


@torch.no_grad()
def _evaluate_onestep(net: OneStepNet, pairs, steps: int) -> tuple[list[float], list[float], float, float]:
    start = time.perf_counter()
    disp = net(pairs.fixed, pairs.moving)
    seconds = (time.perf_counter() - start) / pairs.fixed.shape[0]
    before = float(batch_dice(pairs.moving_seg, pairs.fixed_seg, 1).mean())
    after = float(batch_dice(warp(pairs.moving_seg, disp, "label"), pairs.fixed_seg, 1).mean())
    fixed_any, moving_any = (pairs.fixed > 0).long(), (pairs.moving > 0).long()
    before_any = float(batch_dice(moving_any, fixed_any, 1).mean())
    after_any = float(batch_dice(warp(moving_any, disp, "label"), fixed_any, 1).mean())
    return ([before] + [after] * steps, [before_any] + [after_any] * steps, float(folding_percent(disp).mean()),
            seconds)


ORDER = ("rl", "rl-actor-aux", "aux-only", "onestep")


def run_benchmark(budget_s: float = 900.0, steps: int = 30, eval_pairs: int = 1000, seed: int = 0,
                  output: Path = Path("runs/benchmark_digits"), variants: tuple[str, ...] = ORDER,
                  reuse: bool = False) -> list[VariantResult]:
    """Train every variant for ``budget_s`` seconds and evaluate it on fixed held-out pairs.

    With ``reuse``, variants not in ``variants`` are taken from ``<output>/results.json`` of an earlier run with the
    same budget and evaluation pairs (so one variant can be re-run without re-training the others).
    """
    from rlreg.data.digits import DigitPairs, split_mnist

    output.mkdir(parents=True, exist_ok=True)
    test = split_mnist()["test"]
    any_pairs = DigitPairs(*test, mode="any").sample(eval_pairs, torch.Generator().manual_seed(12345))
    same_pairs = DigitPairs(*test, mode="same").sample(eval_pairs, torch.Generator().manual_seed(12346))
    results: list[VariantResult] = []
    saved = output / "results.json"
    if reuse and saved.exists():
        earlier = [VariantResult(**r) for r in json.loads(saved.read_text())]
        for r in earlier:
            if abs(r.train_seconds - budget_s) > 0.1 * budget_s or len(r.dice_any) != steps + 1:
                raise ValueError(f"{saved}: {r.name} was run with another budget or step count; rerun it")
        results = [r for r in earlier if r.name not in variants]
    for name in variants:
        if name == "onestep":
            start = time.perf_counter()
            net, updates = _train_onestep(budget_s, seed, output)
            seconds = time.perf_counter() - start
            throughput = (None, updates / seconds)
            any_curve, any_gt0, folding, per_pair = _evaluate_onestep(net, any_pairs, steps)
            same_curve = _evaluate_onestep(net, same_pairs, steps)[0]
            params = sum(p.numel() for p in net.parameters())
        else:
            start = time.perf_counter()
            agent, summary = _train_agent(name, VARIANTS[name], budget_s, output, seed)
            seconds = time.perf_counter() - start
            throughput = (summary.env_steps_per_s, summary.updates_per_s)
            if name == "rl":
                _example_grid(agent, any_pairs, output / "digits_examples.png")
            updates = agent.updates
            any_curve, any_gt0, folding, per_pair = _evaluate_agent(agent, any_pairs, steps)
            same_curve = _evaluate_agent(agent, same_pairs, steps)[0]
            counts = agent.parameter_counts()
            params = counts["planner"] + counts["actor"]
        results.append(VariantResult(name, params, seconds, updates, any_curve, any_gt0, same_curve, folding,
                                     per_pair, *throughput))
        results.sort(key=lambda r: ORDER.index(r.name))
        with atomic_output(saved) as tmp:
            tmp.write_text(json.dumps([r.__dict__ for r in results], indent=2))
    return results


@torch.no_grad()
def _example_grid(agent, pairs, path: Path, count: int = 6, shown: tuple[int, ...] = (0, 1, 2, 5, 10, 20, 30)) -> None:
    """Rows: example pairs; columns: fixed, then the moving digit after each shown step (deterministic policy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlreg.rollout import rollout
    from rlreg.tasks.registration import RegistrationBatch, RegistrationTask

    task = RegistrationTask(replace(agent.config.task, max_steps=max(shown) + 1))
    task.reset(RegistrationBatch(*(x[:count] for x in (pairs.fixed, pairs.moving, pairs.fixed_seg, pairs.moving_seg))))
    frames = {0: task.warped.clone()}
    rollout(agent, task, max(shown), lambda t, _: frames.update({t: task.warped.clone()} if t in shown else {}))
    fig, axes = plt.subplots(count, len(shown) + 1, figsize=(1.3 * (len(shown) + 1), 1.3 * count), squeeze=False)
    for row in range(count):
        panels = [("fixed", pairs.fixed[row, 0])] + [(f"step {t}", frames[t][row, 0]) for t in shown]
        for col, (title, image) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(image.cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _plot(results: list[VariantResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in results:
        ax.plot(range(len(r.dice_any)), r.dice_any, label=f"{r.name} ({r.parameters / 1e3:.0f}k params)")
    ax.set_xlabel("step")
    ax.set_ylabel("mean Dice@0.5, any-class test pairs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_markdown(results: list[VariantResult], path: Path, command: str, budget_s: float, figure: Path) -> None:
    """Replace the digits section of ``path`` (created if missing), atomically."""
    lines = [BEGIN, "## Digits transform (RL-I2IT's MNIST benchmark)", "",
             f"Command: `{command}`. Each variant trained for {budget_s / 60:.0f} min of wall time on the same "
             f"CPU ({torch.get_num_threads()} threads, torch {torch.__version__}); evaluated on "
             f"{len(results[0].dice_any) - 1}-step registrations of fixed held-out pairs (1000 test digits).", "",
             "| variant | params (planner+actor) | updates | Dice@0.5 step 0 | best (step) | step 30 | "
             "Dice>0 best | same-class best | folding % | s / pair |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        best = max(range(len(r.dice_any)), key=r.dice_any.__getitem__)
        lines.append(f"| {r.name} | {r.parameters:,} | {r.updates:,} | {r.dice_any[0]:.3f} | "
                     f"{r.dice_any[best]:.3f} ({best}) | {r.dice_any[-1]:.3f} | {max(r.dice_any_gt0):.3f} | "
                     f"{max(r.dice_same):.3f} | {r.folding_percent:.3f} | {r.seconds_per_pair * 1e3:.2f} ms |")
    lines += ["", "Training throughput (CPU, same run): environment pair-steps per second of environment time and "
              "gradient updates per second of update time.", "",
              "| variant | env pair-steps / s | updates / s | train seconds |", "|---|---:|---:|---:|"]
    for r in results:
        env = f"{r.env_steps_per_s:.0f}" if r.env_steps_per_s else "-"
        upd = f"{r.updates_per_s:.2f}" if r.updates_per_s else "-"
        lines.append(f"| {r.name} | {env} | {upd} | {r.train_seconds:.0f} |")
    lines += ["", f"![Dice per step]({figure.name})", "", "![Examples, step by step](digits_examples.png)", "", END]
    section = "\n".join(lines)
    text = path.read_text() if path.exists() else "# rlreg benchmarks\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.digits", description=__doc__.splitlines()[0])
    parser.add_argument("--budget-minutes", type=float, default=15.0, help="wall-time training budget of each variant")
    parser.add_argument("--eval-pairs", type=int, default=1000, help="held-out pairs evaluated")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"), help="markdown file to update")
    parser.add_argument("--runs", type=Path, default=Path("runs/benchmark_digits"))
    parser.add_argument("--variants", default=",".join(ORDER), help=f"comma-separated: {', '.join(ORDER)}")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the other variants' results from the earlier run in --runs")
    args = parser.parse_args(argv)
    budget = args.budget_minutes * 60
    results = run_benchmark(budget, eval_pairs=args.eval_pairs, output=args.runs,
                            variants=tuple(args.variants.split(",")), reuse=args.reuse)
    figure = args.output.parent / "digits_dice_per_step.png"
    _plot(results, figure)
    examples = args.runs / "digits_examples.png"
    if examples.exists():
        os.replace(examples, args.output.parent / "digits_examples.png")
    command = "python -m benchmarks.digits " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in (("budget_minutes", args.budget_minutes),
                                                     ("eval_pairs", args.eval_pairs)))
    if args.reuse:
        command += f" --variants {args.variants} --reuse  (other rows from the earlier run)"
    write_markdown(results, args.output, command, budget, figure)
    print(f"wrote {args.output} and {figure}")


if __name__ == "__main__":
    main()

