"""A model with a detached branch: the auxiliary head reads the encoder's features through
`.detach()`, so no gradient from it reaches the encoder, and the `gate` layer is computed
under `torch.no_grad()`, so its parameters never learn.

    gradtool graph sample_models/detached_branch.py --dot g.dot --svg g.svg

Expected: two cuts (detach() at the `features.detach()` line, no_grad at the gate's line),
and `gate.weight`, `gate.bias` unreached (behind the no_grad cut); exit 0 (a graph is a
picture, not a verdict).
"""

import torch
from torch import nn


class DetachedBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.head = nn.Linear(16, 4)
        self.aux = nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 2))
        self.gate = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(x)
        aux = self.aux(features.detach())  # the bug: the aux loss no longer trains the encoder
        with torch.no_grad():
            gate = torch.sigmoid(self.gate(features))  # the bug: the gate never learns
        return self.head(features * gate), aux


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return DetachedBranch()


def example_inputs() -> torch.Tensor:
    return torch.randn(32, 8, generator=torch.Generator().manual_seed(1))


def loss_fn(output: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    logits, aux = output
    return logits.pow(2).mean() + aux.pow(2).mean()
