"""timm vit_tiny_patch16_224 (5.5M parameters) at img_size=32, random weights, 10 classes."""

import _lib
import torch

_lib.import_vision()
import timm  # noqa: E402


def build_model():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32)
    return _lib.seeded(model)


def example_inputs():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
