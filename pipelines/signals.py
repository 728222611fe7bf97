"""Stopping cleanly: ``kill PID`` handled as Ctrl-C, and worker processes that never outlive the process that started
them.

Batch schedulers and containers stop a job with SIGTERM (Slurm's ``scancel`` and time limit, ``docker stop``,
Kubernetes), then SIGKILL a few seconds later; the out-of-memory killer sends SIGKILL alone. Python's default for
SIGTERM is to die on the spot, skipping every ``finally``; SIGKILL cannot be caught at all, and the children of a
killed process are re-parented and keep running. So:

* :func:`sigterm_as_interrupt` turns SIGTERM into :class:`Terminated`, a :class:`KeyboardInterrupt`, so the clean-up
  written for Ctrl-C (temporary files removed, worker processes stopped) runs for ``kill PID`` too;
* :func:`die_with_parent`, called in each worker process as it starts, ends the worker within about a second of
  its parent's death, whatever killed the parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["EXIT_INTERRUPTED", "EXIT_TERMINATED", "Terminated", "die_with_parent", "exit_code",
           "sigterm_as_interrupt"]

EXIT_INTERRUPTED = 128 + signal.SIGINT
"""Exit status after Ctrl-C (SIGINT): 130, the shell's ``128 + signal`` convention (2 is rlreg's bad-input code)."""
EXIT_TERMINATED = 128 + signal.SIGTERM
"""Exit status after a clean stop on SIGTERM: 143."""
PARENT_POLL_SECONDS = 0.5
"""How often a worker's watchdog checks that its parent is alive."""
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (inside :func:`sigterm_as_interrupt`); a :class:`KeyboardInterrupt`, so every handler of
    Ctrl-C handles it too."""


def exit_code(stop: BaseException) -> int:
    """The exit status for a stop: 143 for :class:`Terminated` (SIGTERM), 130 for Ctrl-C."""
    return EXIT_TERMINATED if isinstance(stop, Terminated) else EXIT_INTERRUPTED


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM raises :class:`Terminated` in the main thread, as Ctrl-C raises KeyboardInterrupt.

    The first SIGTERM raises; later ones are ignored until the block ends, so a second signal cannot cut the
    clean-up of the first short (a scheduler that loses patience sends SIGKILL, which the workers survive no longer
    than their parent, see :func:`die_with_parent`). Outside the main thread (where Python cannot set a signal
    handler) the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _set_parent_death_signal() -> bool:
    """Linux: ask the kernel to SIGKILL this process when the thread that created it ends (``prctl(2)``,
    ``PR_SET_PDEATHSIG``). ``False`` where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(parent_pid: int, created_by_main_thread: bool) -> None:
    """End this (worker) process soon after ``parent_pid``, the process that started it, dies; call it first thing
    in the worker (a pool initializer).

    Two mechanisms, for any way the parent can die (SIGKILL and the out-of-memory killer included):

    * on Linux, when the parent's *main* thread created this process, the kernel's parent-death signal (SIGKILL, at
      once). The signal fires when the creating *thread* ends, not the process (``prctl(2)``), so it is asked for
      only when that thread is the main one, which lives as long as the process;
    * everywhere (macOS too), a daemon thread that checks every :data:`PARENT_POLL_SECONDS` whether the process
      was re-parented, i.e. its parent died, and then kills this process.

    A worker killed this way leaves at most a temporary file (outputs are written through
    :func:`rlreg.io.atomic_output`), which a re-run of the batch removes.

    Args:
        parent_pid: ``os.getpid()`` of the parent, passed to the worker when it is started. The worker must be its
            direct child (multiprocessing's ``spawn`` or ``fork`` start methods, not ``forkserver``).
        created_by_main_thread: whether the parent's main thread started the worker.
    """
    if created_by_main_thread:
        _set_parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed: it will never fire
        os.kill(os.getpid(), signal.SIGKILL)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_SECONDS)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="rlreg-parent-watchdog", daemon=True).start()
