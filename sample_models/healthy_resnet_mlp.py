"""A healthy residual ReLU MLP: He (kaiming) initialization, LayerNorm before every block,
and skip connections, so the gradient reaches the first layer about as strong as the last.

Expected verdict: no findings (exit 0, even with --fail-on all). With a few training steps it
memorizes the batch (the tutorial's "overfit one batch" check):

    gradtool flow sample_models/healthy_resnet_mlp.py --fail-on all
    gradtool flow sample_models/healthy_resnet_mlp.py --steps 40 --optimizer adam --lr 1e-2
"""

import torch
from torch import nn
from torch.nn import functional as F

WIDTH, BLOCKS, CLASSES = 64, 4, 10


class ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class ResidualMLP(nn.Module):
    def __init__(self, inputs: int = 16) -> None:
        super().__init__()
        self.stem = nn.Linear(inputs, WIDTH)
        self.blocks = nn.Sequential(*(ResidualBlock(WIDTH) for _ in range(BLOCKS)))
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, CLASSES)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.stem(x))))


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return ResidualMLP()


def example_inputs() -> torch.Tensor:
    return torch.randn(64, 16, generator=torch.Generator().manual_seed(0))


def loss_fn(output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # a learnable labelling of the batch: the index of the largest of the first 10 features
    return F.cross_entropy(output, x[:, :CLASSES].argmax(dim=1))
