"""What one forward (and the loss) tells the graph: which module made each autograd node,
and where the forward cut the gradient's path.

While the forward runs: a global module forward pre-hook and forward hook (modules outside
the model ignored) keep the stack of running modules, and a `TorchFunctionMode` sees every
torch call: the `grad_fn` of each output is attributed to the innermost running module (or
to the loss, while the loss is computed). Calls made inside a composite op (the body of
`F.multi_head_attention_forward`) are not seen: the fine graph gives their nodes the module
of the node that consumes them (fine_graph.py).

Note [cuts]: a cut is made where a value that requires grad leaves the graph: `.detach()` /
`torch.detach`, `.data`, a differentiable op run under `no_grad` / `inference_mode` whose
inputs require grad, `.item()` / `.tolist()` / `.numpy()` of a tensor that requires grad —
made by the user: the call comes from the user's code (locations.is_user_file), or, under
no_grad, the user's code switched gradients off (the outermost switch counts: torch's
no_grad inside the user's is the user's). torch's own (spectral norm's power iteration,
gumbel_softmax's straight-through detach) are not cuts, nor is anything a custom
`autograd.Function`'s forward does (its backward carries the gradient; grad mode is off there
without the user turning it off: no kind of cut is made while that is so). The
value it returns is *tainted* by the cut; the taint follows floating results that do not
require grad (an integer or boolean result carries no gradient, so nothing was cut there:
`x.detach() > 0`, `logits.detach().argmax()`). When a tainted value is used by a call whose
result requires grad, that call's node is the cut's consumer. A cut is reported only when it
matters (engine): its value reached the loss's graph, or parameters lost their path to the
loss behind it. A metric computed under `no_grad`, a loss printed with `.item()`: no cut.
A number taken out with `.item()` and changed by Python arithmetic (`x.item() * 2`) is a new
object, and `torch.from_numpy` is not seen by a TorchFunctionMode: there the consumer is not
found (the cut is still reported by the parameters it cost).

Every handle lives in a side table and is removed in `close()`; nothing is set on the user's
modules or tensors.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ...locations import is_user_file
from ...results import SourceLocation

LOSS = "\0loss"  # the attribution of nodes made while the loss is computed

_DETACH = {torch.Tensor.detach, torch.detach, torch.Tensor.detach_}
_TAKE_OUT = {torch.Tensor.item: ".item()", torch.Tensor.tolist: ".tolist()"}
if hasattr(torch.Tensor, "numpy"):
    _TAKE_OUT[torch.Tensor.numpy] = ".numpy()"
_LIST_ELEMENTS = 64
# where torch.no_grad / set_grad_enabled / their decorator call _set_grad_enabled from
_GRAD_MODE_FILES = (
    os.path.join("torch", "autograd", "grad_mode.py"),
    os.path.join("torch", "utils", "_contextlib.py"),
)  # elements of a .tolist() result whose identity is followed


@dataclass
class CutRecord:
    """One cut, as the forward made it (several calls of one line and kind are one cut)."""

    kind: str
    producer_module: str
    location: SourceLocation | None
    module: str = ""  # where the cutting call ran
    call: str = ""  # its name ("linear", "detach")
    producers: list[Any] = field(default_factory=list)  # grad_fn nodes or leaf tensors
    consumers: list[tuple[Any, str]] = field(default_factory=list)  # (grad_fn, module)


class Tracer:
    """Hooks for one forward of `model` (a private copy); `names`: id(module) -> name."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.names = {id(m): n for n, m in model.named_modules()}
        self.param_names = {id(p): n for n, p in model.named_parameters()}
        self.stack: list[str] = []
        self.ran: dict[str, int] = {}  # module -> when it first ran
        self.calls: dict[str, int] = {}  # module -> how often it ran
        self.used_params: set[str] = set()
        self.node_module: dict[int, str] = {}
        self.nodes_kept: list[Any] = []  # keeps the attributed nodes alive: ids stay unique
        self.cuts: list[CutRecord] = []
        self.taint: dict[int, tuple[Any, tuple[int, ...]]] = {}  # id(obj) -> (obj, cuts)
        self.in_loss = False
        self.grad_off_by_user = False
        self.handles: list[Any] = []
        self.mode: _Calls | None = None
        self.errors: list[str] = []

    # --- on / off ---------------------------------------------------------------------------
    def open(self) -> None:
        self.handles.append(register_module_forward_pre_hook(self._pre))
        self.handles.append(register_module_forward_hook(self._post, always_call=True))
        self.mode = _Calls(self)
        self.mode.__enter__()

    def end_forward(self) -> None:
        """The module hooks off; the mode stays on for the loss (attributed to it)."""
        while self.handles:
            self.handles.pop().remove()
        self.stack.clear()
        self.in_loss = True

    def close(self) -> None:
        if self.mode is not None:
            mode, self.mode = self.mode, None
            mode.__exit__(None, None, None)
        while self.handles:
            self.handles.pop().remove()

    # --- the module stack -------------------------------------------------------------------
    def _pre(self, module: nn.Module, args: tuple) -> None:
        name = self.names.get(id(module))
        if name is not None:
            self.stack.append(name)
            self.ran.setdefault(name, len(self.ran))
            self.calls[name] = self.calls.get(name, 0) + 1

    def _post(self, module: nn.Module, args: tuple, output: Any) -> None:
        name = self.names.get(id(module))
        if name is None:
            return
        if self.stack and self.stack[-1] == name:
            self.stack.pop()
        elif name in self.stack:  # unwinding after an exception in a child
            while self.stack and self.stack.pop() != name:
                pass

    @property
    def current(self) -> str:
        if self.in_loss:
            return LOSS
        return self.stack[-1] if self.stack else ""

    # --- one torch call ---------------------------------------------------------------------
    def on_call(self, func: Any, args: tuple, kwargs: dict, out: Any, caller: Any) -> None:
        """One call the mode saw; `caller`: the frame that made it."""
        inputs, _ = tree_flatten((args, kwargs))
        module = self.current
        grad_on = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        for x in inputs:
            if isinstance(x, nn.Parameter) and id(x) in self.param_names:
                self.used_params.add(self.param_names[id(x)])
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        for t in outputs:
            node = t.grad_fn
            if node is not None and id(node) not in self.node_module:
                self.node_module[id(node)] = module
                self.nodes_kept.append(node)
        needing = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
        tainted = sorted({c for x in inputs for c in self._cuts_of(x)})
        kind = self._cut_kind(func, grad_on)
        if kind is not None and not self._users(kind, caller):
            kind = None  # the library's own (spectral norm's power iteration, straight-through)
        if kind is not None and kind != "inference_mode" and not grad_on:
            if not self.grad_off_by_user:
                kind = None  # grad mode off, not by the user: an autograd.Function's forward
        if kind is not None and _in_function_forward(caller):
            kind = None  # the Function's backward carries the gradient past this forward
        if kind is not None and needing:
            cut = self._cut(kind, needing, module, getattr(func, "__name__", "call"))
            self._taint(out, (cut,), floating_only=kind not in _TAKE_OUT.values())
            return
        if not tainted:
            return
        joined = [t for t in outputs if t.grad_fn is not None]
        if joined:  # the cut value rejoins the graph here
            for c in tainted:
                self.cuts[c].consumers.extend((t.grad_fn, module) for t in joined)
        else:
            self._taint(out, tuple(tainted), floating_only=True)

    def grad_mode(self, enabled: bool, caller: Any) -> None:
        """Who turned gradients off: the outermost switch from on to off counts (a library's
        no_grad nested in the user's is the user's)."""
        try:
            if not enabled and torch.is_grad_enabled():
                self.grad_off_by_user = is_user_file(_outside(caller, _GRAD_MODE_FILES))
            elif enabled:
                self.grad_off_by_user = False
        except Exception as exc:  # noqa: BLE001 - never break the user's forward
            self.errors.append(f"gradtool internal error in the graph's hook: {exc}")

    def _users(self, kind: str, caller: Any) -> bool:
        """Whether the user made this cut: under no_grad, the user turned gradients off
        (inference_mode: always); else the user's code made the call."""
        if kind == "no_grad":
            return self.grad_off_by_user
        if kind == "inference_mode":
            return True
        return caller is not None and is_user_file(caller.f_code.co_filename)

    def _cut_kind(self, func: Any, grad_on: bool) -> str | None:
        if func in _DETACH:
            return "detach()"
        if func in _TAKE_OUT:
            return _TAKE_OUT[func]
        if getattr(func, "__name__", "") == "__get__":
            owner = getattr(func, "__self__", None)
            if getattr(owner, "__name__", "") == "data":
                return ".data"
            return None  # another attribute (.grad, .shape): no value taken
        if not grad_on:
            return "inference_mode" if torch.is_inference_mode_enabled() else "no_grad"
        return None

    def _cut(self, kind: str, needing: list[torch.Tensor], module: str, call: str) -> int:
        where = user_line()
        producers = [x.grad_fn if x.grad_fn is not None else x for x in needing]
        for i, c in enumerate(self.cuts):  # one line cutting again is the same cut
            if c.kind == kind and c.location == where and where is not None:
                c.producers.extend(producers)
                return i
        first = needing[0]
        if first.grad_fn is not None:
            producer = self.node_module.get(id(first.grad_fn), module)
        else:
            name = self.param_names.get(id(first), "")
            producer = name.rpartition(".")[0] if name else module
        if producer == LOSS:
            producer = ""
        here = "" if module == LOSS else module
        self.cuts.append(CutRecord(kind, producer, where, here, call, producers))
        return len(self.cuts) - 1

    def _cuts_of(self, x: Any) -> tuple[int, ...]:
        found = self.taint.get(id(x))
        return found[1] if found is not None and found[0] is x else ()

    def _taint(self, out: Any, cuts: tuple[int, ...], *, floating_only: bool) -> None:
        objs: list[Any] = [out]
        if isinstance(out, list):
            objs.extend(out[:_LIST_ELEMENTS])
        objs.extend(t for t in tree_flatten(out)[0] if t is not out)
        for obj in objs:
            if isinstance(obj, torch.Tensor):
                if floating_only and not (obj.is_floating_point() or obj.is_complex()):
                    continue
                if obj.requires_grad:
                    continue
            elif obj is None or isinstance(obj, (bool, int, str)):
                continue  # ints and bools carry no gradient (and are shared objects)
            merged = tuple(sorted(set(self._cuts_of(obj)) | set(cuts)))
            self.taint[id(obj)] = (obj, merged)


