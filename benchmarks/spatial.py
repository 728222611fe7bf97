"""Throughput of the spatial core (:mod:`rlreg.spatial`) against a bare ``grid_sample`` measured in the same run.

Run from the repository root::

    python -m benchmarks.spatial [--device auto|cpu|cuda] [--repeats N] [--threads N] [--quick] [--output PATH]

It times, per grid (128³, the 2 mm MNI grid 99×117×95 and a 2D 256² image; batch 1, float32, one channel):

* ``grid_sample`` alone on a precomputed grid (bilinear, ``align_corners=True``): the **baseline**;
* :func:`rlreg.spatial.warp` (bilinear), ``warp`` in ``label`` mode, :func:`~rlreg.spatial.compose` and
  :func:`~rlreg.spatial.jacobian_determinant`;
* forward + backward of ``warp`` w.r.t. the displacement against ``grid_sample`` forward + backward w.r.t. its
  grid (the **backward baseline**).

Each figure is quoted as a time ratio against its baseline from the same invocation (shared machines are noisy;
only ratios from one run are comparable): every repeat times the baseline right next to the operation and the
median of the per-repeat ratios is reported. Timing: warm-up calls, then the median of several repeats, each
repeat long enough (several calls) to dwarf timer resolution; CUDA is synchronised around every repeat.

The results go into the ``## Spatial core`` section of ``docs/benchmarks.md`` (path relative to the working
directory), between ``<!-- spatial:begin -->`` / ``<!-- spatial:end -->``. Inside it each device has its own
block (``<!-- spatial:cpu:begin -->`` ...), so a CUDA run keeps the CPU figures and vice versa; everything outside
the section (other benchmarks' sections) is preserved. The file is replaced atomically.

``--quick`` uses tiny grids (a smoke test of a few seconds) and, unless ``--output`` is given, only prints.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import shlex
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.common import cpu_name, load_average
from rlreg.pipelines.device import resolve_device as _resolve_any
from rlreg.spatial import compose, jacobian_determinant, resize, warp

__all__ = [
    "DEFAULT_OUTPUT",
    "Case",
    "Environment",
    "Row",
    "describe_environment",
    "main",
    "render_section",
    "resolve_device",
    "run_benchmark",
    "write_markdown",
]

DEFAULT_OUTPUT = Path("docs/benchmarks.md")
DEFAULT_REPEATS = 7
MODULE = "benchmarks.spatial"
TITLE = "# rlreg benchmarks"
SECTION_BEGIN = "<!-- spatial:begin -->"
SECTION_END = "<!-- spatial:end -->"
DEVICE_TYPES = ("cpu", "cuda")

BASELINE = "grid_sample"
BASELINE_BACKWARD = "grid_sample fwd+bwd"


@dataclass(frozen=True)
class Case:
    """One grid to time: a label for the table and the spatial shape ``S`` (batch 1, one channel)."""

    name: str
    shape: tuple[int, ...]

    @property
    def voxels(self) -> int:
        return math.prod(self.shape)


FULL_CASES = (
    Case("128³", (128, 128, 128)),
    Case("MNI 2 mm 99×117×95", (99, 117, 95)),
    Case("2D 256²", (256, 256)),
)
QUICK_NOTE = "**Quick smoke run on tiny grids: not figures to quote.**"
QUICK_CASES = (
    Case("quick 3D 10×12×9", (10, 12, 9)),
    Case("quick 2D 16²", (16, 16)),
)


@dataclass(frozen=True)
class Row:
    """One timed operation on one grid.

    Attributes:
        case: grid label (e.g. ``"128³"``).
        shape: spatial shape.
        op: operation label.
        baseline: label of the row this one is compared with (``grid_sample`` or ``grid_sample fwd+bwd``).
        seconds: median seconds per call.
        voxels_per_second: output voxels per second (``prod(shape) / seconds``).
        ratio: this operation's time over its baseline's: the median of per-repeat ratios, the baseline being
            timed next to the operation in every repeat (1.0 for a baseline itself; 2.0 = twice its time).
        peak_mib: CUDA: ``torch.cuda.max_memory_allocated`` while timing this row (inputs included);
            CPU: the process peak RSS (``ru_maxrss``, a high-water mark of the whole process) after this row.
        repeats: number of timed repeats the median is taken over.
        calls_per_repeat: calls per repeat.
    """

    case: str
    shape: tuple[int, ...]
    op: str
    baseline: str
    seconds: float
    voxels_per_second: float
    ratio: float
    peak_mib: float
    repeats: int
    calls_per_repeat: int


@dataclass(frozen=True)
class Environment:
    """Where the figures were taken."""

    device_type: str
    device_name: str
    torch_version: str
    threads: int
    python: str
    platform: str
    date: str
    memory_note: str
    load_note: str


# ------------------------------------------------------------------------------------------------- environment
def resolve_device(device: str | torch.device) -> torch.device:
    """:func:`rlreg.pipelines.device.resolve_device` (``auto`` -> CUDA if available, else CPU; a missing CUDA is
    a ``ValueError``), restricted to the device types this benchmark can time and synchronise."""
    resolved = device if isinstance(device, torch.device) else _resolve_any(device)
    if resolved.type not in DEVICE_TYPES:
        raise ValueError(f"unsupported device {resolved}; expected auto, {', '.join(DEVICE_TYPES)}")
    return resolved


def _load_note(load_at_start: float | None, threads: int) -> str:
    load_at_end, cpus = load_average(), os.cpu_count() or 1
    if load_at_end is None:
        return "n/a"
    note = f"{load_at_start:.1f} at start, " if load_at_start is not None else ""
    note += f"{load_at_end:.1f} at end (1-min load average, {cpus} logical CPUs)"
    # The end figure includes this run's own threads; the start figure is (mostly) other processes.
    others = max(load_at_start or 0.0, load_at_end - threads)
    if others + threads > cpus + 0.5:
        note += ". **The CPUs were shared with other busy processes**: absolute times are inflated"
        if threads > 1:
            note += (", and operations made of many small kernels suffer most (the intra-op threads wait on busy "
                     "cores), so their ratios are pessimistic; `--threads 1` or an idle machine is steadier")
        else:
            note += "; ratios, from interleaved repeats, are less affected"
    return note


def describe_environment(device: torch.device, load_at_start: float | None = None) -> Environment:
    """Device name, versions, thread count and (CPU) load for the report; pass the load taken before the run."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        memory_note = "torch.cuda.max_memory_allocated while timing the row (inputs included)"
    else:
        name = f"{cpu_name()} ({os.cpu_count()} logical CPUs)"
        memory_note = ("process peak RSS (ru_maxrss) after the row: a high-water mark of the whole process, "
                       "so it only moves when a row needs more than every earlier one")
    return Environment(
        device_type=device.type,
        device_name=name,
        torch_version=torch.__version__,
        threads=torch.get_num_threads(),
        python=platform.python_version(),
        platform=platform.platform(),
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        memory_note=memory_note,
        load_note=_load_note(load_at_start, torch.get_num_threads()),
    )


