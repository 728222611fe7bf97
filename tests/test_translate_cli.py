"""``rlreg translate`` through Typer's CliRunner with tiny random agents: picture and NIfTI maps in, the input's
format and grid out, --json, --save-steps, --from-photo and label maps (with rlreg.data.maps), and one-line errors
with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from image_agents import gif_seconds, image_agent, one_line_error, registry
from PIL import Image
from typer.testing import CliRunner

from rlreg.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def agents(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("agents")
    return {"edges": image_agent(folder / "edges.pt", "translation", channels=3, source_channels=1),
            "colour": image_agent(folder / "colour.pt", "translation", channels=1, source_channels=3),
            "grey": image_agent(folder / "grey.pt", "translation", channels=1, source_channels=1),
            "inpaint": image_agent(folder / "inpaint.pt", "inpainting", channels=3)}


def _invoke(*args: object):
    return runner.invoke(app, ["translate", *map(str, args), "--device", "cpu", "--threads", "1"])


def _edges(height: int = 20, width: int = 24) -> np.ndarray:
    edges = np.zeros((height, width), np.uint8)
    edges[4, 3:20] = edges[4:16, 3] = edges[15, 3:20] = 255
    return edges


def test_edge_map_png_gives_an_rgb_png_and_json_reports_the_run(tmp_path, agents) -> None:
    Image.fromarray(_edges()).save(tmp_path / "edges.png")
    result = _invoke(tmp_path / "edges.png", "-o", tmp_path / "photo.png", "--model", agents["edges"], "--steps", 2,
                     "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["command"] == "translate" and record["task"] == "translation" and record["steps"] == 2
    assert record["size"] == [24, 20] and record["channels"] == 3 and record["hole_fraction"] is None
    assert record["outputs"] == {"output": str(tmp_path / "photo.png")}
    out = np.asarray(Image.open(tmp_path / "photo.png"))
    assert out.shape == (20, 24, 3) and out.dtype == np.uint8


def test_zero_steps_give_the_starting_image_and_save_steps_shows_the_source(tmp_path, agents) -> None:
    from rlreg.tasks import task_spec
    from rlreg.tasks.image import ImageBatch

    Image.fromarray(_edges()).save(tmp_path / "edges.png")
    result = _invoke(tmp_path / "edges.png", "-o", tmp_path / "zero.png", "--model", agents["edges"], "--steps", 0,
                     "-q")
    assert result.exit_code == 0, result.output
    spec = task_spec("translation")
    task = spec.task(spec.config(source_channels=1, channels=3))
    source = torch.from_numpy(_edges())[None, None].float() / 255
    task.reset(ImageBatch(source, torch.zeros(1, 3, 20, 24)))
    start = np.rint(task.image[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "zero.png")), start)

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    result = _invoke(tmp_path / "edges.png", "-o", tmp_path / "photo.png", "--model", agents["edges"], "--steps", 2,
                     "--save-steps", "--reference", tmp_path / "t.png", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert set(record["metrics"]) == {"psnr", "ssim"}
    strip = np.asarray(Image.open(record["outputs"]["steps_strip"]))
    assert strip.shape == (20, 4 * 24 + 3 * 2, 3)  # source, steps 1..2, reference
    assert np.array_equal(strip[:, :24, 0], _edges())  # the edge map, shown in grey
    assert np.array_equal(strip[:, 2 * 26: 2 * 26 + 24], np.asarray(Image.open(tmp_path / "photo.png")))
    assert gif_seconds(record["outputs"]["steps_gif"]) == pytest.approx(3 * 0.4)


def test_nifti_volume_is_translated_slice_by_slice_on_its_grid(tmp_path, agents) -> None:
    maps = np.random.default_rng(1).random((5, 20, 24)).astype(np.float32)
    image = sitk.GetImageFromArray(maps)
    image.SetSpacing((1.5, 1.5, 1.5))
    image.SetOrigin((10.0, -20.0, 30.0))
    image.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    sitk.WriteImage(image, str(tmp_path / "tissue.nii.gz"))
    result = _invoke(tmp_path / "tissue.nii.gz", "-o", tmp_path, "--model", agents["grey"], "--steps", 1,
                     "--batch-size", 2, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["slices"] == 5 and record["plane"] == "axial" and record["size"] == [24, 20, 5]
    out = sitk.ReadImage(record["outputs"]["output"])
    assert record["outputs"]["output"] == str(tmp_path / "tissue_translated.nii.gz")
    assert out.GetPixelID() == sitk.sitkFloat32 and out.GetSize() == (24, 20, 5)
    assert np.allclose(out.GetOrigin(), image.GetOrigin()) and np.allclose(out.GetDirection(), image.GetDirection())
    array = sitk.GetArrayFromImage(out)
    assert array.min() >= 0.0 and array.max() <= 1.0


def test_bad_inputs_fail_in_one_line_and_write_nothing(tmp_path, agents, monkeypatch) -> None:
    Image.fromarray(_edges()).save(tmp_path / "edges.png")
    rgb = np.random.default_rng(2).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    registry(tmp_path / "models", monkeypatch, {
        "edges-photo": (agents["edges"], {"task_name": "translation", "channels": 3, "source": "edges"}),
        "labels-t1": (agents["colour"], {"task_name": "translation", "channels": 1, "source": "labels"}),
        "fill": (agents["inpaint"], {"task_name": "inpainting", "channels": 3})})
    before = sorted(tmp_path.rglob("*"))
    out = tmp_path / "out" / "o.png"
    cases = {
        "photo as edges": ([tmp_path / "photo.png", "-o", out, "--model", "edges-photo"],
                           ("photo.png: has 3 channel(s) but model edges-photo reads 1-channel edges maps",
                            "--from-photo")),
        "no model": ([tmp_path / "edges.png", "-o", out], ("more than one shipped translation model fits",
                                                             "edges-photo (3-channel, edges)")),
        "inpainting name": ([tmp_path / "edges.png", "-o", out, "--model", "fill"],
                            ("--model fill: is an inpainting model (run it with rlreg inpaint)",)),
        "inpainting file": ([tmp_path / "edges.png", "-o", out, "--model", agents["inpaint"]],
                            ("is a 'inpainting' checkpoint, not a 'translation' one",)),
        "from-photo labels": ([tmp_path / "photo.png", "-o", out, "--model", "labels-t1", "--from-photo"],
                              ("--from-photo computes edge or superpixel maps", "reads labels maps")),
        "colour labels": ([tmp_path / "photo.png", "-o", out, "--model", "labels-t1"],
                          ("photo.png: is a colour picture; model labels-t1 reads integer label maps",)),
        "unknown format": ([tmp_path / "map.bmp", "-o", out, "--model", "edges-photo"],
                           ("map.bmp: the input must be a PNG, JPEG or TIFF picture or a NIfTI image",)),
        "nifti output": ([tmp_path / "edges.png", "-o", tmp_path / "out" / "o.nii.gz", "--model", "edges-photo"],
                         ("a picture input gives a picture output",)),
    }
    for name, (arguments, fragments) in cases.items():
        try:
            one_line_error(_invoke(*arguments), *fragments)
        except AssertionError as err:
            raise AssertionError(f"{name}: {err}") from None
        assert sorted(tmp_path.rglob("*")) == before, name


def test_from_photo_and_label_maps_use_the_shared_map_functions(tmp_path, agents, monkeypatch) -> None:
    maps = pytest.importorskip("rlreg.data.maps")
    rgb = np.random.default_rng(3).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    registry(tmp_path / "models", monkeypatch, {
        "edges-photo": (agents["edges"], {"task_name": "translation", "channels": 3, "source": "edges"}),
        "labels-t1": (agents["colour"], {"task_name": "translation", "channels": 1, "source": "labels"})})
    result = _invoke(tmp_path / "photo.png", "-o", tmp_path / "a.png", "--model", "edges-photo", "--from-photo",
                     "--steps", 1, "--save-steps", "--json")
    assert result.exit_code == 0, result.output
    strip = np.asarray(Image.open(tmp_path / "a_steps.png"))
    edges = np.asarray(maps.edge_map(rgb))[0]
    assert np.array_equal(strip[:, :24, 0], np.rint(edges * 255).astype(np.uint8))

    labels = np.zeros((4, 20, 24), np.int16)
    labels[:, 5:15, 6:18], labels[:, 8:12, 9:14] = 3, 17
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing((2.0, 2.0, 2.0))
    sitk.WriteImage(image, str(tmp_path / "labels.nii.gz"))
    result = _invoke(tmp_path / "labels.nii.gz", "-o", tmp_path / "t1.nii.gz", "--model", "labels-t1", "--steps", 1,
                     "--json")
    assert result.exit_code == 0, result.output
    out = sitk.ReadImage(str(tmp_path / "t1.nii.gz"))
    assert out.GetSize() == (24, 20, 4) and out.GetSpacing() == (2.0, 2.0, 2.0)
