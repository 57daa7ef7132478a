"""y = x·Wᵀ + b (x: 6×4 batch, W: square 4×4, b: 4) with one classic backward mistake each.

`Correct` is right; every other Function seeds exactly one bug pattern gradtool should name.
"""

import torch


class _Linear(torch.autograd.Function):
    """Forward and correct gradients; subclasses override `grads` to seed one mistake."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return x @ weight.T + bias

    @classmethod
    def grads(cls, g, x, weight):
        return g @ weight, g.T @ x, g.sum(0)

    @classmethod
    def backward(cls, ctx, grad_output):
        x, weight = ctx.saved_tensors
        return cls.grads(grad_output, x, weight)


class Correct(_Linear):
    pass


class SignFlipped(_Linear):
    @classmethod
    def grads(cls, g, x, weight):
        return -(g @ weight), g.T @ x, g.sum(0)  # BUG: sign


class FactorHalf(_Linear):
    @classmethod
    def grads(cls, g, x, weight):
        return 0.5 * (g @ weight), g.T @ x, g.sum(0)  # BUG: stray factor 1/2


class WeightGradMissing(_Linear):
    @classmethod
    def grads(cls, g, x, weight):
        return g @ weight, torch.zeros_like(weight), g.sum(0)  # BUG: weight grad never set


class IgnoresGradOutput(_Linear):
    @classmethod
    def grads(cls, g, x, weight):
        return torch.ones_like(g) @ weight, g.T @ x, g.sum(0)  # BUG: upstream gradient dropped


class WeightTransposed(_Linear):
    @classmethod
    def grads(cls, g, x, weight):
        return g @ weight, x.T @ g, g.sum(0)  # BUG: xᵀ·g instead of gᵀ·x


class RowsWrong(_Linear):
    @classmethod
    def grads(cls, g, x, weight):
        dw = g.T @ x
        dw = torch.cat([dw[:1], 3.0 * dw[1:3], dw[3:]])  # BUG: rows 1 and 2 scaled
        return g @ weight, dw, g.sum(0)


class BiasAveraged(_Linear):
    @classmethod
    def grads(cls, g, x, weight):
        return g @ weight, g.T @ x, g.mean(0)  # BUG: averaged over the batch of 6


class BiasTimesBatch(_Linear):
    @classmethod
    def grads(cls, g, x, weight):
        return g @ weight, g.T @ x, g.sum(0) * g.shape[0]  # BUG: extra × batch size


def example_inputs():
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(6, 4, generator=gen)
    weight = torch.randn(4, 4, generator=gen)
    bias = torch.randn(4, generator=gen)
    return x, weight, bias
