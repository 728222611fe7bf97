"""The stage-by-stage comparison of two source trees: mean seconds per stage, ratios and Dice of each tree."""

from __future__ import annotations

from benchmarks.stages import BEGIN, END, STAGES, render


def _run(scale: float, dice: float) -> dict:
    return {"seconds": {stage: scale * (k + 1) for k, stage in enumerate(STAGES)}, "dice_after": dice}


def test_render_gives_each_stage_and_its_ratio() -> None:
    store = {"baseline": [_run(2.0, 0.50), _run(2.0, 0.52)], "current": [_run(1.0, 0.49), _run(1.0, 0.51)],
             "threads": 2, "baseline_commit": "abc1234", "current_commit": "def5678"}
    text = render(store, {"cpu": "test"}, "python -m benchmarks.stages --baseline-python x")
    assert text.startswith(BEGIN) and text.rstrip().endswith(END)
    assert "| read | 2.00 | 1.00 | 0.50x |" in text and "| total | 10.00 | 5.00 | 0.50x |" in text
    assert "baseline 0.5100, this tree 0.5000" in text and "`abc1234`" in text and "2 thread(s)" in text
