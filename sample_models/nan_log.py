"""A model that log-compresses its features, assuming they are positive — but the Linear
before it produces negative values too, and log of a negative number is NaN.

Expected verdict: `nan` naming the module `compress`, in its forward (exit 1 with
--fail-on nan). The fix: log1p of a positive quantity, e.g. torch.log1p(F.softplus(x)).

    gradtool flow sample_models/nan_log.py --fail-on nan
"""

import torch
from torch import nn


class LogCompress(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)  # NaN wherever x < 0


class LogFeatureNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.compress = LogCompress()
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.compress(self.embed(x)))


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return LogFeatureNet()


def example_inputs() -> torch.Tensor:
    return torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
