"""timm resnet18 (11.7M parameters) on 2 images of 32×32, random weights, 10 classes."""

import _lib
import torch

_lib.import_vision()
import timm  # noqa: E402


def build_model():
    torch.manual_seed(0)
    return _lib.seeded(timm.create_model("resnet18", pretrained=False, num_classes=10))


def example_inputs():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
