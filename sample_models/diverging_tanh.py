"""A tanh regression MLP that trains fine at a small learning rate and diverges at a large
one: `gradtool flow sample_models/diverging_tanh.py --steps 20 --lr 0.5` names the
divergence as the cause, with the saturated tanh units, the NaN and the layers left
without gradient as its consequences; at `--lr 0.01` there is no finding."""

import torch
from torch import nn
from torch.nn import functional as F


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
    )


def example_inputs() -> tuple[torch.Tensor]:
    return (torch.randn(64, 16, generator=torch.Generator().manual_seed(0)),)


def loss_fn(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    target = 10 * x[:, :1] + x[:, 1:2] ** 2
    return F.mse_loss(out, target)
