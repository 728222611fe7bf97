"""Photos shipped in packages: the catalogue, the split of whole photos, crops, faces and their datasets.

Tests that need the Debian data packages (``.ci/system-packages.sh``) skip without them, and fail under
``RLREG_REQUIRE_SYSTEM_DATA=1``.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rlreg.data import photos
from rlreg.data.photos import (
    PhotoCrops,
    PhotoOptions,
    load_face_images,
    load_photo,
    photo_catalogue,
    photo_datasets,
    photo_split,
    read_qt_resources,
)
from rlreg.data.registry import DataConfig, training_data
from rlreg.io import InputError

SIZE = 32


def require_system_data() -> None:
    """Skip (or fail under ``RLREG_REQUIRE_SYSTEM_DATA=1``) unless the Debian photo packages are installed."""
    groups = {photo.group for photo in photo_catalogue().values()}
    missing = [g for g in ("opencv", "darknet", "gcompris-monuments") if g not in groups]
    faces = photos.system_data_root() / photos.SOLVAY_FACES / "ground_truth_detection.txt"
    if missing or not faces.exists():
        message = f"Debian data packages missing ({missing or 'visp-images-data'}); run .ci/system-packages.sh"
        if os.environ.get("RLREG_REQUIRE_SYSTEM_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------- rcc reader
def write_rcc(path: Path, files: dict[str, tuple[bytes, bool]]) -> None:
    """A version-3 Qt resource archive holding ``files`` (name -> (content, compressed)) in one folder ``dir``."""
    names = b""
    name_offsets = {}
    for name in ["dir", *files]:
        name_offsets[name] = len(names)
        names += struct.pack(">HI", len(name), 0) + name.encode("utf-16-be")
    data = b""
    tree = struct.pack(">IHII", 0, 2, 1, 1) + bytes(8)  # root: one child, node 1
    tree += struct.pack(">IHII", name_offsets["dir"], 2, len(files), 2) + bytes(8)
    for name, (content, compressed) in files.items():
        payload = struct.pack(">I", len(content)) + zlib.compress(content) if compressed else content
        tree += struct.pack(">IHHHI", name_offsets[name], 1 if compressed else 0, 0, 0, len(data)) + bytes(8)
        data += struct.pack(">I", len(payload)) + payload
    header_size = 20
    tree_offset, data_offset = header_size, header_size + len(tree)
    path.write_bytes(b"qres" + struct.pack(">IIII", 3, tree_offset, data_offset, data_offset + len(data)) + tree
                     + data + names)


def test_qt_resource_reader_reads_plain_and_compressed_files(tmp_path: Path) -> None:
    archive = tmp_path / "a.rcc"
    write_rcc(archive, {"plain.txt": (b"hello", False), "packed.bin": (bytes(range(200)) * 3, True)})
    files = read_qt_resources(archive)
    assert files == {"/dir/plain.txt": b"hello", "/dir/packed.bin": bytes(range(200)) * 3}
    (tmp_path / "bad.rcc").write_bytes(b"nope" + bytes(20))
    with pytest.raises(InputError, match=r"bad\.rcc: not a Qt resource archive"):
        read_qt_resources(tmp_path / "bad.rcc")


def test_readme_licences_are_read_per_file() -> None:
    readme = (b"Copyright: A, 2020\nLicense: CC0-1.0\nSource: https://x/y.jpg\nFiles:\ncat.webp\n\n"
              b"Copyright: B\nLicense: Public Domain\nFiles:\nsub/dog.webp\nowl.webp\n")
    licences = photos._readme_licences({"/r/animals/README": readme})
    assert licences["/r/animals/cat.webp"] == "CC0-1.0, A, 2020 (https://x/y.jpg)"
    assert licences["/r/animals/sub/dog.webp"] == licences["/r/animals/owl.webp"] == "Public Domain, B"


# ---------------------------------------------------------------------------------------------------- catalogue
@pytest.fixture
def no_system_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("RLREG_SYSTEM_DATA_ROOT", str(tmp_path))
    photo_catalogue.cache_clear()
    yield
    photo_catalogue.cache_clear()


def test_pip_photos_alone_still_split(no_system_data: None) -> None:
    catalogue = photo_catalogue()
    assert {p.group for p in catalogue.values()} == {"pip"}
    assert len(catalogue) == 10
    split = photo_split()
    assert len(split["test"]) == 2 and len(split["train"]) == 8
    assert all(catalogue[name].licence for name in catalogue)


def test_split_is_disjoint_whole_and_deterministic() -> None:
    split = photo_split()
    train, test = set(split["train"]), set(split["test"])
    assert not train & test
    assert train | test == set(photo_catalogue())
    assert split == photo_split()
    assert 0.1 <= len(test) / (len(train) + len(test)) <= 0.3
    held_out_source = photo_datasets({"size": SIZE}, "inpaint")[1]
    assert set(held_out_source.names) == test  # the held-out items are crops of held-out photos only


def test_system_photos_are_catalogued_and_held_out() -> None:
    require_system_data()
    catalogue = photo_catalogue()
    split = photo_split()
    assert len(catalogue) >= 100
    assert len(split["test"]) >= 12
    for group in {p.group for p in catalogue.values()}:
        members = [n for n in catalogue if catalogue[n].group == group]
        if len(members) >= 2:
            assert any(n in split["test"] for n in members), group
    image = load_photo("gcompris-farm-animals/animals/cow")
    assert image.dtype.name == "uint8" and image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= 300
    assert "Public Domain" in catalogue["gcompris-farm-animals/animals/cow"].licence


def test_load_photo() -> None:
    image = load_photo("skimage/astronaut")
    assert image.shape == (512, 512, 3) and image.dtype.name == "uint8"
    with pytest.raises(InputError, match="not installed"):
        load_photo("nowhere/nothing")


# ---------------------------------------------------------------------------------------------------- crops
def test_inpainting_crops() -> None:
    _, held_out = photo_datasets({"size": SIZE, "mask": "mixed"}, "inpaint")
    batch = held_out.sample(6, seeded(0))
    assert batch.target.shape == (6, 3, SIZE, SIZE) and batch.target.dtype == torch.float32
    assert batch.mask is not None and batch.mask.shape == (6, 1, SIZE, SIZE)
    assert float(batch.target.min()) >= 0 and float(batch.target.max()) <= 1
    assert set(batch.mask.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(batch.source, batch.target * (1 - batch.mask))
    again = held_out.sample(6, seeded(0))
    assert all(torch.equal(a, b) for a, b in zip(batch, again, strict=True))  # type: ignore[arg-type]
    assert not torch.equal(batch.target, held_out.sample(6, seeded(1)).target)


def test_centre_masks_are_the_centre_hole() -> None:
    _, held_out = photo_datasets({"size": SIZE, "mask": "centre"}, "inpaint")
    mask = held_out.sample(2, seeded(0)).mask
    assert mask is not None and bool((mask.sum((1, 2, 3)) == (SIZE // 2) ** 2).all())


def test_flips_only_in_training() -> None:
    names = photo_split()["test"]
    options = PhotoOptions(size=SIZE)
    plain = PhotoCrops(names, options, "inpaint", training=False).crops(16, seeded(5))
    unflipped = PhotoCrops(names, PhotoOptions(size=SIZE, flip=False), "inpaint", training=True).crops(16, seeded(5))
    flipped = PhotoCrops(names, options, "inpaint", training=True).crops(16, seeded(5))
    assert torch.equal(plain, unflipped)
    mirrored = [torch.equal(f, p.flip(-1)) and not torch.equal(f, p) for f, p in zip(flipped, plain, strict=True)]
    assert 0 < sum(mirrored) < 16


def test_translation_crops_carry_their_maps() -> None:
    from rlreg.data.maps import edge_map

    _, edges = photo_datasets({"size": SIZE}, "edges")
    batch = edges.sample(3, seeded(0))
    assert batch.source.shape == (3, 1, SIZE, SIZE) and batch.mask is None
    assert torch.equal(batch.source[1], edge_map(batch.target[1]))
    _, superpixels = photo_datasets({"size": SIZE}, "superpixels")
    batch = superpixels.sample(2, seeded(0))
    assert batch.source.shape == (2, 3, SIZE, SIZE) and batch.target.shape == (2, 3, SIZE, SIZE)


def test_bad_options_and_empty_splits() -> None:
    with pytest.raises(ValueError, match="unknown config keys"):
        photo_datasets({"sise": 64}, "inpaint")
    with pytest.raises(ValueError, match="min_scale"):
        PhotoOptions(min_scale=2.0, max_scale=1.0)
    with pytest.raises(InputError, match="gcompris-qt-data"):
        PhotoCrops([], PhotoOptions(), "inpaint", training=True)


# ---------------------------------------------------------------------------------------------------- faces
def test_faces() -> None:
    faces = load_face_images(SIZE)
    assert faces["train"].shape == (80, 1, SIZE, SIZE)
    assert faces["test"].shape[0] >= 20
    train, held_out = training_data(DataConfig(dataset="inpaint-faces", options={"size": SIZE}))
    batch = train.sample(4, seeded(0))
    assert batch.target.shape == (4, 1, SIZE, SIZE) and batch.mask is not None
    assert torch.equal(batch.source, batch.target * (1 - batch.mask))
    assert held_out.sample(2, seeded(0)).target.shape == (2, 1, SIZE, SIZE)


def test_solvay_faces_are_held_out() -> None:
    require_system_data()
    assert load_face_images(SIZE)["test"].shape[0] == 20 + 30


# ---------------------------------------------------------------------------------------------------- registry
@pytest.mark.parametrize("name,source_channels", [("inpaint-photos", 3), ("translate-edges-photo", 1),
                                                  ("translate-superpixels-photo", 3)])
def test_photo_datasets_are_registered(name: str, source_channels: int) -> None:
    train, held_out = training_data(DataConfig(dataset=name, options={"size": SIZE}))
    for source in (train, held_out):
        batch = source.sample(2, seeded(0))
        assert batch.source.shape == (2, source_channels, SIZE, SIZE)
        assert batch.target.shape == (2, 3, SIZE, SIZE)
