"""The tutorial's exercise network, small enough to differentiate by hand.

    f = σ(σ(x·w1 + b1)·w2 + b2)   at x = 1, w1 = 0.5, b1 = 0.1, w2 = −0.3, b2 = 0.2

`loss_fn` returns f itself, so the gradients gradtool checks are ∂f/∂θ:

    ∂f/∂w1 ≈ −0.0171586   ∂f/∂b1 ≈ −0.0171586   ∂f/∂w2 ≈ 0.1614125   ∂f/∂b2 ≈ 0.2499975

Expected verdict: every gradient passes (exit 0).

    gradtool check sample_models/exercise_net.py
"""

import torch
from torch import nn


class ExerciseNet(nn.Module):
    """Two sigmoid units in a chain, each parameter a scalar."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.tensor(0.5))
        self.b1 = nn.Parameter(torch.tensor(0.1))
        self.w2 = nn.Parameter(torch.tensor(-0.3))
        self.b2 = nn.Parameter(torch.tensor(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.sigmoid(x * self.w1 + self.b1)
        return torch.sigmoid(hidden * self.w2 + self.b2)


def example_inputs() -> torch.Tensor:
    return torch.tensor(1.0)


def loss_fn(output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # f itself: the checked gradients are then exactly the hand-computed ∂f/∂θ.
    return output
