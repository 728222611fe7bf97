"""The identity check (AAPM TG-132's first QA test): an image registered to itself comes back unmoved, in 2-D and
3-D, with and without the affine stage, through :func:`rlreg.pipelines.register.register` end to end."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from phantoms import write_pair

from rlreg.io import read_image
from rlreg.losses import FixedLNCC
from rlreg.pipelines.register import RegisterOptions, RegisterSettings, register
from rlreg.transforms import chain_from_world, read_transform


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_an_image_registered_to_itself_stays_put(ndim: int, affine: bool, tmp_path) -> None:
    """The total displacement (affine included) stays under 0.1 voxel and ``|J - 1|`` under 0.02 everywhere."""
    paths = write_pair(tmp_path, ndim)
    smooth = sitk.SmoothingRecursiveGaussian(sitk.ReadImage(str(paths["fixed"])), 1.0)  # edges and smooth ramps
    image = tmp_path / "image.nii.gz"
    sitk.WriteImage(smooth, str(image))
    out = tmp_path / "out"
    result = register(RegisterOptions(image, image, out, settings=RegisterSettings(affine=affine)))
    geometry = read_image(image).geometry
    chain = chain_from_world(read_transform(out / "warp.nii.gz", geometry), geometry, geometry)
    assert float(chain.norm(dim=1).max()) < 0.1
    jacobian = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "jacdet.nii.gz")))
    assert float(np.abs(jacobian - 1.0).max()) < 0.02
    assert result.qc.lncc_after >= result.qc.lncc_before - 1e-6


def test_the_stationary_lncc_is_largest_at_the_fixed_image_and_the_usual_one_is_not() -> None:
    """The usual ``cross**2 / (var_f var_m + eps)`` prefers a moving window of higher contrast than the fixed one
    where the variances are near ``eps``; the stationary form scores the fixed image itself highest."""
    generator = torch.Generator().manual_seed(0)
    fixed = 0.5 + 0.01 * torch.rand(1, 1, 16, 16, 16, generator=generator, dtype=torch.float64)  # low contrast
    brighter = 0.5 + 1.5 * (fixed - 0.5)  # the same pattern at 1.5x contrast
    usual, stationary = FixedLNCC(fixed, (5,), (1.0,)), FixedLNCC(fixed, (5,), (1.0,), stationary=True)
    assert float(usual(brighter)) > float(usual(fixed)) + 0.01
    assert float(stationary(fixed)) > float(stationary(brighter)) - 1e-12
    assert float(stationary(fixed)) > float(stationary(fixed.roll(1, 2))) + 0.01
