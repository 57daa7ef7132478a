"""Benchmark target: tanh MLP 16→64→64→64→1, batch 8 (issue #5)."""

from _mlp import batch, mlp
from torch import nn


def build_model() -> nn.Module:
    return mlp((16, 64, 64, 64, 1), nn.Tanh)


def example_inputs():
    return batch(8, 16)
