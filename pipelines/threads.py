"""CPU threads of a registration: how many this process may use, and holding torch and SimpleITK to a count.

torch starts with one thread per physical core of the machine, whatever share of it the process was given: a
container limited to 2 CPUs (``docker --cpus 2``, a Kubernetes limit, a Slurm allocation) on a 64-core host still
starts 32 threads, which then take turns on 2 CPUs. Every parallel region waits for its slowest thread, so threads
that outnumber the free cores cost far more than they bring (``docs/register.md``, "Threads").
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["cpu_threads", "default_threads", "usable_cpus"]


def _cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs the cgroup's CFS quota allows (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), ``None`` when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (``taskset``, Slurm's cpuset), capped by its cgroup's CPU
    quota (``docker --cpus``), rounded up; at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        cpus = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)


def default_threads() -> int:
    """``rlreg register``'s default ``--threads``: ``OMP_NUM_THREADS`` when set, else half the usable CPUs
    (:func:`usable_cpus`), at most torch's own default (the physical cores), at least 1.

    Half: on a machine with simultaneous multithreading that is the physical cores, torch's own choice; where other
    work runs beside the registration (a viewer, a compiler, a colleague's job on a shared server), it leaves room
    for it. Threads that outnumber the free cores stall every parallel region (each waits for its slowest thread),
    which on a 2-CPU machine made a registration 3x to 17x slower, while one thread there costs little
    (docs/register.md, "Threads").
    """
    import torch

    try:
        asked = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        asked = 0
    return asked if asked >= 1 else max(1, min(torch.get_num_threads(), usable_cpus() // 2))


@contextlib.contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Inside the block, torch's intra-op threads and SimpleITK's default thread count are ``count`` (``None``:
    left as they are); both are restored afterwards."""
    if count is None:
        yield
        return
    if count < 1:
        raise ValueError(f"threads must be >= 1, got {count}")
    import SimpleITK as sitk
    import torch

    torch_before, sitk_before = torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    torch.set_num_threads(count)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(count)
    try:
        yield
    finally:
        torch.set_num_threads(torch_before)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(sitk_before)
