"""Benchmark target: GELU MLP 512→1024→2048→1024→512→10, batch 16 (issue #5's "6.3M" MLP;
it has 5,252,618 parameters)."""

from _mlp import batch, mlp
from torch import nn


def build_model() -> nn.Module:
    return mlp((512, 1024, 2048, 1024, 512, 10), nn.GELU)


def example_inputs():
    return batch(16, 512)
