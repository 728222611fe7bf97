"""The digits benchmark runs end to end on a tiny budget and writes its section and figure."""

from __future__ import annotations

import math

import pytest

from benchmarks import digits as bench


@pytest.mark.bench  # about 2 min: trains two variants
def test_tiny_benchmark_writes_section_and_figure(tmp_path) -> None:
    results = bench.run_benchmark(budget_s=2.0, steps=3, eval_pairs=12, output=tmp_path / "runs",
                                  variants=("aux-only", "onestep"))
    assert [r.name for r in results] == ["aux-only", "onestep"]
    for r in results:
        assert len(r.dice_any) == 4 and len(r.dice_same) == 4
        assert all(0.0 <= d <= 1.0 for d in r.dice_any)
        assert r.parameters > 10_000 and math.isfinite(r.seconds_per_pair) and r.train_seconds >= 2.0
    assert results[1].updates >= 1  # the agent may still be in its warm-up after 2 s
    # the same held-out pairs for every variant
    assert results[0].dice_any[0] == pytest.approx(results[1].dice_any[0], abs=1e-6)
    markdown = tmp_path / "benchmarks.md"
    markdown.write_text("# rlreg benchmarks\n\n<!-- spatial:begin -->\nkeep me\n<!-- spatial:end -->\n")
    figure = tmp_path / "digits.png"
    bench._plot(results, figure)
    bench.write_markdown(results, markdown, "cmd", 2.0, figure)
    bench.write_markdown(results, markdown, "cmd", 2.0, figure)  # replaces, does not append twice
    text = markdown.read_text()
    assert "keep me" in text and text.count("## Digits transform") == 1
    assert "| aux-only |" in text and "| onestep |" in text
    assert figure.stat().st_size > 5_000
