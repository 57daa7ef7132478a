"""f(x, w) = sin(x)·w, elementwise, with a hand-written backward.

`Correct` builds its backward from the saved tensors with differentiable torch ops, so the
backward can itself be differentiated (double backward, as gradgradcheck checks).
`Detached` returns the same first-order gradient but computes it from `.detach()`ed values:
its first derivatives are right, its second derivatives are missing.
"""

import torch


class Correct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return torch.sin(x) * w

    @staticmethod
    def backward(ctx, grad_output):
        x, w = ctx.saved_tensors
        return grad_output * torch.cos(x) * w, grad_output * torch.sin(x)


class Detached(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return torch.sin(x) * w

    @staticmethod
    def backward(ctx, grad_output):
        x, w = (t.detach() for t in ctx.saved_tensors)  # BUG for 2nd order: cuts the graph
        return grad_output * torch.cos(x) * w, grad_output * torch.sin(x)


def example_inputs():
    gen = torch.Generator().manual_seed(3)
    return torch.randn(5, generator=gen), torch.randn(5, generator=gen)
