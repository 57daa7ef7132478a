"""What the real-model benchmark files share: importing timm/transformers on a CPU-only
torch, and the seeded bug.

torchvision's PyPI wheels are built against CUDA torch; with the CPU build its C++ ops
can't load and importing it fails while it registers fake kernels for them. timm and
transformers import torchvision but the models built here use none of its ops, so the two
op schemas it registers are defined here first when its own import fails.

The seeded bug (env GRADTOOL_BENCH_BUG=N): the N-th activation module of the model gets a
0.9× backward — its output passes through an identity whose backward scales the gradient.
Every tensor upstream of that activation then has a wrong gradient, none downstream."""

from __future__ import annotations

import os
import sys

import torch
from torch import nn


def import_vision() -> None:
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure of its C++ half
        for name in [n for n in sys.modules if n.startswith("torchvision")]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _keep.append(lib)


_keep: list = []


class ScaledBackward(torch.autograd.Function):
    """Identity forward, 0.9× backward (with a vmap rule, so batching is unaffected)."""

    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        return 0.9 * grad

    @staticmethod
    def vmap(info, in_dims, x):
        return ScaledBackward.apply(x), in_dims[0]


ACTIVATIONS = (
    "ReLU",
    "GELU",
    "SiLU",
    "Hardswish",
    "GELUActivation",
    "NewGELUActivation",
    "GELUTanh",
    "SiLUActivation",
    "QuickGELUActivation",
)


def activations(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's activation modules, in registration order."""
    return [(n, m) for n, m in model.named_modules() if type(m).__name__ in ACTIVATIONS]


def seeded(model: nn.Module) -> nn.Module:
    """The model with the bug GRADTOOL_BENCH_BUG asks for (none when unset)."""
    which = os.environ.get("GRADTOOL_BENCH_BUG", "")
    if not which:
        return model
    found = activations(model)
    name, module = found[int(which) % len(found)]
    module.register_forward_hook(lambda _m, _inp, out: ScaledBackward.apply(out))
    model.seeded_bug = name  # for the benchmark's report
    return model
