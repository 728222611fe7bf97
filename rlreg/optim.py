"""Optimisers for the classical (per-pair) registration loops: one parameter tensor each, no ``torch.optim``."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["TensorAdam"]


class TensorAdam:
    """Adam (Kingma and Ba, 2015) on one tensor, written out, with ``torch.optim.Adam``'s trajectory.

    ``torch.optim`` imports ``torch._dynamo`` on first use, which slows a one-pair command line down (see
    docs/decisions.md#adam-written-out). ``step()`` reads ``param.grad``, updates ``param`` in place and clears the
    gradient.
    """

    def __init__(self, param: Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.param, self.lr, self.betas, self.eps, self.t = param, lr, betas, eps, 0
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)

    @torch.no_grad()
    def step(self) -> None:
        grad, (b1, b2) = self.param.grad, self.betas
        if grad is None:
            raise RuntimeError("TensorAdam.step(): the parameter has no gradient; call backward() first")
        self.t += 1
        self.m.lerp_(grad, 1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.v / (1 - b2**self.t)).sqrt_().add_(self.eps)
        self.param.addcdiv_(self.m, denom, value=-self.lr / (1 - b1**self.t))
        self.param.grad = None
