"""A one-step VoxelMorph-style baseline: a U-Net maps [fixed, moving] straight to one displacement field.

Used as baseline (a) of the digits benchmark: the same auxiliary losses (multi-scale LNCC + diffusion), a similar
parameter count and the same wall time as the step-wise agent, but a single decision (Balakrishnan et al., IEEE
TMI 2019). Written for rlreg's conventions (ndim-generic, any input size, voxel displacements).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["OneStepConfig", "OneStepNet"]


@dataclass(frozen=True)
class OneStepConfig:
    """Options of :class:`OneStepNet`."""

    ndim: int = 2
    """Spatial dimensions (2 or 3)."""
    widths: tuple[int, ...] = (16, 32, 48, 48)
    """Encoder channels per level; level k works at 1/2**k resolution. With ``decoder_width=40`` the 2D network has
    218k parameters, about the digits agent's planner + actor (222k), for a like-for-like baseline."""
    decoder_width: int = 40
    """Decoder channels per level."""

    def __post_init__(self) -> None:
        if self.ndim not in (2, 3) or not self.widths:
            raise ValueError(f"need ndim 2 or 3 and at least one level, got {self.ndim}, {self.widths}")


def _conv(ndim: int, cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    conv = (nn.Conv2d if ndim == 2 else nn.Conv3d)(cin, cout, 3, stride=stride, padding=1)
    return nn.Sequential(conv, nn.LeakyReLU(0.2))


class OneStepNet(nn.Module):
    """U-Net ``(N, 2, *S)`` -> ``(N, ndim, *S)`` voxel displacement (unbounded, as in VoxelMorph)."""

    def __init__(self, config: OneStepConfig) -> None:
        super().__init__()
        self.config = config
        nd = config.ndim
        self.encoder = nn.ModuleList()
        cin = 2
        for level, width in enumerate(config.widths):
            self.encoder.append(nn.Sequential(_conv(nd, cin, width, stride=1 if level == 0 else 2),
                                              _conv(nd, width, width)))
            cin = width
        self.decoder = nn.ModuleList()
        for width in reversed(config.widths[:-1]):
            self.decoder.append(nn.Sequential(_conv(nd, cin + width, config.decoder_width),
                                              _conv(nd, config.decoder_width, config.decoder_width)))
            cin = config.decoder_width
        self.flow = (nn.Conv2d if nd == 2 else nn.Conv3d)(cin, nd, 3, padding=1)
        nn.init.normal_(self.flow.weight, std=1e-5)
        assert self.flow.bias is not None
        nn.init.zeros_(self.flow.bias)

    def forward(self, fixed: Tensor, moving: Tensor) -> Tensor:
        """``fixed``, ``moving``: ``(N, 1, *S)``, any ``S``. Returns ``(N, ndim, *S)`` voxels."""
        x = torch.cat([fixed, moving], dim=1)
        shape = x.shape[2:]
        multiple = 2 ** (len(self.config.widths) - 1)
        pad = []
        for n in reversed(shape):
            pad += [0, (-n) % multiple]
        x = F.pad(x, pad)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.decoder, reversed(skips[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[2:], mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
        flow = self.flow(x)
        return flow[(slice(None), slice(None), *(slice(0, n) for n in shape))]
