"""A smooth activation with a hand-written backward: the tanh approximation of GELU.

    y  = ½·x·(1 + tanh(u)),   u = c·(x + a·x³),   c = √(2/π),  a = 0.044715
    dy/dx = ½·(1 + t) + ½·x·(1 − t²)·c·(1 + 3a·x²),   t = tanh(u)

The backward is written with differentiable torch operations on the saved input, so the
double backward (`second_order = true` in pyproject.toml) is checked too. Correct: passes.
"""

import math

import torch

C = math.sqrt(2.0 / math.pi)
A = 0.044715


class TanhGELU(torch.autograd.Function):
    generate_vmap_rule = True  # lets torch.func.vmap (and gradtool's batched check) run it

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(C * (x + A * x**3)))

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        t = torch.tanh(C * (x + A * x**3))
        du_dx = C * (1.0 + 3.0 * A * x * x)
        return grad_output * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx)


def example_inputs() -> torch.Tensor:
    return torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
