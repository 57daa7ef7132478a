"""A tanh MLP whose first layer is initialized 10× too large: its pre-activations are far
outside [-2, 2], so most tanh outputs sit at ±1 where tanh' = 1 - y² ≈ 0 and almost no
gradient reaches the first layer.

Expected verdict: `saturation` on the module `squash1` (exit 1 with --fail-on saturation).

    gradtool flow sample_models/saturated_tanh.py --fail-on saturation
"""

import torch
from torch import nn


class TanhMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.fc1 = nn.Linear(20, 64)
        self.squash1 = nn.Tanh()
        self.fc2 = nn.Linear(64, 64)
        self.squash2 = nn.Tanh()
        self.head = nn.Linear(64, 3)
        with torch.no_grad():
            for layer in (self.fc1, self.fc2, self.head):
                nn.init.xavier_uniform_(layer.weight, generator=generator)
                layer.bias.zero_()
            self.fc1.weight.mul_(10.0)  # the bug: a scale meant for inputs in [0, 0.1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.squash2(self.fc2(self.squash1(self.fc1(x)))))


def example_inputs() -> torch.Tensor:
    return torch.randn(32, 20, generator=torch.Generator().manual_seed(0))
