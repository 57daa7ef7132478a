"""Test models and model helpers used by more than one test module.

User-like models for `flow` and `Monitor` (seeded, small), a model with state for the
"left as found" tests with its snapshot, and the float64 references from torch
(`torch.autograd.gradcheck`) that the check's verdicts are compared with. A model or helper
that only one test module uses stays in that module.
"""

from __future__ import annotations

import importlib.util
import inspect
from types import ModuleType

import torch
from conftest import SAMPLES
from torch import nn
from torch.nn import functional as F
from torch.nn.modules import module as module_hooks

# --- inputs and hooks -------------------------------------------------------------------------


def batch(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def hook_free(model: nn.Module) -> bool:
    """No hook of any kind left on the model, globally, or as a torch-function mode."""
    for m in model.modules():
        for table in (
            m._forward_hooks,
            m._forward_pre_hooks,
            m._backward_hooks,
            m._backward_pre_hooks,
            m._forward_hooks_with_kwargs,
            m._forward_hooks_always_called,
            m._forward_pre_hooks_with_kwargs,
        ):
            if table:
                return False
    if module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks:
        return False
    if torch._C._is_torch_function_mode_enabled():
        return False
    return all(p._backward_hooks is None for p in model.parameters())


def load_sample(name: str) -> ModuleType:
    """A file of sample_models/ imported as a module (its build_model, example_inputs, ...)."""
    spec = importlib.util.spec_from_file_location(f"flow_sample_{name[:-3]}", SAMPLES / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- user-like models for flow and Monitor ------------------------------------------------------


def sigmoid_mlp(depth: int = 20, width: int = 32) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


class SeventyPercentDead(nn.Module):
    """70 of the 100 hidden units have a bias of -100: they never fire."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(16, 100)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(100, 4)
        with torch.no_grad():
            self.fc1.weight.mul_(0.1)
            self.fc1.bias[:70] = -100.0
            self.fc1.bias[70:] = 5.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Log(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


class LogOfNegatives(nn.Module):
    """log of a Linear's output, through a `Log` module named `logb`: NaN in forward there."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(8, 8)
        self.logb = Log()
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.logb(self.fc1(x)))


class ReusedInplace(nn.Module):
    """One nn.ReLU(inplace=True) used after two layers with different dead fractions."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(8, 10)
        self.b = nn.Linear(10, 32)
        self.act = nn.ReLU(inplace=True)
        self.out = nn.Linear(32, 2)
        with torch.no_grad():
            self.a.weight.mul_(0.01)
            self.b.weight.mul_(0.01)
            self.a.bias.copy_(torch.tensor([-9.0] * 2 + [9.0] * 8))  # 2 of 10 dead
            self.b.bias.copy_(torch.tensor([-9.0] * 24 + [9.0] * 8))  # 24 of 32 dead

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.b(self.act(self.a(x)))))


class Functional(nn.Module):
    """Activations called as functions: F.relu (twice), torch.sigmoid (saturated), F.gelu."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)
        with torch.no_grad():
            self.fc1.weight.mul_(0.01)
            self.fc1.bias.copy_(torch.tensor([-5.0] * 3 + [5.0] * 5))  # 3 of 8 dead

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x))
        x = torch.sigmoid(self.fc2(x) * 100.0)  # saturated
        x = F.gelu(self.fc3(x))
        return self.head(x.relu())


def monitor_mlp() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    )
    with torch.no_grad():
        model[0].bias[:8] -= 3.0  # a quarter of the first ReLU's units start (nearly) dead
    return model


# --- a model with state, and a snapshot of everything check() must leave as found ----------------


class GuestNet(nn.Module):
    """Dropout, train-mode BatchNorm (running stats, num_batches_tracked), a frozen layer."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Linear(5, 6)
        self.frozen.requires_grad_(False)
        self.layer = nn.Linear(6, 8)
        self.norm = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.tanh(self.norm(self.layer(self.frozen(x))))))


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "devices": {k: v.device for k, v in model.state_dict().items()},
        "dtypes": {k: v.dtype for k, v in model.state_dict().items()},
        "training": {n: m.training for n, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grads": {
            n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
        },
        "ids": {n: id(p) for n, p in model.named_parameters()},
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["state"].keys() == after["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key
    for field in ("devices", "dtypes", "training", "requires_grad", "ids"):
        assert before[field] == after[field], field
    for name, grad in before["grads"].items():
        if grad is None:
            assert after["grads"][name] is None, name
        else:
            assert torch.equal(grad, after["grads"][name]), name


# --- float64 references from torch ---------------------------------------------------------------


def torch_reference_failures(fn: type, inputs: tuple) -> set[str]:
    """Which inputs torch.autograd.gradcheck (float64, one input at a time) rejects, named by
    the Function's forward arguments."""
    names = list(inspect.signature(fn.forward).parameters)[1:]  # skip ctx
    bad = set()
    for i, name in enumerate(names):
        xs = [t.detach().double().clone().requires_grad_(j == i) for j, t in enumerate(inputs)]
        if not torch.autograd.gradcheck(fn.apply, xs, raise_exception=False):
            bad.add(name)
    return bad


def module_function(model: nn.Module):
    """(f, names): f(x, *params) = model(x) with the parameters as explicit float64 inputs."""
    model = model.double()
    names = [n for n, _ in model.named_parameters()]

    def f(x, *params):
        return torch.func.functional_call(model, dict(zip(names, params)), (x,))

    return f, names


def torch_gradcheck_module(model: nn.Module, x: torch.Tensor) -> bool:
    f, _ = module_function(model)
    leaves = [x.double().requires_grad_(True)] + [
        p.detach().double().clone().requires_grad_(True) for p in model.parameters()
    ]
    return torch.autograd.gradcheck(f, leaves, raise_exception=False)


def as_float64_leaves(inputs: tuple) -> list[torch.Tensor]:
    return [t.detach().double().clone().requires_grad_(True) for t in inputs]
