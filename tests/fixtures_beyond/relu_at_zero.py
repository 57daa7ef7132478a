"""A two-layer ReLU network whose example input lands hidden pre-activations exactly on 0.

Weights and inputs are small dyadic numbers (exact in float32 and float64), chosen so that
in sample b hidden unit b has pre-activation W1[b]·x[b] + b1[b] == 0.0 exactly: ReLU sits on
its corner there, where torch's gradient (0) is a valid subgradient but the central
difference sees half the slope. `Net` is correct; `BuggyNet` is the same network with a
hand-written ReLU whose backward flips the sign (a real bug, on top of the kinks).
"""

import torch
from torch import nn

W1 = [
    [1.0, -0.5, 0.25, 0.0],
    [0.5, 1.0, -1.0, 0.5],
    [-0.25, 0.5, 1.0, -1.0],
    [1.0, 0.25, 0.5, 0.75],
    [-1.0, 0.75, -0.5, 0.25],
    [0.5, -0.75, 0.25, 1.0],
]
X = [
    [1.0, 0.5, -1.0, 2.0],
    [-0.5, 1.0, 0.5, -1.0],
    [0.75, -1.0, 1.5, 0.5],
    [0.25, 1.5, -0.5, -1.0],
]


def _bias_putting_units_on_zero() -> torch.Tensor:
    """b1[i] = −W1[i]·x[i] for units 0..3 (exact in binary), so z[i, i] == 0.0."""
    w, x = torch.tensor(W1), torch.tensor(X)
    bias = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.5, -0.25])
    for i in range(4):
        bias[i] = -(w[i] @ x[i])
    return bias


class _ReluFlippedBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return z.clamp(min=0)

    @staticmethod
    def backward(ctx, grad_output):
        (z,) = ctx.saved_tensors
        return -grad_output * (z > 0).to(grad_output)  # BUG: sign flipped


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 3)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor(W1))
            self.fc1.bias.copy_(_bias_putting_units_on_zero())
            self.fc2.weight.copy_(torch.arange(18.0).reshape(3, 6).mul(0.125).sub(1.0))
            self.fc2.bias.copy_(torch.tensor([0.5, -0.5, 0.25]))

    def relu(self, z: torch.Tensor) -> torch.Tensor:
        return torch.relu(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(x)))


class BuggyNet(Net):
    def relu(self, z: torch.Tensor) -> torch.Tensor:
        return _ReluFlippedBackward.apply(z)


def example_inputs() -> torch.Tensor:
    return torch.tensor(X)
