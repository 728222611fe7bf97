"""The adversarial half of the image tasks' auxiliary loss: a spectrally normalised PatchGAN discriminator.

RL-I2IT trains its inpainting and translation actors with L1 plus an adversarial loss from an SNGAN discriminator
(Miyato et al., ICLR 2018: every conv's weight divided by its largest singular value, so the discriminator is
1-Lipschitz and needs no gradient penalty). The discriminator here scores overlapping patches (pix2pix's PatchGAN,
Isola et al., CVPR 2017) with 4x4 stride-2 convolutions, the paper's downsampling, and is trained with the hinge
loss (Lim & Ye 2017; Miyato et al. 2018):

* discriminator: ``mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))``;
* generator (the actor, and the planner through it): ``-mean(D(fake))``.

:class:`Adversary` owns the discriminator and its optimiser. The task calls :meth:`Adversary.update` inside its
auxiliary loss, on the detached fake, before it computes the generator term: one discriminator step per agent
update, as in the usual alternating GAN schedule. The agent core never sees the discriminator.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = ["Adversary", "PatchDiscriminator", "discriminator_hinge_loss", "generator_hinge_loss"]

_CONV: dict[int, type[nn.Conv2d] | type[nn.Conv3d]] = {2: nn.Conv2d, 3: nn.Conv3d}


class PatchDiscriminator(nn.Module):
    """SNGAN PatchGAN: ``(N, in_channels, *S)`` -> ``(N, 1, *S / 2**len(widths))`` real/fake logits per patch.

    Each level is a spectrally normalised 4x4(x4) stride-2 conv with LeakyReLU(0.2); a last 3x3(x3) conv gives
    the logits. Any input size of at least ``2**len(widths)`` pixels per axis works.
    """

    def __init__(self, in_channels: int, widths: Sequence[int] = (32, 64, 128), ndim: int = 2) -> None:
        super().__init__()
        if ndim not in _CONV:
            raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
        conv = _CONV[ndim]
        layers: list[nn.Module] = []
        channels = (in_channels, *widths)
        for cin, cout in itertools.pairwise(channels):
            layers += [spectral_norm(conv(cin, cout, kernel_size=4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        layers.append(spectral_norm(conv(channels[-1], 1, kernel_size=3, padding=1)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_channels, *S)`` -> ``(N, 1, *S')`` patch logits."""
        return self.net(x)


def discriminator_hinge_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Hinge loss of the discriminator (scalar): push real logits above 1 and fake ones below -1."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def generator_hinge_loss(fake_logits: Tensor) -> Tensor:
    """Hinge loss of the generator (scalar): raise the discriminator's logits of the fake images."""
    return -fake_logits.mean()


class Adversary:
    """A :class:`PatchDiscriminator` with its Adam optimiser (``betas = (0.5, 0.999)``, the GAN default), built on
    the device of the first images it sees.

    Args:
        in_channels: channels of what the discriminator reads (the image, plus any condition concatenated to it).
        widths: the discriminator's channels per level.
        lr: Adam step.
        ndim: 2 or 3.
    """

    def __init__(self, in_channels: int, widths: Sequence[int] = (32, 64, 128), lr: float = 2e-4,
                 ndim: int = 2) -> None:
        self.in_channels, self.widths, self.lr, self.ndim = in_channels, tuple(widths), lr, ndim
        self.network: PatchDiscriminator | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    def _build(self, device: torch.device) -> PatchDiscriminator:
        if self.network is None:
            self.network = PatchDiscriminator(self.in_channels, self.widths, self.ndim).to(device)
            self.optimizer = torch.optim.Adam(self.network.parameters(), lr=self.lr, betas=(0.5, 0.999))
        return self.network

    def update(self, real: Tensor, fake: Tensor) -> float:
        """One discriminator step on ``real`` and (detached) ``fake`` ``(N, in_channels, *S)``; returns its loss."""
        network = self._build(real.device)
        assert self.optimizer is not None
        network.requires_grad_(True)
        with torch.enable_grad():
            loss = discriminator_hinge_loss(network(real.detach().float()), network(fake.detach().float()))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def generator_loss(self, fake: Tensor) -> Tensor:
        """The generator's hinge loss of ``fake`` ``(N, in_channels, *S)``, differentiable with respect to ``fake``
        only (the discriminator's weights are frozen for it)."""
        network = self._build(fake.device)
        network.requires_grad_(False)
        return generator_hinge_loss(network(fake.float()))

    def state_dict(self) -> dict[str, Any]:
        """Weights and optimiser state (``weights_only``-safe), or empty before the first update."""
        if self.network is None or self.optimizer is None:
            return {}
        return {"network": self.network.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        """Restore :meth:`state_dict` output (an empty dict leaves the discriminator unbuilt)."""
        if not state:
            return
        network = self._build(torch.device(device))
        assert self.optimizer is not None
        network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
