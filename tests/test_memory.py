"""``keep_freed_memory``: a freed large block stays in the process (glibc), so reusing it costs no page faults."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import sys
import numpy as np
from rlreg.pipelines.memory import keep_freed_memory

def rss_mib():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 2**20

applied = keep_freed_memory() if sys.argv[1] == "keep" else None
block = np.ones(64 * 2**20 // 8)  # 64 MiB, written: resident
before = rss_mib()
del block
print(applied, before - rss_mib(), keep_freed_memory() == bool(applied))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_freed_block_stays_resident_only_when_asked() -> None:
    def run(mode: str) -> list[str]:
        out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
        return out.stdout.split()

    applied, released, idempotent = run("keep")
    if applied != "True":
        pytest.skip("not glibc")
    assert float(released) < 8.0 and idempotent == "True"  # the 64 MiB stayed in the process
    _, released, _ = run("default")
    assert float(released) > 48.0  # glibc's default hands the mapping straight back


RELEASE = """
import numpy as np
from rlreg.pipelines.memory import keep_freed_memory, memory_kept, release_freed_memory

def rss_mib():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 2**20

print(release_freed_memory(), memory_kept())  # nothing to release before the setting is in force
keep_freed_memory()
keep = np.ones(16 * 2**20 // 8)  # a live block above the freed one: the freed pages are mid-heap, not at its top
blocks = [np.ones(2**20 // 8) for _ in range(96)]  # 96 MiB in 1 MiB blocks, written: resident
tail = np.ones(2**20 // 8)
del blocks
kept = rss_mib()
released = release_freed_memory()
print(released, memory_kept(), kept - rss_mib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_release_hands_freed_heap_back_between_pairs() -> None:
    out = subprocess.run([sys.executable, "-c", RELEASE], capture_output=True, text=True, check=True).stdout.split()
    if out[3] != "True":
        pytest.skip("not glibc")
    assert out[:2] == ["False", "False"]
    assert out[2] == "True" and float(out[4]) > 64.0  # most of the 96 freed MiB left the process
