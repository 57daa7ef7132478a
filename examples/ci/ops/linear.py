"""A linear layer whose matmuls are a custom autograd.Function, used by an nn.Module.

    y = x·Wᵀ + b
    ∂L/∂x = g·W,   ∂L/∂W = gᵀ·x,   ∂L/∂b = Σ_batch g        (g = ∂L/∂y)

`gradtool check ops/linear.py:FusedLinear` checks the module: its parameters `weight` and
`bias` and its input `input:x`, all through LinearFunction's backward. Correct: passes.
"""

import torch
from torch import nn


class LinearFunction(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias):
        return x @ weight.t() + bias

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _ = inputs
        ctx.save_for_backward(x, weight)

    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        grad_x = grad_output @ weight
        grad_weight = grad_output.t() @ x
        grad_bias = grad_output.sum(dim=0)
        return grad_x, grad_weight, grad_bias


class FusedLinear(nn.Module):
    def __init__(self, in_features: int = 16, out_features: int = 8) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        bound = in_features**-0.5
        self.weight = nn.Parameter(
            (torch.rand(out_features, in_features, generator=generator) * 2 - 1) * bound
        )
        self.bias = nn.Parameter((torch.rand(out_features, generator=generator) * 2 - 1) * bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return LinearFunction.apply(x, self.weight, self.bias)


def example_inputs() -> torch.Tensor:
    return torch.randn(6, 16, generator=torch.Generator().manual_seed(1))
