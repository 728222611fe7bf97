"""Atlas label propagation: ``rlreg register --moving-seg`` (or ``--fixed-seg``) alone, and ``rlreg batch --atlas``.

The atlas is the moving image: its labels are resampled (label-safely) onto each subject's grid through the final
transform. Dice needs both label maps, so with one it is skipped and the registration says so.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from phantoms import phantom, rotation, write_pair
from typer.testing import CliRunner

from rlreg.cli.main import app
from rlreg.data.pairs import read_pairs
from rlreg.io import InputError
from rlreg.pipelines.evaluate import evaluate_batch
from rlreg.pipelines.register.preparation import DICE_SKIPPED_NO_FIXED, DICE_SKIPPED_NO_MOVING

runner = CliRunner()
FAST = ["--steps", "10", "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    return write_pair(tmp_path_factory.mktemp("atlas_pair"), 3)


@pytest.fixture(scope="module")
def subjects(tmp_path_factory, pair: dict[str, Path]) -> tuple[Path, dict[str, Path]]:
    """A folder of two subjects on grids of their own, and an atlas (image and labels) in another folder."""
    root = tmp_path_factory.mktemp("atlas_subjects")
    folder = root / "subjects"
    folder.mkdir()
    shutil.copy(pair["fixed"], folder / "sub-01.nii.gz")
    third, third_seg = phantom((26, 30, 24), (1.1, 1.0, 1.2), (-13.0, -16.0, 14.0), rotation(3, 0.1, (1, 1, -1)),
                               (-1.0, 0.5, -1.5), (10.5, 9.5, 11.0))
    sitk.WriteImage(third, str(folder / "sub-02.nii.gz"))
    sitk.WriteImage(third_seg, str(root / "sub-02_seg.nii.gz"))
    atlas = {"image": root / "atlas" / "atlas.nii.gz", "seg": root / "atlas" / "atlas_seg.nii.gz"}
    atlas["image"].parent.mkdir()
    shutil.copy(pair["moving"], atlas["image"])
    shutil.copy(pair["moving_seg"], atlas["seg"])
    return folder, atlas


def _register(pair: dict[str, Path], out: Path, *extra: object) -> list[str]:
    return [str(a) for a in ("register", pair["fixed"], pair["moving"], "-o", out, *FAST, *extra)]


def _labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


# ---------------------------------------------------------------------------------------------------- register
def test_moving_seg_alone_propagates_the_labels_that_both_maps_would(pair: dict[str, Path], tmp_path: Path) -> None:
    both = runner.invoke(app, _register(pair, tmp_path / "both", "--fixed-seg", pair["fixed_seg"], "--moving-seg",
                                        pair["moving_seg"]))
    assert both.exit_code == 0, both.output
    assert "Dice skipped" not in both.stdout and json.loads((tmp_path / "both" / "rlreg.json").read_text())[
        "notes"] == []

    alone = runner.invoke(app, _register(pair, tmp_path / "alone", "--moving-seg", pair["moving_seg"], "--json"))
    assert alone.exit_code == 0, alone.output
    record = json.loads(alone.stdout)
    assert record == json.loads((tmp_path / "alone" / "rlreg.json").read_text())
    assert record["notes"] == [DICE_SKIPPED_NO_FIXED]
    assert not any(key.startswith("dice") for key in record["qc"])  # absent, not made up
    assert "fixed_seg" not in record["inputs"] and record["inputs"]["moving_seg"]["path"] == str(pair["moving_seg"])
    warped = tmp_path / "alone" / "warped_seg.nii.gz"
    assert record["outputs"]["warped_seg"] == str(warped)
    image, fixed = sitk.ReadImage(str(warped)), sitk.ReadImage(str(pair["fixed"]))
    assert image.GetSize() == fixed.GetSize()
    assert np.allclose(image.GetOrigin(), fixed.GetOrigin(), atol=1e-4)
    assert np.allclose(image.GetDirection(), fixed.GetDirection(), atol=1e-6)
    labels = _labels(warped)
    assert set(np.unique(labels)) == {0, 1, 2, 3}  # label-safe, and every label arrives
    # The same transform as with both maps (results repeat bit for bit on one thread), hence the same labels.
    np.testing.assert_array_equal(labels, _labels(tmp_path / "both" / "warped_seg.nii.gz"))
    assert (_labels(pair["fixed_seg"]) == labels).mean() > 0.9  # and they do land on the fixed anatomy


def test_fixed_seg_alone_is_checked_and_outlined_and_warps_nothing(pair: dict[str, Path], tmp_path: Path) -> None:
    result = runner.invoke(app, _register(pair, tmp_path / "out", "--fixed-seg", pair["fixed_seg"]))
    assert result.exit_code == 0, result.output
    assert DICE_SKIPPED_NO_MOVING in result.stdout
    record = json.loads((tmp_path / "out" / "rlreg.json").read_text())
    assert record["notes"] == [DICE_SKIPPED_NO_MOVING] and "dice_after" not in record["qc"]
    assert not (tmp_path / "out" / "warped_seg.nii.gz").exists() and "warped_seg" not in record["outputs"]
    assert (tmp_path / "out" / "overview.png").is_file()
    # Still validated against its image's grid: the moving image's labels are refused as the fixed labels.
    refused = runner.invoke(app, _register(pair, tmp_path / "wrong", "--fixed-seg", pair["moving_seg"]))
    lines = refused.output.strip().splitlines()
    assert refused.exit_code == 2 and len(lines) == 1, refused.output
    assert lines[0].startswith(f"error: {pair['moving_seg']}: ") and not (tmp_path / "wrong").exists()


# ---------------------------------------------------------------------------------------------------- batch --atlas
def _batch(source: Path | str, atlas: dict[str, Path], out: Path, *extra: object) -> list[str]:
    return [str(a) for a in ("batch", source, "--atlas", atlas["image"], "--atlas-seg", atlas["seg"], "-o", out,
                             *FAST, "--workers", "0", *extra)]


def test_batch_atlas_propagates_the_atlas_labels_to_every_subject_and_resumes(
        subjects: tuple[Path, dict[str, Path]], pair: dict[str, Path], tmp_path: Path) -> None:
    folder, atlas = subjects
    out = tmp_path / "out"
    result = runner.invoke(app, _batch(folder, atlas, out, "--json"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["total"], summary["done"], summary["skipped"], summary["failed"]) == (2, 2, 0, [])
    for subject in ("sub-01", "sub-02"):
        record = json.loads((out / subject / "rlreg.json").read_text())
        assert record["inputs"]["fixed"]["path"] == str((folder / f"{subject}.nii.gz").resolve())
        assert record["inputs"]["moving"]["path"] == str(atlas["image"].resolve())  # the atlas is the moving image
        assert record["notes"] == [DICE_SKIPPED_NO_FIXED]
        warped = sitk.ReadImage(str(out / subject / "warped_seg.nii.gz"))
        grid = sitk.ReadImage(str(folder / f"{subject}.nii.gz"))
        assert warped.GetSize() == grid.GetSize() and np.allclose(warped.GetOrigin(), grid.GetOrigin(), atol=1e-4)
        assert set(np.unique(sitk.GetArrayFromImage(warped))) == {0, 1, 2, 3}
    assert json.loads((out / "batch.json").read_text())["atlas_seg"] == str(atlas["seg"].resolve())
    # Each subject gets what `rlreg register SUBJECT ATLAS --moving-seg ATLAS_SEG` gives it.
    alone = runner.invoke(app, _register({"fixed": folder / "sub-01.nii.gz", "moving": atlas["image"]},
                                         tmp_path / "alone", "--moving-seg", atlas["seg"], "--quiet"))
    assert alone.exit_code == 0, alone.output
    np.testing.assert_array_equal(_labels(out / "sub-01" / "warped_seg.nii.gz"),
                                  _labels(tmp_path / "alone" / "warped_seg.nii.gz"))
    # No Dice anywhere downstream, and nothing breaks for it.
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["dice_after"] for r in rows] == [None, None] and all(r["folding_percent"] is not None for r in rows)
    evaluation = evaluate_batch(out)
    assert [(row.status, row.dice_mean) for row in evaluation.pairs] == [("done", None), ("done", None)]
    assert all(row.folding_percent is not None for row in evaluation.pairs) and evaluation.labels == []

    stamps = {s: (out / s / "rlreg.json").stat().st_mtime_ns for s in ("sub-01", "sub-02")}
    again = runner.invoke(app, _batch(folder, atlas, out, "--json"))
    assert again.exit_code == 0, again.output
    assert (json.loads(again.stdout)["skipped"], json.loads(again.stdout)["done"]) == (2, 0)
    assert stamps == {s: (out / s / "rlreg.json").stat().st_mtime_ns for s in stamps}
    other = runner.invoke(app, _batch(folder, {"image": atlas["image"], "seg": pair["moving_seg"]}, out))
    assert other.exit_code == 2 and "another atlas" in other.output, other.output
    record = json.loads((out / "batch.json").read_text())  # as an older rlreg wrote it: the atlas was the fixed image
    record["pairs"] = [{**item, "fixed": item["moving"], "moving": item["fixed"]} for item in record["pairs"]]
    (out / "batch.json").write_text(json.dumps(record))
    older = runner.invoke(app, _batch(folder, atlas, out))
    assert older.exit_code == 2 and "another atlas" in older.output, older.output


def test_a_subject_list_gives_ids_and_subject_labels_for_dice(subjects: tuple[Path, dict[str, Path]],
                                                             tmp_path: Path) -> None:
    folder, atlas = subjects
    listing = folder.parent / "subjects.csv"
    with listing.open("w", newline="") as handle:
        csv.writer(handle).writerows([["id", "fixed", "fixed_seg"], ["second", "subjects/sub-02.nii.gz",
                                                                    "sub-02_seg.nii.gz"]])
    (tmp_path / "plain.tsv").write_text(f"{folder / 'sub-01.nii.gz'}\n# a comment\n{folder / 'sub-02.nii.gz'}\n")
    pairs = read_pairs(listing, atlas=atlas["image"], atlas_seg=atlas["seg"])
    assert [(p.id, p.fixed, p.moving, p.fixed_seg, p.moving_seg) for p in pairs] == [
        ("second", (folder / "sub-02.nii.gz").resolve(), atlas["image"].resolve(),
         (folder.parent / "sub-02_seg.nii.gz").resolve(), atlas["seg"].resolve())]
    assert [p.id for p in read_pairs(tmp_path / "plain.tsv", atlas=atlas["image"])] == ["sub-01", "sub-02"]
    # The atlas and its labels are never subjects, even in the subjects' folder.
    with pytest.raises(InputError, match="matches no subject images"):
        read_pairs(atlas["image"].parent, atlas=atlas["image"], atlas_seg=atlas["seg"])

    out = tmp_path / "out"
    result = runner.invoke(app, _batch(listing, atlas, out, "--json"))
    assert result.exit_code == 0, result.output
    qc = json.loads((out / "second" / "rlreg.json").read_text())["qc"]
    assert qc["dice_after"] > qc["dice_affine"]  # with the subject's own labels, propagation is scored
    assert json.loads((out / "second" / "rlreg.json").read_text())["notes"] == []


@pytest.mark.parametrize("problem", ["missing atlas", "missing labels", "labels off the atlas grid", "no subjects",
                                     "labels without an atlas", "unknown column"])
def test_bad_atlas_input_is_one_line_and_writes_nothing(subjects: tuple[Path, dict[str, Path]],
                                                        pair: dict[str, Path], tmp_path: Path, problem: str) -> None:
    folder, atlas = subjects
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    bad_list = tmp_path / "bad.csv"
    bad_list.write_text("fixed,moving\nsub-01.nii.gz,atlas.nii.gz\n")
    args, named = {
        "missing atlas": (_batch(folder, {**atlas, "image": tmp_path / "nope.nii.gz"}, out), tmp_path / "nope.nii.gz"),
        "missing labels": (_batch(folder, {**atlas, "seg": tmp_path / "nope.nii.gz"}, out), tmp_path / "nope.nii.gz"),
        "labels off the atlas grid": (_batch(folder, {**atlas, "seg": pair["fixed_seg"]}, out), pair["fixed_seg"]),
        "no subjects": (_batch(empty, atlas, out), empty),
        "labels without an atlas": (["batch", str(folder), "--atlas-seg", str(atlas["seg"]), "-o", str(out)],
                                    atlas["seg"]),
        "unknown column": (_batch(bad_list, atlas, out), bad_list),
    }[problem]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(named) in lines[0], result.output
    assert not out.exists()


@pytest.mark.slow
def test_batch_atlas_with_report_builds_the_qc_report_without_dice(subjects: tuple[Path, dict[str, Path]],
                                                                   tmp_path: Path) -> None:
    folder, atlas = subjects
    out = tmp_path / "out"
    result = runner.invoke(app, _batch(folder, atlas, out, "--report", "--quiet"))
    assert result.exit_code == 0, result.output
    page = (out / "report" / "index.html").read_text()
    assert "sub-01" in page and "sub-02" in page
    evaluation = json.loads((out / "evaluation" / "evaluation.json").read_text())
    assert evaluation["per_label"] == [] and "dice_mean" not in evaluation["aggregate"]
