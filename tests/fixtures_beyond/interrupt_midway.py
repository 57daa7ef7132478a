"""A model that "gets Ctrl-C" while gradtool perturbs its input.

The forward raises KeyboardInterrupt as soon as it sees an input different from
example_inputs(), i.e. once the check has finished the parameters (fc.weight, fc.bias) and
moves on to input:x — wherever the engine's evaluation order puts the calls.
"""

import torch
from torch import nn


def example_inputs() -> torch.Tensor:
    return torch.randn(4, 3, generator=torch.Generator().manual_seed(1))


class InterruptedOnInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.register_buffer("example", example_inputs(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.equal(x.detach(), self.example.to(x.dtype)):
            raise KeyboardInterrupt  # the user pressed Ctrl-C
        return torch.tanh(self.fc(x))


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return InterruptedOnInput()
