"""The overview picture: layout, contours and the Jacobian colours, read back from the PNG."""

from __future__ import annotations

import numpy as np
from PIL import Image

from rlreg.pipelines.figures import _jacobian_colours, save_registration_overview


def test_jacobian_colours_map_volume_change_and_folding():
    rgb = _jacobian_colours(np.array([[1.0, 2.0, 0.5, -0.3, 8.0]]))
    assert rgb[0, 0].tolist() == [255, 255, 255]  # no change: white
    assert rgb[0, 1].tolist() == [255, 0, 0]  # doubled: red
    assert rgb[0, 2].tolist() == [0, 0, 255]  # halved: blue
    assert rgb[0, 3].tolist() == [0, 0, 0]  # folded: black
    assert rgb[0, 4].tolist() == [255, 0, 0]  # saturates beyond log2 = 1


def test_overview_draws_every_row_contours_and_a_jacobian_row(tmp_path):
    image = np.zeros((20, 24, 16), dtype=np.float32)
    image[5:15, 6:18, 4:12] = 1.0
    labels = (image > 0).astype(np.int64)
    jac = np.ones_like(image)
    jac[10, 12, 8] = -1.0  # one folded voxel, on every mid slice
    path = save_registration_overview(tmp_path / "o.png", {"fixed": image, "warped": image * 0.5},
                                      contours=labels, title="t", jacobian=jac, panel_size=96)
    picture = np.asarray(Image.open(path).convert("RGB")).astype(int)
    scale = 4  # ceil(96 / 24)
    assert picture.shape[0] > 3 * 20 * scale  # three rows of panels and a title
    orange = (picture[..., 0] > 200) & (abs(picture[..., 1] - 128) < 40) & (picture[..., 2] < 80)
    assert orange.sum() > 100  # the label boundary is drawn
    black_in_white = 0
    for y in range(1, picture.shape[0] - 1):  # a black voxel surrounded by white: the folded one
        row = picture[y]
        black_in_white += int(np.any((row.sum(-1) == 0) & (np.roll(row, scale, 0).sum(-1) == 765)))
    assert black_in_white >= scale
    bare = save_registration_overview(tmp_path / "b.png", {"fixed": image}, panel_size=96)
    assert Image.open(bare).size[1] < Image.open(path).size[1] / 2


def _l_shape_png(path):
    """A 20-row x 30-column PNG: dim background, a bright L in the top-left corner (as a viewer shows the file)."""
    pixels = np.full((20, 30), 50, dtype=np.uint8)
    pixels[0:8, 0:4] = 250
    pixels[0:3, 0:12] = 250
    Image.fromarray(pixels).save(path)
    return pixels > 128


def test_2d_overview_and_step_gif_show_a_png_as_an_image_viewer_does(tmp_path):
    from rlreg.io import read_image
    from rlreg.pipelines.figures import save_step_gif

    bright = _l_shape_png(tmp_path / "l.png")
    image = read_image(tmp_path / "l.png")
    data = image.data[0, 0].numpy()
    path = save_registration_overview(tmp_path / "o.png", {"fixed": data}, panel_size=240, geometry=image.geometry)
    picture = np.asarray(Image.open(path).convert("L")).astype(int)
    rows, cols = np.nonzero(picture[:, 30:] < 250)  # the panel (the row label lies left of x = 30)
    panel = picture[rows.min():rows.max() + 1, 30 + cols.min():30 + cols.max() + 1]
    assert panel.shape == (160, 240)  # 20 rows x 30 columns, 8 pixels each
    assert np.array_equal(panel[4::8, 4::8] > 128, bright)

    unit = image.data / 255.0  # the GIF shows intensities in [0, 1]
    gif = save_step_gif(tmp_path / "s.gif", unit, frames=[unit, unit], min_height=200, geometry=image.geometry)
    frame = np.asarray(Image.open(gif).convert("L")).astype(int)
    assert frame.shape[0] == 200  # 20 rows, 10 pixels each
    assert np.array_equal(frame[5::10, 5:300:10] > 128, bright)  # the fixed image, first of the strip


