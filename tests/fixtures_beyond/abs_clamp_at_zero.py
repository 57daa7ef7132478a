"""abs and clamp evaluated exactly at their corners.

z = x·Wᵀ + b; units 0–1 go through abs, units 2–3 through clamp(·, 0, 1), then a linear
head. Weights and inputs are dyadic (exact in binary) and the bias is chosen so that
z[0, 0] == 0 and z[3, 1] == 0 (abs corners), z[1, 2] == 0 (clamp's lower corner) and
z[2, 3] == 1 (clamp's upper corner). torch's derivatives there (0 for abs, 1 for clamp) are
valid subgradients, but central differences average the two sides. `AbsClamp` is correct;
`BuggyAbsClamp` uses a hand-written abs whose backward forgets sign(z).
"""

import torch
from torch import nn

W = [
    [1.0, -1.0, 0.5],
    [0.5, 0.5, -1.0],
    [-1.0, 0.25, 0.75],
    [0.25, 1.0, 0.5],
]
X = [
    [1.0, 1.5, 1.0],
    [0.5, -0.5, 0.5],
    [2.0, 0.25, -0.5],
    [-0.5, 1.0, 1.5],
]
CORNERS = {(0, 0): 0.0, (3, 1): 0.0, (1, 2): 0.0, (2, 3): 1.0}  # (sample, unit): z there


def _bias_putting_units_on_corners() -> torch.Tensor:
    w, x = torch.tensor(W), torch.tensor(X)
    bias = torch.zeros(4)
    for (sample, unit), z in CORNERS.items():
        bias[unit] = z - w[unit] @ x[sample]
    return bias


class _AbsForgetsSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z):
        return z.abs()

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output  # BUG: should be grad_output * sign(z)


class AbsClamp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(W))
            self.fc.bias.copy_(_bias_putting_units_on_corners())
            self.head.weight.copy_(torch.tensor([[1.0, -0.5, 0.75, 1.5], [-1.25, 0.5, 1.0, -0.25]]))
            self.head.bias.zero_()

    def abs(self, z: torch.Tensor) -> torch.Tensor:
        return z.abs()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(x)
        return self.head(torch.cat([self.abs(z[:, :2]), z[:, 2:].clamp(0.0, 1.0)], dim=-1))


class BuggyAbsClamp(AbsClamp):
    def abs(self, z: torch.Tensor) -> torch.Tensor:
        return _AbsForgetsSign.apply(z)


def example_inputs() -> torch.Tensor:
    return torch.tensor(X)
