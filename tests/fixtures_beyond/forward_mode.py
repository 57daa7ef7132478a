"""f(x, y) = x·exp(y) as a setup_context-style Function that defines forward-mode AD (jvp).

`Correct`'s jvp is the product rule; `WrongJvp` drops the y-tangent's factor x
(a typical slip: its backward is right, only its forward-mode derivative is wrong).
"""

import torch


class Correct(torch.autograd.Function):
    @staticmethod
    def forward(x, y):
        return x * torch.exp(y)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, y = inputs
        ctx.save_for_backward(x, y)
        ctx.save_for_forward(x, y)

    @staticmethod
    def backward(ctx, grad_output):
        x, y = ctx.saved_tensors
        e = torch.exp(y)
        return grad_output * e, grad_output * x * e

    @staticmethod
    def jvp(ctx, x_t, y_t):
        x, y = ctx.saved_tensors
        e = torch.exp(y)
        return x_t * e + y_t * x * e


class WrongJvp(Correct):
    @staticmethod
    def jvp(ctx, x_t, y_t):
        x, y = ctx.saved_tensors
        e = torch.exp(y)
        return x_t * e + y_t * e  # BUG: the y-tangent needs the factor x


def example_inputs():
    gen = torch.Generator().manual_seed(4)
    return torch.randn(3, 2, generator=gen), torch.randn(3, 2, generator=gen)
