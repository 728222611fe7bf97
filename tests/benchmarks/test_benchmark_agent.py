"""The agent speed benchmark: one lever per child process, with its own time and peak memory."""

from __future__ import annotations

import argparse
import json

import pytest

from benchmarks.agent import LEVERS, _measure, main

FAST = next(i for i, lever in enumerate(LEVERS) if lever.steps == 6 and not lever.compile)


def test_child_mode_writes_a_timing_record(tmp_path):
    main(["--lever", str(FAST), "--repeats", "1", "--result", str(tmp_path / "r.json")])
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["parameters"] > 100_000
    assert 0 < record["per_step"] <= record["seconds"]
    assert abs(record["per_step"] * LEVERS[FAST].steps - record["seconds"]) < 1e-9


@pytest.mark.bench  # about 20 s: a child process per lever
def test_each_lever_is_measured_in_its_own_process(tmp_path):
    args = argparse.Namespace(threads=1, repeats=1)
    record = _measure(FAST, args, tmp_path)
    assert record["seconds"] > 0
    assert 100 < record["peak_rss_mib"] < 8192  # the child's own high-water mark, MiB
    broken = _measure(len(LEVERS), args, tmp_path)  # no such lever: the child fails, the row says why
    assert broken["error"].startswith("exit 1")
