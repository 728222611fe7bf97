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
