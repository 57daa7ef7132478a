"""Forwards that torch.func.vmap cannot batch, so gradtool evaluates them one at a time.

`NanGuard` checks its activations with `.item()` (a NaN guard; the gradient is unaffected);
`Branchy` picks a branch with Python control flow on a tensor's value. `BuggyNanGuard`
additionally doubles the gradient reaching fc1 through a tensor hook (a seeded bug).
`Batchable` is the same network without either, which vmap runs.
"""

import math

import torch
from torch import nn


class Batchable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(8)
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))

    def scale(self, h: torch.Tensor) -> torch.Tensor:
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.scale(self.fc1(x))))


class NanGuard(Batchable):
    def scale(self, h: torch.Tensor) -> torch.Tensor:
        if not math.isfinite(h.sum().item()):  # vmap can't batch .item()
            raise FloatingPointError("non-finite activations")
        return h


class Branchy(Batchable):
    def scale(self, h: torch.Tensor) -> torch.Tensor:
        if h.sum() > 0:  # data-dependent Python control flow
            return 0.5 * h
        return h


class BuggyNanGuard(NanGuard):
    def scale(self, h: torch.Tensor) -> torch.Tensor:
        if h.requires_grad:
            h.register_hook(lambda g: 2.0 * g)  # BUG: doubles the gradient reaching fc1
        return super().scale(h)


def example_inputs() -> torch.Tensor:
    return torch.randn(3, 4, generator=torch.Generator().manual_seed(9))
