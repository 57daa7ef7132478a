"""A custom autograd.Function with a hand-written, correct backward: swish, y = x·σ(x).

    dy/dx = σ(x) + x·σ(x)·(1 − σ(x))      (product rule)

Expected verdict: `x` passes (exit 0). Compare custom_activation_buggy.py.

    gradtool check sample_models/custom_activation.py
"""

import torch


class Swish(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return grad_output * (s + x * s * (1 - s))


def example_inputs() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(4, 5, generator=generator)
