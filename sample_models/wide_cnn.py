"""A CNN whose first, high-resolution convolutions dominate its memory.

The stem works at 64×64 with 32 channels: each activation there is 2·32·64·64 floats
(1 MiB), saved by the convolution, the batch norm and the ReLU; the later stages work at
32×32 (32 channels) and 16×16 (64 channels) and save a quarter and an eighth of that per
layer. Checkpointing the stem frees the most (3 MiB of its 4).

    gradtool memory sample_models/wide_cnn.py
    gradtool memory sample_models/wide_cnn.py --apply-checkpoint

Expected: the stem holds most of the saved bytes; the checkpointed copy saves what was
predicted (within 20%) and passes gradtool check (exit 0).
"""

import torch
from torch import nn


def stage(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
    )  # fmt: skip


class WideCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = stage(3, 32)  # 64×64: the large activations
        self.pool1 = nn.MaxPool2d(2)
        self.stage2 = stage(32, 32)  # 32×32
        self.pool2 = nn.MaxPool2d(2)
        self.stage3 = stage(32, 64)  # 16×16
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.stem(x))
        x = self.pool2(self.stage2(x))
        x = self.stage3(x)
        return self.head(x.mean(dim=(2, 3)))


def build_model() -> WideCNN:
    torch.manual_seed(0)
    return WideCNN()


def example_inputs() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 64, 64, generator=generator)
