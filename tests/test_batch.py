"""rlreg batch: pair lists, failures that stay local, resume after SIGKILL, shards, device batches, Ray."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from phantoms import write_pair
from typer.testing import CliRunner

from rlreg.cli.main import app
from rlreg.data.pairs import read_pairs, shard
from rlreg.io import InputError
from rlreg.pipelines.batch import BatchOptions, pair_status, run_batch
from rlreg.pipelines.register import DEFAULT_INSTANCE, RegisterOptions, RegisterSettings, deform, prepare

STEPS = 10
OUTPUTS = ("warped.nii.gz", "warp.nii.gz", "jacdet.nii.gz", "warped_seg.nii.gz")


def _settings(**kwargs) -> RegisterSettings:
    return RegisterSettings(steps=STEPS, **kwargs)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("batch_data")
    write_pair(folder / "d3", 3)
    write_pair(folder / "d2", 2)
    (folder / "broken.nii.gz").write_bytes(b"this is not an image")
    return folder


def _write_csv(path: Path, rows: list[list[str]], header: bool = True, ids: list[str] | None = None) -> Path:
    """A pair list; ``ids`` adds an ``id`` column, which lets a pair repeat (a plain repeated row is dropped)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow((["id"] if ids else []) + ["fixed", "moving", "fixed_seg", "moving_seg"])
        writer.writerows([[i, *row] for i, row in zip(ids, rows, strict=True)] if ids else rows)
    return path


GOOD = ["d3/fixed.nii.gz", "d3/moving.nii.gz", "d3/fixed_seg.nii.gz", "d3/moving_seg.nii.gz"]
SWAPPED = ["d3/moving.nii.gz", "d3/fixed.nii.gz", "d3/moving_seg.nii.gz", "d3/fixed_seg.nii.gz"]


# ---------------------------------------------------------------------------------------------------- pair lists
def test_csv_tsv_and_headerless_lists_resolve_relative_paths(data: Path) -> None:
    with_header = read_pairs(_write_csv(data / "a.csv", [GOOD, SWAPPED]))
    without = read_pairs(_write_csv(data / "b.csv", [GOOD, SWAPPED], header=False))
    (data / "c.tsv").write_text("fixed\tmoving\n" + "\t".join(GOOD[:2]) + "\n")
    tsv = read_pairs(data / "c.tsv")
    assert [p.id for p in with_header] == ["fixed__moving", "moving__fixed"] == [p.id for p in without]
    assert with_header[0].fixed == (data / "d3/fixed.nii.gz").resolve()
    assert with_header[1].moving_seg == (data / "d3/fixed_seg.nii.gz").resolve()
    assert tsv[0].moving == (data / "d3/moving.nii.gz").resolve() and tsv[0].fixed_seg is None


def test_repeated_pairs_get_distinct_ids_and_bad_rows_name_the_line(data: Path) -> None:
    pairs = read_pairs(_write_csv(data / "rep.csv", [GOOD, GOOD[:2], ["d3/fixed.nii.gz", "d2/moving.nii.gz"]]))
    assert [p.id for p in pairs] == ["fixed__moving", "fixed__moving-2", "fixed__moving-3"]
    warnings: list[str] = []
    assert len(read_pairs(_write_csv(data / "rep2.csv", [GOOD, GOOD, GOOD]), warnings=warnings)) == 1
    assert len(warnings) == 2 and "rep2.csv:3: repeats" in warnings[0]
    (data / "bad.csv").write_text("fixed,moving\na.nii.gz\n")
    with pytest.raises(InputError, match=r"bad\.csv:2: has 1 columns"):
        read_pairs(data / "bad.csv")
    with pytest.raises(InputError, match="no such pair list"):
        read_pairs(data / "nope.csv")


