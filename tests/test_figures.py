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
