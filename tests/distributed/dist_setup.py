"""The job both sides run: a small MLP with ReLUs (some units dead on every example, some
firing only on one rank's half of the batch) and a LayerNorm, its initial weights, the
global batch and each rank's part of it, and the training loop the Monitor watches."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

WORLD = 2
GLOBAL_BATCH = 16
STEPS = 3
FEATURES, HIDDEN, CLASSES = 8, 16, 3  # 3 classes: FSDP2 shards the head unevenly


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(FEATURES, HIDDEN)
        self.act1 = nn.ReLU()
        self.norm = nn.LayerNorm(HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, HIDDEN)
        self.head = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.act1(self.fc1(x)))
        return self.head(F.relu(self.fc2(h)))  # a functional ReLU too


def build_model() -> MLP:
    """The same initial weights in every process, in float64: a rank's sum of its examples'
    gradients rounds otherwise than the single process's sum over all of them, and a small
    gradient made by cancellation (LayerNorm's backward) differs by ~1e-4 relative in
    float32, which would hide what the comparison is about."""
    torch.manual_seed(0)
    model = MLP().double()
    with torch.no_grad():
        # units 0-13 never fire: dead on any batch (14/16: a dying-ReLU finding)
        model.fc1.bias[:14] = -100.0
        # unit 14 fires only where x0 > 0 (rank 0's half), unit 15 only where x0 < 0 (rank
        # 1's): dead on each rank's own part, alive on the global batch
        model.fc1.weight[14:].zero_()
        model.fc1.weight[14, 0], model.fc1.weight[15, 0] = 1.0, -1.0
        model.fc1.bias[14:] = -0.5
    return model


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(GLOBAL_BATCH, FEATURES, generator=g, dtype=torch.float64)
    half = GLOBAL_BATCH // 2
    x[:half, 0] = x[:half, 0].abs() + 1.0  # rank 0's examples: x0 > 1
    x[half:, 0] = -x[half:, 0].abs() - 1.0  # rank 1's: x0 < -1
    y = torch.randint(0, CLASSES, (GLOBAL_BATCH,), generator=g)
    return x, y


def rank_batch(rank: int, world: int = WORLD) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = global_batch()
    n = GLOBAL_BATCH // world
    return x[rank * n : (rank + 1) * n], y[rank * n : (rank + 1) * n]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = STEPS) -> None:
    """SGD on a mean loss: DDP's average of the ranks' gradients is then the gradient of the
    mean over the global batch, which the single process computes."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