def _process_peak_rss_mib() -> float:
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


# ---------------------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_call(fn: Callable[[], object], device: torch.device, calls: int) -> float:
    """Seconds per call over ``calls`` back-to-back calls."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / calls


@dataclass(frozen=True)
class _Timing:
    seconds: float  # median seconds per call
    ratio: float  # median of per-repeat (op time / baseline time)
    repeats: int
    calls: int
    peak_mib: float


@dataclass(frozen=True)
class _Calibrated:
    fn: Callable[[], object]
    per_call: float  # fastest warm-up call
    calls: int  # calls per timed repeat
    peak_mib: float


def _calibrate(fn: Callable[[], object], device: torch.device, warmup: int, min_repeat_s: float) -> _Calibrated:
    """Warm-up calls (the fastest sets the calls per repeat) and the memory peak they reach."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    per_call = min(_time_call(fn, device, 1) for _ in range(max(warmup, 1)))
    calls = max(1, min(1000, math.ceil(min_repeat_s / max(per_call, 1e-9))))
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _process_peak_rss_mib()
    return _Calibrated(fn, per_call, calls, peak)


def _measure(op: _Calibrated, base: _Calibrated | None, device: torch.device, repeats: int,
             max_op_s: float) -> _Timing:
    """Median seconds per call of ``op``; with a ``base``, also the median ratio to it over interleaved repeats.

    Each repeat times the baseline right next to the operation (alternating which goes first), so load from other
    processes hits both alike; the ratio is the median of the per-repeat ratios. Slow operations get fewer
    repeats (at least 3) so that one row takes about ``max_op_s``.
    """
    cost = op.per_call * op.calls + (base.per_call * base.calls if base is not None else 0.0)
    n_repeats = max(min(3, repeats), min(repeats, int(max_op_s / max(cost, 1e-9))))
    op_times, ratios = [], []
    for i in range(n_repeats):
        if base is None:
            op_times.append(_time_call(op.fn, device, op.calls))
            ratios.append(1.0)
            continue
        if i % 2:
            t_op, t_base = _time_call(op.fn, device, op.calls), _time_call(base.fn, device, base.calls)
        else:
            t_base, t_op = _time_call(base.fn, device, base.calls), _time_call(op.fn, device, op.calls)
        op_times.append(t_op)
        ratios.append(t_op / t_base)
    return _Timing(statistics.median(op_times), statistics.median(ratios), n_repeats, op.calls, op.peak_mib)