def test_learn2reg_dataset_json_finds_labels_and_keypoints(tmp_path: Path) -> None:
    for folder in ("imagesTr", "labelsTr", "keypointsTr"):
        (tmp_path / folder).mkdir()
    for case in ("0001", "0002"):
        (tmp_path / "imagesTr" / f"TASK_{case}_0000.nii.gz").write_bytes(b"")
        (tmp_path / "labelsTr" / f"TASK_{case}_0000.nii.gz").write_bytes(b"")
        (tmp_path / "keypointsTr" / f"TASK_{case}_0000.csv").write_text("1,2,3\n")
    dataset = {"registration_val": [{"fixed": "./imagesTr/TASK_0001_0000.nii.gz",
                                     "moving": "./imagesTr/TASK_0002_0000.nii.gz"}]}
    (tmp_path / "TASK_dataset.json").write_text(json.dumps(dataset))
    (pair,) = read_pairs(tmp_path / "TASK_dataset.json")
    assert pair.id == "0001_0002"
    assert pair.fixed_seg == tmp_path / "labelsTr" / "TASK_0001_0000.nii.gz"
    assert pair.moving_keypoints == tmp_path / "keypointsTr" / "TASK_0002_0000.csv"
    with pytest.raises(InputError, match="training_paired_images"):
        read_pairs(tmp_path / "TASK_dataset.json", subset="training_paired_images")


def test_atlas_mode_takes_a_folder_or_a_glob(data: Path) -> None:
    atlas = data / "d3" / "fixed.nii.gz"
    from_folder = read_pairs(data / "d3", atlas=atlas, atlas_seg=data / "d3" / "fixed_seg.nii.gz")
    from_glob = read_pairs(str(data / "d3" / "*seg.nii.gz"), atlas=atlas)
    assert {p.fixed.name for p in from_folder} == {"moving.nii.gz", "moving_seg.nii.gz"}  # each one a subject
    assert all(p.moving == atlas.resolve() for p in from_folder)  # the atlas is never a subject, nor its labels
    assert [p.id for p in from_glob] == ["fixed_seg", "moving_seg"]
    with pytest.raises(InputError, match="matches no subject images"):
        read_pairs(str(data / "*.nothing"), atlas=atlas)


def test_shards_partition_the_pairs(data: Path) -> None:
    pairs = read_pairs(_write_csv(data / "many.csv", [GOOD] * 7, ids=[f"p{i}" for i in range(7)]))
    parts = [shard(pairs, f"{i}/3") for i in range(3)]
    assert sorted(p.id for part in parts for p in part) == sorted(p.id for p in pairs)
    assert [len(part) for part in parts] == [3, 2, 2]
    assert shard(pairs, "1/3") == shard(pairs, " 1 / 3 ")  # deterministic
    for spec in ("3/3", "x", "1/0"):
        with pytest.raises(InputError, match="--shard"):
            shard(pairs, spec)


# ---------------------------------------------------------------------------------------------------- device batches
@pytest.mark.parametrize("crop", [None, 2])
def test_a_device_batch_gives_each_pair_its_own_field(data: Path, tmp_path: Path, crop: int | None) -> None:
    """Pairs batched on the device get the fields they get alone. Cropped to the foreground, pairs batch only when
    their boxes agree (the batch is cropped to one box): the same pair registered twice does, two pairs whose
    foregrounds differ do not."""
    instance = replace(DEFAULT_INSTANCE, crop_margin=crop)
    a = prepare(RegisterOptions(data / "d3/fixed.nii.gz", data / "d3/moving.nii.gz", tmp_path / "a",
                                settings=RegisterSettings(steps=STEPS, instance=instance)))
    b = prepare(RegisterOptions(data / "d3/fixed.nii.gz", data / "d3/fixed.nii.gz", tmp_path / "b",
                                settings=RegisterSettings(steps=STEPS, instance=instance)))
    if crop is not None:
        assert a.batch_key != b.batch_key
        assert a.crop_box != tuple((0, n) for n in a.working_fixed.shape[2:])  # the phantoms do crop
        with pytest.raises(ValueError, match="batch_key"):
            deform([a, b])
        b = prepare(RegisterOptions(data / "d3/fixed.nii.gz", data / "d3/moving.nii.gz", tmp_path / "b",
                                    settings=RegisterSettings(steps=STEPS, instance=instance)))
        b.working_moving = b.working_moving.sqrt()  # another pair with the first pair's foreground, hence box
        assert a.batch_key == b.batch_key
    alone = [deform([a])[0], deform([b])[0]]
    together = deform([a, b])
    for single, batched in zip(alone, together, strict=True):
        torch.testing.assert_close(batched.field, single.field, atol=1e-5, rtol=0)
        assert [r["step"] for r in batched.curve] == [r["step"] for r in single.curve]
        assert batched.curve[-1]["loss"] == pytest.approx(single.curve[-1]["loss"], abs=1e-5)
    assert not torch.allclose(together[0].field, together[1].field)  # genuinely different pairs


