"""A deep MLP of sigmoid layers: correct gradients that vanish toward the input.

Each sigmoid multiplies the backward signal by at most σ' ≤ 0.25, so after five layers the
first layer's gradients are tiny. They are still *correct*, and that is what `check` answers.

Expected verdict: every gradient passes (exit 0). (Why it trains slowly is for `gradtool flow`.)

    gradtool check sample_models/deep_sigmoid_mlp.py
"""

import torch
from torch import nn

DEPTH = 5
WIDTH = 16


def build_model() -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(DEPTH):
        layers += [nn.Linear(WIDTH, WIDTH), nn.Sigmoid()]
    layers.append(nn.Linear(WIDTH, 1))
    return nn.Sequential(*layers)


def example_inputs() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(4, WIDTH, generator=generator)
