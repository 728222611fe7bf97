"""Geometry: tensor index <-> ITK world, one-step affine + deformable resampling, atomic image I/O."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from rlreg.affine import AffineConfig, affine_register, index_map, positions_to_displacement, transform_matrix
from rlreg.io import Geometry, InputError, read_image, write_image
from rlreg.spatial import warp


def oblique_image(size=(14, 12, 10), spacing=(1.2, 0.9, 1.5), seed: int = 0) -> sitk.Image:
    """An anisotropic, rotated and flipped 3D image with a smooth analytic intensity."""
    rng = np.random.default_rng(seed)
    arr = np.zeros(size[::-1], dtype=np.float32)
    k, j, i = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    arr[:] = np.sin(0.4 * i + 0.1) + np.cos(0.3 * j) * 0.5 + 0.2 * k + 0.05 * rng.standard_normal(arr.shape)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(spacing)
    image.SetOrigin((10.0, -20.0, 5.0))
    angle = 0.3
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    direction = rot @ np.diag([-1.0, -1.0, 1.0])  # RAS-stored NIfTI style flip, then oblique
    image.SetDirection(direction.flatten().tolist())
    return image


def test_index_to_world_matches_itk_on_oblique_grid() -> None:
    image = oblique_image()
    geometry = Geometry.from_sitk(image)
    assert geometry.size == tuple(image.GetSize())[::-1]
    matrix = geometry.index_to_world()
    for index in [(0, 0, 0), (3, 5, 7), (13, 11, 9)]:
        tensor_index = np.array((*index[::-1], 1), dtype=float)
        assert np.allclose(matrix @ tensor_index, [*list(image.TransformIndexToPhysicalPoint(index)), 1.0])


def test_affine_chain_matches_sitk_resample_in_one_interpolation() -> None:
    fixed = oblique_image(seed=1)
    moving = oblique_image(size=(16, 13, 11), spacing=(1.0, 1.1, 1.3), seed=2)
    moving.SetOrigin((8.0, -22.0, 3.0))
    transform = sitk.AffineTransform(3)
    transform.SetMatrix([1.05, 0.05, 0.0, -0.03, 0.97, 0.02, 0.01, 0.0, 1.02])
    transform.SetTranslation((0.8, -0.5, 1.2))
    transform.SetCenter((12.0, -18.0, 8.0))
    reference = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0))
    disp = positions_to_displacement(index_map(Geometry.from_sitk(fixed), Geometry.from_sitk(moving), transform),
                                     shape=Geometry.from_sitk(fixed).size)
    ours = warp(torch.from_numpy(sitk.GetArrayFromImage(moving))[None, None], disp)[0, 0].numpy()
    # ITK clamps within half a voxel of the edge where rlreg blends with the zero padding: compare inside only.
    positions = disp + torch.stack(torch.meshgrid(*[torch.arange(n) for n in disp.shape[2:]], indexing="ij"))
    upper = torch.tensor(moving.GetSize()[::-1]).view(1, 3, 1, 1, 1) - 1
    inside = ((positions >= 0) & (positions <= upper)).all(1)[0].numpy()
    assert inside.mean() > 0.3
    assert np.allclose(ours[inside], reference[inside], atol=1e-4)


def test_affine_chain_with_a_deformable_field_applies_the_field_first() -> None:
    geometry = Geometry(size=(6, 7, 8), spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    shift = sitk.TranslationTransform(3, (3.0, 0.0, 0.0))  # +3 mm along ITK x = tensor axis 2 (spacing 1)
    field = torch.zeros(1, 3, *geometry.size)
    field[:, 0] = 1.0  # +1 voxel along tensor axis 0
    disp = positions_to_displacement(index_map(geometry, geometry, shift), field)
    assert torch.allclose(disp[:, 0], torch.ones(1, *geometry.size))
    assert torch.allclose(disp[:, 2], torch.full((1, *geometry.size), 3.0))
    assert torch.allclose(disp[:, 1], torch.zeros(1, *geometry.size))


def test_transform_matrix_recovers_affine() -> None:
    transform = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.3, (4.0, 5.0, 6.0))
    matrix = transform_matrix(transform, 3)
    point = np.array([7.0, -8.0, 9.0])
    assert np.allclose(matrix[:3, :3] @ point + matrix[:3, 3], transform.TransformPoint(point.tolist()))


def test_affine_register_recovers_a_known_affine() -> None:
    size = (40, 44, 36)
    arr = np.zeros(size[::-1], dtype=np.float32)
    arr[8:28, 10:34, 9:31] = 1.0
    arr[14:20, 16:26, 12:20] = 0.5
    fixed = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(arr), 1.5)
    truth = sitk.AffineTransform(3)
    truth.SetMatrix([1.06, 0.04, 0.0, -0.03, 0.95, 0.0, 0.0, 0.02, 1.03])
    truth.SetTranslation((1.5, -2.0, 1.0))
    truth.SetCenter((20.0, 22.0, 18.0))
    # moving = fixed warped by the inverse, so fitting fixed -> moving gives back `truth`
    moving = sitk.Resample(fixed, fixed, truth.GetInverse(), sitk.sitkLinear, 0.0)
    fitted = affine_register(fixed, moving, AffineConfig(backend="simpleitk", shrink_factors=(2, 1),
                                                         smoothing_sigmas=(1.0, 0.0), iterations=200,
                                                         sampling_fraction=0.5))
    grid = np.stack(np.meshgrid(*[np.arange(5, n - 5, 6) for n in size], indexing="ij"), -1).reshape(-1, 3)
    err = max(np.linalg.norm(np.subtract(fitted.TransformPoint(p.tolist()), truth.TransformPoint(p.tolist())))
              for p in grid.astype(float))
    assert err < 0.6, err


def test_write_read_roundtrip_keeps_geometry(tmp_path) -> None:
    image = oblique_image()
    path = tmp_path / "sub" / "img.nii.gz"
    sitk.WriteImage(image, str(path.with_name("src.nii.gz"))) if path.parent.mkdir(parents=True) is None else None
    loaded = read_image(path.with_name("src.nii.gz"))
    write_image(loaded.data * 2.0, loaded.geometry, path)
    again = read_image(path)
    assert again.geometry.size == loaded.geometry.size
    assert np.allclose(again.geometry.spacing, loaded.geometry.spacing)
    assert np.allclose(again.geometry.direction, loaded.geometry.direction, atol=1e-6)
    assert np.allclose(again.geometry.origin, loaded.geometry.origin, atol=1e-5)
    assert torch.allclose(again.data, loaded.data * 2.0)
    assert sorted(p.name for p in path.parent.iterdir()) == ["img.nii.gz", "src.nii.gz"]  # no temp files left


@pytest.mark.parametrize("fast", [True, False])
def test_save_sitk_writes_a_plain_gzip_nifti_that_every_reader_opens(tmp_path, monkeypatch, fast: bool) -> None:
    """The ISA-L path (and SimpleITK's own compression where isal is missing) gives a real gzip stream: gzip, nibabel
    and SimpleITK read back the same voxels and geometry, vector fields keep their NIfTI vector intent, and no raw or
    temporary file is left behind."""
    import gzip

    import nibabel as nib

    import rlreg.io as io

    if not fast:
        monkeypatch.setattr(io, "_fast_gzip", lambda: None)
    image = oblique_image()
    field = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(10, 12, 14, 3)).astype(np.float32),
                                   isVector=True)
    field.CopyInformation(image)
    for name, item in (("img.nii.gz", image), ("warp.nii.gz", field), ("img.nrrd", image)):
        path = io.save_sitk(item, tmp_path / name)
        back = sitk.ReadImage(str(path))
        assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(item))
        assert np.allclose(back.GetSpacing(), item.GetSpacing()) and np.allclose(back.GetOrigin(), item.GetOrigin())
        if name.endswith(".nii.gz"):
            assert gzip.decompress(path.read_bytes())[:4] == (348).to_bytes(4, "little")  # a NIfTI-1 header inside
            loaded = nib.load(str(path))
            assert loaded.shape[:3] == item.GetSize()
    assert nib.load(str(tmp_path / "warp.nii.gz")).header.get_intent()[0] == "vector"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.nii.gz", "img.nrrd", "warp.nii.gz"]


def test_save_sitk_leaves_the_old_file_and_no_raw_copy_when_compression_fails(tmp_path, monkeypatch) -> None:
    import rlreg.io as io

    target = tmp_path / "warped.nii.gz"
    io.save_sitk(oblique_image(), target)
    before = target.read_bytes()

    class Broken:
        @staticmethod
        def open(*args, **kwargs):
            raise OSError("disk full")

    monkeypatch.setattr(io, "_fast_gzip", lambda: Broken)
    with pytest.raises(OSError, match="disk full"):
        io.save_sitk(oblique_image(), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["warped.nii.gz"]


def test_read_image_errors_name_the_file_and_the_fix(tmp_path) -> None:
    with pytest.raises(InputError, match=r"missing\.nii\.gz: file not found"):
        read_image(tmp_path / "missing.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(InputError, match=r"bad\.nii\.gz: not a readable image.*give a NIfTI"):
        read_image(bad)
    vector = tmp_path / "vec.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.float32), isVector=True), str(vector))
    with pytest.raises(InputError, match="components per voxel"):
        read_image(vector)
    for message in (str(err) for err in [InputError("x")]):
        assert "\n" not in message


def test_write_image_rejects_wrong_grid(tmp_path) -> None:
    geometry = Geometry.from_sitk(oblique_image())
    with pytest.raises(ValueError, match="does not match the grid"):
        write_image(torch.zeros(3, 3, 3), geometry, tmp_path / "x.nii.gz")
    assert not list(tmp_path.iterdir())


def test_atomic_output_keeps_the_old_file_when_writing_fails(tmp_path) -> None:
    from rlreg.io import atomic_output

    target = tmp_path / "report.json"
    with atomic_output(target) as tmp:
        tmp.write_text("first")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_affine_registration_is_deterministic() -> None:
    """Same inputs, same matrix: the metric's random sampling is seeded (SimpleITK's seed 0 means the clock)."""
    import numpy as np
    import SimpleITK as sitk

    from rlreg.affine import AffineConfig, affine_register, transform_matrix

    grid = np.indices((24, 28, 26)).astype(np.float32)
    blob = np.exp(-(((grid[0] - 12) / 6) ** 2 + ((grid[1] - 14) / 8) ** 2 + ((grid[2] - 13) / 5) ** 2))
    fixed = sitk.GetImageFromArray(blob)
    moving = sitk.GetImageFromArray(np.roll(blob, 2, axis=1))
    config = AffineConfig(backend="simpleitk", iterations=20, sampling_fraction=0.1)
    first = transform_matrix(affine_register(fixed, moving, config), 3)
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    try:
        for count in (1, 2, 4):  # one registration thread: bit-identical whatever the global thread setting
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(count)
            assert np.array_equal(transform_matrix(affine_register(fixed, moving, config), 3), first)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def test_atomic_output_files_get_ordinary_permissions(tmp_path) -> None:
    """Files written through a temporary name are readable like any other file (mkstemp alone makes them 0600)."""
    import os

    from rlreg.io import atomic_output

    with atomic_output(tmp_path / "a.txt") as tmp:
        tmp.write_text("x")
    (tmp_path / "b.txt").write_text("x")
    assert os.stat(tmp_path / "a.txt").st_mode & 0o777 == os.stat(tmp_path / "b.txt").st_mode & 0o777


def _box_phantom(size: tuple[int, ...]) -> np.ndarray:
    arr = np.zeros(size[::-1], dtype=np.float32)
    inner = tuple(slice(n // 5, n - n // 4) for n in arr.shape)
    core = tuple(slice(n // 3, n // 2) for n in arr.shape)
    arr[inner] = 1.0
    arr[core] = 0.5
    return arr


@pytest.mark.parametrize("ndim", [2, 3])
def test_torch_affine_recovers_a_known_affine_across_grids(ndim: int) -> None:
    """The default (torch) backend finds ``T`` in mm even when the moving grid has another spacing, origin and
    direction than the fixed one."""
    size = (48, 52, 44)[:ndim]
    fixed = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(_box_phantom(size)), 1.5)
    fixed.SetSpacing((1.0, 1.2, 0.9)[:ndim])
    truth = sitk.AffineTransform(ndim)
    truth.SetMatrix([1.06, 0.04, 0.0, -0.03, 0.95, 0.0, 0.0, 0.02, 1.03] if ndim == 3 else [1.05, 0.04, -0.03, 0.96])
    truth.SetTranslation((2.5, -3.0, 1.5)[:ndim])
    truth.SetCenter((24.0, 30.0, 20.0)[:ndim])
    reference = sitk.Image([int(n * 0.8) for n in size], sitk.sitkFloat32)  # coarser, shifted, flipped moving grid
    reference.SetSpacing((1.3, 1.5, 1.1)[:ndim])
    reference.SetOrigin((50.0, 2.0, -3.0)[:ndim])
    reference.SetDirection(np.diag([-1.0, 1.0, 1.0][:ndim]).ravel().tolist())
    moving = sitk.Resample(fixed, reference, truth.GetInverse(), sitk.sitkLinear, 0.0)
    grid = np.stack(np.meshgrid(*[np.arange(10, n - 10, 6) for n in size], indexing="ij"), -1).reshape(-1, ndim)
    points = [fixed.TransformIndexToPhysicalPoint(p.tolist()) for p in grid]
    matrices = []
    # The default budget runs levels 2 and 1; half the image's voxels doubles both (4 and 2), as a 1 mm brain's are.
    # Converged (twice the steps change nothing): sub-voxel of the 1.1-1.5 mm moving grid, and within about one
    # voxel when the finest level is 2 fixed voxels.
    for budget, tolerance in ((AffineConfig.max_voxels, 1.0), (math.prod(size) // 2, 1.5)):
        # accept_if_better off: a converged finest level may keep its start, which would hide the grids that ran.
        fitted = affine_register(fixed, moving, AffineConfig(levels=(2, 1), steps=(150, 100), max_voxels=budget,
                                                             accept_if_better=False))
        err = max(np.linalg.norm(np.subtract(fitted.TransformPoint(p), truth.TransformPoint(p))) for p in points)
        assert err < tolerance, (budget, err)
        matrices.append(transform_matrix(fitted, ndim))
    assert not np.allclose(matrices[0], matrices[1], atol=1e-6)  # the smaller budget did fit on coarser grids


def test_torch_affine_is_deterministic_and_respects_the_fixed_mask() -> None:
    size = (36, 40, 32)
    fixed = sitk.GetImageFromArray(_box_phantom(size))
    moving = sitk.GetImageFromArray(np.roll(_box_phantom(size), 3, axis=2))
    # accept_if_better off: the centres of mass already give the roll, so a checked level would keep that start
    # with or without the mask, and the mask's effect on the fit would not show.
    config = AffineConfig(levels=(2,), steps=(40,), accept_if_better=False)
    first = transform_matrix(affine_register(fixed, moving, config), 3)
    assert np.array_equal(transform_matrix(affine_register(fixed, moving, config), 3), first)
    assert abs(first[0, 3] - 3.0) < 0.5  # the roll is +3 voxels along x (ITK's first axis)
    empty = sitk.Image(fixed.GetSize(), sitk.sitkUInt8)
    empty[0, 0, 0] = 1  # a one-voxel mask leaves nothing to match: the fit must stay near the centres of mass
    masked = transform_matrix(affine_register(fixed, moving, config, fixed_mask=empty), 3)
    assert not np.array_equal(masked, first)
