"""What the benchmarks share: child processes measured from outside, the machine they ran on, marked doc sections.

* :func:`run_child` runs a command to completion and reports *its own* wall time and peak resident memory;
  :func:`import_baseline_mib` is the peak of a child that only imports some modules (what memory is quoted above).
* :func:`describe_machine`, :func:`cpu_name` and :func:`load_average` say where and under which load the figures
  were taken (the machines are shared: every section quotes its load).
* :data:`RECIPES` is the folder of the shipped training recipes the benchmarks train from.
* :func:`write_section` replaces one benchmark's marked section of ``docs/benchmarks.md`` and leaves the rest alone;
  :func:`results_path` is where a benchmark's raw numbers go beside its work folder.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import rlreg.pipelines
from rlreg.io import atomic_output

__all__ = ["LAUNCHER", "RECIPES", "ChildRun", "cpu_name", "describe_machine", "fmt_value", "import_baseline_mib",
           "load_average", "results_path", "run_child", "write_section"]

RECIPES = Path(rlreg.pipelines.__file__).parent / "recipes"
"""The training recipes installed with :mod:`rlreg.pipelines` (``digits.yaml``, ``brain-3d.yaml``, ...)."""

TITLE = "# rlreg benchmarks"
"""First line of a benchmarks file that :func:`write_section` creates."""


# ---------------------------------------------------------------------------------------------------- machine
def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``'s ``model name``), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def fmt_value(value: float | None, digits: int = 3) -> str:
    """A table cell: ``value`` with ``digits`` decimals, ``n/a`` for ``None``."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def load_average() -> float | None:
    """1-minute load average (``None`` where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def describe_machine(load_at_start: float | None, work: Path) -> dict[str, Any]:
    """CPU, torch and Python versions, date, load at start and now, and :func:`import_baseline_mib` (measured in
    ``work``), as the sections quote them. Pass the load taken before the run."""
    import torch

    end = load_average()
    start = "n/a" if load_at_start is None else f"{load_at_start:.1f}"
    load = "n/a" if end is None else f"{start} at start, {end:.1f} at end (1-min average)"
    return {"cpu": f"{cpu_name()} ({os.cpu_count()} logical CPUs)", "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "load": load,
            "import_baseline_mib": import_baseline_mib(work)}


# ---------------------------------------------------------------------------------------------------- child process
@dataclass
class ChildRun:
    """One finished child process."""

    returncode: int
    wall_seconds: float
    peak_rss_mib: float
    stdout: str
    stderr: str


def _rusage_mib(maxrss: int) -> float:
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 2**10  # bytes on macOS, KiB on Linux


# Runs as ``python -I -S -c LAUNCHER rss_file command...``: a small process that forks the command, reaps it with
# wait4 and writes the command's own ru_maxrss (KiB on Linux) to rss_file; exits with the command's status.
LAUNCHER = r"""
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as error:
        sys.stderr.write(f"cannot run {sys.argv[2]}: {error}\n")
    os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as handle:
    handle.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_child(command: list[str], stdout_path: Path, env: dict[str, str] | None = None) -> ChildRun:
    """Run ``command`` to completion and measure *its own* wall time and peak resident memory (POSIX).

    Memory is the ``ru_maxrss`` of the ``rusage`` that ``os.wait4`` returns for that one process, read by a small
    launcher process (:data:`LAUNCHER`) that forks the command. Two traps make simpler ways wrong:

    * ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` is the maximum over *every* child reaped so far, so a small case
      run after a big one would report the big one's peak;
    * Linux carries the RSS of the address space a process had *before* ``exec`` into its ``ru_maxrss``: a child
      forked (or vforked, as ``subprocess`` does) straight from this benchmark, which has imported torch and
      ANTs, would report at least this process's size even if the command itself needed less.

    The launcher is a bare interpreter (about 10 MiB), so what it forks starts small and the figure is the
    command's own high-water mark (including any processes it waited for). The wall time includes the launcher's
    start (milliseconds). stdout and stderr go to files beside ``stdout_path``.
    """
    stdout_path.parent.mkdir(parents=True, exist_ok=True)
    stderr_path, rss_path = stdout_path.with_suffix(".stderr"), stdout_path.with_suffix(".maxrss")
    rss_path.unlink(missing_ok=True)
    with stdout_path.open("w") as out, stderr_path.open("w") as err:
        start = time.perf_counter()
        code = subprocess.run([sys.executable, "-I", "-S", "-c", LAUNCHER, str(rss_path), *command], stdout=out,
                              stderr=err, env=env, check=False).returncode
        wall = time.perf_counter() - start
    peak = _rusage_mib(int(rss_path.read_text())) if rss_path.exists() else float("nan")
    return ChildRun(code, wall, peak, stdout_path.read_text(), stderr_path.read_text())


def import_baseline_mib(work: Path,
                        modules: str = "rlreg.cli.main, rlreg.pipelines.register, rlreg.pipelines.figures") -> float:
    """Peak RSS (MiB) of a child that only imports ``modules`` (by default what ``rlreg register`` imports: torch,
    SimpleITK, the pipeline); NaN when the import fails."""
    run = run_child([sys.executable, "-c", f"import {modules}"], work / "import_baseline.out")
    return run.peak_rss_mib if run.returncode == 0 else float("nan")


# ---------------------------------------------------------------------------------------------------- markdown
def write_section(path: Path, section: str, begin: str, end: str) -> str:
    """Replace the text from ``begin`` to ``end`` (markers included) in ``path`` by ``section``, atomically.

    ``section`` must start with ``begin`` and end with ``end``. The file is created (titled ``# rlreg benchmarks``)
    when missing and the section appended when absent; everything else is kept verbatim. Unbalanced or repeated
    markers raise ``ValueError`` instead of guessing. Returns the new text.
    """
    if not (section.startswith(begin) and section.rstrip("\n").endswith(end)):
        raise ValueError(f"section must start with {begin} and end with {end}")
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if not text.strip():
        text = f"{TITLE}\n"
    counts = text.count(begin), text.count(end)
    if counts not in ((0, 0), (1, 1)) or (counts == (1, 1) and text.index(begin) > text.index(end)):
        raise ValueError(f"{path}: expected one {begin} ... {end} pair, found {counts[0]} / {counts[1]}")
    section = section.rstrip("\n")
    if counts == (1, 1):
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return text


def results_path(work: Path) -> Path:
    """Raw results file: ``<work>.json`` beside the work folder."""
    return work.parent / f"{work.name}.json"
