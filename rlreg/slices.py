"""One-slice 3-D volumes: registered as 2-D images in their plane, written back on their full 3-D grid.

A volume with one voxel along an ITK index axis ``c`` (a single coronal slice cut from a brain, say) is read as a 2-D
image in the **frame of its plane**: 2-D world coordinates ``x = E^T (p - o)``, where ``o`` is the volume's origin and
the columns of ``E`` (3x2) are the LPS directions of its two in-plane index axes ``a < b``. The frame's origin is 0
and its direction the identity, so the 2-D registration sees in-plane millimetres only. A second slice volume is
expressed in the first one's frame (:meth:`SlicePlane.geometry_of`) when the planes are parallel; the distance between
the planes along the normal ``n`` (the direction of axis ``c``) is the through-plane offset.

Lifting back: a point ``o + E x`` of the plane maps to ``o + E x' + n offset``, so a 2-D world displacement ``u`` in
the frame becomes the LPS displacement ``E u + n offset`` (zero through-plane component when both slices lie in the
same plane), and a 2-D affine ``x -> A x + t`` becomes the 3-D affine with linear part ``E A E^T + n n^T``. Written on
the 3-D grid, with the ITK 5-D vector layout, ``antsApplyTransforms -d 3`` and every ITK reader place the outputs
exactly where the input slice was.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from rlreg.io import Geometry, InputError

__all__ = ["SlicePlane", "in_plane_geometry", "singleton_axis"]


def singleton_axis(size_xyz: tuple[int, ...]) -> int | None:
    """The ITK index axis of a 3-D size ``(x, y, z)`` with exactly one voxel along it (and more along the others)."""
    ones = [axis for axis, n in enumerate(size_xyz) if n == 1]
    return ones[0] if len(size_xyz) == 3 and len(ones) == 1 else None


def in_plane_geometry(volume: Geometry) -> Geometry:
    """The 2-D geometry of a one-slice volume in its own plane's frame (origin 0, identity direction)."""
    a, b, _ = SlicePlane(volume).axes
    spacing_xyz = volume.spacing[::-1]
    return Geometry(size=(volume.size[::-1][b], volume.size[::-1][a]), spacing=(spacing_xyz[b], spacing_xyz[a]),
                    origin=(0.0, 0.0), direction=(1.0, 0.0, 0.0, 1.0))


@dataclass(frozen=True)
class SlicePlane:
    """The plane of a one-slice 3-D volume (``volume``, tensor axis order as every :class:`Geometry`)."""

    volume: Geometry

    @property
    def axes(self) -> tuple[int, int, int]:
        """ITK index axes ``(a, b, c)``: the in-plane ones in order, then the one-voxel axis."""
        c = singleton_axis(self.volume.size[::-1])
        if c is None:
            raise ValueError(f"not a one-slice volume: size {self.volume.size[::-1]}")
        a, b = (axis for axis in range(3) if axis != c)
        return a, b, c

    @property
    def _direction(self) -> np.ndarray:
        return np.asarray(self.volume.direction, dtype=np.float64).reshape(3, 3)

    @property
    def frame(self) -> np.ndarray:
        """``E`` (3x2): LPS directions of the in-plane axes (the frame's x and y)."""
        a, b, _ = self.axes
        return self._direction[:, [a, b]]

    @property
    def normal(self) -> np.ndarray:
        """``n`` (3,): LPS direction of the one-voxel axis."""
        return self._direction[:, self.axes[2]]

    def offset(self, other: Geometry) -> float:
        """Signed distance (mm, along :attr:`normal`) from this plane to the plane of another one-slice volume."""
        return float(self.normal @ (np.asarray(other.origin) - np.asarray(self.volume.origin)))

    def geometry_of(self, other: Geometry, path: object) -> Geometry:
        """Another one-slice volume's 2-D geometry in this plane's frame.

        Raises:
            InputError: the planes are not parallel (``path`` names the other image in the message).
        """
        plane = SlicePlane(other)
        a, b, _ = plane.axes
        if np.abs(self.normal @ plane.frame).max() > 1e-3:
            raise InputError(f"{path}: its slice is not parallel to the fixed image's slice; register one-slice "
                             "volumes cut in the same orientation (or register the full volumes)")
        direction = self.frame.T @ plane.frame
        origin = self.frame.T @ (np.asarray(other.origin) - np.asarray(self.volume.origin))
        spacing_xyz = other.spacing[::-1]
        return Geometry(size=(other.size[::-1][b], other.size[::-1][a]), spacing=(spacing_xyz[b], spacing_xyz[a]),
                        origin=tuple(float(v) for v in origin), direction=tuple(float(v) for v in direction.ravel()))

    def _unsqueeze(self, tensor: Tensor, grid: Geometry) -> Tensor:
        """``(N, C, *S2)`` -> ``(N, C, *grid.size)``: the one-voxel axis put back in its tensor place."""
        return tensor.reshape(*tensor.shape[:2], *grid.size)

    def image(self, tensor: Tensor, grid: Geometry | None = None) -> Tensor:
        """A ``(N, C, *S2)`` image of the plane on the 3-D one-slice grid (``grid``, default :attr:`volume`)."""
        return self._unsqueeze(tensor, grid or self.volume)

    def field(self, displacement: Tensor, offset: float = 0.0, grid: Geometry | None = None) -> Tensor:
        """``(N, 2, *S2)`` world displacement in this frame -> ``(N, 3, *grid.size)`` LPS mm (``E u + n offset``)."""
        frame = torch.as_tensor(self.frame, dtype=displacement.dtype, device=displacement.device)
        normal = torch.as_tensor(self.normal * offset, dtype=displacement.dtype, device=displacement.device)
        lifted = torch.einsum("ck,nk...->nc...", frame, displacement)
        lifted = lifted + normal.view(1, 3, *[1] * (displacement.ndim - 2))
        return self._unsqueeze(lifted, grid or self.volume)

    def flatten(self, displacement: Tensor, grid: Geometry) -> Tensor:
        """``(N, 3, *S3)`` LPS-mm displacement on the one-slice grid -> ``(N, 2, *grid.size)`` in-plane displacement
        in this frame (``E^T u``; the through-plane part is dropped): the inverse of :meth:`field`."""
        frame = torch.as_tensor(self.frame, dtype=displacement.dtype, device=displacement.device)
        return torch.einsum("ck,nc...->nk...", frame, displacement).reshape(displacement.shape[0], 2, *grid.size)

    def chain(self, chain: Tensor, grid: Geometry | None = None) -> Tensor:
        """``(N, 2, *S2)`` voxel chain (channels = 2-D tensor axes) -> ``(N, 3, *S3)``, zero along the slice axis."""
        a, b, _ = self.axes
        lifted = chain.new_zeros(chain.shape[0], 3, *chain.shape[2:])
        lifted[:, 2 - a], lifted[:, 2 - b] = chain[:, 1], chain[:, 0]  # 2-D tensor axes are (b, a) in ITK terms
        return self._unsqueeze(lifted, grid or self.volume)

    def matrix(self, matrix: np.ndarray, offset: float = 0.0) -> np.ndarray:
        """A homogeneous 2-D affine (3x3) of this frame as the 3-D LPS affine (4x4) between the two planes."""
        frame, normal, origin = self.frame, self.normal, np.asarray(self.volume.origin)
        linear = frame @ matrix[:2, :2] @ frame.T + np.outer(normal, normal)
        lifted = np.eye(4)
        lifted[:3, :3] = linear
        lifted[:3, 3] = origin + frame @ matrix[:2, 2] + normal * offset - linear @ origin
        return lifted