class _Calls(TorchFunctionMode):
    """Sees every torch call of the forward and the loss (not those inside a composite)."""

    def __init__(self, tracer: Tracer) -> None:
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func is torch._C._set_grad_enabled:  # who switches gradients off, seen before
            self.tracer.grad_mode(bool(args[0]) if args else True, sys._getframe(1))
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        try:
            with torch._C.DisableTorchFunction():
                self.tracer.on_call(func, args, kwargs, out, sys._getframe(1))
        except Exception as exc:  # noqa: BLE001 - never break the user's forward
            if len(self.tracer.errors) < 5:
                self.tracer.errors.append(
                    f"gradtool internal error in the graph's hook: {type(exc).__name__}: {exc}"
                )
        return out


_FUNCTION_FILE = os.path.join("torch", "autograd", "function.py")


def _in_function_forward(frame: Any) -> bool:
    """Whether a custom `torch.autograd.Function`'s forward is running (its `apply` is on the
    stack): what it does to its inputs is not what the gradient sees."""
    while frame is not None:
        code = frame.f_code
        if code.co_name == "apply" and code.co_filename.endswith(_FUNCTION_FILE):
            return True
        frame = frame.f_back
    return False


def _outside(frame: Any, files: tuple[str, ...]) -> str | None:
    """The file of the first frame from `frame` outward that is not in `files`."""
    while frame is not None and frame.f_code.co_filename.endswith(files):
        frame = frame.f_back
    return frame.f_code.co_filename if frame is not None else None


def user_line() -> SourceLocation | None:
    """The innermost frame of the user's code on the stack now."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if is_user_file(code.co_filename):
            return SourceLocation(code.co_filename, frame.f_lineno, code.co_name)
        frame = frame.f_back
    return None
