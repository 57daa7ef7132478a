"""The swish Function of custom_activation.py with a classic backward bug.

The backward forgets the second half of the product rule:

    returns  σ(x)                        should be  σ(x) + x·σ(x)·(1 − σ(x))

Expected verdict: `x` fails with a relative error far above 1e-3, rated "bug" (exit 1); the
worst entries show where analytic and numeric gradients disagree.

    gradtool check sample_models/custom_activation_buggy.py
"""

import torch


class SwishBuggy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        # BUG: d(x·σ(x))/dx is σ(x) + x·σ'(x); the x·σ'(x) term is missing.
        return grad_output * torch.sigmoid(x)


def example_inputs() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(4, 5, generator=generator)
