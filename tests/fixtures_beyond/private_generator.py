"""Dropout two ways: from a private torch.Generator, and from torch's global RNG.

`PrivateDropout` draws its mask from its own generator, which every call advances: the
forward is nondeterministic from gradtool's point of view (it cannot replay the mask), so
finite differences cannot judge the gradient. `GlobalDropout` uses nn.Dropout (the global
RNG, which gradtool reseeds before each evaluation) and is checked normally.
"""

import torch
from torch import nn


class PrivateDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 8)
        self.fc2 = nn.Linear(8, 2)
        self.gen = torch.Generator().manual_seed(1234)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc1(x))
        keep = torch.rand(h.shape, generator=self.gen, dtype=h.dtype) > 0.5
        return self.fc2(h * keep / 0.5)


class GlobalDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 8)
        self.fc2 = nn.Linear(8, 2)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(torch.tanh(self.fc1(x))))


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return PrivateDropout().train()


def example_inputs() -> torch.Tensor:
    return torch.randn(4, 5, generator=torch.Generator().manual_seed(2))
