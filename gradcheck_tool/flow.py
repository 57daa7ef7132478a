"""gradtool flow: per-layer gradient flow, dead and saturated activations, the first NaN.

The engine never prints. While one forward runs it registers a global module forward
pre-hook and forward hook (they ignore modules outside the model), pre-hooks on the autograd
nodes that made each module's output (they see the backward; never full backward hooks,
which break on in-place ops), and a TorchFunctionMode that sees functional activations
(`torch.relu`, `F.gelu`, ...) and attributes them to the module whose forward made them.
Every handle lives in a side table and is removed in `finally`; nothing is set on the
user's modules or parameters. What is measured stays on the device: one vector per step,
read back in one transfer.

`flow()` works on a deep copy of the model (its own dtype and device); `Monitor` watches
the user's own model inside their training loop and leaves it as it found it.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)
from torch.overrides import TorchFunctionMode

from ._guest import RngState, describe_exception, init_cuda, preserved_state
from ._tree import floating_leaves
from ._version import __version__
from .errors import GradtoolError, InputError, UserCodeError
from .prepare import ProjectionLoss, _terms_of, normalize_inputs
from .results import (
    FINDING_KINDS,
    Finding,
    FlowReport,
    LayerStats,
    OverfitVerdict,
    RowSample,
    StepRecord,
)

ROOT = "(model)"  # how the model itself is named where named_modules() says ""

# --- the activation registry -----------------------------------------------------------------


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
_FUNCTION_NAMES: dict[Any, str] = {}
for _spec in ACTIVATIONS:
    for _path in _spec.functions:
        _fn = _resolve(_path)
        if _fn is not None and _fn not in _BY_FUNCTION:
            _BY_FUNCTION[_fn] = _spec
            _FUNCTION_NAMES[_fn] = _short(_path)


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


# Within 1% of the output range of an asymptote, sigmoid and tanh pass at most ~4% of their
# peak derivative: sigmoid' = s(1-s) ≤ 0.0099 at s=0.99 (peak 0.25); tanh' = 1-y² ≤ 0.0396
# at |y|=0.98 (peak 1).
SATURATION_MARGIN = 0.01


def _saturation_bounds(
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


# --- thresholds and fixes --------------------------------------------------------------------


@dataclass(frozen=True)
class FlowThresholds:
    """When a measurement becomes a finding. Ratios compare RMS gradients (norm/√numel),
    so layers of different sizes compare fairly."""

    vanishing_ratio: float = 1e-3  # earliest layers' RMS gradient / latest layers'
    exploding_ratio: float = 1e3  # the same ratio, the other way: growing toward the input
    # a layer's gradient norm over the norm of the loss's gradient at the model output: how
    # much the network amplifies the loss signal (healthy nets: 1 to ~1e3)
    exploding_gain: float = 1e6
    exploding_growth: float = 1e3  # a layer's gradient norm grew this much over --steps
    dead_fraction: float = 0.5  # the tutorial: above 50% dead is "dying ReLUs"
    saturated_fraction: float = 0.5
    saturation_margin: float = SATURATION_MARGIN
    overfit_fraction: float = 0.01  # "near zero": last loss ≤ 1% of the first ...
    overfit_absolute: float = 1e-3  # ... or ≤ 1e-3


FIXES: dict[str, str] = {
    "vanishing": "Use ReLU-family activations instead of sigmoid/tanh in hidden layers, He "
    "(kaiming) initialization, residual connections, and normalization (BatchNorm/LayerNorm).",
    "exploding": "Clip gradients (torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)), "
    "lower the learning rate, and check the initialization scale (He/Xavier, not N(0, 1)).",
    "dead_relu": "Lower the learning rate, use He (kaiming) initialization, or switch to "
    "LeakyReLU so that negative inputs still pass a gradient.",
    "saturation": "Keep pre-activations in the linear range: Xavier initialization, "
    "normalization (BatchNorm/LayerNorm) before the activation, scaled inputs — or a "
    "ReLU-family activation in hidden layers.",
    "nan": "Guard the operation: clamp what goes into log/sqrt/pow (x.clamp_min(eps)), add eps "
    "to denominators, use log_softmax / BCEWithLogitsLoss rather than log(softmax) / "
    "log(sigmoid); if it appears only after some steps, lower the learning rate.",
    "nan_backward": "Its derivative is infinite there (sqrt or pow(x, p<1) at 0, log at 0, "
    "the norm of a zero vector, acos/asin at ±1): add eps inside the op or clamp its input.",
    "nan_inputs": "Clean the inputs (torch.nan_to_num, or drop the bad examples) before they "
    "reach the model.",
    "no_grad": "Use the parameter in forward without cutting the graph (.detach(), .data, "
    "torch.no_grad(), a round trip through .item()/.numpy()); if it is meant to be frozen, "
    "call requires_grad_(False) on it.",
}

OPTIMIZERS = ("sgd", "adam")
DEFAULT_LR = {"sgd": 1e-2, "adam": 1e-3}

# Layers whose parameters index channels in dim 1 of the activations after them (conv maps);
# after any other layer a unit is a feature in the last dim (Linear, LayerNorm, Embedding).
_CHANNEL_FIRST: tuple[type, ...] = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
)


# --- the model, statically -------------------------------------------------------------------


@dataclass
class _Layer:
    """A module that owns parameters (each parameter belongs to the first module naming it)."""

    name: str
    module: nn.Module
    params: list[tuple[str, nn.Parameter]]
    index: int
    param_index: list[int] = field(default_factory=list)  # positions in _ModelMap.params

    @property
    def sparse_by_design(self) -> bool:
        # an embedding's gradient only touches the rows the batch used
        return isinstance(self.module, (nn.Embedding, nn.EmbeddingBag))

    @property
    def matrix_like(self) -> bool:
        return any(p.dim() >= 2 for _, p in self.params)


def _may_call_activations(module: nn.Module) -> bool:
    """Whether functional activations called while this module's own forward runs need
    watching: yes for the user's modules and torch's composite ones (TransformerEncoderLayer
    calls F.relu), no for torch's leaf modules (nn.Linear; nn.ReLU is measured by its hook)
    and pure containers, during which the TorchFunctionMode is suspended: it costs a Python
    call per torch function."""
    if not type(module).__module__.startswith("torch."):
        return True
    if isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return False
    return next(module.children(), None) is not None


class _ModelMap:
    """Names, layers, parameters and activation specs of one model, computed once."""

    def __init__(self, model: nn.Module) -> None:
        self.root = model
        self.names: dict[int, str] = {}
        self.depth: dict[int, int] = {}
        self.specs: dict[int, ActivationSpec | None] = {}
        self.layers: list[_Layer] = []
        self.layer_of: dict[int, _Layer] = {}
        self.params: list[nn.Parameter] = []
        self.param_names: list[str] = []
        self.param_layer: list[int] = []
        seen: set[int] = set()
        for name, module in model.named_modules():
            self.names[id(module)] = name
            self.depth[id(module)] = name.count(".") + 1 if name else 0
            self.specs[id(module)] = activation_for_module(module)
            own = []
            for pname, p in module.named_parameters(recurse=False):
                if id(p) in seen:
                    continue  # tied weights: reported once, with their first owner
                seen.add(id(p))
                own.append((f"{name}.{pname}" if name else pname, p))
            if own:
                layer = _Layer(name, module, own, len(self.layers))
                self.layers.append(layer)
                self.layer_of[id(module)] = layer
                for qualname, p in own:
                    layer.param_index.append(len(self.params))
                    self.params.append(p)
                    self.param_names.append(qualname)
                    self.param_layer.append(layer.index)
        self.modules = [m for _, m in model.named_modules()]
        self.runs_user_code = {id(m): _may_call_activations(m) for m in self.modules}
        # torch's own leaf modules never turn a finite gradient into NaN/Inf
        self.trusted_backward = {
            id(m): type(m).__module__.startswith("torch.") and next(m.children(), None) is None
            for m in self.modules
        }
        # what the hooks need per module, in one lookup: name, depth, activation spec, layer
        self.info: dict[int, tuple[str, int, ActivationSpec | None, _Layer | None]] = {
            id(m): (
                self.names[id(m)],
                self.depth[id(m)],
                self.specs[id(m)],
                self.layer_of.get(id(m)),
            )
            for m in self.modules
        }

    def name(self, module: nn.Module) -> str:
        return self.names.get(id(module), type(module).__name__)


# --- per-step measurement --------------------------------------------------------------------


@dataclass
class _ActCall:
    """One activation call seen in the forward; counts stay on the device."""

    name: str
    type: str
    spec: ActivationSpec
    via: str | None
    order: int
    base_key: str
    units: int
    unit: str
    numel: int
    fields: list[str]  # which counts follow: "alive" | "inactive" | "saturated"


class _FwdEvent(NamedTuple):
    where: str  # "input" | "output"
    name: str
    parent: str | None  # the module on the stack when it happened (None: outside the model)
    is_root: bool


def _host_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _sq_norm(t: torch.Tensor) -> torch.Tensor:
    """Σ t² as a 0-d tensor (the host takes the square root).

    A dot product of the flattened tensor with itself is one memory-bound pass, about twice
    as fast on CPU as vector_norm; half precision and odd layouts go through vector_norm with
    float32 accumulation. (A float32 sum of squares overflows only for entries beyond ~1e19,
    which no update survives either: that reads as an exploding, non-finite norm.)
    """
    if t.dtype in (torch.float32, torch.float64) and t.is_contiguous() and t.numel():
        flat = t.view(-1)
        return torch.dot(flat, flat)
    low = t.dtype in (torch.float16, torch.bfloat16)
    return torch.linalg.vector_norm(t, dtype=torch.float32 if low else None).square()


def _extremes(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of a tensor in one pass; NaN propagates. (The inf-norm, which would give
    max |t| directly, is an order of magnitude slower on CPU.)"""
    if t.is_complex():
        t = t.abs()
    return torch.aminmax(t)