def _marked_volume(direction: tuple[float, ...]):
    """A 3D volume holding a bright block at the patient's right, posterior, superior corner (the same world
    place whatever the direction: the origin puts every grid on the same world box)."""
    from rlreg.io import Geometry

    k, j, i = np.meshgrid(np.arange(12), np.arange(14), np.arange(16), indexing="ij")
    x = i * direction[0] + (15.0 if direction[0] < 0 else 0.0)  # LPS: +x left, +y posterior, +z superior
    y = j * direction[4] + (13.0 if direction[4] < 0 else 0.0)
    volume = np.full((12, 14, 16), 0.3, dtype=np.float32)
    volume[(x < 5) & (y > 8) & (k >= 5)] = 1.0
    origin = (15.0 if direction[0] < 0 else 0.0, 13.0 if direction[4] < 0 else 0.0, 0.0)
    return volume, Geometry(size=volume.shape, spacing=(1.0, 1.0, 1.0), origin=origin, direction=direction)


def test_3d_overview_names_planes_and_letters_for_lps_and_ras_flipped_grids(tmp_path):
    from PIL import ImageDraw

    from rlreg.pipelines.figures import LETTER_COLOUR, _draw_letters, _font

    pictures = []
    for name, direction in (("lps", (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)), ("ras", (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))):
        volume, geometry = _marked_volume(direction)
        path = save_registration_overview(tmp_path / f"{name}.png", {"fixed": volume}, panel_size=96,
                                          geometry=geometry)
        pictures.append(np.asarray(Image.open(path).convert("RGB")).astype(int))
    assert np.array_equal(pictures[0], pictures[1])  # one world image, one picture, whatever the grid's direction
    picture = pictures[0]
    panels = picture[..., 2] < 200  # dark gray panels, not the white canvas, not the (yellow) letters' fill
    columns = np.flatnonzero(panels[:, 30:].any(0)) + 30
    breaks = np.flatnonzero(np.diff(columns) > 1)
    assert len(breaks) == 2  # three columns: axial, coronal, sagittal
    x0, x1 = columns[0], columns[breaks[0]] + 1
    axial_rows = np.flatnonzero(panels[:, x0:x1].sum(1) > (x1 - x0) // 2)  # not the plane name above
    y0, y1 = axial_rows.min(), axial_rows.max() + 1
    axial = picture[y0:y1, x0:x1]
    assert axial.shape[:2] == (14 * 6, 16 * 6)  # A-P rows x R-L columns, ceil(96 / 16) = 6 pixels a voxel
    bright = axial[..., 0] > 230
    rows, cols = np.nonzero(bright & ~(np.abs(axial - LETTER_COLOUR).sum(-1) < 60))
    assert cols.mean() < axial.shape[1] / 2 and rows.mean() > axial.shape[0] / 2  # right on the left, posterior down

    def letters(chars: tuple[str, ...]) -> np.ndarray:
        from PIL import Image as PILImage

        blank = PILImage.new("RGB", (axial.shape[1], axial.shape[0]), "black")
        _draw_letters(ImageDraw.Draw(blank), (0, 0, blank.width, blank.height), chars, _font(14))
        return np.abs(np.asarray(blank).astype(int) - LETTER_COLOUR).sum(-1) < 60

    drawn = np.abs(axial - LETTER_COLOUR).sum(-1) < 60
    assert np.array_equal(drawn, letters(("R", "L", "A", "P")))
    assert not np.array_equal(drawn, letters(("L", "R", "P", "A")))


def test_jacobian_row_is_drawn_inside_its_support_only(tmp_path):
    """Outside the fitted box the field is continued by its edge values, whose determinant draws stripes: the
    overview leaves that part light gray."""
    from rlreg.pipelines.figures import OUTSIDE_GRAY

    image = np.zeros((24, 24), dtype=np.float32)
    image[6:18, 6:18] = 1.0
    jac = np.where(np.arange(24)[None, :] % 2 == 0, 1.8, 0.6).repeat(24, 0).astype(np.float32)  # stripes
    support = image > 0
    path = save_registration_overview(tmp_path / "o.png", {"fixed": image}, jacobian=jac, panel_size=96,
                                      jacobian_support=support)
    picture = np.asarray(Image.open(path).convert("RGB")).astype(int)
    gray = (picture == OUTSIDE_GRAY).all(-1)
    coloured = (picture[..., 0] > 200) & (picture[..., 2] < 150) | (picture[..., 2] > 200) & (picture[..., 0] < 150)
    assert gray.sum() == (24 * 24 - 12 * 12) * 4 * 4  # the whole outside, 4x4 pixels a voxel
    assert coloured[gray].sum() == 0 and coloured.sum() >= 12 * 12 * 4 * 4  # the stripes show inside only
