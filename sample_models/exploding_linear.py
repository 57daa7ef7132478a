"""A deep stack of Linear layers initialized from N(0, 1): each layer multiplies the signal by
about √width = 8, so activations grow forward and gradients grow backward, toward the input.
(He initialization would use N(0, 2/fan_in); Xavier N(0, 1/fan_in) for a linear stack.)

Expected verdict: `exploding` at the first layer (exit 1 with --fail-on exploding).

    gradtool flow sample_models/exploding_linear.py --fail-on exploding
"""

import torch
from torch import nn

DEPTH, WIDTH = 12, 64


def build_model() -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    layers = []
    for _ in range(DEPTH):
        layer = nn.Linear(WIDTH, WIDTH)
        with torch.no_grad():
            layer.weight.normal_(0.0, 1.0, generator=generator)  # the bug: std 1, not 1/√64
            layer.bias.zero_()
        layers.append(layer)
    return nn.Sequential(*layers)


def example_inputs() -> torch.Tensor:
    return torch.randn(32, WIDTH, generator=torch.Generator().manual_seed(0))
