"""The activation registry: what gradtool measures for each activation, called as a module
(`nn.ReLU`) or as a function (`torch.relu`, `F.gelu`), and the explicit None for every other
type."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class ActivationSpec:
    """What gradtool measures for one activation, whichever way it is called.

    dead: "zero" — a unit is dead when its output is exactly 0 for every example (its
    gradient is then 0 too); "negative" — leaky/smooth activations never output a hard 0, so
    we count units stuck in the negative regime (small but nonzero gradient) as *inactive*;
    "none" — no such statistic. saturation: the activation's asymptotes (lo, hi), either may
    be None; an output within the margin of one of them passes almost no gradient.
    """

    name: str
    dead: str
    saturation: tuple[float | None, float | None] | None = None
    module_types: tuple[type, ...] = ()
    functions: tuple[str, ...] = ()  # dotted paths, resolved below; missing ones are skipped
    nonnegative: bool = False  # outputs are ≥ 0, so "0 for every example" is "max is 0"


F_ = "torch.nn.functional."
ACTIVATIONS: tuple[ActivationSpec, ...] = (
    ActivationSpec(
        "relu",
        "zero",
        None,
        (nn.ReLU,),
        (
            "torch.relu",
            "torch.relu_",
            F_ + "relu",
            F_ + "relu_",
            "torch.Tensor.relu",
            "torch.Tensor.relu_",
        ),
        nonnegative=True,
    ),
    ActivationSpec("relu6", "zero", (None, 6.0), (nn.ReLU6,), (F_ + "relu6",), nonnegative=True),
    ActivationSpec("hardswish", "zero", None, (nn.Hardswish,), (F_ + "hardswish",)),
    ActivationSpec(
        "sigmoid",
        "none",
        (0.0, 1.0),
        (nn.Sigmoid,),
        (
            "torch.sigmoid",
            "torch.sigmoid_",
            F_ + "sigmoid",
            "torch.special.expit",
            "torch.Tensor.sigmoid",
            "torch.Tensor.sigmoid_",
        ),
    ),
    ActivationSpec(
        "tanh",
        "none",
        (-1.0, 1.0),
        (nn.Tanh,),
        ("torch.tanh", "torch.tanh_", F_ + "tanh", "torch.Tensor.tanh", "torch.Tensor.tanh_"),
    ),
    ActivationSpec(
        "hardtanh", "none", (-1.0, 1.0), (nn.Hardtanh,), (F_ + "hardtanh", F_ + "hardtanh_")
    ),
    ActivationSpec("hardsigmoid", "none", (0.0, 1.0), (nn.Hardsigmoid,), (F_ + "hardsigmoid",)),
    ActivationSpec("softsign", "none", (-1.0, 1.0), (nn.Softsign,), (F_ + "softsign",)),
    ActivationSpec(
        "leaky_relu", "negative", None, (nn.LeakyReLU,), (F_ + "leaky_relu", F_ + "leaky_relu_")
    ),
    ActivationSpec("prelu", "negative", None, (nn.PReLU,), (F_ + "prelu", "torch.prelu")),
    ActivationSpec("rrelu", "negative", None, (nn.RReLU,), (F_ + "rrelu", F_ + "rrelu_")),
    ActivationSpec("elu", "negative", None, (nn.ELU,), (F_ + "elu", F_ + "elu_")),
    ActivationSpec("selu", "negative", None, (nn.SELU,), (F_ + "selu", F_ + "selu_", "torch.selu")),
    ActivationSpec("celu", "negative", None, (nn.CELU,), (F_ + "celu", F_ + "celu_")),
    ActivationSpec("gelu", "negative", None, (nn.GELU,), (F_ + "gelu",)),
    ActivationSpec("silu", "negative", None, (nn.SiLU,), (F_ + "silu",)),
    ActivationSpec("mish", "negative", None, (nn.Mish,), (F_ + "mish",)),
    ActivationSpec("softplus", "none", None, (nn.Softplus,), (F_ + "softplus",)),
)


def _resolve(path: str) -> Any:
    obj: Any = None
    parts = path.split(".")
    try:
        obj = __import__(parts[0])
        for part in parts[1:]:
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return obj


def _short(path: str) -> str:
    return path.replace("torch.nn.functional.", "F.").replace("torch.Tensor.", "Tensor.")


_BY_TYPE: dict[type, ActivationSpec] = {t: s for s in ACTIVATIONS for t in s.module_types}
_BY_FUNCTION: dict[Any, ActivationSpec] = {}
FUNCTION_NAMES: dict[Any, str] = {}  # how a row shows the call (`via`): F.relu, Tensor.relu
for _spec in ACTIVATIONS:
    for _path in _spec.functions:
        _fn = _resolve(_path)
        if _fn is not None and _fn not in _BY_FUNCTION:
            _BY_FUNCTION[_fn] = _spec
            FUNCTION_NAMES[_fn] = _short(_path)


def activation_for_module(module: nn.Module) -> ActivationSpec | None:
    """The registry entry for a module (its class or nearest registered base class).

    None is the explicit answer for every other type: not an activation, so no dead or
    saturation statistics for it (activations called inside its forward are still measured).
    """
    for cls in type(module).__mro__:
        spec = _BY_TYPE.get(cls)
        if spec is not None:
            return spec
    return None


def activation_for_function(func: Any) -> ActivationSpec | None:
    """The registry entry for a torch function seen during the forward, or None."""
    try:
        return _BY_FUNCTION.get(func)
    except TypeError:  # an unhashable callable cannot be one of ours
        return None


def saturation_bounds(
    spec: ActivationSpec, module: nn.Module | None, args: Sequence[Any], kwargs: dict
) -> tuple[float | None, float | None] | None:
    """The asymptotes, reading a Hardtanh's own min_val/max_val where it has them."""
    if spec.saturation is None:
        return None
    lo, hi = spec.saturation
    if spec.name == "hardtanh":
        if module is not None:
            lo, hi = float(module.min_val), float(module.max_val)
        else:
            lo = float(kwargs.get("min_val", args[1] if len(args) > 1 else lo))
            hi = float(kwargs.get("max_val", args[2] if len(args) > 2 else hi))
    return lo, hi
