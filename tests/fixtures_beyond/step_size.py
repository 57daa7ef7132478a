"""Correct functions whose finite differences go wrong at some step sizes.

`wave` and `curved` are smooth but strongly curved: a large step (1e-2) leaves a truncation
error far above the tolerance. The inputs are inflection points of `wave` (its second
derivative vanishes there, so the one-sided differences agree and only the truncation error
of the central difference is left). `naive_variance` computes a variance as
E[(x+c)²] − E[x+c]² with c = 1000: catastrophic cancellation makes small steps drown in
round-off, though the gradient is right.
"""

import math

import torch


def wave(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(10 * x)


def curved(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(5 * x) * torch.exp(x)


def naive_variance(x: torch.Tensor) -> torch.Tensor:
    shifted = x + 1000.0
    return (shifted**2).mean() - shifted.mean() ** 2


def example_inputs() -> torch.Tensor:
    return torch.tensor([0.0, math.pi / 10, -math.pi / 10, 2 * math.pi / 10])
