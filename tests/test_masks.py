"""Hole masks: the centre square, free-form strokes within their coverage range, lesions inside their region."""

from __future__ import annotations

import pytest
import torch

from rlreg.data.masks import FREE_FORM_COVERAGE, centre_mask, free_form_mask, lesion_mask


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_centre_mask_is_the_papers_centre_hole() -> None:
    mask = centre_mask(128, 64)
    assert mask.shape == (1, 128, 128) and mask.dtype == torch.float32
    assert mask.sum() == 64 * 64
    assert bool((mask[0, 32:96, 32:96] == 1).all())
    with pytest.raises(ValueError, match="fit"):
        centre_mask(32, 33)


def test_free_form_masks_cover_ten_to_forty_percent() -> None:
    low, high = FREE_FORM_COVERAGE
    coverages = []
    for seed in range(12):
        mask = free_form_mask(64, seeded(seed))
        assert mask.shape == (1, 64, 64)
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        coverages.append(float(mask.mean()))
    assert all(low <= c <= high for c in coverages), coverages
    assert max(coverages) - min(coverages) > 0.05  # targets really vary


def test_free_form_masks_are_seeded() -> None:
    assert torch.equal(free_form_mask(48, seeded(3)), free_form_mask(48, seeded(3)))
    assert not torch.equal(free_form_mask(48, seeded(3)), free_form_mask(48, seeded(4)))


def test_lesions_stay_inside_their_region() -> None:
    region = torch.zeros(64, 64, dtype=torch.bool)
    region[10:40, 20:60] = True
    for seed in range(6):
        mask = lesion_mask((64, 64), seeded(seed), inside=region)
        assert mask.shape == (1, 64, 64)
        assert mask.sum() > 0
        assert not bool(mask[0][~region].any())
    assert torch.equal(lesion_mask((64, 64), seeded(1), inside=region), lesion_mask((64, 64), seeded(1), inside=region))


def test_lesions_in_three_dimensions() -> None:
    mask = lesion_mask((16, 20, 24), seeded(0), count=(2, 2))
    assert mask.shape == (1, 16, 20, 24) and 0 < float(mask.mean()) < 0.5
    with pytest.raises(ValueError, match="empty"):
        lesion_mask((8, 8), seeded(0), inside=torch.zeros(8, 8))
