"""The written-out optimiser of the classical registration loops."""

from __future__ import annotations

import torch

from rlreg.optim import TensorAdam


def test_written_out_adam_matches_torch_adam() -> None:
    """The written-out Adam follows torch.optim.Adam's trajectory."""
    target = torch.linspace(-3.0, 3.0, 50)
    ours = torch.zeros(50, requires_grad=True)
    theirs = torch.zeros(50, requires_grad=True)
    mine, reference = TensorAdam(ours, 0.1), torch.optim.Adam([theirs], lr=0.1)
    for _ in range(25):
        ((ours - target) ** 4).sum().backward()
        mine.step()
        reference.zero_grad()
        ((theirs - target) ** 4).sum().backward()
        reference.step()
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert float((ours - target).abs().max()) < 3.0 - 0.5  # it moved towards the target
