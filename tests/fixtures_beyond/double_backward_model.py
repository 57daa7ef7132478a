"""A model whose activation is a hand-written Function with a detached backward.

First-order gradients are right; the double backward (needed for gradient penalties,
MAML, Hessian-vector products) misses the activation's curvature.
"""

import torch
from torch import nn


class _SoftplusDetached(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return nn.functional.softplus(z)

    @staticmethod
    def backward(ctx, grad_output):
        (z,) = ctx.saved_tensors
        return grad_output * torch.sigmoid(z.detach())  # BUG for 2nd order: .detach()


class _SoftplusCorrect(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return nn.functional.softplus(z)

    @staticmethod
    def backward(ctx, grad_output):
        (z,) = ctx.saved_tensors
        return grad_output * torch.sigmoid(z)


class Net(nn.Module):
    activation = _SoftplusCorrect

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(5)
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation.apply(self.fc1(x)))


class DetachedNet(Net):
    activation = _SoftplusDetached


def example_inputs() -> torch.Tensor:
    return torch.randn(2, 3, generator=torch.Generator().manual_seed(6))
