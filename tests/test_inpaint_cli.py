"""``rlreg inpaint`` through Typer's CliRunner with tiny random agents: known pixels come back exactly (PNG, 16-bit
PNG, NIfTI), NIfTI geometry is kept (2-D and 3-D), --json, --save-steps, --reference, and every bad input fails in
one line with nothing written."""

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
    return {"rgb": image_agent(folder / "rgb.pt", channels=3), "grey": image_agent(folder / "grey.pt", channels=1)}


def _picture(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def _rgb(height: int = 20, width: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _hole(height: int = 20, width: int = 24, value: int = 255) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[5:12, 8:17] = value
    return mask


def _invoke(*args: object):
    return runner.invoke(app, ["inpaint", *map(str, args), "--device", "cpu", "--threads", "1"])


def test_png_known_pixels_come_back_exactly_and_json_reports_the_run(tmp_path, agents) -> None:
    image = _picture(tmp_path / "photo.png", _rgb())
    mask = _picture(tmp_path / "hole.png", _hole())
    result = _invoke(image, mask, "-o", tmp_path / "out.png", "--model", agents["rgb"], "--steps", 2, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["command"] == "inpaint" and record["task"] == "inpainting" and record["steps"] == 2
    assert record["model"] == str(agents["rgb"]) and record["size"] == [24, 20] and record["channels"] == 3
    assert record["hole_fraction"] == pytest.approx(7 * 9 / (20 * 24))
    assert record["outputs"] == {"output": str(tmp_path / "out.png")} and record["seconds"]["total"] > 0
    assert record["metrics"] == {} and record["slices"] is None and record["plane"] is None
    out = np.asarray(Image.open(tmp_path / "out.png"))
    known = _hole() == 0
    assert out.dtype == np.uint8 and out.shape == (20, 24, 3)
    assert np.array_equal(out[known], _rgb()[known])


def test_zero_steps_give_the_starting_image_back(tmp_path, agents) -> None:
    """With the hole already blank, 0 steps write the input itself (the task's starting image)."""
    from rlreg.tasks import task_spec
    from rlreg.tasks.image import ImageBatch

    picture = _rgb()
    picture[_hole() > 0] = 0
    image = _picture(tmp_path / "photo.png", picture)
    mask = _picture(tmp_path / "hole.png", _hole(value=1))  # {0, 1} masks are read as well as {0, 255}
    result = _invoke(image, mask, "-o", tmp_path / "out.png", "--model", agents["rgb"], "--steps", 0, "-q")
    assert result.exit_code == 0, result.output
    out = np.asarray(Image.open(tmp_path / "out.png"))
    unit = torch.from_numpy(picture).permute(2, 0, 1)[None].float() / 255
    hole = torch.from_numpy(_hole(value=1))[None, None].float()
    task = task_spec("inpainting").task(task_spec("inpainting").config(channels=3))
    task.reset(ImageBatch(unit * (1 - hole), unit, hole))
    start = np.rint(task.image[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert np.array_equal(out, start)
    assert np.array_equal(out[_hole() == 0], picture[_hole() == 0])


def test_sixteen_bit_grey_png_keeps_its_sixteen_bits(tmp_path, agents) -> None:
    picture = np.random.default_rng(1).integers(0, 4096, (20, 24), dtype=np.uint16)  # a 12-bit image in 16 bits
    image = _picture(tmp_path / "scan.png", picture)
    mask = _picture(tmp_path / "hole.png", _hole())
    result = _invoke(image, mask, "-o", tmp_path / "out.png", "--model", agents["grey"], "--steps", 2, "-q")
    assert result.exit_code == 0, result.output
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out.dtype == np.uint16 and np.array_equal(out[_hole() == 0], picture[_hole() == 0])
    assert out[_hole() > 0].max() <= 4096  # the hole is filled on the image's own intensity scale


def test_opaque_rgba_is_read_as_rgb(tmp_path, agents) -> None:
    rgba = np.concatenate([_rgb(), np.full((20, 24, 1), 255, np.uint8)], axis=2)
    image = _picture(tmp_path / "photo.png", rgba)
    mask = _picture(tmp_path / "hole.png", _hole())
    result = _invoke(image, mask, "-o", tmp_path / "out.png", "--model", agents["rgb"], "--steps", 1, "-q")
    assert result.exit_code == 0, result.output
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out.shape == (20, 24, 3) and np.array_equal(out[_hole() == 0], _rgb()[_hole() == 0])


def _nifti(path: Path, array: np.ndarray, spacing, origin, direction) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def test_nifti_2d_keeps_geometry_and_known_values(tmp_path, agents) -> None:
    values = np.random.default_rng(2).normal(300, 80, (20, 24)).astype(np.float32)
    geometry = ((0.8, 1.1), (12.5, -40.25), (0.0, 1.0, -1.0, 0.0))
    image = _nifti(tmp_path / "slice.nii.gz", values, *geometry)
    mask = _nifti(tmp_path / "hole.nii.gz", (_hole() > 0).astype(np.uint8), *geometry)
    result = _invoke(image, mask, "-o", tmp_path / "out.nii.gz", "--model", agents["grey"], "--steps", 2, "--json")
    assert result.exit_code == 0, result.output
    out = sitk.ReadImage(str(tmp_path / "out.nii.gz"))
    assert out.GetPixelID() == sitk.sitkFloat32 and out.GetSize() == (24, 20)
    assert np.allclose(out.GetSpacing(), geometry[0]) and np.allclose(out.GetOrigin(), geometry[1])
    assert np.allclose(out.GetDirection(), geometry[2])
    array = sitk.GetArrayFromImage(out)
    known = _hole() == 0
    assert np.array_equal(array[known], values[known])
    low, high = np.percentile(values[known], [0.5, 99.5])
    assert low - 1e-3 <= array[~known].min() and array[~known].max() <= high + 1e-3  # mapped back to the input's scale


def test_nifti_3d_runs_the_masked_slices_and_keeps_the_grid(tmp_path, agents) -> None:
    volume = np.random.default_rng(3).integers(0, 1000, (6, 20, 24)).astype(np.int16)
    hole = np.zeros(volume.shape, np.uint8)
    hole[2, 4:9, 5:10] = hole[4, 10:15, 12:20] = 1
    geometry = ((1.0, 1.0, 3.0), (-90.0, -126.0, -72.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    image = _nifti(tmp_path / "brain.nii.gz", volume, *geometry)
    mask = _nifti(tmp_path / "lesion.nii.gz", hole, *geometry)
    reference = _nifti(tmp_path / "truth.nii.gz", volume, *geometry)
    result = _invoke(image, mask, "-o", tmp_path / "filled.nii.gz", "--model", agents["grey"], "--steps", 2,
                     "--reference", reference, "--save-steps", "--batch-size", 1, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["slices"] == 2 and record["plane"] == "axial"
    assert record["size"] == [24, 20, 6] and record["hole_fraction"] == pytest.approx(hole.mean())
    assert set(record["metrics"]) == {"psnr", "psnr_hole", "ssim", "ssim_hole"}
    assert record["metrics"]["psnr_hole"] < record["metrics"]["psnr"]
    out = sitk.ReadImage(str(tmp_path / "filled.nii.gz"))
    assert out.GetPixelID() == sitk.sitkFloat32 and out.GetSize() == (24, 20, 6)
    assert np.allclose(out.GetSpacing(), geometry[0]) and np.allclose(out.GetOrigin(), geometry[1])
    array = sitk.GetArrayFromImage(out)
    assert np.array_equal(array[hole == 0], volume[hole == 0].astype(np.float32))
    strip = Image.open(tmp_path / "filled_steps.png")
    assert strip.size == (4 * 24 + 3 * 2, 20)  # input, 2 steps, reference of the slice with the largest hole
    assert gif_seconds(tmp_path / "filled_steps.gif") == pytest.approx(3 * 0.4)

    coronal = _invoke(image, mask, "-o", tmp_path / "j.nii.gz", "--model", agents["grey"], "--steps", 1,
                      "--plane", "coronal", "--json")
    assert coronal.exit_code == 0, coronal.output
    assert json.loads(coronal.output)["slices"] == 10 and json.loads(coronal.output)["plane"] == "coronal"
    known = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "j.nii.gz")))[hole == 0]
    assert np.array_equal(known, volume[hole == 0].astype(np.float32))
    one_line_error(_invoke(image, mask, "-o", tmp_path / "x.nii.gz", "--model", agents["grey"], "--plane", "oblique"),
                   str(image), "--plane oblique: give axial, coronal or sagittal")
    assert not (tmp_path / "x.nii.gz").exists()

    one = _nifti(tmp_path / "one.nii.gz", volume[2:3], *geometry)  # a one-slice volume stays 3-D
    one_mask = _nifti(tmp_path / "one_mask.nii.gz", hole[2:3], *geometry)
    result = _invoke(one, one_mask, "-o", tmp_path / "one_out.nii.gz", "--model", agents["grey"], "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["slices"] == 1 and json.loads(result.output)["plane"] == "axial"
    out = sitk.ReadImage(str(tmp_path / "one_out.nii.gz"))
    assert out.GetSize() == (24, 20, 1) and np.allclose(out.GetOrigin(), geometry[1])
    assert np.array_equal(sitk.GetArrayFromImage(out)[hole[2:3] == 0], volume[2:3][hole[2:3] == 0])


def test_save_steps_writes_a_strip_and_a_gif_beside_the_output(tmp_path, agents) -> None:
    image = _picture(tmp_path / "photo.png", _rgb())
    mask = _picture(tmp_path / "hole.png", _hole())
    reference = _picture(tmp_path / "truth.png", _rgb())
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    result = _invoke(image, mask, "-o", out_dir, "--model", agents["rgb"], "--steps", 3, "--save-steps",
                     "--reference", reference, "--json")
    assert result.exit_code == 0, result.output
    outputs = json.loads(result.output)["outputs"]
    assert outputs == {"output": str(out_dir / "photo_inpainted.png"), "steps_strip": str(out_dir /
                       "photo_inpainted_steps.png"), "steps_gif": str(out_dir / "photo_inpainted_steps.gif")}
    strip = np.asarray(Image.open(outputs["steps_strip"]))
    assert strip.shape == (20, 5 * 24 + 4 * 2, 3)  # input, steps 1..3, reference
    assert np.array_equal(strip[:, -24:], _rgb())
    final = np.asarray(Image.open(outputs["output"]))
    assert np.array_equal(strip[:, 3 * 26: 3 * 26 + 24], final)  # the last step is the output
    assert gif_seconds(outputs["steps_gif"]) == pytest.approx(4 * 0.4)


def test_default_model_is_the_shipped_one_for_the_channel_count(tmp_path, agents, monkeypatch) -> None:
    registry(tmp_path / "models", monkeypatch, {
        "photo": (agents["rgb"], {"task_name": "inpainting", "channels": 3, "recommended_steps": 2}),
        "mri": (agents["grey"], {"task_name": "inpainting"}),  # no channels on the card: read from the file
        "reg": (image_agent(tmp_path / "reg.pt", "translation"), {"task_name": "translation", "channels": 3})})
    image = _picture(tmp_path / "photo.png", _rgb())
    mask = _picture(tmp_path / "hole.png", _hole())
    result = _invoke(image, mask, "-o", tmp_path / "out.png", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["model"] == "photo" and json.loads(result.output)["steps"] == 2
    grey = _picture(tmp_path / "grey.png", _rgb()[..., 0])
    result = _invoke(grey, mask, "-o", tmp_path / "grey_out.png", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["model"] == "mri" and json.loads(result.output)["steps"] == 3  # max_steps
    one_line_error(_invoke(image, mask, "-o", tmp_path / "x.png", "--model", "mri"),
                   str(image), "has 3 channel(s) but model mri inpaints 1-channel images; use --model photo")
    one_line_error(_invoke(image, mask, "-o", tmp_path / "x.png", "--model", "reg"),
                   "--model reg: is a translation model (run it with rlreg translate), not an inpainting model")
    one_line_error(_invoke(image, mask, "-o", tmp_path / "x.png", "--model", "nope"),
                   "--model nope: no shipped model of that name; inpainting models: mri, photo (3-channel)")
    assert not (tmp_path / "x.png").exists()


def test_register_refuses_an_inpainting_model_in_one_line(tmp_path, agents, monkeypatch) -> None:
    registry(tmp_path / "models", monkeypatch, {"photo": (agents["rgb"], {"task_name": "inpainting",
                                                                         "channels": 3})})
    grey = np.random.default_rng(4).integers(0, 256, (32, 32), dtype=np.uint8)
    fixed, moving = _picture(tmp_path / "f.png", grey), _picture(tmp_path / "m.png", grey.T.copy())
    result = runner.invoke(app, ["register", str(fixed), str(moving), "-o", str(tmp_path / "reg"), "--model",
                                 "photo", "--device", "cpu"])
    one_line_error(result, "--model photo: is an inpainting model (run it with rlreg inpaint)")


def _bad_inputs(tmp: Path, agents: dict[str, Path]) -> dict[str, tuple[list, tuple[str, ...]]]:
    """name -> (arguments, fragments the one-line error must hold)."""
    image = _picture(tmp / "photo.png", _rgb())
    hole = _picture(tmp / "hole.png", _hole())
    grey = _picture(tmp / "grey.png", _rgb()[..., 0])
    smaller = _picture(tmp / "small_hole.png", _hole(18, 24))
    empty = _picture(tmp / "empty.png", np.zeros((20, 24), np.uint8))
    full = _picture(tmp / "full.png", np.full((20, 24), 255, np.uint8))
    soft = _hole()
    soft[0, :3] = 128
    soft_mask = _picture(tmp / "soft.png", soft)
    rgba = np.concatenate([_rgb(), np.full((20, 24, 1), 255, np.uint8)], axis=2)
    rgba[0, 0, 3] = 0
    transparent = _picture(tmp / "rgba.png", rgba)
    series = sitk.JoinSeries([sitk.GetImageFromArray(np.random.rand(4, 20, 24).astype(np.float32))] * 2)
    sitk.WriteImage(series, str(tmp / "series.nii.gz"))
    four_d_mask = tmp / "hole4.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((4, 20, 24), np.uint8))] * 2), str(four_d_mask))
    registration = tmp / "registration.pt"
    from rlreg.sac import Agent, AgentConfig

    Agent(AgentConfig()).save(registration)
    rgb_model, grey_model = agents["rgb"], agents["grey"]
    out = tmp / "out" / "out.png"
    return {
        "mask size": ([image, smaller, "-o", out, "--model", rgb_model],
                      (str(smaller), "is 24x18 but the image photo.png is 24x20", "nearest-neighbour")),
        "empty mask": ([image, empty, "-o", out, "--model", rgb_model], (str(empty), "marks no pixel as missing")),
        "full mask": ([image, full, "-o", out, "--model", rgb_model], (str(full), "marks every pixel as missing")),
        "non-binary mask": ([image, soft_mask, "-o", out, "--model", rgb_model],
                            (str(soft_mask), "is not a binary mask", "e.g. 128", "threshold it first")),
        "rgba": ([transparent, hole, "-o", out, "--model", rgb_model],
                 (str(transparent), "1 transparent pixels", "convert it to RGB")),
        "4-D nifti": ([tmp / "series.nii.gz", four_d_mask, "-o", tmp / "out" / "o.nii.gz", "--model", grey_model],
                      ("series.nii.gz", "is 4-D with 2 volumes", "pick one volume")),
        "channels": ([image, hole, "-o", out, "--model", grey_model],
                     (str(image), "has 3 channel(s) but model", "inpaints 1-channel images")),
        "grey into rgb": ([grey, hole, "-o", out, "--model", rgb_model], (str(grey), "has 1 channel(s)")),
        "wrong task": ([image, hole, "-o", out, "--model", registration],
                       (str(registration), "is a 'registration' checkpoint, not a 'inpainting' one")),
        "missing model": ([image, hole, "-o", out, "--model", tmp / "none.pt"], ("none.pt: model file not found",)),
        "output kind": ([image, hole, "-o", tmp / "out" / "o.nii.gz", "--model", rgb_model],
                        ("o.nii.gz: a picture input gives a picture output",)),
        "steps": ([image, hole, "-o", out, "--model", rgb_model, "--steps", -1], ("--steps -1",)),
    }


def test_every_bad_input_fails_in_one_line_and_writes_nothing(tmp_path, agents) -> None:
    cases = _bad_inputs(tmp_path, agents)
    before = sorted(tmp_path.rglob("*"))
    for name, (arguments, fragments) in cases.items():
        result = _invoke(*arguments)
        try:
            one_line_error(result, *fragments)
        except AssertionError as err:
            raise AssertionError(f"{name}: {err}") from None
        assert sorted(tmp_path.rglob("*")) == before, name  # nothing written, not even a temporary file


def test_sixteen_bit_colour_png_is_refused_with_a_conversion(tmp_path, agents) -> None:
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), np.random.default_rng(5).integers(0, 65535, (20, 24, 3), dtype=np.uint16))
    mask = _picture(tmp_path / "hole.png", _hole())
    one_line_error(_invoke(path, mask, "-o", tmp_path / "out.png", "--model", agents["rgb"]),
                   str(path), "16-bit colour PNG", "cv2.imwrite")
    assert not (tmp_path / "out.png").exists()


def test_slices_are_cut_as_in_training_whatever_the_voxel_order() -> None:
    """An RAS-stored volume's axial slice has anterior at the top (the MNI152 training slices' layout), and the same
    brain stored LPS, or with its axes permuted, gives the same slices; join undoes cut exactly."""
    from rlreg.io import Geometry
    from rlreg.pipelines.i2i import slice_layout

    ras = np.random.default_rng(6).random((1, 5, 6, 7))  # (C, z, y, x), i -> R, j -> A, k -> S
    ras_grid = Geometry((5, 6, 7), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    axial = slice_layout(ras_grid, None, Path("ras.nii.gz"))
    slices = axial.cut(ras)
    assert axial.plane == "axial" and slices.shape == (5, 1, 6, 7)
    assert np.array_equal(slices[2, 0], ras[0, 2, ::-1, :])  # row 0 = most anterior y, columns left to right
    assert np.array_equal(axial.join(slices), ras)

    lps = ras[:, :, ::-1, ::-1]  # the same brain stored i -> L, j -> P
    lps_grid = Geometry((5, 6, 7), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    assert np.array_equal(slice_layout(lps_grid, "axial", Path("lps.nii.gz")).cut(lps), slices)
    permuted = np.transpose(ras, (0, 3, 1, 2))  # (C, x, z, y): tensor axes (R, S, A), i.e. i -> A, j -> S, k -> R
    permuted_grid = Geometry((7, 5, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (0, 0, -1.0, -1.0, 0, 0, 0, 1.0, 0))
    layout = slice_layout(permuted_grid, "coronal", Path("p.nii.gz"))
    assert np.array_equal(layout.cut(permuted), slice_layout(ras_grid, "coronal", Path("ras.nii.gz")).cut(ras))
    assert np.array_equal(layout.join(layout.cut(permuted)), permuted)

    thin = Geometry((1, 6, 7), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    assert slice_layout(thin, None, Path("t.nii.gz")).plane == "axial"
    with pytest.raises(ValueError, match="is a single axial slice; drop --plane coronal"):
        slice_layout(thin, "coronal", Path("t.nii.gz"))
