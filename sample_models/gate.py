"""The tutorial's circuit f = (x + y)·z as a plain function of tensors.

At x = 2, y = 3, z = 4: ∂f/∂x = ∂f/∂y = z = 4 and ∂f/∂z = x + y = 5 (an add gate hands its
upstream gradient to both inputs; a multiply gate swaps its inputs).

A plain function is never picked automatically, so name it:

    gradtool check sample_models/gate.py:gate

Expected verdict: every gradient passes (exit 0).
"""

import torch


def gate(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    q = x + y  # add gate: ∂q/∂x = ∂q/∂y = 1
    return q * z  # multiply gate: ∂f/∂q = z, ∂f/∂z = q


def example_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.tensor(2.0), torch.tensor(3.0), torch.tensor(4.0)


def loss_fn(
    output: torch.Tensor, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor
) -> torch.Tensor:
    return output
