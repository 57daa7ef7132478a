"""The hooks for one model: forward and backward of one step, measured on the device.

Every handle lives in a side table and is removed in `finally` by the caller (`close()`);
nothing is set on the user's modules or parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)
from torch.nn.parameter import is_lazy
from torch.overrides import TorchFunctionMode

from .activations import (
    FUNCTION_NAMES,
    ActivationSpec,
    activation_for_function,
    saturation_bounds,
)
from .model_map import CHANNEL_FIRST, Layer, ModelMap
from .samples import ROOT
from .step import (
    ACTIVATION_COUNTS,
    BACKWARD_PROBES,
    BACKWARD_SQ,
    FORWARD_PROBES,
    GRAD_MAX,
    GRAD_MIN,
    GRAD_PRESENT,
    GRAD_SQ,
    LOSS,
    SATURATION_COUNTS,
    UNIT_MASKS,
    WEIGHT_SQ,
    PendingStep,
    pack,
)
from .tensor_stats import (
    dense,
    extremes,
    finite_probe,
    floating,
    grad_accumulator,
    local,
    sq_norm,
)
from .thresholds import SATURATION_MARGIN

if TYPE_CHECKING:
    from .distributed import RankContext


@dataclass
class ActCall:
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


class FwdEvent(NamedTuple):
    where: str  # "input" | "output"
    name: str
    parent: str | None  # the module on the stack when it happened (None: outside the model)
    is_root: bool


@dataclass
class StepState:
    """What the recorder gathers during one step; `Recorder.begin()` makes a fresh one."""

    n_params: int
    order: int = 0  # modules and activations called so far: the rows' forward order
    stack: list[nn.Module] = field(default_factory=list)  # modules whose forward is running
    layer_order: dict[int, int] = field(default_factory=dict)  # layer index -> first call
    layer_calls: dict[int, int] = field(default_factory=dict)
    unit_layout: str | None = None  # "channel" | "feature": the last layer's output
    acts: list[ActCall] = field(default_factory=list)
    act_counts: list[torch.Tensor] = field(default_factory=list)
    # a distributed recorder's instead (Note [reducing a step across ranks] in step.py)
    unit_masks: list[torch.Tensor] = field(default_factory=list)
    saturation_counts: list[torch.Tensor] = field(default_factory=list)
    backward_end_queued: bool = False  # distributed: the end-of-backward reading is queued
    fwd: list[FwdEvent] = field(default_factory=list)
    fwd_flags: list[torch.Tensor] = field(default_factory=list)
    bwd_roles: list[list[tuple]] = field(default_factory=list)
    bwd: list[int] = field(default_factory=list)
    bwd_flags: list[torch.Tensor] = field(default_factory=list)
    bwd_norms: list[torch.Tensor] = field(default_factory=list)
    bwd_norm_at: list[int] = field(default_factory=list)  # which entries of bwd have a norm
    bwd_wants_norm: list[bool] = field(default_factory=list)
    bwd_numel: list[int] = field(default_factory=list)
    failed_in: str | None = None
    # (id, version) of every tensor seen this forward; holding the tensor keeps its id
    # from being reused while the forward runs. Cleared when the forward ends.
    checked: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    hooked: dict[tuple[int, int], list] = field(default_factory=dict)  # key -> [index, t, hooked?]
    # per parameter, as 0-d device tensors: weight norm; gradient norm, min and max
    wn: list[torch.Tensor | None] = field(init=False)
    gn: list[torch.Tensor | None] = field(init=False)
    glo: list[torch.Tensor | None] = field(init=False)
    ghi: list[torch.Tensor | None] = field(init=False)
    grads_seen: bool = False

    def __post_init__(self) -> None:
        n = self.n_params
        self.wn, self.gn, self.glo, self.ghi = [None] * n, [None] * n, [None] * n, [None] * n


class Recorder:
    """The hooks for one model. `begin()` → forward → `end_forward()` → backward → `collect()`.

    The same recorder serves `flow()` (on a copy) and `Monitor` (on the user's model, hooks
    attached for recorded steps only). While the forward runs, two global module hooks (one
    pre, one post) see every module call; calls of modules outside this model are ignored.
    The model's own root module is entered by hand (`on_pre`), so that its keyword arguments
    are seen too.
    """

    def __init__(
        self,
        mm: ModelMap,
        *,
        functional: bool = True,
        check_finite: bool = True,
        hook_param_grads: bool = False,
        ranks: RankContext | None = None,
    ) -> None:
        self.mm = mm
        self.hook_param_grads = hook_param_grads
        # in a distributed job (distributed.py): gradients read once the backward is complete
        # (after DDP's all-reduce, FSDP's reduce-scatter), activations as per-unit masks
        self.ranks = ranks
        self._neutral: dict[torch.device, tuple[torch.Tensor, ...]] = {}
        self.functional = functional
        self.check_finite = check_finite
        self.saturation_margin = SATURATION_MARGIN
        self.module_handles: list[Any] = []
        self.tensor_handles: list[Any] = []
        self.errors: list[str] = []
        self.mode: ActivationCalls | None = None
        # AccumulateGrad node of each parameter (and its hook), looked up once, kept while hooked
        self.grad_nodes: dict[int, tuple[Any, Callable[[tuple], None]]] = {}
        self.on_root_return: Callable[[Any], None] | None = None
        self.begin()

    def begin(self) -> None:
        """A new step: nothing measured yet."""
        self.state = StepState(len(self.mm.params))

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
            self.mode = ActivationCalls(self)
            self.mode.__enter__()

    def exit_mode(self) -> None:
        if self.mode is not None:
            mode, self.mode = self.mode, None
            mode.__exit__(None, None, None)

    def measure_weights(self, indices: Sequence[int]) -> None:
        params, wn = self.mm.params, self.state.wn
        for i in indices:
            wn[i] = sq_norm(local(params[i].detach()))  # detached: no graph

    def measure_grads(self, grads: list[torch.Tensor | None]) -> None:
        """Statistics of the gradients as they stand (flow(): p.grad after the backward)."""
        st = self.state
        indices = [i for i, g in enumerate(grads) if g is not None]
        dense_grads = [dense(local(grads[i])).detach() for i in indices]
        for i, g in zip(indices, dense_grads):
            st.gn[i] = sq_norm(g)
            st.glo[i], st.ghi[i] = shard_extremes(g) if self.ranks else extremes(g)
        st.grads_seen = True

    def _every_parameter(self, st: StepState) -> dict[str, list[torch.Tensor]]:
        """Distributed: the gradient segments with a number for every parameter, neutral
        where this rank has no gradient, and the GRAD_PRESENT flags (the same layout on
        every rank, whichever ranks hold a parameter's gradient)."""
        like = next((w for w in st.wn if w is not None), None)
        device = like.device if like is not None else torch.device("cpu")
        neutral = self._neutral.get(device)
        if neutral is None:  # made once: no allocation per step
            neutral = self._neutral[device] = tuple(
                torch.tensor(v, dtype=torch.float64, device=device)
                for v in (0.0, math.inf, -math.inf, 1.0)
            )
        zero, inf, minus_inf, one = neutral
        return {
            GRAD_SQ.name: [zero if v is None else v for v in st.gn],
            GRAD_MIN.name: [inf if v is None else v for v in st.glo],
            GRAD_MAX.name: [minus_inf if v is None else v for v in st.ghi],
            GRAD_PRESENT.name: [zero if v is None else one for v in st.gn],
        }

    def _queue_backward_end(self, st: StepState) -> None:
        """Distributed: read the gradients when the backward is complete. Callbacks queued
        while the backward runs (DDP's and FSDP's, which wait for their collectives and write
        .grad) run in order at its end; ours queues a second one from there, which runs after
        all of them."""
        st.backward_end_queued = True
        engine = torch.autograd.Variable._execution_engine
        engine.queue_callback(lambda: engine.queue_callback(partial(self._backward_end, st)))

    def _backward_end(self, st: StepState) -> None:
        """The true gradients of this step: .grad after the wrappers' collectives (each rank's
        shard of an FSDP one); combined across ranks with the rest of the step."""

        def measure() -> None:
            params = self.mm.params
            self.measure_grads([p.grad if p.requires_grad else None for p in params])
            for i, g in enumerate(st.gn):
                if g is not None and st.wn[i] is None:
                    st.wn[i] = sq_norm(local(params[i].detach()))

        if st is self.state:
            self._guard(measure)

    def _hook_grads(self, layer: Layer) -> None:
        """Monitor: read each parameter's gradient the moment the backward produces it, while
        it is still in cache, from a pre-hook on its AccumulateGrad node (nothing is put on
        the parameter itself)."""
        if self.ranks is not None:
            return  # distributed: read when the backward is complete (_backward_end)
        for i in layer.param_index:
            p = self.mm.params[i]
            if not p.requires_grad or is_lazy(p):
                continue  # (a lazy module's parameter is shaped by this forward: not yet)
            entry = self.grad_nodes.get(i)
            if entry is None:  # looked up once: the node and the bound hook for parameter i
                entry = self.grad_nodes[i] = (grad_accumulator(p), partial(self._on_param_grad, i))
            if entry[0] is not None:
                self.tensor_handles.append(entry[0].register_prehook(entry[1]))

    def _on_param_grad(self, i: int, grads: tuple) -> None:
        try:
            g = grads[0] if grads else None
            if g is None:
                return
            st = self.state
            g = dense(g).detach()
            st.gn[i] = sq_norm(g)
            st.glo[i], st.ghi[i] = extremes(g)
            if st.wn[i] is None:  # the weights were just read by this backward: in cache
                st.wn[i] = sq_norm(self.mm.params[i].detach())
            st.grads_seen = True
        except Exception as exc:  # pragma: no cover - defensive
            self._internal(exc)

    def end_forward(self) -> None:
        st = self.state
        if self.hook_param_grads:
            # a layer whose module never ran may still have its parameters used directly
            # (nn.MultiheadAttention reads out_proj.weight without calling out_proj): its
            # gradients are read as they arrive too, or it would look cut off
            for layer in self.mm.layers:
                if layer.index not in st.layer_calls and layer.param_index:
                    self._guard(self._hook_grads, layer)
        st.checked.clear()
        st.hooked.clear()
        st.stack.clear()

    # the hooks themselves; an internal error must never break the user's forward
    def _internal(self, exc: Exception) -> None:  # pragma: no cover - defensive
        if len(self.errors) < 5:
            self.errors.append(f"gradtool internal error in a hook: {type(exc).__name__}: {exc}")

    def enter_root(self, args: tuple, kwargs: dict) -> None:
        """The model's own call has begun: entered by hand, so that its keyword arguments
        are seen too (the global pre-hook skips the root)."""
        self._guard(self.on_pre, self.mm.root, args, kwargs)
        self.sync_mode()

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
        stack = self.state.stack
        want = self.functional and bool(stack) and self.mm.runs_user_code[id(stack[-1])]
        if want and self.mode is None:
            self.enter_mode()
        elif not want and self.mode is not None:
            self.exit_mode()

    def on_pre(self, module: nn.Module, args: tuple, kwargs: dict | None) -> None:
        st = self.state
        if id(module) not in self.mm.wrappers:
            st.order += 1
        name, depth, _, layer = self.mm.info[id(module)]
        if module is self.mm.root and not self.hook_param_grads:
            # every weight norm, before anything changes them (the Monitor measures each
            # parameter in its gradient hook instead, where the weights are in cache)
            self.measure_weights(range(len(self.mm.params)))
        if layer is not None:
            calls = st.layer_calls[layer.index] = st.layer_calls.get(layer.index, 0) + 1
            if calls == 1:
                st.layer_order[layer.index] = st.order
                if self.hook_param_grads:
                    self._hook_grads(layer)
        parent = self.mm.names[id(st.stack[-1])] if st.stack else None
        role = ("in", name, parent, depth, False)
        for t in floating(args):
            self._watch(t, role, module, "input", parent)
        if kwargs:
            for t in floating(kwargs):
                self._watch(t, role, module, "input", parent)
        st.stack.append(module)

    def on_post(self, module: nn.Module, output: Any) -> None:
        st = self.state
        stack = st.stack
        if stack and stack[-1] is module:
            stack.pop()
        elif module in stack:  # unwinding after an exception in a child
            while stack.pop() is not module:
                pass
        name, depth, spec, layer = self.mm.info[id(module)]
        if output is None:  # the forward raised (always_call): note where, innermost first
            if st.failed_in is None:
                st.failed_in = name
            return
        if layer is not None:
            st.unit_layout = "channel" if isinstance(module, CHANNEL_FIRST) else "feature"
        parent = self.mm.names[id(stack[-1])] if stack else None
        leaves = floating(output)
        if spec is not None and leaves:
            base = name or ROOT
            if layer is not None:  # e.g. PReLU: a layer row already has this name
                base = f"{base}:{spec.name}"
            bounds = saturation_bounds(spec, module, (), {})
            self._measure(leaves[0], spec, name, self.mm.type_names[id(module)], None, base, bounds)
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
        st = self.state
        key = (id(t), t._version)
        if self.check_finite and key not in st.checked:
            st.checked[key] = t
            if probe:
                st.fwd_flags.append(finite_probe(t.detach()))
                st.fwd.append(FwdEvent(where, role[1], parent, module is self.mm.root))
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
        entry = st.hooked.get(key)
        if entry is None:
            index = len(st.bwd_roles)
            st.bwd_roles.append([role])
            st.bwd_numel.append(t.numel())
            st.bwd_wants_norm.append(role[4])
            entry = st.hooked[key] = [index, t, False]
        else:
            st.bwd_roles[entry[0]].append(role)
            if role[4]:
                st.bwd_wants_norm[entry[0]] = True
        if needed and not entry[2]:
            # a pre-hook on the node that made this version of `t` receives dL/dt: the same
            # gradient a tensor hook would, registered more cheaply
            entry[2] = True
            hook = partial(self._on_node_grad, entry[0], t.output_nr)
            self.tensor_handles.append(t.grad_fn.register_prehook(hook))

    def on_functional(
        self, func: Any, spec: ActivationSpec, args: tuple, kwargs: dict, out: Any
    ) -> None:
        stack = self.state.stack
        owner = stack[-1] if stack else self.mm.root
        if self.mm.specs.get(id(owner)) is not None:
            return  # nn.ReLU.forward calling F.relu: the module's own hook measures it
        if not isinstance(out, torch.Tensor):
            return
        name = self.mm.name(owner)
        bounds = saturation_bounds(spec, None, args, kwargs)
        via = FUNCTION_NAMES.get(func, getattr(func, "__name__", str(func)))
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
        st = self.state
        st.order += 1
        if y.dim() == 0 or not y.is_floating_point() or y.numel() == 0:
            return
        # a unit is a channel of a conv map (dim 1), otherwise a feature (last dim); a 1-D
        # output is a single example, each element its own unit
        if y.dim() == 1:
            unit_dim, unit = 0, "element"
        elif st.unit_layout == "channel" or (st.unit_layout is None and y.dim() >= 4):
            unit_dim, unit = 1, "channel"
        else:
            unit_dim, unit = y.dim() - 1, "feature"
        counts = st.act_counts
        masks = self.ranks is not None  # per-unit masks, combined across ranks before counting
        fields: list[str] = []
        # one reduction over the batch per statistic: a unit is alive when its largest |output|
        # is not 0, active when its largest output is ≥ 0 (counted on the device)
        dims = tuple(d for d in range(y.dim()) if d != unit_dim)
        dims = dims[0] if len(dims) == 1 else dims
        y = y.detach()
        if spec.dead == "zero":
            peak = y if spec.nonnegative else y.abs()
            peak = peak.amax(dim=dims) if dims != () else peak
            if masks:  # 1 where the unit fired
                st.unit_masks.append((peak != 0).to(torch.int64))
            else:
                counts.append(torch.count_nonzero(peak))
            fields.append("alive")
        elif spec.dead == "negative":
            peak = y.amax(dim=dims) if dims != () else y
            if masks:  # 1 where the unit was ever ≥ 0 (or NaN, as a count would leave it)
                st.unit_masks.append((peak < 0).logical_not_().to(torch.int64))
            else:
                counts.append(torch.count_nonzero(peak < 0))
            fields.append("inactive")
        if bounds is not None:
            lo, hi = bounds
            if lo is not None and hi is not None:
                # |y - centre| ≥ half-range - margin: within the margin of either asymptote
                centre, half = (lo + hi) / 2, (hi - lo) / 2
                edge = half - self.saturation_margin * (hi - lo)
                saturated = torch.count_nonzero((y - centre).abs_() >= edge)
            elif hi is not None:
                saturated = torch.count_nonzero(y >= hi - self.saturation_margin * abs(hi))
            else:
                saturated = torch.count_nonzero(y <= lo + self.saturation_margin * abs(lo))
            if masks:  # with its total: the ranks' batches may differ in size
                total = torch.full((), y.numel(), dtype=torch.int64, device=y.device)
                st.saturation_counts.extend((saturated, total))
            else:
                counts.append(saturated)
            fields.append("saturated")
        if fields:
            st.acts.append(
                ActCall(
                    name,
                    type_name,
                    spec,
                    via,
                    st.order,
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
            st = self.state
            if self.ranks is not None and self.hook_param_grads and not st.backward_end_queued:
                self._queue_backward_end(st)  # (flow() reads .grad after backward() itself)
            grad = grad.detach()
            st.bwd.append(index)
            if st.bwd_wants_norm[index]:
                # a layer's output: the size of the backward signal, which doubles as the
                # NaN/Inf probe (see sq_norm about overflow)
                norm = sq_norm(grad)
                st.bwd_norm_at.append(len(st.bwd) - 1)
                st.bwd_norms.append(norm)
                st.bwd_flags.append(norm)
            else:
                st.bwd_flags.append(finite_probe(grad))
        except Exception as exc:  # pragma: no cover - defensive
            self._internal(exc)

    def collect(self, step: int, loss: torch.Tensor | None) -> PendingStep:
        """Everything measured this step as ONE device vector, plus the host-side layout."""
        st = self.state
        missing = [i for i, w in enumerate(st.wn) if w is None]  # layers that never ran
        if missing:
            self.measure_weights(missing)
        grads = {
            GRAD_SQ.name: [v for v in st.gn if v is not None],
            GRAD_MIN.name: [v for v in st.glo if v is not None],
            GRAD_MAX.name: [v for v in st.ghi if v is not None],
        }
        present = [g is not None for g in st.gn] if st.grads_seen else None
        if self.ranks is not None and st.grads_seen:
            grads, present = self._every_parameter(st), [True] * len(st.gn)
        layout, parts = pack(
            {
                LOSS.name: [loss.detach().reshape(())] if loss is not None else [],
                WEIGHT_SQ.name: st.wn,
                **grads,
                FORWARD_PROBES.name: st.fwd_flags,
                BACKWARD_PROBES.name: st.bwd_flags,
                BACKWARD_SQ.name: st.bwd_norms,
                ACTIVATION_COUNTS.name: st.act_counts,
                UNIT_MASKS.name: st.unit_masks,
                SATURATION_COUNTS.name: st.saturation_counts,
            }
        )
        pending = PendingStep(
            step=step,
            layout=layout,
            parts=parts,
            grads_present=present,
            acts=st.acts,
            fwd=st.fwd,
            bwd_roles=st.bwd_roles,
            bwd=st.bwd,
            bwd_norm_at=st.bwd_norm_at,
            bwd_numel=st.bwd_numel,
            layer_order=st.layer_order,
            layer_calls=st.layer_calls,
            distributed=self.ranks is not None,
        )
        self.detach_tensors()
        self.begin()
        return pending


def shard_extremes(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A shard's (min, max); an empty shard (FSDP pads a small tensor's last ranks) is
    (+inf, -inf), which the MIN/MAX across ranks leaves out."""
    if g.numel():
        return extremes(g)
    inf = g.new_full((), math.inf, dtype=g.real.dtype if g.is_complex() else g.dtype)
    return inf, -inf


class ActivationCalls(TorchFunctionMode):
    """Active only while the model's forward runs: measures functional activations."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        spec = activation_for_function(func)
        if spec is not None:
            self.recorder._guard(self.recorder.on_functional, func, spec, args, kwargs, out)
        return out
