"""A single sigmoid neuron, the tutorial's first backprop example.

    f(w, x) = σ(w0·x0 + w1·x1 + b)   at w = (2, −3), b = −3, x = (−1, −2)

The pre-activation is 1, σ(1) ≈ 0.7311 and σ'(1) ≈ 0.1966, so with `loss_fn` returning f:

    ∂f/∂w ≈ (−0.1966, −0.3932)   ∂f/∂b ≈ 0.1966   ∂f/∂x ≈ (0.3932, −0.5898)

Expected verdict: every gradient passes (exit 0).

    gradtool check sample_models/sigmoid_neuron.py
"""

import torch
from torch import nn


class SigmoidNeuron(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([2.0, -3.0]))
        self.bias = nn.Parameter(torch.tensor(-3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x @ self.weight + self.bias)


def example_inputs() -> torch.Tensor:
    return torch.tensor([-1.0, -2.0])


def loss_fn(output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return output
