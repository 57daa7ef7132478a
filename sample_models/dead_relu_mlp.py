"""A ReLU MLP whose large negative biases leave most hidden units dead.

A dead unit outputs 0 for every example, so its weights get exactly zero gradient — both
analytically and numerically. The gradients are correct; the model just can't learn through
those units.

Expected verdict: every gradient passes (exit 0). (Finding the dead units is for `gradtool flow`.)

    gradtool check sample_models/dead_relu_mlp.py
"""

import torch
from torch import nn


class DeadReluMLP(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.hidden1 = nn.Linear(8, width)
        self.hidden2 = nn.Linear(width, width)
        self.out = nn.Linear(width, 2)
        with torch.no_grad():
            for layer in (self.hidden1, self.hidden2, self.out):
                bound = layer.in_features**-0.5
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
            # Pre-activations sit below zero: on the example batch 25 of the 32 units of
            # hidden1 and 28 of hidden2 never fire.
            self.hidden1.bias.fill_(-1.25)
            self.hidden2.bias.fill_(-0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.hidden1(x))
        x = torch.relu(self.hidden2(x))
        return self.out(x)


def example_inputs() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(16, 8, generator=generator)
