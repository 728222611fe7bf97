"""Paintings (style images): the jigsaw assembly, the GCompris boards, names and errors.

Tests that need the Debian data packages (``.ci/system-packages.sh``) skip without them, and fail under
``RLREG_REQUIRE_SYSTEM_DATA=1``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from rlreg.data import paintings
from rlreg.data.paintings import (
    GCOMPRIS_NAMES,
    JigsawPiece,
    assemble_jigsaw,
    load_painting,
    painting_catalogue,
    painting_tensor,
)
from rlreg.data.photos import read_qt_resources, system_data_root
from rlreg.io import InputError


def require_paintings() -> None:
    """Skip (or fail under ``RLREG_REQUIRE_SYSTEM_DATA=1``) unless the painting packages are installed."""
    packages = {painting.package for painting in painting_catalogue().values()}
    missing = [p for p in ("opencv-doc", "gcompris-qt-data") if p not in packages]
    if missing:
        message = f"Debian data packages missing ({missing}); run .ci/system-packages.sh"
        if os.environ.get("RLREG_REQUIRE_SYSTEM_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)


def _piece(image: np.ndarray) -> np.ndarray:
    return np.concatenate([image, np.full((*image.shape[:2], 1), 255, np.uint8)], axis=-1)


def test_jigsaw_halves_assemble_into_the_picture_and_crop_to_it() -> None:
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    # a 40 x 50 board; the picture sits at rows 10..29, columns 5..34; pieces placed by their centres
    left, right = _piece(picture[:, :12]), _piece(picture[:, 12:])
    pieces = [JigsawPiece(left, (5 + 6) / 40, (10 + 10) / 50), JigsawPiece(right, (17 + 9) / 40, (10 + 10) / 50)]
    rgba = assemble_jigsaw(pieces, 40, 50)
    assert rgba.shape == (20, 30, 4)
    np.testing.assert_array_equal(rgba[..., :3], picture)
    assert (rgba[..., 3] == 255).all()


def test_jigsaw_pieces_overlap_alpha_over_in_order() -> None:
    red, blue = np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8)
    red[..., 0], red[..., 3] = 255, 255
    blue[..., 2] = 255
    blue[:2, :, 3] = 255  # the lower half of the blue piece is transparent (a jigsaw notch)
    rgba = assemble_jigsaw([JigsawPiece(red, 0.5, 0.5), JigsawPiece(blue, 0.5, 0.5)], 8, 8)
    assert rgba.shape == (4, 4, 4)
    assert (rgba[:2, :, 2] == 255).all() and (rgba[:2, :, 0] == 0).all()
    assert (rgba[2:, :, 0] == 255).all() and (rgba[2:, :, 2] == 0).all()


def test_empty_jigsaw_is_an_error() -> None:
    with pytest.raises(ValueError, match="no visible piece"):
        assemble_jigsaw([JigsawPiece(np.zeros((4, 4, 4), np.uint8), 0.5, 0.5)], 8, 8)


def test_slugs_and_titles() -> None:
    assert paintings._slug("Some Painter, A Night at the Opera - 1900") == "a-night-at-the-opera"
    assert paintings._shown_title("Katsushika Hokusa, Poppies - 1833-1834") == "Katsushika Hokusai, Poppies (1833-1834)"
    assert paintings._shown_title("Katsushika Hokusai, Kazusa sea Route - 1830.") == \
        "Katsushika Hokusai, Kazusa sea Route (1830)"
    names = list(GCOMPRIS_NAMES.values())
    assert len(set(names)) == len(names) == 22
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name) for name in names)


def test_gcompris_paintings_are_catalogued_with_titles_and_licences() -> None:
    require_paintings()
    catalogue = painting_catalogue()
    gcompris = {name: p for name, p in catalogue.items() if p.package == "gcompris-qt-data"}
    assert len(gcompris) == 22
    assert set(gcompris) == set(GCOMPRIS_NAMES.values())
    assert {"great-wave", "composition-viii", "starry-night"} <= set(catalogue)
    assert catalogue["great-wave"].title == "Katsushika Hokusai, The Great Wave off Kanagawa (1823-1829)"
    assert all("GPLv3 or later" in p.licence and "gcompris-qt-data" in p.licence for p in gcompris.values())
    assert len(set(catalogue)) == len(catalogue)


def test_gcompris_boards_cover_their_box() -> None:
    require_paintings()
    archive = system_data_root() / paintings.GCOMPRIS_PAINTINGS
    boards = [path for path in read_qt_resources(archive) if paintings._BOARD.search(path)]
    assert len(boards) == 22
    for board in boards:
        rgba = paintings._gcompris_rgba(archive, board)
        coverage = float((rgba[..., 3] == 255).mean())
        assert coverage > 0.99, f"{board}: {coverage:.4f} of the box covered"


@pytest.mark.parametrize("name", ["great-wave", "composition-viii", "starry-night"])
def test_paintings_decode_to_rgb_of_a_sensible_size(name: str) -> None:
    require_paintings()
    picture = load_painting(name)
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    assert min(picture.shape[:2]) >= 300 and max(picture.shape[:2]) <= 1000
    assert picture.std() > 20  # a picture, not a blank board
    picture[:] = 0  # the caller's copy: the cached painting is untouched
    assert load_painting(name).std() > 20


def test_great_wave_is_blue_and_cream() -> None:
    require_paintings()
    picture = load_painting("great-wave").astype(np.float32)
    bottom_left = picture[picture.shape[0] // 2:, : picture.shape[1] // 3]
    assert bottom_left[..., 2].mean() > bottom_left[..., 0].mean()  # the waves: more blue than red
    assert painting_tensor("great-wave", 64).shape[2] == 64


def test_unknown_painting_lists_the_installed_ones() -> None:
    with pytest.raises(InputError, match=r"unknown style 'no-such-painting'; installed styles: ") as error:
        load_painting("no-such-painting")
    assert "\n" not in str(error.value)
    for name in painting_catalogue():
        assert name in str(error.value)


def test_catalogue_decodes_no_picture(monkeypatch: pytest.MonkeyPatch) -> None:
    require_paintings()
    from PIL import Image

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a picture was decoded while listing the catalogue")

    monkeypatch.setattr(Image, "open", refuse)
    listed = paintings._gcompris_paintings(system_data_root() / paintings.GCOMPRIS_PAINTINGS)
    assert len(listed) == 22


def _board_qml(title: str, pieces: list[tuple[str, float, float]]) -> bytes:
    entries = ['{"pixmapfile": "image/bg.svg", "type": "SHAPE_BACKGROUND_IMAGE", "width": 40, "height": 50}']
    entries += [f'{{\n "pixmapfile" : "image/{file}",\n "x" : "{x}",\n "y" : "{y}"\n}}' for file, x, y in pieces]
    return (f'import QtQuick 2.12\nQtObject {{\n property string instruction: qsTr("{title}")\n'
            f' property var levels : [\n{",".join(entries)}\n ]\n}}\n').encode()


def _webp(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image, "RGBA").save(buffer, "WEBP", lossless=True)
    return buffer.getvalue()


def test_gcompris_archive_is_parsed_named_and_assembled(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    root = "/gcompris/src/activities/paintings/resource/"
    files = {
        root + "image/README": b"Copyright:\n  Copyright 2001 A Museum\nLicense: GPLv3 or later\nFiles:\n  a.webp\n",
        root + "image/left.webp": _webp(_piece(picture[:, :12])),
        root + "image/right.webp": _webp(_piece(picture[:, 12:])),
        root + "board/board2_0.qml": _board_qml("Some Painter, Night Sky - 1900", [("right.webp", 26 / 40, 0.4)]),
        root + "board/board1_0.qml": _board_qml("Katsushika Hokusai, The Great Wave off Kanagawa - 1823-1829",
                                                [("left.webp", 11 / 40, 0.4), ("right.webp", 26 / 40, 0.4)]),
        root + "board/board3_0.qml": b"QtObject { }",  # not a jigsaw: left out
    }
    monkeypatch.setattr(paintings, "read_qt_resources", lambda path: files)
    listed = paintings._gcompris_paintings(Path("fake.rcc"))
    assert [p.name for p in listed] == ["great-wave", "night-sky"]
    assert listed[1].title == "Some Painter, Night Sky (1900)"
    assert listed[0].licence == ("public domain work, scan GPLv3 or later (Copyright 2001 A Museum; WebMuseum); "
                                 "Debian gcompris-qt-data")
    np.testing.assert_array_equal(listed[0].load(), picture)
    np.testing.assert_array_equal(listed[1].load(), picture[:, 12:])