# ---------------------------------------------------------------------------------------------------- inputs
def _smooth_displacement(shape: tuple[int, ...], amplitude: float, gen: torch.Generator) -> Tensor:
    """A smooth random ``(1, ndim, *shape)`` voxel displacement of a few voxels (upsampled coarse noise)."""
    ndim = len(shape)
    coarse = torch.randn(1, ndim, *(max(2, n // 8) for n in shape), generator=gen)
    return amplitude * resize(coarse, shape)


def _labels(shape: tuple[int, ...], n_labels: int, gen: torch.Generator) -> Tensor:
    """A blocky integer label map ``(1, 1, *shape)`` (coarse random labels, nearest-upsampled)."""
    coarse = torch.randint(0, n_labels, (1, 1, *(max(2, n // 6) for n in shape)), generator=gen)
    return resize(coarse, shape, kind="labels")


def _grid_from_displacement(displacement: Tensor) -> Tensor:
    """grid_sample grid (x-y-z order, ``align_corners=True``) for ``x + u(x)``, computed once outside the timing."""
    shape = displacement.shape[2:]
    axes = [torch.arange(n, dtype=displacement.dtype, device=displacement.device) for n in shape]
    pos = torch.stack(torch.meshgrid(*axes, indexing="ij")).unsqueeze(0) + displacement
    scale = torch.tensor([2.0 / (n - 1) for n in shape], dtype=pos.dtype, device=pos.device)
    view = (1, len(shape)) + (1,) * len(shape)
    return (pos * scale.view(view) - 1.0).movedim(1, -1).flip(-1).contiguous()


# ----------------------------------------------------------------------------------------------------- bench
def run_benchmark(device: torch.device, *, repeats: int = DEFAULT_REPEATS, quick: bool = False,
                  cases: Sequence[Case] | None = None, warmup: int = 2, seed: int = 0) -> list[Row]:
    """Time the spatial core on ``device`` (already resolved; see :func:`resolve_device`).

    Args:
        device: ``cpu`` or ``cuda`` device.
        repeats: timed repeats per operation (the median is reported); slow operations use fewer, at least 3.
        quick: tiny grids and short repeats (smoke test).
        cases: grids to time; defaults to :data:`FULL_CASES` (or :data:`QUICK_CASES` with ``quick``).
        warmup: untimed calls before timing (the fastest also calibrates the calls per repeat).
        seed: seed of the random inputs.

    Returns:
        Rows in table order: per case, the two baselines and every operation with its ratio.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    cases = tuple(cases) if cases is not None else (QUICK_CASES if quick else FULL_CASES)
    min_repeat_s, max_op_s = (0.002, 0.2) if quick else (0.05, 10.0)
    gen = torch.Generator().manual_seed(seed)
    rows: list[Row] = []
    for case in cases:
        rows += _bench_case(case, device, gen, repeats, warmup, min_repeat_s, max_op_s)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _bench_case(case: Case, device: torch.device, gen: torch.Generator, repeats: int, warmup: int,
                min_repeat_s: float, max_op_s: float) -> list[Row]:
    shape = case.shape
    image = torch.rand(1, 1, *shape, generator=gen).to(device)
    labels = _labels(shape, 8, gen).to(device)
    disp = _smooth_displacement(shape, 3.0, gen).to(device)
    step = _smooth_displacement(shape, 1.5, gen).to(device)
    grid = _grid_from_displacement(disp)
    grad_out = torch.randn(1, 1, *shape, generator=gen).to(device)
    disp_req = disp.detach().clone().requires_grad_(True)
    grid_req = grid.detach().clone().requires_grad_(True)

    def grid_sample_fwd() -> Tensor:
        return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    def grid_sample_bwd() -> tuple[Tensor, ...]:
        out = F.grid_sample(image, grid_req, mode="bilinear", padding_mode="zeros", align_corners=True)
        return torch.autograd.grad(out, grid_req, grad_out)

    def warp_bwd() -> tuple[Tensor, ...]:
        return torch.autograd.grad(warp(image, disp_req), disp_req, grad_out)

    # The baseline must do the same work as warp: same sample positions, same result.
    with torch.no_grad():
        if not torch.allclose(warp(image, disp), grid_sample_fwd(), atol=1e-4, rtol=1e-4):
            raise RuntimeError(f"{case.name}: warp and the grid_sample baseline disagree; baseline invalid")

    # (label, baseline label, function, needs autograd); a baseline precedes the rows compared with it.
    ops: list[tuple[str, str, Callable[[], object], bool]] = [
        (BASELINE, BASELINE, grid_sample_fwd, False),
        ("warp bilinear", BASELINE, lambda: warp(image, disp), False),
        ("warp label", BASELINE, lambda: warp(labels, disp, "label"), False),
        ("compose", BASELINE, lambda: compose(disp, step), False),
        ("jacobian_determinant", BASELINE, lambda: jacobian_determinant(disp), False),
        (BASELINE_BACKWARD, BASELINE_BACKWARD, grid_sample_bwd, True),
        ("warp fwd+bwd (w.r.t. displacement)", BASELINE_BACKWARD, warp_bwd, True),
    ]
    rows: list[Row] = []
    baselines: dict[str, _Calibrated] = {}
    for op, baseline, fn, needs_grad in ops:
        with torch.set_grad_enabled(needs_grad):
            calibrated = _calibrate(fn, device, warmup, min_repeat_s)
            if op == baseline:
                baselines[op] = calibrated
            timing = _measure(calibrated, None if op == baseline else baselines[baseline], device, repeats,
                              max_op_s)
        rows.append(Row(case=case.name, shape=shape, op=op, baseline=baseline, seconds=timing.seconds,
                        voxels_per_second=case.voxels / timing.seconds, ratio=timing.ratio,
                        peak_mib=timing.peak_mib, repeats=timing.repeats, calls_per_repeat=timing.calls))
    return rows


# -------------------------------------------------------------------------------------------------- markdown
def _fmt_seconds(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def _device_block(rows: Sequence[Row], env: Environment, command: str, quick: bool) -> str:
    lines = [
        f"<!-- spatial:{env.device_type}:begin -->",
        f"### {env.device_type.upper()}",
        "",
    ]
    if quick:
        lines += [QUICK_NOTE, ""]
    lines += [
        f"- Command: `{command}`",
        f"- Device: {env.device_name}; torch {env.torch_version}; "
        f"{env.threads} intra-op thread{'' if env.threads == 1 else 's'}; Python {env.python}; {env.platform}",
        f"- Date: {env.date}",
        f"- Peak memory: {env.memory_note}",
        f"- Load: {env.load_note}",
        "",
        "| grid | operation | s / call | Mvoxel/s | time ÷ baseline | baseline | peak MiB | repeats × calls |",
        "|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.case} | {row.op} | {_fmt_seconds(row.seconds)} | {row.voxels_per_second / 1e6:.3g} | "
            f"{row.ratio:.2f} | {row.baseline} | {row.peak_mib:.0f} | {row.repeats} × {row.calls_per_repeat} |"
        )
    lines.append(f"<!-- spatial:{env.device_type}:end -->")
    return "\n".join(lines)


def _placeholder_block(device_type: str) -> str:
    command = f"python -m {MODULE} --device {device_type}"
    return "\n".join([
        f"<!-- spatial:{device_type}:begin -->",
        f"### {device_type.upper()}",
        "",
        f"Not measured yet. {'On a machine with CUDA, run' if device_type == 'cuda' else 'Run'}:"
        f" `{command}`.",
        f"<!-- spatial:{device_type}:end -->",
    ])


def render_section(blocks: dict[str, str]) -> str:
    """The whole ``## Spatial core`` section, markers included, from per-device blocks (missing ones stubbed)."""
    parts = [
        SECTION_BEGIN,
        "## Spatial core",
        "",
        f"Written by `python -m {MODULE}` (`benchmarks/spatial.py`); each device block is replaced by a "
        "run on that device, the rest of this file is left alone.",
        "",
        "Throughput of `rlreg.spatial` on batch-1 float32 single-channel grids. The baseline is "
        "`torch.nn.functional.grid_sample` alone on a precomputed grid (bilinear, `align_corners=True`, same "
        "sample positions as `warp`); backward rows compare `warp` forward+backward w.r.t. the displacement with "
        "`grid_sample` forward+backward w.r.t. its grid. *time ÷ baseline* is the operation's time over the "
        "baseline's: the baseline is timed right next to the operation in every repeat (alternating which "
        "goes first) and the median of those per-repeat ratios is quoted, so it need not equal the quotient of "
        "the *s / call* column. The machines are shared and noisy: compare ratios from one run, not absolute "
        "times across runs. `compose` resamples a 2- or 3-channel field, so it does `ndim` times the "
        "baseline's interpolation work. Timing: warm-up calls, then the median over repeats (each of "
        "*calls* back-to-back calls) of `time.perf_counter` (CUDA synchronised); Mvoxel/s counts output voxels.",
        "",
    ]
    for device_type in DEVICE_TYPES:
        parts += [blocks.get(device_type) or _placeholder_block(device_type), ""]
    parts[-1] = SECTION_END
    return "\n".join(parts)


def _existing_blocks(section: str) -> dict[str, str]:
    blocks = {}
    for device_type in DEVICE_TYPES:
        pattern = re.compile(
            rf"<!-- spatial:{device_type}:begin -->.*?<!-- spatial:{device_type}:end -->", re.DOTALL)
        match = pattern.search(section)
        if match and "Not measured yet." not in match.group(0):
            blocks[device_type] = match.group(0)
    return blocks


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to a fresh file beside ``path`` and ``os.replace`` it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode honours the umask
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_markdown(rows: Sequence[Row], output: Path, env: Environment, command: str,
                   quick: bool = False) -> str:
    """Put ``rows`` into ``output``'s spatial section (this device's block only) and return the new text.

    Creates the file (titled ``# rlreg benchmarks``) or the section (appended) when missing; other sections and
    the other device's block are kept verbatim. Raises ``ValueError`` on unbalanced markers instead of guessing,
    and when a ``quick`` run would replace full figures of the same device.
    """
    output = Path(output)
    text = output.read_text(encoding="utf-8") if output.exists() else ""
    if not text.strip():
        text = f"{TITLE}\n"
    begin, end = text.count(SECTION_BEGIN), text.count(SECTION_END)
    if (begin, end) not in ((0, 0), (1, 1)) or (begin and text.index(SECTION_BEGIN) > text.index(SECTION_END)):
        raise ValueError(f"{output}: expected one {SECTION_BEGIN} ... {SECTION_END} pair, found {begin} / {end}")
    blocks: dict[str, str] = {}
    if begin:
        start = text.index(SECTION_BEGIN)
        stop = text.index(SECTION_END) + len(SECTION_END)
        blocks = _existing_blocks(text[start:stop])
        previous = blocks.get(env.device_type)
        if quick and previous is not None and QUICK_NOTE not in previous:
            raise ValueError(f"{output}: refusing to replace the full {env.device_type} figures with a quick "
                             "smoke run; write it elsewhere (--output) or run without --quick")
    else:  # append a new section after whatever is there
        text = text.rstrip("\n") + "\n\n"
        start = stop = len(text)
    blocks[env.device_type] = _device_block(rows, env, command, quick)
    new_text = text[:start] + render_section(blocks) + (text[stop:] or "\n")
    _atomic_write(output, new_text)
    return new_text


# ------------------------------------------------------------------------------------------------------ entry
def _command(device: str, repeats: int, output: Path | None, quick: bool, threads: int | None) -> str:
    args = ["python", "-m", MODULE, "--device", device]
    if repeats != DEFAULT_REPEATS:
        args += ["--repeats", str(repeats)]
    if threads is not None:
        args += ["--threads", str(threads)]
    if quick:
        args.append("--quick")
    if output is not None and output != DEFAULT_OUTPUT:
        args += ["--output", str(output)]
    return shlex.join(args)


def main(device: str = "auto", repeats: int = DEFAULT_REPEATS, output: Path | None = DEFAULT_OUTPUT,
         quick: bool = False, threads: int | None = None) -> list[Row]:
    """Resolve ``device``, run the benchmark, print the device block and write it into ``output`` (if not None).

    ``threads`` sets ``torch.set_num_threads`` for the run only (default: torch's choice; reported either way).
    """
    resolved = resolve_device(device)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        load_at_start = load_average()
        rows = run_benchmark(resolved, repeats=repeats, quick=quick)
        env = describe_environment(resolved, load_at_start)
    finally:
        torch.set_num_threads(previous_threads)
    command = _command(device, repeats, output, quick, threads)
    print(_device_block(rows, env, command, quick))
    if output is not None:
        write_markdown(rows, Path(output), env, command, quick=quick)
        print(f"wrote {output}")
    return rows


def cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", *DEVICE_TYPES))
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="timed repeats per operation")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="tiny grids: a smoke test of a few seconds")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"markdown file to update (default {DEFAULT_OUTPUT}; with --quick: print only)")
    args = parser.parse_args(argv)
    output = args.output if args.output is not None else (None if args.quick else DEFAULT_OUTPUT)
    try:
        resolve_device(args.device)
    except ValueError as err:  # e.g. --device cuda without CUDA: one line, no traceback
        parser.error(str(err))
    main(device=args.device, repeats=args.repeats, output=output, quick=args.quick, threads=args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