def _grad_accumulator(p: torch.Tensor) -> Any:
    """The AccumulateGrad node of a leaf parameter (None if there is none)."""
    try:
        return torch.autograd.graph.get_gradient_edge(p).node
    except (AttributeError, RuntimeError):  # older torch: the classic detour through a view
        fn = p.view_as(p).grad_fn
        return fn.next_functions[0][0] if fn is not None else None


def _finite_probe(t: torch.Tensor) -> torch.Tensor:
    """A scalar that is finite iff every entry of `t` is: their sum, one fast pass.

    (A float32 sum of finite values overflows only beyond ~1e33 per entry, where the next op
    overflows anyway; half precision is summed in float32.)
    """
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.sum(dtype=torch.float32)
    return t.sum()


def _floating(value: Any) -> list[torch.Tensor]:
    """The floating tensors in a module's inputs or output (fast path for plain tensors)."""
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() or value.is_complex() else []
    if isinstance(value, tuple) and all(isinstance(v, torch.Tensor) for v in value):
        return [v for v in value if v.is_floating_point() or v.is_complex()]
    return [t for _, t in floating_leaves(value)]


def _dense(g: torch.Tensor) -> torch.Tensor:
    return g.coalesce().values() if g.is_sparse else g


class _Recorder:
    """The hooks for one model. `begin()` → forward → `end_forward()` → backward → `collect()`.

    The same recorder serves `flow()` (on a copy) and `Monitor` (on the user's model, hooks
    attached for recorded steps only). While the forward runs, two global module hooks (one
    pre, one post) see every module call; calls of modules outside this model are ignored.
    The model's own root module is entered by hand (`on_pre`), so that its keyword arguments
    are seen too.
    """

    def __init__(
        self,
        mm: _ModelMap,
        *,
        functional: bool = True,
        check_finite: bool = True,
        hook_param_grads: bool = False,
    ) -> None:
        self.mm = mm
        self.hook_param_grads = hook_param_grads
        self.functional = functional
        self.check_finite = check_finite
        self.saturation_margin = SATURATION_MARGIN
        self.module_handles: list[Any] = []
        self.tensor_handles: list[Any] = []
        self.errors: list[str] = []
        self.mode: _ActivationCalls | None = None
        # AccumulateGrad node of each parameter (and its hook), looked up once, kept while hooked
        self.grad_nodes: dict[int, tuple[Any, Callable[[tuple], None]]] = {}
        self.on_root_return: Callable[[Any], None] | None = None
        self.begin()

    # state of one step
    def begin(self) -> None:
        self.order = 0
        self.stack: list[nn.Module] = []
        self.layer_order: dict[int, int] = {}
        self.layer_calls: dict[int, int] = {}
        self.layout: str | None = None
        self.acts: list[_ActCall] = []
        self.act_counts: list[torch.Tensor] = []
        self.fwd: list[_FwdEvent] = []
        self.fwd_flags: list[torch.Tensor] = []
        self.bwd_roles: list[list[tuple]] = []
        self.bwd: list[int] = []
        self.bwd_flags: list[torch.Tensor] = []
        self.bwd_norms: list[torch.Tensor] = []
        self.bwd_norm_at: list[int] = []  # which entries of self.bwd have a norm
        self.bwd_wants_norm: list[bool] = []
        self.bwd_numel: list[int] = []
        self.failed_in: str | None = None
        # (id, version) of every tensor seen this forward; holding the tensor keeps its id
        # from being reused while the forward runs. Cleared when the forward ends.
        self.checked: dict[tuple[int, int], torch.Tensor] = {}
        self.hooked: dict[tuple[int, int], list] = {}  # key -> [index, tensor, hooked?]
        # per parameter, as 0-d device tensors: weight norm; gradient norm, min and max
        n = len(self.mm.params)
        self.wn: list[torch.Tensor | None] = [None] * n
        self.gn: list[torch.Tensor | None] = [None] * n
        self.glo: list[torch.Tensor | None] = [None] * n
        self.ghi: list[torch.Tensor | None] = [None] * n
        self.grads_seen = False

    # hooks on / off
    def attach(self) -> None:
        self.module_handles.append(register_module_forward_pre_hook(self._pre_hook))
        self.module_handles.append(register_module_forward_hook(self._post_hook, always_call=True))

    def detach_modules(self) -> None:
        while self.module_handles:
            self.module_handles.pop().remove()

    def detach_tensors(self) -> None:
        while self.tensor_handles:
            self.tensor_handles.pop().remove()

    def close(self) -> None:
        self.exit_mode()
        self.detach_modules()
        self.detach_tensors()
        self.grad_nodes.clear()

    def enter_mode(self) -> None:
        if self.functional and self.mode is None:
            self.mode = _ActivationCalls(self)
            self.mode.__enter__()

    def exit_mode(self) -> None:
        if self.mode is not None:
            mode, self.mode = self.mode, None
            mode.__exit__(None, None, None)

    def measure_weights(self, indices: Sequence[int]) -> None:
        params = self.mm.params
        for i in indices:
            self.wn[i] = _sq_norm(params[i].detach())  # detached: no graph

    def measure_grads(self, grads: list[torch.Tensor | None]) -> None:
        """Statistics of the gradients as they stand (flow(): p.grad after the backward)."""
        indices = [i for i, g in enumerate(grads) if g is not None]
        dense = [_dense(grads[i]).detach() for i in indices]
        for i, g in zip(indices, dense):
            self.gn[i] = _sq_norm(g)
            self.glo[i], self.ghi[i] = _extremes(g)
        self.grads_seen = True

    def _hook_grads(self, layer: _Layer) -> None:
        """Monitor: read each parameter's gradient the moment the backward produces it, while
        it is still in cache, from a pre-hook on its AccumulateGrad node (nothing is put on
        the parameter itself)."""
        for i in layer.param_index:
            p = self.mm.params[i]
            if not p.requires_grad:
                continue
            entry = self.grad_nodes.get(i)
            if entry is None:  # looked up once: the node and the bound hook for parameter i
                entry = self.grad_nodes[i] = (_grad_accumulator(p), partial(self._on_param_grad, i))
            if entry[0] is not None:
                self.tensor_handles.append(entry[0].register_prehook(entry[1]))

    def _on_param_grad(self, i: int, grads: tuple) -> None:
        try:
            g = grads[0] if grads else None
            if g is None:
                return
            g = _dense(g).detach()
            self.gn[i] = _sq_norm(g)
            self.glo[i], self.ghi[i] = _extremes(g)
            if self.wn[i] is None:  # the weights were just read by this backward: in cache
                self.wn[i] = _sq_norm(self.mm.params[i].detach())
            self.grads_seen = True
        except Exception as exc:  # pragma: no cover - defensive
            self._internal(exc)

    def end_forward(self) -> None:
        self.checked.clear()
        self.hooked.clear()
        self.stack.clear()

    # the hooks themselves; an internal error must never break the user's forward
    def _internal(self, exc: Exception) -> None:  # pragma: no cover - defensive
        if len(self.errors) < 5:
            self.errors.append(f"gradtool internal error in a hook: {type(exc).__name__}: {exc}")

    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            # our own tensor ops skip the activation mode (and subclass dispatch); they run on
            # detached tensors, so they build no graph
            with torch._C.DisableTorchFunction():
                fn(*args)
        except Exception as exc:  # pragma: no cover - defensive
            self._internal(exc)

    def _pre_hook(self, module: nn.Module, args: tuple) -> None:
        if id(module) in self.mm.info and module is not self.mm.root:
            self._guard(self.on_pre, module, args, None)
            self.sync_mode()

    def _post_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if id(module) in self.mm.info:
            self._guard(self.on_post, module, output)
            self.sync_mode()
            if module is self.mm.root and self.on_root_return is not None:
                self.on_root_return(output)

    def sync_mode(self) -> None:
        """The activation mode is on exactly while a forward that may call functional
        activations runs (the innermost module on the stack decides)."""
        stack = self.stack
        want = self.functional and bool(stack) and self.mm.runs_user_code[id(stack[-1])]
        if want and self.mode is None:
            self.enter_mode()
        elif not want and self.mode is not None:
            self.exit_mode()

    def on_pre(self, module: nn.Module, args: tuple, kwargs: dict | None) -> None:
        self.order += 1
        name, depth, _, layer = self.mm.info[id(module)]
        if module is self.mm.root and not self.hook_param_grads:
            # every weight norm, before anything changes them (the Monitor measures each
            # parameter in its gradient hook instead, where the weights are in cache)
            self.measure_weights(range(len(self.mm.params)))
        if layer is not None:
            calls = self.layer_calls[layer.index] = self.layer_calls.get(layer.index, 0) + 1
            if calls == 1:
                self.layer_order[layer.index] = self.order
                if self.hook_param_grads:
                    self._hook_grads(layer)
        parent = self.mm.names[id(self.stack[-1])] if self.stack else None
        role = ("in", name, parent, depth, False)
        for t in _floating(args):
            self._watch(t, role, module, "input", parent)
        if kwargs:
            for t in _floating(kwargs):
                self._watch(t, role, module, "input", parent)
        self.stack.append(module)

    def on_post(self, module: nn.Module, output: Any) -> None:
        stack = self.stack
        if stack and stack[-1] is module:
            stack.pop()
        elif module in stack:  # unwinding after an exception in a child
            while stack.pop() is not module:
                pass
        name, depth, spec, layer = self.mm.info[id(module)]
        if output is None:  # the forward raised (always_call): note where, innermost first
            if self.failed_in is None:
                self.failed_in = name
            return
        if layer is not None:
            self.layout = "channel" if isinstance(module, _CHANNEL_FIRST) else "feature"
        parent = self.mm.names[id(stack[-1])] if stack else None
        leaves = _floating(output)
        if spec is not None and leaves:
            base = name or ROOT
            if layer is not None:  # e.g. PReLU: a layer row already has this name
                base = f"{base}:{spec.name}"
            bounds = _saturation_bounds(spec, module, (), {})
            self._measure(leaves[0], spec, name, type(module).__name__, None, base, bounds)
        role = ("out", name, parent, depth, layer is not None)
        for t in leaves:
            # a registered activation maps finite values to finite values: its output needs
            # no check of its own (a non-finite input was caught where it was made)
            self._watch(t, role, module, "output", parent, probe=spec is None, spec=spec)

    def _watch(
        self,
        t: torch.Tensor,
        role: tuple,
        module: nn.Module,
        where: str,
        parent: str | None,
        probe: bool = True,
        spec: ActivationSpec | None = None,
    ) -> None:
        """Check `t` for NaN/Inf in the forward (once per tensor version) and hook it for
        the backward (once per tensor version, with every module role it plays)."""
        key = (id(t), t._version)
        if self.check_finite and key not in self.checked:
            self.checked[key] = t
            if probe:
                self.fwd_flags.append(_finite_probe(t.detach()))
                self.fwd.append(_FwdEvent(where, role[1], parent, module is self.mm.root))
        # only non-leaf tensors: a hook on a leaf would stay on the user's tensor
        if not t.requires_grad or t.grad_fn is None:
            return
        # Its gradient is worth watching when it leaves a module that is not an activation
        # (layer outputs: the backward signal) or enters one whose backward could turn a
        # finite gradient non-finite (anything but torch's own leaf modules). The output of
        # an nn.ReLU feeding an nn.Linear needs no hook of its own.
        needed = (role[0] == "out" and spec is None) or (
            role[0] == "in" and not self.mm.trusted_backward[id(module)]
        )
        entry = self.hooked.get(key)
        if entry is None:
            index = len(self.bwd_roles)
            self.bwd_roles.append([role])
            self.bwd_numel.append(t.numel())
            self.bwd_wants_norm.append(role[4])
            entry = self.hooked[key] = [index, t, False]
        else:
            self.bwd_roles[entry[0]].append(role)
            if role[4]:
                self.bwd_wants_norm[entry[0]] = True
        if needed and not entry[2]:
            # a pre-hook on the node that made this version of `t` receives dL/dt: the same
            # gradient a tensor hook would, registered more cheaply
            entry[2] = True
            hook = partial(self._on_node_grad, entry[0], t.output_nr)
            self.tensor_handles.append(t.grad_fn.register_prehook(hook))

    def on_functional(
        self, func: Any, spec: ActivationSpec, args: tuple, kwargs: dict, out: Any
    ) -> None:
        owner = self.stack[-1] if self.stack else self.mm.root
        if self.mm.specs.get(id(owner)) is not None:
            return  # nn.ReLU.forward calling F.relu: the module's own hook measures it
        if not isinstance(out, torch.Tensor):
            return
        name = self.mm.name(owner)
        bounds = _saturation_bounds(spec, None, args, kwargs)
        via = _FUNCTION_NAMES.get(func, getattr(func, "__name__", str(func)))
        self._measure(out, spec, name, spec.name, via, f"{name or ROOT}:{spec.name}", bounds)

    def _measure(
        self,
        y: torch.Tensor,
        spec: ActivationSpec,
        name: str,
        type_name: str,
        via: str | None,
        base_key: str,
        bounds: tuple[float | None, float | None] | None,
    ) -> None:
        self.order += 1
        if y.dim() == 0 or not y.is_floating_point() or y.numel() == 0:
            return
        # a unit is a channel of a conv map (dim 1), otherwise a feature (last dim); a 1-D
        # output is a single example, each element its own unit
        if y.dim() == 1:
            unit_dim, unit = 0, "element"
        elif self.layout == "channel" or (self.layout is None and y.dim() >= 4):
            unit_dim, unit = 1, "channel"
        else:
            unit_dim, unit = y.dim() - 1, "feature"
        counts = self.act_counts
        fields: list[str] = []
        # one reduction over the batch per statistic: a unit is alive when its largest |output|
        # is not 0, active when its largest output is ≥ 0 (counted on the device)
        dims = tuple(d for d in range(y.dim()) if d != unit_dim)
        dims = dims[0] if len(dims) == 1 else dims
        y = y.detach()
        if spec.dead == "zero":
            peak = y if spec.nonnegative else y.abs()
            counts.append(torch.count_nonzero(peak.amax(dim=dims) if dims != () else peak))
            fields.append("alive")
        elif spec.dead == "negative":
            peak = y.amax(dim=dims) if dims != () else y
            counts.append(torch.count_nonzero(peak < 0))
            fields.append("inactive")
        if bounds is not None:
            lo, hi = bounds
            if lo is not None and hi is not None:
                # |y - centre| ≥ half-range - margin: within the margin of either asymptote
                centre, half = (lo + hi) / 2, (hi - lo) / 2
                edge = half - self.saturation_margin * (hi - lo)
                counts.append(torch.count_nonzero((y - centre).abs_() >= edge))
            elif hi is not None:
                counts.append(torch.count_nonzero(y >= hi - self.saturation_margin * abs(hi)))
            else:
                counts.append(torch.count_nonzero(y <= lo + self.saturation_margin * abs(lo)))
            fields.append("saturated")
        if fields:
            self.acts.append(
                _ActCall(
                    name,
                    type_name,
                    spec,
                    via,
                    self.order,
                    base_key,
                    y.shape[unit_dim],
                    unit,
                    y.numel(),
                    fields,
                )
            )

    def _on_node_grad(self, index: int, output_nr: int, grads: tuple) -> None:
        grad = grads[output_nr] if output_nr < len(grads) else None
        if grad is not None:
            self._on_grad(index, grad)

    def _on_grad(self, index: int, grad: torch.Tensor) -> None:
        try:
            grad = grad.detach()
            self.bwd.append(index)
            if self.bwd_wants_norm[index]:
                # a layer's output: the size of the backward signal, which doubles as the
                # NaN/Inf probe (see _sq_norm about overflow)
                norm = _sq_norm(grad)
                self.bwd_norm_at.append(len(self.bwd) - 1)
                self.bwd_norms.append(norm)
                self.bwd_flags.append(norm)
            else:
                self.bwd_flags.append(_finite_probe(grad))
        except Exception as exc:  # pragma: no cover - defensive
            self._internal(exc)

    def collect(self, step: int, loss: torch.Tensor | None) -> _PendingStep:
        """Everything measured this step as ONE device vector, plus the host-side layout."""
        missing = [i for i, w in enumerate(self.wn) if w is None]  # layers that never ran
        if missing:
            self.measure_weights(missing)
        present = [g is not None for g in self.gn] if self.grads_seen else None
        scalars: list[torch.Tensor] = []
        if loss is not None:
            scalars.append(loss.detach().reshape(()))
        scalars.extend(self.wn)
        for values in (self.gn, self.glo, self.ghi):
            scalars.extend(v for v in values if v is not None)
        for group in (self.fwd_flags, self.bwd_flags, self.bwd_norms):
            scalars.extend(group)
        pending = _PendingStep(
            step=step,
            # the integer counts go last, stacked on their own: stacking mixed dtypes is slow
            parts=_stack(scalars, self.act_counts),
            has_loss=loss is not None,
            grads_present=present,
            acts=self.acts,
            fwd=self.fwd,
            bwd_roles=self.bwd_roles,
            bwd=self.bwd,
            bwd_norm_at=self.bwd_norm_at,
            bwd_numel=self.bwd_numel,
            layer_order=self.layer_order,
            layer_calls=self.layer_calls,
        )
        self.detach_tensors()
        self.begin()
        return pending


