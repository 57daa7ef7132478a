"""Turn a loaded target into something the engines can evaluate deterministically.

Inputs become (args, kwargs); the loss becomes a vector of named scalar terms (the user's
`loss_fn` or a seeded random projection of every floating output); RNG state is captured
so that every evaluation starts from the same point.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping, Sequence
from copy import deepcopy
from typing import Any, Callable, Protocol

import torch

from ._guest import RngState, init_cuda
from ._tree import first_tensor, map_tensors, replace_at
from .checkables import (
    Checkable,
    input_checkables,
    module_checkables,
    register_loose_layers,
    selected,
    without_empty,
)
from .errors import InputError, OptionError, UserCodeError
from .loading import LoadedTarget, inputs_from_shapes
from .losses import ProjectionLoss, UserLoss, call_loss
from .precision import KeepPrecision
from .results import Unchecked


def normalize_inputs(raw: Any) -> tuple[tuple, dict]:
    """tensor -> positional; tuple/list -> positional args; dict -> keyword args."""
    if isinstance(raw, torch.Tensor):
        return (raw,), {}
    if isinstance(raw, Mapping):
        return (), dict(raw)
    if isinstance(raw, (tuple, list)):
        return tuple(raw), {}
    raise InputError(
        f"example_inputs must be a tensor, a tuple/list (positional arguments) or a dict "
        f"(keyword arguments); got {type(raw).__name__}"
    )


def parse_device(device: str | torch.device, allowed: tuple[str, ...]) -> torch.device:
    """A device the user asked for, that this machine has: "cpu", "cuda", "cuda:1", ..."""
    try:
        where = torch.device(device)
    except (RuntimeError, TypeError):
        where = None
    if where is None or where.type not in allowed:
        names = " or ".join(f"{t}[:N]" if t != "cpu" else t for t in allowed)
        raise OptionError("device", f"must be {names}, not {device!r}")
    if where.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError("device", f"{device} was asked for, but CUDA is not available here")
        if where.index is not None and where.index >= torch.cuda.device_count():
            raise OptionError(
                "device", f"{device}: this machine has {torch.cuda.device_count()} GPU(s)"
            )
    if where.type == "mps" and not torch.backends.mps.is_available():
        raise OptionError("device", f"{device} was asked for, but MPS is not available here")
    return where


def resolve_inputs(
    loaded: LoadedTarget, shapes: Sequence[str] | None, dtype: str = "float32", seed: int = 0
) -> tuple[tuple, dict]:
    """Inputs from `example_inputs` in the file, else from --input-shape, else an error."""
    if loaded.example_inputs is not None:
        return normalize_inputs(loaded.example_inputs)
    if shapes:
        return inputs_from_shapes(list(shapes), dtype, seed), {}
    raise InputError(
        f"no inputs for {loaded.label}",
        hint=(
            "Either define example_inputs() in the file, e.g.\n"
            "    def example_inputs():\n"
            "        return torch.randn(8, 16)\n"
            f"or pass shapes: gradtool check {loaded.spec} --input-shape 8,16"
        ),
    )


# --- the problem the engine differentiates -----------------------------------------------

MISSING_NOTE = (
    "the gradient never reaches this tensor (autograd gives {got}) but the loss depends on "
    "it: look for .detach(), .data, torch.no_grad() or .item() on its way to the loss"
)


class CheckProblem(Protocol):
    """What the check engine needs of a problem: `Problem`, or `SecondOrderProblem`.

    `terms(values)` returns K + 1 numbers: the K loss terms (`term_names`), then the scale of
    what moved in that evaluation (Note [rounding noise of a finite difference])."""

    checkables: list[Checkable]
    args: tuple  # the inputs, in the check dtype
    kwargs: dict
    dtype: torch.dtype
    precision: torch.dtype  # the least precise dtype the forward computes in
    magnitude: float | None  # size of the loss's summands, known after the first terms()
    reference_output: Any  # the output of the first evaluation
    needs_grad: bool  # evaluations need autograd (and can't be batched)
    missing_note: str  # what to say when autograd gives no gradient ({got}: none/zero)

    @property
    def term_names(self) -> tuple[str, ...]: ...

    def terms(self, values: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def substituted(
        self, values: dict[str, torch.Tensor]
    ) -> contextlib.AbstractContextManager[None]: ...


def argument_names(
    fn: Callable[..., Any], args: tuple, kwargs: dict, skip_first: bool
) -> tuple[list[str], dict[str, str]]:
    """Names of positional args and keyword args as the forward signature calls them."""
    positional = [f"arg{i}" for i in range(len(args))]
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return positional, {k: k for k in kwargs}
    if skip_first and params:
        params = params[1:]
    for i in range(len(args)):
        if i < len(params) and params[i].kind in (
            params[i].POSITIONAL_ONLY,
            params[i].POSITIONAL_OR_KEYWORD,
        ):
            positional[i] = params[i].name
        else:
            star = next((p.name for p in params if p.kind == p.VAR_POSITIONAL), "args")
            first_star = next((j for j, p in enumerate(params) if p.kind == p.VAR_POSITIONAL), i)
            positional[i] = f"{star}[{i - first_star}]"
    return positional, {k: k for k in kwargs}


def _function_forward_takes_ctx(fn_cls: type) -> bool:
    """Old-style forward(ctx, ...) vs new-style forward(...) with setup_context."""
    setup = getattr(fn_cls, "setup_context", None)
    base = getattr(torch.autograd.Function, "setup_context", None)
    return setup is None or getattr(setup, "__func__", setup) is getattr(base, "__func__", base)


class Problem:
    """A deterministic loss as a function of named tensors, ready for autograd and vmap.

    Holds a private copy of the target in the check dtype; `terms(values)` evaluates the
    loss terms (a 1-D tensor) from a fixed RNG state, with `values` substituted for the
    checkable tensors (parameters, and floating input tensors however deeply nested in
    tuples, lists and dicts).
    """

    needs_grad = False
    missing_note = MISSING_NOTE

    def __init__(
        self,
        target: Any,
        args: tuple,
        kwargs: dict,
        *,
        loss_fn: Callable | None,
        dtype: torch.dtype,
        seed: int,
        device: torch.device | None = None,
        skip: Sequence[str] = (),
        wrt: Sequence[str] = (),
    ) -> None:
        self.dtype = dtype
        self.seed = seed
        init_cuda(device)  # before the seeded state is captured: CUDA's must be in it
        self.rng = RngState.seeded(seed)
        self.kind = _kind_of(target)
        self.target = target
        self.user_loss = loss_fn
        given_args, given_kwargs = args, kwargs
        self.args = tuple(_to_check_dtype(a, dtype, device) for a in args)
        self.kwargs = {k: _to_check_dtype(v, dtype, device) for k, v in kwargs.items()}
        self.checkables: list[Checkable] = []
        self.unchecked: list[Unchecked] = []  # tensors left out, each with its reason
        self.loose_layers: list[str] = []  # layers in plain lists, registered on the copy
        if self.kind == "module":
            self.module, self.loose_layers = _private_copy(target, dtype, device)
            self.checkables, self.unchecked = module_checkables(self.module)
            self.buffers = dict(self.module.named_buffers())
            fn_for_names, skip_first = self.module.forward, False
        elif self.kind == "function":
            if self.kwargs:  # Function.apply is positional: bind keywords to their places
                takes_ctx = _function_forward_takes_ctx(target)
                self.args, self.kwargs = _bind_positional(
                    target.forward, self.args, self.kwargs, takes_ctx
                )
                given_args, given_kwargs = _bind_positional(
                    target.forward, tuple(given_args), dict(given_kwargs), takes_ctx
                )
            fn_for_names, skip_first = target.forward, _function_forward_takes_ctx(target)
        else:
            fn_for_names, skip_first = target, False
        positional, keywords = argument_names(fn_for_names, self.args, self.kwargs, skip_first)
        roots = [("arg", i, positional[i], a, given_args[i]) for i, a in enumerate(self.args)]
        roots += [("kwarg", k, keywords[k], v, given_kwargs[k]) for k, v in self.kwargs.items()]
        self._root_names = {(where, key): name for where, key, name, _, _ in roots}
        inputs, left_out = input_checkables(roots, "input:" if self.kind == "module" else "")
        self.checkables += inputs
        self.unchecked += left_out
        for pick in (without_empty, lambda cs: selected(cs, skip, wrt)):
            self.checkables, left_out = pick(self.checkables)
            self.unchecked += left_out
        self.loss: ProjectionLoss | UserLoss | None = None
        self.magnitude: float | None = None  # size of the loss's summands, set on first call
        self.reference_output: Any = None  # the output of the first evaluation
        # the least precise dtype the forward computes in (see precision.py): what its
        # rounding noise is judged by; and whether its casts below the check dtype are kept
        # at the check dtype while evaluating (precision.KeepPrecision)
        self.precision = dtype
        self.keep_precision = False

    @property
    def values(self) -> dict[str, torch.Tensor]:
        return {c.name: c.value for c in self.checkables}

    def forward(self, values: dict[str, torch.Tensor]) -> tuple[Any, tuple, dict]:
        """Run the target with `values` substituted; returns (output, args, kwargs) used."""
        args = list(self.args)
        kwargs = dict(self.kwargs)
        params: dict[str, torch.Tensor] = {}
        nested: dict[tuple[str, Any], dict[str, torch.Tensor]] = {}
        if self.kind == "module":
            # fresh buffer copies each time: a stateful buffer must not drift between calls
            params.update((name, b.clone()) for name, b in self.buffers.items())
        for c in self.checkables:
            value = c.substituted(values[c.name])
            if c.slot[0] in ("param", "buffer"):
                params[c.slot[1]] = value
            else:
                nested.setdefault(c.slot[:2], {})[c.slot[2]] = value
        for (where, key), table in nested.items():
            root = args if where == "arg" else kwargs
            # a clone: a forward that writes into its input must not change θ (or a leaf)
            table = {path: v.clone() for path, v in table.items()}
            root[key] = replace_at(root[key], table, self._root_names[(where, key)])
        self.rng.restore()
        if self.kind == "module":
            out = torch.func.functional_call(self.module, params, tuple(args), kwargs)
        elif self.kind == "function":
            out = self.target.apply(*args)
        else:
            out = self.target(*args, **kwargs)
        return out, tuple(args), kwargs

    @contextlib.contextmanager
    def substituted(self, values: dict[str, torch.Tensor]) -> Iterator[None]:
        """The module's parameters (and checked buffers) are `values` for the whole block,
        not only during a forward: a backward that re-runs part of the forward — activation
        checkpointing recomputes it, reentrant or not — must see the same tensors."""
        if self.kind != "module":
            yield
            return
        params = {
            c.slot[1]: c.substituted(values[c.name])
            for c in self.checkables
            if c.slot[0] in ("param", "buffer")
        }
        with torch.nn.utils.stateless._reparametrize_module(self.module, params, tie_weights=True):
            yield

    def probe(self) -> None:
        """One forward and the user's loss at θ, fixing nothing (for precision.py)."""
        with self._precision():
            out, args, kwargs = self.forward(self.values)
            if self.user_loss is not None:
                call_loss(self.user_loss, out, args, kwargs)

    def _precision(self) -> contextlib.AbstractContextManager:
        return KeepPrecision(self.dtype) if self.keep_precision else contextlib.nullcontext()

    def terms(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """The K loss terms at `values`, then the scale of what moved (K + 1 numbers); the
        first call fixes the loss (the projection and its reference output, or the terms)."""
        with self._precision():
            return self._terms(values)

    def _terms(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        out, args, kwargs = self.forward(values)
        if self.loss is None:
            self.reference_output = out
            if self.user_loss is not None:
                # one loss_fn call per evaluation, the first included: a loss that draws
                # randomness must see the same RNG state every time
                value = call_loss(self.user_loss, out, args, kwargs)
                self.loss = UserLoss(self.user_loss, value)
                terms, scale = self.loss.stack(value)
            else:
                self.loss = ProjectionLoss(out, self.seed, self.dtype)
                terms, scale = self.loss(out, args, kwargs)
        else:
            terms, scale = self.loss(out, args, kwargs)
        if self.magnitude is None:
            summed = self.loss.magnitude(out) if isinstance(self.loss, ProjectionLoss) else 0.0
            self.magnitude = max(summed, float(terms.detach().abs().max()))
        return torch.cat([terms, scale.reshape(1).to(terms)])

    @property
    def left_out_outputs(self) -> tuple[str, ...]:
        """Outputs autograd marks non-differentiable, left out of the projected loss."""
        return self.loss.left_out if isinstance(self.loss, ProjectionLoss) else ()

    @property
    def term_names(self) -> tuple[str, ...]:
        return self.loss.names if self.loss is not None else ("loss",)


def _kind_of(target: Any) -> str:
    if isinstance(target, torch.nn.Module):
        return "module"
    if inspect.isclass(target) and issubclass(target, torch.autograd.Function):
        return "function"
    if callable(target):
        return "callable"
    raise InputError(
        f"cannot check a {type(target).__name__}: pass an nn.Module, an autograd.Function "
        "subclass or a function of tensors"
    )


def _to_check_dtype(value: Any, dtype: torch.dtype, device: torch.device | None) -> Any:
    """Tensors (also inside tuples, lists, dicts) become detached copies, floating ones in the
    check dtype; everything else passes unchanged."""

    def convert(t: torch.Tensor) -> torch.Tensor:
        out = t.detach()
        if device is not None:
            out = out.to(device)
        return in_check_precision(out, dtype).clone()

    return map_tensors(convert, value)


def in_check_precision(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Floating tensors in the check dtype, complex ones in its complex counterpart (never
    cast to real: that drops the imaginary part); anything else as it is."""
    if t.is_complex():
        return t.to(torch.complex128 if dtype == torch.float64 else torch.complex64)
    return t.to(dtype) if t.is_floating_point() else t


def copy_of_model(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy to work on, so that the user's model is never changed."""
    try:
        return deepcopy(module)
    except torch.cuda.OutOfMemoryError:
        raise  # the caller knows what it was copying for
    except Exception as exc:
        raise UserCodeError(
            f"could not copy the model ({type(exc).__name__}: {exc})",
            hint="gradtool works on a deep copy so that your model is never changed; make the "
            "model deep-copyable (keep locks, files and generators out of it), or build it in "
            "build_model().",
        ) from None


def training_copy(
    model: torch.nn.Module,
    args: tuple,
    kwargs: dict,
    device: torch.device | None,
    *,
    move_model: bool,
    own_inputs: bool = False,
) -> tuple[torch.nn.Module, tuple, dict]:
    """gradtool's train-mode copy of `model` to run training steps on (flow, memory, graph),
    and the inputs on `device` (the model moved there too with `move_model`). `own_inputs`:
    the inputs copied, so that a forward that writes into its input leaves the user's tensors
    alone (graph keeps the tensors themselves: an input that requires grad is its leaf). A GPU
    with no room for the copy is the user's problem (`no_room_on_gpu`)."""
    try:
        work = copy_of_model(model)
        work.train()
        if move_model and device is not None:
            work.to(device)
        if own_inputs:
            args, kwargs = map_tensors(lambda t: _own_copy(t, device), (args, kwargs))
        elif device is not None:
            args, kwargs = map_tensors(lambda t: t.to(device), (args, kwargs))
    except torch.cuda.OutOfMemoryError:
        first = next((t for t in model.parameters() if t.is_floating_point()), None)
        raise no_room_on_gpu(first.dtype if first is not None else torch.float32) from None
    return work, args, kwargs


def _own_copy(t: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    copy = t.detach().to(device if device is not None else t.device, copy=True)
    return copy.requires_grad_(t.requires_grad)


def _private_copy(
    module: torch.nn.Module, dtype: torch.dtype, device: torch.device | None
) -> tuple[torch.nn.Module, list[str]]:
    """gradtool's copy of the model, in the check dtype (and on `device`), with the layers it
    keeps in plain Python containers registered (so they are converted and checked too);
    returns the copy and those layers' names."""
    try:
        copy = copy_of_model(module)
        loose = register_loose_layers(copy)
        if device is not None:
            copy = copy.to(device)
        # Module.to(float64) would cast complex parameters to real, dropping the imaginary part
        copy = copy._apply(lambda t: in_check_precision(t, dtype))
    except torch.cuda.OutOfMemoryError:
        raise no_room_on_gpu(dtype) from None
    for m in copy.modules():
        # Train-mode BatchNorm normalizes with batch statistics either way; not tracking
        # keeps the copy's running stats fixed so every evaluation sees the same model.
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training:
            m.track_running_stats = False
    return copy, loose


def no_room_on_gpu(dtype: torch.dtype) -> UserCodeError:
    return UserCodeError(
        f"the GPU has no room for gradtool's {str(dtype).replace('torch.', '')} copy of the model",
        hint="gradtool works on a private copy of the model (check: in float64 unless --dtype "
        "float32); free GPU memory, or run on the CPU with --device cpu.",
    )


def home_device(target: Any, inputs: Any = ()) -> torch.device | None:
    """Where the work runs when no device is asked for: where the model's first floating
    parameter or buffer lives (None on the meta device), else its first input tensor."""
    if isinstance(target, torch.nn.Module):
        first = next(
            (t for t in (*target.parameters(), *target.buffers()) if t.is_floating_point()),
            None,
        )
        if first is not None:
            return first.device if first.device.type != "meta" else None
    tensor = first_tensor(inputs)
    return tensor.device if tensor is not None else None


def _bind_positional(
    forward: Callable, args: tuple, kwargs: dict, skip_first: bool
) -> tuple[tuple, dict]:
    sig = inspect.signature(forward)
    params = list(sig.parameters.values())[1 if skip_first else 0 :]
    out = list(args)
    for p in params[len(args) :]:
        if p.name in kwargs:
            out.append(kwargs.pop(p.name))
        elif p.default is not p.empty:
            out.append(p.default)
        else:
            break
    if kwargs:
        raise InputError(f"Function.forward has no arguments named {sorted(kwargs)}")
    return tuple(out), {}


class SecondOrderProblem:
    """L₂(θ) = Σ_t ⟨v_t, ∂L/∂t(θ)⟩ for fixed random v: its gradient is the double backward.

    Checking ∇L₂ against finite differences of L₂ is what gradgradcheck does; evaluations
    need autograd, so they run one at a time.
    """

    needs_grad = True
    term_names = ("loss",)
    missing_note = (
        "the double backward gives {got} but the gradient depends on this tensor: the "
        "backward is built from detached values (or .data / torch.no_grad()), so it cannot "
        "be differentiated again"
    )

    def __init__(self, first: Problem, seed: int) -> None:
        self.first = first
        self.checkables = first.checkables
        self.dtype = first.dtype
        self.args, self.kwargs = first.args, first.kwargs
        self.magnitude: float | None = None
        gen = torch.Generator().manual_seed(seed + 104_729)
        self.vectors = {
            c.name: torch.randn(c.value.shape, generator=gen, dtype=torch.float64).to(c.value)
            for c in first.checkables
        }

    @property
    def reference_output(self) -> Any:
        return self.first.reference_output

    @property
    def precision(self) -> torch.dtype:
        return self.first.precision

    def substituted(
        self, values: dict[str, torch.Tensor]
    ) -> contextlib.AbstractContextManager[None]:
        return self.first.substituted(values)

    def terms(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        differentiable = any(v.requires_grad for v in values.values())
        leaves = {
            n: v if v.requires_grad else v.detach().requires_grad_(True) for n, v in values.items()
        }
        with torch.enable_grad():
            loss = self.first.terms(leaves)[0]
            if not loss.requires_grad:
                return torch.zeros(2, dtype=self.dtype, device=loss.device)
            grads = torch.autograd.grad(
                loss, list(leaves.values()), create_graph=differentiable, allow_unused=True
            )
            products = [(g * self.vectors[n]).sum() for n, g in zip(leaves, grads) if g is not None]
        if not products:
            return torch.zeros(2, dtype=self.dtype, device=loss.device)
        stacked = torch.stack(products)
        if self.magnitude is None:
            self.magnitude = float(stacked.detach().abs().sum())
        # the scale of what moved: every product (the gradient moves as a whole)
        return torch.stack([stacked.sum(), stacked.detach().abs().sum()])
