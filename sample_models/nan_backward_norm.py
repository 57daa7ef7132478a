"""Forward fine, backward NaN: a feature that is the length sqrt(Σx²) of each row, on a batch
with zero-padded rows. At x = 0, sqrt's derivative is infinite and 0·∞ = NaN, so the
gradient turns NaN inside this module's backward although every forward value is finite.

Expected verdict: `nan` naming the module `magnitude`, in its backward (exit 1 with
--fail-on nan). The fix: sqrt(Σx² + eps), or torch.linalg.vector_norm (whose gradient at
0 is defined as 0).

    gradtool flow sample_models/nan_backward_norm.py --fail-on nan
"""

import torch
from torch import nn


class Magnitude(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((x * x).sum(dim=-1, keepdim=True))


class MagnitudeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.magnitude = Magnitude()
        self.head = nn.Linear(17, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = (x.abs().sum(dim=-1, keepdim=True) > 0).to(x.dtype)  # padding rows are all 0
        h = self.embed(x) * keep
        return self.head(torch.cat([h, self.magnitude(h)], dim=-1))


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return MagnitudeNet()


def example_inputs() -> torch.Tensor:
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    x[4:] = 0.0  # padding rows
    return x
