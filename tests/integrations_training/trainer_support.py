"""What the trainer-integration tests share (imported by name: the test folders are not
packages): importing a trainer library (skipped where it is not installed), and counting
the hooks left on a model and in torch."""

from __future__ import annotations

from pathlib import Path
from runpy import run_path
from types import ModuleType

from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[2]
LIBRARY = REPO_ROOT / "tests" / "fixtures" / "flow_corpus" / "_library.py"


def library(name: str) -> ModuleType:
    """`lightning`, `transformers`, `tensorboard`, imported; the test is skipped where it is not
    installed. (torchvision, which lightning's torchmetrics and transformers import, fails to
    import on a CPU torch with a CUDA torchvision wheel: _library.py defines its op schemas.)"""
    return run_path(str(LIBRARY))["library"](name)


def global_hooks() -> tuple[int, ...]:
    """How many global module and optimizer hooks torch holds."""
    from torch.nn.modules import module as m
    from torch.optim import optimizer as o

    return (
        len(m._global_forward_pre_hooks),
        len(m._global_forward_hooks),
        len(m._global_backward_hooks),
        len(o._global_optimizer_pre_hooks),
        len(o._global_optimizer_post_hooks),
    )


def module_hooks(model: nn.Module) -> int:
    """Hooks on the model's modules."""
    return sum(
        len(mod._forward_pre_hooks)
        + len(mod._forward_hooks)
        + len(mod._backward_hooks)
        + len(mod._backward_pre_hooks)
        for mod in model.modules()
    )
