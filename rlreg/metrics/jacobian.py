"""Regularity of a map from its Jacobian determinant: SDlogJ and % folding.

:func:`rlreg.spatial.sdlogj` and :func:`rlreg.spatial.folding_percent` compute ``J`` from a voxel displacement
first; :func:`jacobian_scores` scores a ``J`` that is already computed (e.g. read from ``jacdet.nii.gz``) with the
same definitions.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["JacobianScores", "jacobian_scores"]


class JacobianScores(NamedTuple):
    """Regularity of a map from its Jacobian determinant: ``sdlogj`` ``(N,)`` and ``folding_percent`` ``(N,)``."""

    sdlogj: Tensor
    folding_percent: Tensor


def jacobian_scores(jacobian: Tensor, mask: Tensor | None = None) -> JacobianScores:
    """SDlogJ and % folding of a Jacobian determinant that is already computed (e.g. read from ``jacdet.nii.gz``).

    The same definitions as :func:`rlreg.spatial.sdlogj` and :func:`rlreg.spatial.folding_percent`, which compute
    ``J`` from a voxel displacement first: ``sdlogj`` is the (unbiased) standard deviation of ``log J`` with ``J``
    clipped to ``[1e-9, 1e9]``, ``folding_percent`` the percentage of voxels with ``J <= 0``.

    Args:
        jacobian: ``(N, 1, *S)`` determinant of the map ``x -> x + u(x)`` (no offset).
        mask: optional ``(N, 1, *S)`` (or ``(1, 1, *S)``) region to score; non-zero = inside.

    Returns:
        :class:`JacobianScores`, each ``(N,)`` in ``jacobian``'s dtype (``NaN`` for an empty mask).
    """
    if jacobian.ndim < 3 or jacobian.shape[1] != 1:
        raise ValueError(f"jacobian must be (N, 1, *S), got {tuple(jacobian.shape)}")
    dtype = jacobian.dtype if jacobian.is_floating_point() else torch.get_default_dtype()
    values = jacobian.to(dtype)
    if mask is None:
        inside = [v.flatten() for v in values]
    else:
        inside = [v.flatten()[m.flatten() != 0] for v, m in zip(values, mask.expand_as(values), strict=True)]
    nan = torch.tensor(float("nan"), dtype=dtype, device=jacobian.device)
    sd = [v.clamp(1e-9, 1e9).log().std() if v.numel() > 1 else nan for v in inside]
    fold = [100.0 * (v <= 0).to(dtype).mean() if v.numel() else nan for v in inside]
    return JacobianScores(torch.stack(sd), torch.stack(fold))