# ---------------------------------------------------------------------------------------------------- the batch
def test_bad_pairs_mid_list_fail_alone_and_the_cli_says_how_many(data: Path, tmp_path: Path) -> None:
    rows = [GOOD, ["d3/fixed.nii.gz", "d3/missing.nii.gz"], ["d3/fixed.nii.gz", "broken.nii.gz"],
            ["d3/fixed.nii.gz", "d2/moving.nii.gz"], SWAPPED]
    pairs_csv = _write_csv(data / "mixed.csv", rows)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["batch", str(pairs_csv), "-o", str(out), "--steps", str(STEPS),
                                      "--workers", "1", "--batch-size", "2", "--device", "cpu", "--json"])
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert (summary["total"], summary["done"], summary["skipped"]) == (5, 2, 0)
    errors = {item["pair"]: item["error"] for item in summary["failed"]}
    assert set(errors) == {"fixed__missing", "fixed__broken", "fixed__moving-2"}
    assert "missing.nii.gz: file not found" in errors["fixed__missing"]
    assert "broken.nii.gz" in errors["fixed__broken"] and "\n" not in errors["fixed__broken"]
    assert "is 2-D but the fixed image" in errors["fixed__moving-2"]
    for pair_id, message in errors.items():
        assert pair_status(out, pair_id) == "failed"
        assert json.loads((out / pair_id / "error.json").read_text())["error"] == message

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["pair"] for row in lines] == ["fixed__moving", "fixed__missing", "fixed__broken", "fixed__moving-2",
                                             "moving__fixed"]
    assert [row["status"] for row in lines] == ["done", "failed", "failed", "failed", "done"]
    done = [row for row in lines if row["status"] == "done"]
    assert all(row["dice_after"] > row["dice_affine"] for row in done)
    with (out / "summary.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [row["pair"] for row in table[-3:]] == ["mean", "sd", "median"]
    dice = [row["dice_after"] for row in done]
    assert float(table[-3]["dice_after"]) == pytest.approx(np.mean(dice), rel=1e-5)
    assert float(table[-1]["dice_after"]) == pytest.approx(np.median(dice), rel=1e-5)
    assert float(table[-2]["dice_after"]) == pytest.approx(np.std(dice, ddof=1), rel=1e-4, abs=1e-6)

    # Resume: finished pairs are skipped untouched, failed ones are tried again (and fail again).
    stamps = {p: (out / p / "rlreg.json").stat().st_mtime_ns for p in ("fixed__moving", "moving__fixed")}
    again = run_batch(BatchOptions(str(pairs_csv), out, _settings(), workers=0))
    assert (again.skipped, again.done, len(again.failed)) == (2, 0, 3)
    assert stamps == {p: (out / p / "rlreg.json").stat().st_mtime_ns for p in stamps}
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 5


def test_device_loop_layout_overlaps_io_and_keeps_failures_local(data: Path, tmp_path: Path) -> None:
    """The GPU layout (workers prepare/finish, this process runs device batches), forced on CPU."""
    pairs_csv = _write_csv(data / "loop.csv", [GOOD, ["d3/fixed.nii.gz", "d3/missing.nii.gz"], SWAPPED, GOOD],
                           ids=["fixed__moving", "fixed__missing", "moving__fixed", "fixed__moving-2"])
    looped = run_batch(BatchOptions(str(pairs_csv), tmp_path / "loop", _settings(), workers=1, batch_size=2,
                                    device_loop=True))
    run_batch(BatchOptions(str(pairs_csv), tmp_path / "inline", _settings(), workers=0))
    assert (looped.done, [f["pair"] for f in looped.failed]) == (3, ["fixed__missing"])
    for pair_id in ("fixed__moving", "moving__fixed", "fixed__moving-2"):
        a = nib.load(tmp_path / "loop" / pair_id / "warp.nii.gz").get_fdata()
        b = nib.load(tmp_path / "inline" / pair_id / "warp.nii.gz").get_fdata()
        np.testing.assert_allclose(a, b, atol=1e-3)


def test_resuming_with_other_settings_is_refused(data: Path, tmp_path: Path) -> None:
    pairs_csv = _write_csv(data / "one.csv", [GOOD])
    out = tmp_path / "out"
    run_batch(BatchOptions(str(pairs_csv), out, _settings(), workers=0))
    with pytest.raises(InputError, match=r"other settings.*steps"):
        run_batch(BatchOptions(str(pairs_csv), out, RegisterSettings(steps=STEPS + 1),
                               workers=0))
    # A run written before an option existed resumes while that option keeps its default, and not otherwise.
    record_path = out / "batch.json"
    record = json.loads(record_path.read_text())
    assert record["settings"]["instance"] is None  # the tuned default per dimensionality, recorded as resolved:
    assert record["settings"]["instances_used"]["3-D"]["crop_margin"] == DEFAULT_INSTANCE.crop_margin
    assert record["settings"]["instances_used"]["2-D"]["diffeomorphic"] is True
    del record["settings"]["instances_used"]["3-D"]["velocity_factor"]
    record_path.write_text(json.dumps(record))
    resumed = run_batch(BatchOptions(str(pairs_csv), out, _settings(), workers=0))
    assert (resumed.skipped, resumed.done) == (1, 0)  # accepted, and the finished pair is kept
    for other in (_settings(instance=replace(DEFAULT_INSTANCE, velocity_factor=2)), _settings(smoothness=0.5)):
        with pytest.raises(InputError, match=r"other settings.*instance"):
            run_batch(BatchOptions(str(pairs_csv), out, other, workers=0))
    # A missing option means its off value (what rlreg did before it existed), not today's tuned default: a run
    # without gradient smoothing is not continued with it.
    assert DEFAULT_INSTANCE.gradient_sigma > 0
    old = _settings(instance=replace(DEFAULT_INSTANCE, gradient_sigma=0.0))
    run_batch(BatchOptions(str(pairs_csv), tmp_path / "old", old, workers=0))
    record = json.loads((tmp_path / "old" / "batch.json").read_text())
    for config in (record["settings"]["instance"], *record["settings"]["instances_used"].values()):
        del config["gradient_sigma"]
    (tmp_path / "old" / "batch.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match=r"other settings.*instance"):
        run_batch(BatchOptions(str(pairs_csv), tmp_path / "old", _settings(instance=DEFAULT_INSTANCE), workers=0))
    assert run_batch(BatchOptions(str(pairs_csv), tmp_path / "old", old, workers=0)).skipped == 1
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        run_batch(BatchOptions(str(pairs_csv), tmp_path / "theirs", _settings(), workers=0))


def test_shards_into_one_directory_complete_the_batch_once(data: Path, tmp_path: Path) -> None:
    pairs_csv = _write_csv(data / "three.csv", [GOOD, SWAPPED, GOOD],
                           ids=["fixed__moving", "moving__fixed", "fixed__moving-2"])
    out = tmp_path / "out"
    first = run_batch(BatchOptions(str(pairs_csv), out, _settings(), shard="0/2", workers=0))
    second = run_batch(BatchOptions(str(pairs_csv), out, _settings(), shard="1/2", workers=0))
    assert (first.total, first.done, second.total, second.done) == (2, 2, 1, 1)
    assert all(pair_status(out, p) == "done" for p in ("fixed__moving", "moving__fixed", "fixed__moving-2"))
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def _complete_outputs(folder: Path) -> None:
    for name in OUTPUTS:
        nib.load(folder / name).get_fdata()  # a truncated .nii.gz raises here
    sitk.ReadTransform(str(folder / "transform.h5"))
    json.loads((folder / "rlreg.json").read_text())


def test_sigkill_mid_batch_then_resume_completes_every_pair_once(data: Path, tmp_path: Path) -> None:
    """The acceptance kill test: SIGKILL the whole batch (main and workers), run it again."""
    pairs_csv = _write_csv(data / "kill.csv", [GOOD, SWAPPED] * 4, ids=[f"pair{i}" for i in range(8)])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "rlreg.cli.main", "batch", str(pairs_csv), "-o", str(out), "--steps", "40",
               "--workers", "1", "--batch-size", "1", "--device", "cpu", "--quiet"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if len(list(out.glob("*/rlreg.json"))) >= 2:
                break
            time.sleep(0.05)
        assert process.poll() is None, f"the batch ended before it could be killed: {process.stderr.read()!r}"
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    before = {p.parent.name: (p.stat().st_mtime_ns, json.loads(p.read_text())["created"])
              for p in out.glob("*/rlreg.json")}
    pairs = read_pairs(pairs_csv)
    assert 2 <= len(before) < len(pairs)
    for pair_id in before:
        _complete_outputs(out / pair_id)

    settings = RegisterSettings(steps=40)  # as the killed command
    result = run_batch(BatchOptions(str(pairs_csv), out, settings, workers=1))
    assert result.skipped == len(before) and result.done == len(pairs) - len(before) and not result.failed
    for pair in pairs:
        _complete_outputs(out / pair.id)
    after = {pair_id: ((out / pair_id / "rlreg.json").stat().st_mtime_ns,
                       json.loads((out / pair_id / "rlreg.json").read_text())["created"]) for pair_id in before}
    assert after == before  # nothing finished before the kill was computed again
    assert not [p for p in out.glob("*/.*.tmp*")]  # the killed run's temporary files were cleared
    rows = [json.loads(line)["pair"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted(rows) == sorted(p.id for p in pairs)  # one line per pair, none twice


# ---------------------------------------------------------------------------------------------------- Ray
def test_ray_engine_writes_what_the_local_engine_writes(data: Path, tmp_path: Path) -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("RLREG_REQUIRE_RAY") == "1":
            raise
        pytest.skip("Ray is not installed (pip install 'rlreg[distributed]')")
    pairs_csv = _write_csv(data / "ray.csv", [GOOD, SWAPPED, ["d3/fixed.nii.gz", "d3/missing.nii.gz"]])
    local = run_batch(BatchOptions(str(pairs_csv), tmp_path / "local", _settings(), workers=0))
    remote = run_batch(BatchOptions(str(pairs_csv), tmp_path / "ray", _settings(), engine="ray", ray_cpus=2))
    assert (remote.done, [f["pair"] for f in remote.failed]) == (local.done, [f["pair"] for f in local.failed])
    assert remote.failed[0]["error"] == local.failed[0]["error"]
    for pair_id in ("fixed__moving", "moving__fixed"):
        for name in OUTPUTS:
            a = nib.load(tmp_path / "local" / pair_id / name).get_fdata()
            b = nib.load(tmp_path / "ray" / pair_id / name).get_fdata()
            np.testing.assert_allclose(b, a, atol=1e-3, err_msg=f"{pair_id}/{name}")
        qa = json.loads((tmp_path / "local" / pair_id / "rlreg.json").read_text())["qc"]
        qb = json.loads((tmp_path / "ray" / pair_id / "rlreg.json").read_text())["qc"]
        assert qb["dice_after"] == pytest.approx(qa["dice_after"], abs=1e-3)
    again = run_batch(BatchOptions(str(pairs_csv), tmp_path / "ray", _settings(), engine="ray", ray_cpus=2))
    assert (again.skipped, again.done) == (2, 0)  # resume semantics are the local engine's


def test_settings_record_holds_the_dicom_body_part_only_when_given() -> None:
    """A batch resumed with another --body-part is refused; a run from before the option existed still resumes."""
    from rlreg.pipelines.batch import _settings_record
    from rlreg.pipelines.register import RegisterSettings

    plain = _settings_record(RegisterSettings())
    assert "body_part" not in plain and "laterality" not in plain
    head = _settings_record(RegisterSettings(formats=("dicom",), body_part="HEAD"))
    chest = _settings_record(RegisterSettings(formats=("dicom",), body_part="CHEST"))
    assert head["body_part"] == "HEAD" and head != chest