def _stack(*groups: list[torch.Tensor]) -> list[torch.Tensor]:
    """Groups of 0-d tensors -> one 1-D tensor per group (one op each), in order."""
    parts = []
    for scalars in groups:
        if scalars:
            try:
                parts.append(torch.stack(scalars))
            except RuntimeError:  # a model spread over several devices
                device = scalars[0].device
                parts.append(torch.stack([s.to(device) for s in scalars]))
    return parts


class _ActivationCalls(TorchFunctionMode):
    """Active only while the model's forward runs: measures functional activations."""

    def __init__(self, recorder: _Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        spec = activation_for_function(func)
        if spec is not None:
            self.recorder._guard(self.recorder.on_functional, func, spec, args, kwargs, out)
        return out


@dataclass
class _PendingStep:
    """One step's numbers as one device vector (then, once read back, a host list), and the
    layout that says what each number is."""

    step: int
    parts: list[torch.Tensor]
    has_loss: bool
    grads_present: list[bool] | None
    acts: list[_ActCall]
    fwd: list[_FwdEvent]
    bwd_roles: list[list[tuple]]
    bwd: list[int]
    bwd_norm_at: list[int]
    bwd_numel: list[int]
    layer_order: dict[int, int]
    layer_calls: dict[int, int]
    host: list[float] | None = None


def _read_back(pending: Sequence[_PendingStep]) -> None:
    """One device→host transfer for any number of pending steps; fills `host`."""
    todo = [p for p in pending if p.host is None]
    parts = [part for p in todo for part in p.parts]
    flat: list[float] = []
    if parts:
        device = parts[0].device
        dtype = _host_dtype(device)
        flat = torch.cat([part.to(device=device, dtype=dtype) for part in parts]).tolist()
    start = 0
    for p in todo:
        n = sum(part.numel() for part in p.parts)
        p.host, p.parts = flat[start : start + n], []
        start += n


# --- from numbers to rows and findings -------------------------------------------------------


@dataclass
class _NanSite:
    where: str  # "forward" | "backward" | "loss" | "inputs"
    layer: str
    message: str


@dataclass
class _StepSample:
    step: int
    loss: float | None
    rows: list[LayerStats]
    nan: _NanSite | None
    no_grad: list[tuple[str, list[str], str]] = field(default_factory=list)  # layer, params, why
    loss_grad: float | None = None  # norm of the loss's gradient at the model output


def _take(values: list[float], n: int, at: list[int]) -> list[float]:
    start = at[0]
    at[0] += n
    return values[start : start + n]


def _label(name: str) -> str:
    return name or ROOT


def _resolve_step(p: _PendingStep, mm: _ModelMap) -> _StepSample:
    """Host numbers of one step -> its rows (in forward order), NaN site and no-grad list."""
    values = p.host or []
    at = [0]
    loss = _take(values, 1, at)[0] if p.has_loss else None
    P = len(mm.params)
    weights = [math.sqrt(w) for w in _take(values, P, at)]  # squared norms on the device
    present = p.grads_present
    n_grads = sum(present) if present else 0
    g2 = [math.sqrt(g) for g in _take(values, n_grads, at)]
    lows, highs = _take(values, n_grads, at), _take(values, n_grads, at)
    # max |g| from the min and max; NaN anywhere makes it NaN
    ginf = [
        math.nan if math.isnan(lo) or math.isnan(hi) else max(-lo, hi)
        for lo, hi in zip(lows, highs)
    ]
    fwd_flags = _take(values, len(p.fwd), at)
    bwd_flags = _take(values, len(p.bwd), at)
    bwd_norms = [math.sqrt(n) for n in _take(values, len(p.bwd_norm_at), at)]
    counts = [round(c) for c in _take(values, sum(len(a.fields) for a in p.acts), at)]

    # the gradient reaching each module's output ("the backward signal"), from the tensor hooks
    out_sq: dict[str, float] = {}
    out_numel: dict[str, int] = {}
    for at_event, norm in zip(p.bwd_norm_at, bwd_norms):
        index = p.bwd[at_event]
        for role in p.bwd_roles[index]:
            if role[0] == "out":
                out_sq[role[1]] = out_sq.get(role[1], 0.0) + norm * norm
                out_numel[role[1]] = out_numel.get(role[1], 0) + p.bwd_numel[index]

    # per-parameter gradient numbers (None: no gradient)
    grad_norm: list[float | None] = [None] * P
    grad_max: list[float | None] = [None] * P
    if present:
        j = 0
        for i, has in enumerate(present):
            if has:
                grad_norm[i], grad_max[i] = g2[j], ginf[j]
                j += 1

    rows: list[LayerStats] = []
    not_run_order = 10**9
    no_grad: list[tuple[str, list[str], str]] = []
    by_layer: dict[int, list[int]] = {}
    for i, li in enumerate(mm.param_layer):
        by_layer.setdefault(li, []).append(i)
    for layer in mm.layers:
        idx = by_layer[layer.index]
        trainable = [i for i in idx if mm.params[i].requires_grad]
        with_grad = [i for i in idx if grad_norm[i] is not None]
        ran = layer.index in p.layer_order
        order = p.layer_order.get(layer.index, not_run_order + layer.index)
        calls = p.layer_calls.get(layer.index, 0)
        gn = math.sqrt(sum(grad_norm[i] ** 2 for i in with_grad)) if with_grad else None
        if gn is not None and any(not math.isfinite(grad_norm[i]) for i in with_grad):
            bad = [grad_norm[i] for i in with_grad if not math.isfinite(grad_norm[i])]
            gn = math.nan if any(math.isnan(b) for b in bad) else math.inf
        gm = max((grad_max[i] for i in with_grad), default=None) if with_grad else None
        if with_grad and any(math.isnan(grad_max[i]) for i in with_grad):
            gm = math.nan
        known_weights = [weights[i] for i in idx if weights[i] is not None]
        wn = math.sqrt(sum(w * w for w in known_weights)) if known_weights else None
        notes = []
        if not ran:
            notes.append("not called in forward")
        elif calls > 1:
            notes.append(f"called {calls}× in forward; gradients summed over the calls")
        if not trainable:
            notes.append("frozen")
        rows.append(
            LayerStats(
                name=layer.name,
                type=type(layer.module).__name__,
                kind="layer",
                key=layer.name or ROOT,
                order=order,
                calls=calls,
                params=tuple(mm.param_names[i] for i in idx),
                numel=sum(mm.params[i].numel() for i in idx),
                grad_norm=gn,
                weight_norm=wn,
                max_abs_grad=gm,
                output_grad_norm=(math.sqrt(out_sq[layer.name]) if layer.name in out_sq else None),
                output_numel=out_numel.get(layer.name),
                frozen=not trainable,
                note="; ".join(notes),
            )
        )
        if present is not None:
            missing = [mm.param_names[i] for i in trainable if grad_norm[i] is None]
            zero = [mm.param_names[i] for i in trainable if grad_norm[i] == 0.0]
            if missing:
                why = "its module never ran in forward" if not ran else "not reached by backward"
                no_grad.append((layer.name, missing, why))
            if zero:
                no_grad.append((layer.name, zero, "gradient exactly zero on this batch"))

    # activation rows; a base key seen more than once is one row per call, numbered
    totals: dict[str, int] = {}
    for a in p.acts:
        totals[a.base_key] = totals.get(a.base_key, 0) + 1
    seen_calls: dict[str, int] = {}
    k = 0
    for a in p.acts:
        call = seen_calls[a.base_key] = seen_calls.get(a.base_key, 0) + 1
        n = totals[a.base_key]
        stats = {"dead": None, "inactive": None, "saturated": None}
        for f in a.fields:
            if f == "alive":
                stats["dead"] = a.units - counts[k]
            else:
                stats[f] = counts[k]
            k += 1
        frac = {
            "dead": stats["dead"] / a.units if stats["dead"] is not None else None,
            "inactive": stats["inactive"] / a.units if stats["inactive"] is not None else None,
            "saturated": stats["saturated"] / a.numel if stats["saturated"] is not None else None,
        }
        rows.append(
            LayerStats(
                name=a.name,
                type=a.type,
                kind="activation",
                key=a.base_key if n == 1 else f"{a.base_key}#{call}",
                order=a.order,
                calls=n,
                call=call,
                via=a.via,
                units=a.units,
                unit=a.unit,
                dead_fraction=frac["dead"],
                inactive_fraction=frac["inactive"],
                saturated_fraction=frac["saturated"],
            )
        )
    rows.sort(key=lambda r: r.order)

    nan = _nan_site(p, mm, loss, fwd_flags, bwd_flags, grad_max, present, rows)
    loss_grad = math.sqrt(out_sq[""]) if "" in out_sq else None
    return _StepSample(p.step, loss, rows, nan, no_grad, loss_grad)


def _nan_site(
    p: _PendingStep,
    mm: _ModelMap,
    loss: float | None,
    fwd_flags: list[float],
    bwd_flags: list[float],
    grad_max: list[float | None],
    present: list[bool] | None,
    rows: list[LayerStats],
) -> _NanSite | None:
    """The first place a non-finite value appears: forward, then loss, then backward."""
    for event, probe in zip(p.fwd, fwd_flags):
        if math.isfinite(probe):
            continue
        if event.where == "output":
            return _NanSite(
                "forward",
                event.name,
                f"{_label(event.name)} produced non-finite values (NaN/Inf) in its forward "
                "output from finite inputs",
            )
        if event.is_root or event.parent is None:
            return _NanSite(
                "inputs",
                "(inputs)",
                "the model's inputs already contain non-finite values (NaN/Inf)",
            )
        return _NanSite(
            "forward",
            event.parent,
            f"{_label(event.parent)} made non-finite values (NaN/Inf) in its own forward code "
            f"before passing them to {_label(event.name)}",
        )
    if loss is not None and not math.isfinite(loss):
        return _NanSite(
            "loss", "(loss)", f"the loss is {loss} although every module's output is finite"
        )
    for index, probe in zip(p.bwd, bwd_flags):
        if math.isfinite(probe):
            continue
        roles = p.bwd_roles[index]
        ins = [r for r in roles if r[0] == "in"]
        if ins:
            name = max(ins, key=lambda r: r[3])[1]
            return _NanSite(
                "backward",
                name,
                f"the backward of {_label(name)} turned a finite gradient at its output into a "
                "non-finite one (NaN/Inf) at its input",
            )
        outs = [r for r in roles if r[0] == "out"]
        deepest = max(outs, key=lambda r: r[3])
        if deepest[1] == "" or all(r[1] == "" for r in outs):
            return _NanSite(
                "loss",
                "(loss)",
                "the loss's gradient with respect to the model output is non-finite",
            )
        parent = deepest[2] if deepest[2] is not None else ""
        return _NanSite(
            "backward",
            parent,
            f"the gradient reaching the output of {_label(deepest[1])} is already non-finite: "
            f"code after it in {_label(parent)}'s forward made it",
        )
    if present is not None:
        # finite everywhere along the activations, yet a parameter's gradient is not
        layer_rows = {r.key: r for r in rows if r.kind == "layer"}
        bad = [i for i, g in enumerate(grad_max) if g is not None and not math.isfinite(g)]
        if bad:
            # backward visits layers in reverse forward order: the latest layer is first
            def order(i: int) -> int:
                name = mm.layers[mm.param_layer[i]].name or ROOT
                return layer_rows[name].order if name in layer_rows else 0

            i = max(bad, key=order)
            layer = mm.layers[mm.param_layer[i]].name
            return _NanSite(
                "backward", layer, f"the gradient of parameter {mm.param_names[i]} is non-finite"
            )
    return None


def _rms(row: LayerStats) -> float | None:
    if row.grad_norm is None or not row.numel:
        return None
    return row.grad_norm / math.sqrt(row.numel)


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _findings(
    samples: list[_StepSample], th: FlowThresholds, batch: int | None, comparable_keys: set[str]
) -> list[Finding]:
    """Findings from the last step (dead units and norms develop while training), plus the
    first non-finite value at whatever step it appeared."""
    out: list[Finding] = []
    last = samples[-1]
    first = samples[0]
    nan_sample = next((s for s in samples if s.nan is not None), None)
    multi = len(samples) > 1

    def at(s: _StepSample) -> str:
        return f" at step {s.step}" if multi else ""

    if nan_sample is not None:
        site = nan_sample.nan
        fix = {"backward": FIXES["nan_backward"], "inputs": FIXES["nan_inputs"]}.get(
            site.where, FIXES["nan"]
        )
        out.append(
            Finding(
                "nan",
                site.layer,
                site.message + at(nan_sample),
                fix,
                key=site.layer or ROOT,
                step=nan_sample.step,
                where=site.where,
            )
        )

    rows = last.rows
    first_rows = {r.key: r for r in first.rows}
    if last.nan is None:
        out.extend(_flow_findings(last, first if multi else None, th, comparable_keys))

    for r in rows:
        if r.kind != "activation":
            continue
        before = first_rows.get(r.key)
        if r.dead_fraction is not None and r.dead_fraction > th.dead_fraction:
            was = (
                f" (was {_pct(before.dead_fraction)} at step {first.step})"
                if multi and before is not None and before.dead_fraction is not None
                else ""
            )
            examples = f"all {batch} examples" if batch else "every example"
            out.append(
                Finding(
                    "dead_relu",
                    r.name,
                    f"{_pct(r.dead_fraction)} of the {r.units} {r.unit}s of {r.display_name} are "
                    f"dead: zero for {examples}{at(last)}{was}",
                    FIXES["dead_relu"],
                    key=r.key,
                    value=r.dead_fraction,
                    step=last.step,
                )
            )
        if r.saturated_fraction is not None and r.saturated_fraction > th.saturated_fraction:
            was = (
                f" (was {_pct(before.saturated_fraction)} at step {first.step})"
                if multi and before is not None and before.saturated_fraction is not None
                else ""
            )
            out.append(
                Finding(
                    "saturation",
                    r.name,
                    f"{_pct(r.saturated_fraction)} of the outputs of {r.display_name} "
                    f"({r.type}) sit within {th.saturation_margin:.0%} of an asymptote, where "
                    f"almost no gradient passes{at(last)}{was}",
                    FIXES["saturation"],
                    key=r.key,
                    value=r.saturated_fraction,
                    step=last.step,
                )
            )

    for layer, params, why in last.no_grad:
        out.append(
            Finding(
                "no_grad",
                layer,
                f"{', '.join(params)} receive{'s' if len(params) == 1 else ''} no gradient: "
                f"{why}{at(last)}",
                FIXES["no_grad"],
                key=layer or ROOT,
                step=last.step,
            )
        )

    rank = {k: i for i, k in enumerate(FINDING_KINDS)}
    return sorted(out, key=lambda f: rank[f.kind])


def _early_late(values: list[tuple[LayerStats, float]]) -> tuple[float, str, str] | None:
    """Geometric mean of the first quarter over the last quarter (at least one layer each)."""
    if len(values) < 2:
        return None
    k = max(1, len(values) // 4)
    early, late = values[:k], values[-k:]
    ratio = _geomean([v for _, v in early]) / _geomean([v for _, v in late])
    if k == 1:
        return ratio, _label(early[0][0].name), _label(late[0][0].name)
    names = ", ".join(_label(r.name) for r, _ in early)
    return ratio, f"the first {k} layers ({names})", f"the last {k}"


def _flow_findings(
    last: _StepSample, first: _StepSample | None, th: FlowThresholds, comparable_keys: set[str]
) -> list[Finding]:
    """vanishing / exploding for one step (at most one of each), `first` for the growth."""
    out: list[Finding] = []
    at = f" at step {last.step}" if first is not None else ""
    layers = [r for r in last.rows if r.kind == "layer"]
    compared = [r for r in layers if r.key in comparable_keys and not r.frozen]

    def finding(kind: str, row: LayerStats, message: str, value: float) -> Finding:
        return Finding(
            kind, row.name, message + at, FIXES[kind], key=row.key, value=value, step=last.step
        )

    # 1. the weight gradients, first layers against last (the tutorial's plot)
    weight_rms = [(r, v) for r in compared if (v := _rms(r)) and math.isfinite(v)]
    weights = _early_late(weight_rms)
    if weights is not None:
        ratio, head, tail = weights
        if ratio < th.vanishing_ratio:
            out.append(
                finding(
                    "vanishing",
                    weight_rms[0][0],
                    f"gradients vanish toward the input: the RMS gradient of {head} "
                    f"is {ratio:.1e}× that of {tail}",
                    ratio,
                )
            )
        elif ratio > th.exploding_ratio:
            out.append(
                finding(
                    "exploding",
                    weight_rms[0][0],
                    f"gradients grow toward the input: the RMS gradient of {head} is "
                    f"{ratio:.1e}× that of {tail}",
                    ratio,
                )
            )
    if any(f.kind == "exploding" for f in out):
        return out

    # 2. the backward signal (gradient at each layer's output): each layer amplifies it
    signal = [
        (r, r.output_grad_norm / math.sqrt(r.output_numel))
        for r in compared
        if r.output_grad_norm and r.output_numel and math.isfinite(r.output_grad_norm)
    ]
    grows = _early_late(signal)
    if grows is not None and grows[0] > th.exploding_ratio:
        ratio, head, tail = grows
        out.append(
            finding(
                "exploding",
                signal[0][0],
                f"the gradient flowing backward grows toward the input: at the output "
                f"of {head} it is {ratio:.1e}× (RMS) what it is at the output of "
                f"{tail}",
                ratio,
            )
        )
        return out

    # 3. huge: far larger than the loss's own gradient at the output, or overflowing
    overflow = [r for r in layers if r.grad_norm is not None and math.isinf(r.grad_norm)]
    if overflow:
        out.append(
            finding(
                "exploding",
                overflow[0],
                f"the gradient norm of {_label(overflow[0].name)} overflows to "
                "inf (its entries are finite but enormous)",
                math.inf,
            )
        )
        return out
    if last.loss_grad:
        gains = [(r, r.grad_norm / last.loss_grad) for r in layers if r.grad_norm]
        huge = [(r, g) for r, g in gains if g > th.exploding_gain]
        if huge:
            row, gain = max(huge, key=lambda x: x[1])
            out.append(
                finding(
                    "exploding",
                    row,
                    f"huge gradients: {_label(row.name)}'s gradient norm "
                    f"{row.grad_norm:.2e} is {gain:.1e}× the loss's gradient at the "
                    f"model output ({len(huge)} layer(s) above "
                    f"{th.exploding_gain:.0e}×)",
                    gain,
                )
            )
            return out

    # 4. over --steps: a gradient norm that grew by orders of magnitude
    if first is not None:
        before = {r.key: r for r in first.rows}
        grown = []
        for r in layers:
            a = before.get(r.key)
            if a is not None and a.grad_norm and r.grad_norm and math.isfinite(r.grad_norm):
                grown.append((r, r.grad_norm / a.grad_norm))
        grown = [(r, g) for r, g in grown if g > th.exploding_growth]
        if grown:
            row, g = max(grown, key=lambda x: x[1])
            out.append(
                finding(
                    "exploding",
                    row,
                    f"gradients explode during training: {_label(row.name)}'s "
                    f"gradient norm grew {g:.1e}× from step {first.step} to step "
                    f"{last.step}",
                    g,
                )
            )
    return out


def _comparable_keys(mm: _ModelMap) -> set[str]:
    """Rows whose RMS gradients are compared for vanishing/exploding: weight matrices, not
    embeddings (sparse by design) nor per-feature scales (norm layers, bias-only layers)."""
    return {
        layer.name or ROOT
        for layer in mm.layers
        if layer.matrix_like and not layer.sparse_by_design
    }


def _history(samples: list[_StepSample]) -> tuple[StepRecord, ...]:
    return tuple(
        StepRecord(
            s.step,
            s.loss,
            tuple(
                (
                    r.key,
                    RowSample(
                        r.grad_norm,
                        r.weight_norm,
                        r.max_abs_grad,
                        r.dead_fraction,
                        r.inactive_fraction,
                        r.saturated_fraction,
                    ),
                )
                for r in s.rows
            ),
        )
        for s in samples
    )


def _overfit(
    samples: list[_StepSample], loss_kind: str, th: FlowThresholds, requested: int
) -> OverfitVerdict | None:
    if requested < 2:
        return None
    losses = [s.loss for s in samples if s.loss is not None]
    if loss_kind == "projection":
        return OverfitVerdict(
            False,
            None,
            losses[0] if losses else None,
            losses[-1] if losses else None,
            min(losses) if losses else None,
            "not judged: without loss_fn the loss is a random projection of the output, which "
            "has no minimum; define loss_fn(output, *inputs) to run the overfit-one-batch check",
        )
    first, last = losses[0], losses[-1]
    finite = [x for x in losses if math.isfinite(x)]
    low = min(finite) if finite else None
    if not math.isfinite(last):
        bad = next(s.step for s in samples if s.loss is not None and not math.isfinite(s.loss))
        return OverfitVerdict(
            True, False, first, last, low, f"the loss became non-finite at step {bad}: lower --lr"
        )
    if first <= 0:
        return OverfitVerdict(
            False,
            None,
            first,
            last,
            low,
            f"not judged: the loss starts at {first:.3g}, not above zero",
        )
    n = len(samples)
    if last <= max(th.overfit_absolute, th.overfit_fraction * first):
        return OverfitVerdict(
            True,
            True,
            first,
            last,
            low,
            f"the loss went from {first:.3g} to {last:.3g} in {n} steps: the "
            "model can overfit one batch",
        )
    if last < first:
        return OverfitVerdict(
            True,
            False,
            first,
            last,
            low,
            f"the loss went from {first:.3g} to {last:.3g} ({last / first:.0%} of the start) in "
            f"{n} steps, not near zero: train longer (--steps) or raise --lr; a model that "
            "cannot memorize one batch has a bug (targets, a cut graph, a frozen layer) or too "
            "little capacity",
        )
    return OverfitVerdict(
        True,
        False,
        first,
        last,
        low,
        f"the loss did not fall ({first:.3g} → {last:.3g} in {n} steps): lower --lr if it "
        "rose, raise it if it stalled; check that the loss depends on the parameters",
    )


# --- flow(): one look, or a few training steps, on a copy ------------------------------------


def _clone_inputs(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple):
        return tuple(_clone_inputs(v) for v in value)
    if isinstance(value, list):
        return [_clone_inputs(v) for v in value]
    if isinstance(value, dict):
        return {k: _clone_inputs(v) for k, v in value.items()}
    return value


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        items = [_to_device(v, device) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    items = value.values() if isinstance(value, dict) else value
    if isinstance(value, (tuple, list, dict)):
        for v in items:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _first_floating(model: nn.Module) -> torch.Tensor | None:
    """The model's first floating parameter or buffer: where it lives and in what dtype."""
    return next((t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()), None)


def _home_device(model: nn.Module) -> torch.device | None:
    """The model's device (None without a floating tensor, or when the first is on meta)."""
    t = _first_floating(model)
    return None if t is None or t.device.type == "meta" else t.device


def _model_dtype_device(model: nn.Module) -> tuple[str, torch.device]:
    t = _first_floating(model)
    if t is not None:
        return str(t.dtype).replace("torch.", ""), t.device
    return str(torch.get_default_dtype()).replace("torch.", ""), torch.device("cpu")


def flow(
    model: nn.Module,
    inputs: Any,
    *,
    loss_fn: Callable[..., Any] | None = None,
    steps: int = 1,
    lr: float | None = None,
    optimizer: str = "sgd",
    seed: int = 0,
    thresholds: FlowThresholds | None = None,
    functional: bool = True,
    name: str | None = None,
    found_by: str = "passed to flow()",
) -> FlowReport:
    """Gradient flow of `model` on one batch: per-layer norms, dead/saturated activations,
    the first NaN, and findings with fixes.

    `inputs` is a tensor, a tuple/list (positional) or a dict (keyword arguments). Without
    `loss_fn(output, *inputs)` the loss is a seeded random projection of the output. With
    `steps` > 1 a copy trains that many steps on the batch (`optimizer` "sgd" | "adam").
    The model, its train mode and the RNG state are left as they were.
    """
    args, kwargs = normalize_inputs(inputs)
    return run_flow(
        model,
        args,
        kwargs,
        loss_fn=loss_fn,
        steps=steps,
        lr=lr,
        optimizer=optimizer,
        seed=seed,
        thresholds=thresholds,
        functional=functional,
        target=name or type(model).__name__,
        found_by=found_by,
    )


def run_flow(
    model: nn.Module,
    args: tuple,
    kwargs: dict,
    *,
    loss_fn: Callable[..., Any] | None = None,
    steps: int = 1,
    lr: float | None = None,
    optimizer: str = "sgd",
    seed: int = 0,
    thresholds: FlowThresholds | None = None,
    functional: bool = True,
    target: str = "model",
    found_by: str = "",
    folder: Path | None = None,
    device: str | torch.device | None = None,
) -> FlowReport:
    """flow() on inputs already split into (args, kwargs); the CLI's entry point.

    `device` moves the copy and the inputs (default: where the model already lives)."""
    if not isinstance(model, nn.Module):
        what = f"the class {model.__name__}" if isinstance(model, type) else type(model).__name__
        raise InputError(
            f"gradtool flow needs an nn.Module (layers to measure); got {what}",
            hint="For a function or autograd.Function, `gradtool check` verifies its gradients.",
        )
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive integer; got {steps!r}")
    optimizer = optimizer.lower()
    if optimizer not in OPTIMIZERS:
        raise InputError(f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    lr = DEFAULT_LR[optimizer] if lr is None else float(lr)
    if not lr > 0:
        raise InputError(f"the learning rate must be positive; got {lr}")
    th = thresholds or FlowThresholds()
    started = time.perf_counter()
    move_model = device is not None
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError):
            raise InputError(f"unknown device {device!r}; use e.g. cpu or cuda") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"cannot use device {device}: CUDA is not available here")
    else:
        # the inputs go where the model lives (as `check` does), e.g. a model built on the
        # GPU with example inputs (or --input-shape tensors) made on the CPU
        device = _home_device(model)
    # initialized before the RNG state is captured, so that CUDA's is seeded and restored
    init_cuda(device)

    with preserved_state():
        RngState.seeded(seed).restore()
        torch.set_grad_enabled(True)
        try:
            work = copy.deepcopy(model)
        except Exception as exc:
            raise UserCodeError(
                f"could not copy the model ({type(exc).__name__}: {exc})",
                hint="gradtool flow measures a deep copy so that your model is left untouched.",
            ) from None
        work.train()
        if device is not None:
            try:
                if move_model:
                    work.to(device)
                args, kwargs = _to_device((args, kwargs), device)
            except (RuntimeError, AssertionError) as exc:  # e.g. CUDA not available
                raise InputError(f"cannot use device {device}: {exc}") from None
        model_dtype, model_device = _model_dtype_device(work)
        samples, warnings, comparable = _train_and_measure(
            work,
            args,
            kwargs,
            loss_fn=loss_fn,
            steps=steps,
            lr=lr,
            optimizer=optimizer,
            seed=seed,
            th=th,
            functional=functional,
            folder=folder,
        )

    first = _first_tensor((args, kwargs))
    batch = int(first.shape[0]) if first is not None and first.dim() >= 1 else None
    loss_kind = "loss_fn" if loss_fn is not None else "projection"
    if len(samples) < steps:
        warnings.append(f"stopped after step {len(samples)} of {steps}: non-finite values")
    return FlowReport(
        target=target,
        version=__version__,
        layers=tuple(samples[-1].rows),
        findings=tuple(_findings(samples, th, batch, comparable)),
        found_by=found_by,
        source="flow",
        dtype=model_dtype,
        device=str(model_device),
        mode="train",
        batch_size=batch,
        loss=loss_kind,
        steps=len(samples),
        steps_requested=steps,
        optimizer=optimizer if steps > 1 else None,
        lr=lr if steps > 1 else None,
        history=_history(samples) if steps > 1 else (),
        overfit=_overfit(samples, loss_kind, th, steps),
        warnings=tuple(warnings),
        seconds=time.perf_counter() - started,
    )


def _train_and_measure(
    work: nn.Module,
    args: tuple,
    kwargs: dict,
    *,
    loss_fn: Callable[..., Any] | None,
    steps: int,
    lr: float,
    optimizer: str,
    seed: int,
    th: FlowThresholds,
    functional: bool,
    folder: Path | None,
) -> tuple[list[_StepSample], list[str], set[str]]:
    mm = _ModelMap(work)
    _, device = _model_dtype_device(work)
    recorder = _Recorder(mm, functional=functional)
    recorder.saturation_margin = th.saturation_margin
    trainable = [p for p in mm.params if p.requires_grad]
    opt = None
    if steps > 1 and trainable:
        opt = (
            torch.optim.SGD(trainable, lr=lr)
            if optimizer == "sgd"
            else torch.optim.Adam(trainable, lr=lr)
        )
    projection: ProjectionLoss | None = None
    samples: list[_StepSample] = []
    warnings: list[str] = []
    try:
        for step in range(1, steps + 1):
            for p in mm.params:
                p.grad = None
            step_args, step_kwargs = _clone_inputs(args), _clone_inputs(kwargs)
            recorder.begin()
            recorder.attach()
            try:
                recorder._guard(recorder.on_pre, work, step_args, step_kwargs)
                recorder.sync_mode()
                output = work(*step_args, **step_kwargs)
            except GradtoolError:
                raise
            except Exception as exc:
                where = (
                    f" in {_label(recorder.failed_in)}" if recorder.failed_in is not None else ""
                )
                raise UserCodeError(
                    f"the model's forward raised{where}: {describe_exception(exc, folder)}"
                ) from exc
            finally:
                recorder.exit_mode()
                recorder.detach_modules()
                recorder.end_forward()

            if loss_fn is not None:
                try:
                    terms = _terms_of(loss_fn(output, *step_args, **step_kwargs))
                except GradtoolError:
                    raise
                except Exception as exc:
                    raise UserCodeError(
                        f"loss_fn(output, *inputs) raised {describe_exception(exc, folder)}"
                    ) from exc
                loss = torch.stack([t.reshape(()) for t in terms.values()]).sum()
            else:
                if projection is None:
                    leaves = [t for _, t in floating_leaves(output)]
                    dtype = leaves[0].dtype if leaves else torch.float32
                    projection = ProjectionLoss(output, seed, dtype)
                loss = projection(output, step_args, step_kwargs).reshape(())

            if loss.requires_grad:
                try:
                    loss.backward()
                except Exception as exc:
                    raise UserCodeError(
                        f"backward raised {describe_exception(exc, folder)}"
                    ) from exc
            recorder.measure_grads([p.grad for p in mm.params])
            pending = recorder.collect(step, loss)
            _read_back([pending])  # the one host transfer of this step
            sample = _resolve_step(pending, mm)
            samples.append(sample)
            if sample.nan is not None:
                break  # after a NaN every later step only repeats it
            if opt is not None and step < steps:
                opt.step()
    finally:
        recorder.close()
        for p in mm.params:
            p.grad = None
    if not any(p.requires_grad for p in mm.params) and mm.params:
        warnings.append("every parameter is frozen (requires_grad=False)")
    warnings.extend(recorder.errors)
    return samples, warnings, _comparable_keys(mm)


# --- Monitor: the user's own training loop ---------------------------------------------------


class Monitor:
    """Watch gradient flow while your own loop trains `model`.

        with gradcheck_tool.Monitor(model, every=10) as mon:
            for x, y in loader:
                opt.zero_grad()
                loss_fn(model(x), y).backward()
                opt.step()
        print(mon.report()["findings"])

    A step is one call of `model` with grad enabled (calls under torch.no_grad(), e.g.
    validation, are not counted). On every `every`-th step the monitor attaches its hooks for
    that forward and backward only; on the other steps a single forward pre-hook on the model
    counts the call and returns. Measurements stay on the device and are read back at
    `report()` (at most one transfer per recorded step). Each parameter's gradient is measured
    as the backward produces it (the gradient of this step, before any accumulation), the
    weights as the model is called. On exit the model has no hook left from the monitor.
    """

    def __init__(
        self,
        model: nn.Module,
        every: int = 1,
        *,
        functional: bool = True,
        check_finite: bool = True,
        thresholds: FlowThresholds | None = None,
        name: str | None = None,
        flush_every: int = 64,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"Monitor needs an nn.Module; got {type(model).__name__}")
        if not isinstance(every, int) or every < 1:
            raise InputError(f"every must be a positive integer; got {every!r}")
        self.model = model
        self.every = every
        self.thresholds = thresholds or FlowThresholds()
        self.name = name or type(model).__name__
        self.flush_every = flush_every
        self._functional = functional
        self._check_finite = check_finite
        self._mm: _ModelMap | None = None
        self._recorder: _Recorder | None = None
        self._root_handles: list[Any] = []
        self._steps: list[_PendingStep] = []  # every recorded step, read back or not
        self._samples: list[_StepSample] = []  # the first len() of them, resolved
        self._steps_seen = 0
        self._recording: int | None = None  # the step whose forward/backward is being recorded
        self._in_forward = False
        self._device = torch.device("cpu")
        self._active = False
        self._started = 0.0
        self._errors: list[str] = []

    # context manager
    def __enter__(self) -> Monitor:
        if self._active:
            raise InputError("this Monitor is already active")
        self._mm = _ModelMap(self.model)
        _, self._device = _model_dtype_device(self.model)
        self._recorder = _Recorder(
            self._mm,
            functional=self._functional,
            check_finite=self._check_finite,
            hook_param_grads=True,
        )
        self._recorder.saturation_margin = self.thresholds.saturation_margin
        self._recorder.on_root_return = self._on_model_return
        self._root_handles.append(
            self.model.register_forward_pre_hook(self._on_model_call, with_kwargs=True)
        )
        self._active = True
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._in_forward:  # left from inside the model's forward
                self._on_model_return(None)
            self._finish_step()
        finally:
            self._active = False
            while self._root_handles:
                self._root_handles.pop().remove()
            if self._recorder is not None:
                self._errors.extend(e for e in self._recorder.errors if e not in self._errors)
                self._recorder.close()

    @property
    def steps_seen(self) -> int:
        return self._steps_seen

    @property
    def steps_recorded(self) -> int:
        return len(self._steps)

    # hooks on the user's model
    def _on_model_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._in_forward or not torch.is_grad_enabled():
            return  # a nested call of the model, or an inference/validation call
        self._finish_step()
        self._steps_seen += 1
        if (self._steps_seen - 1) % self.every:
            return
        rec = self._recorder
        self._recording = self._steps_seen
        self._in_forward = True
        rec.begin()
        # this call of the model has begun: the recorder's global hooks see the modules
        # inside it, and the model itself is entered by hand (with its keyword arguments)
        rec.attach()
        rec._guard(rec.on_pre, module, args, kwargs)
        rec.sync_mode()

    def _on_model_return(self, output: Any) -> None:
        rec = self._recorder
        rec.exit_mode()
        rec.detach_modules()
        rec.end_forward()
        self._in_forward = False
        if output is None:  # the forward raised: nothing to record for this step
            rec.detach_tensors()
            rec.begin()
            self._recording = None

    def _finish_step(self) -> None:
        if self._recording is None:
            return
        step, self._recording = self._recording, None
        self._steps.append(self._recorder.collect(step, None))
        unread = len(self._steps) - len(self._samples)
        if unread >= self.flush_every:  # bound the device memory held by unread steps
            _read_back(self._steps[len(self._samples) :])

    # results
    def flow_report(self) -> FlowReport:
        """What was measured so far, as a FlowReport (history: every recorded step)."""
        if self._mm is None:
            raise InputError("the Monitor has not been entered: use `with Monitor(model) as mon:`")
        if self._recording is not None and not self._in_forward and self._recorder.grads_seen:
            self._finish_step()  # the last step's backward has run: include it
        new = self._steps[len(self._samples) :]
        _read_back(new)  # one transfer for every step not read back yet
        self._samples.extend(_resolve_step(p, self._mm) for p in new)
        samples = self._samples
        th = self.thresholds
        dtype, device = _model_dtype_device(self.model)
        warnings = list(self._errors)
        if self._recorder is not None:
            warnings.extend(e for e in self._recorder.errors if e not in warnings)
        if not samples:
            warnings.append(
                "no step recorded yet: call the model (with grad enabled) inside the `with` block"
            )
        return FlowReport(
            target=self.name,
            version=__version__,
            layers=tuple(samples[-1].rows) if samples else (),
            findings=(
                tuple(_findings(samples, th, None, _comparable_keys(self._mm))) if samples else ()
            ),
            found_by="Monitor",
            source="monitor",
            dtype=dtype,
            device=str(device),
            mode="train" if self.model.training else "eval",
            loss="user",
            steps=len(samples),
            steps_requested=len(samples),
            every=self.every,
            steps_seen=self._steps_seen,
            history=_history(samples),
            warnings=tuple(warnings),
            seconds=time.perf_counter() - self._started,
        )

    def report(self) -> dict[str, Any]:
        """The same dict as `gradtool flow --json`, plus the per-step history."""
        return self.flow_report().to_dict()


__all__ = [
    "ACTIVATIONS",
    "ActivationSpec",
    "FIXES",
    "FlowThresholds",
    "Monitor",
    "activation_for_function",
    "activation_for_module",
    "flow",
    "run_flow",
]
