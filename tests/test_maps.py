"""Condition maps of the translation task: Canny edges, SLIC superpixels, label colours and tissue channels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlreg.data.maps import edge_map, label_colour_map, label_palette, superpixel_map, tissue_map


def step_image(size: int = 64) -> np.ndarray:
    """A dark left half and a bright right half, RGB uint8."""
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[:, size // 2:] = 200
    return image


def test_edges_lie_on_a_step_edge() -> None:
    edges = edge_map(step_image())
    assert edges.shape == (1, 64, 64) and edges.dtype == torch.float32
    assert set(edges.unique().tolist()) == {0.0, 1.0}
    columns = torch.nonzero(edges[0])[:, 1]
    assert int(columns.min()) >= 30 and int(columns.max()) <= 33
    interior = edges[0, 8:-8]  # Canny leaves the rows near the border alone
    assert bool((interior.sum(1) >= 1).all())  # the edge runs the whole height


def test_edges_of_a_flat_image_are_empty_and_layouts_agree() -> None:
    assert edge_map(np.full((32, 32, 3), 90, dtype=np.uint8)).sum() == 0
    image = step_image(48)
    as_tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    assert torch.equal(edge_map(image), edge_map(as_tensor))
    assert torch.equal(edge_map(image), edge_map(image.copy()))  # deterministic


def test_superpixels_fill_segments_with_their_mean_colour() -> None:
    from skimage import data
    from skimage.transform import resize

    photo = resize(data.astronaut(), (96, 96), anti_aliasing=True)
    filled = superpixel_map(photo, n_segments=50)
    assert filled.shape == (3, 96, 96) and filled.dtype == torch.float32
    assert float(filled.min()) >= 0 and float(filled.max()) <= 1
    colours = torch.unique(filled.flatten(1).T, dim=0)
    assert 25 <= len(colours) <= 75  # about n_segments superpixels
    assert torch.equal(filled, superpixel_map(photo, n_segments=50))
    # mean colour: the whole-image mean is preserved up to rounding (each pixel replaced by its segment's mean)
    assert torch.allclose(filled.mean((1, 2)), torch.from_numpy(photo).float().mean((0, 1)), atol=1e-4)


def test_label_colours_are_distinct_for_the_83_dk_labels() -> None:
    palette = label_palette(83)
    assert palette.shape == (84, 3)
    assert torch.equal(palette[0], torch.zeros(3))
    distance = torch.cdist(palette, palette) + torch.eye(84) * 10
    assert float(distance.min()) > 0.15
    saturation = palette[1:].max(1).values - palette[1:].min(1).values
    assert float(saturation.min()) > 0.2  # no label is grey or black, so those stay free for other meanings


def test_label_colour_map_paints_each_id() -> None:
    labels = np.array([[0, 1], [83, 1]])
    colours = label_colour_map(labels)
    assert colours.shape == (3, 2, 2)
    assert torch.equal(colours[:, 0, 0], torch.zeros(3))
    assert torch.equal(colours[:, 0, 1], colours[:, 1, 1])
    assert torch.equal(colours[:, 1, 0], label_palette(83)[83])
    assert torch.equal(label_colour_map(torch.tensor([[1]]))[:, 0, 0], label_palette(83)[1])  # id colour is stable
    with pytest.raises(ValueError, match="non-negative"):
        label_colour_map(np.array([[-1, 0]]))


def test_tissue_map_stacks_gm_wm_csf() -> None:
    gm, wm, csf = np.full((4, 5), 0.2), torch.full((4, 5), 0.7), np.full((4, 5), 1.5)
    tissue = tissue_map(gm, wm, csf)
    assert tissue.shape == (3, 4, 5)
    assert torch.allclose(tissue[:, 0, 0], torch.tensor([0.2, 0.7, 1.0]))
    with pytest.raises(ValueError, match="one shape"):
        tissue_map(gm, wm, np.zeros((4, 4)))
