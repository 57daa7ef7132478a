"""A small CNN: two conv + ReLU + max-pool stages and a linear classifier head.

Max-pool routes each gradient to the largest entry of its window and ReLU blocks negative
pre-activations; with random inputs no two entries tie and none sits within eps of a kink, so
finite differences agree with autograd.

Expected verdict: every gradient passes (exit 0).

    gradtool check sample_models/small_cnn.py
"""

import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(8 * 2 * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))  # 8x8 -> 4x4
        x = self.pool(torch.relu(self.conv2(x)))  # 4x4 -> 2x2
        return self.head(x.flatten(1))


def example_inputs() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, 1, 8, 8, generator=generator)
