"""The identity check (AAPM TG-132's first QA test): an image registered to itself comes back unmoved, in 2-D and
3-D, with and without the affine stage, through :func:`rlreg.pipelines.register.register` end to end."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from phantoms import write_pair

from rlreg.io import read_image
from rlreg.pipelines.register import RegisterOptions, register
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
    result = register(RegisterOptions(image, image, out, affine=affine))
    geometry = read_image(image).geometry
    chain = chain_from_world(read_transform(out / "warp.nii.gz", geometry), geometry, geometry)
    assert float(chain.norm(dim=1).max()) < 0.1
    jacobian = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "jacdet.nii.gz")))
    assert float(np.abs(jacobian - 1.0).max()) < 0.02
    assert result.qc["lncc_after"] >= result.qc["lncc_before"] - 1e-6
