"""Turn a loaded target into something the engines can evaluate deterministically.

Inputs become (args, kwargs); the loss becomes a vector of named scalar terms (the user's
`loss_fn` or a seeded random projection of every floating output); RNG state is captured
so that every evaluation starts from the same point.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from ._guest import RngState, call_user, init_cuda
from ._tree import first_tensor, floating_leaves, leaves_with_paths, map_tensors, replace_at
from .errors import InputError, OptionError, UserCodeError
from .loading import LoadedTarget, inputs_from_shapes


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


# --- the loss -------------------------------------------------------------------------------


class ProjectionLoss:
    """loss = Σ_k <R_k, out_k> with fixed seeded Gaussian R_k, one per floating output.

    Not `.sum()`: a sum hides a backward that ignores the upstream gradient (the upstream
    gradient is all ones) and gives zero gradient through softmax.
    """

    def __init__(self, reference_output: Any, seed: int, dtype: torch.dtype) -> None:
        leaves = list(floating_leaves(reference_output))
        if not leaves:
            raise UserCodeError(
                f"the output has no floating-point tensor to differentiate "
                f"(got {_describe(reference_output)})",
                hint="Return a tensor (or a tuple/dict of tensors), or define "
                "loss_fn(output, *inputs) returning a scalar tensor.",
            )
        gen = torch.Generator().manual_seed(seed + 7919)
        self.paths = [p for p, _ in leaves]
        # complex outputs get complex projections: Re⟨R, t⟩ sees both real and imaginary parts
        self.projections = [
            torch.randn(
                t.shape,
                generator=gen,
                dtype=torch.complex128 if t.is_complex() else torch.float64,
            ).to(device=t.device, dtype=t.dtype if t.is_complex() else dtype)
            for _, t in leaves
        ]
        self.names = ("loss",)

    def __call__(self, output: Any, args: tuple, kwargs: dict) -> torch.Tensor:
        return sum(self._products(output)).reshape(1)

    def magnitude(self, output: Any) -> float:
        """Σ|R·out|: the size of the numbers summed, which sets the rounding noise of f."""
        return float(sum(float(p.detach().abs().sum()) for p in self._products(output, sum_=False)))

    def _products(self, output: Any, sum_: bool = True) -> list[torch.Tensor]:
        """Re(conj(R)·t) per output leaf (summed per leaf unless sum_ is False)."""
        leaves = [t for _, t in floating_leaves(output)]
        if len(leaves) != len(self.projections):
            raise UserCodeError(
                "the output structure changed between evaluations "
                f"({len(self.projections)} floating tensors, then {len(leaves)})"
            )
        out = []
        for t, r in zip(leaves, self.projections):
            prod = (t * r.conj()).real if t.is_complex() else t * r
            out.append(prod.sum() if sum_ else prod)
        return out


TOTAL = "total"


def call_loss(
    loss_fn: Callable[..., Any], output: Any, args: tuple, kwargs: dict, folder: Path | None = None
) -> Any:
    """loss_fn(output, *inputs, **keyword_inputs); its errors are named as loss_fn's."""
    return call_user(
        loss_fn,
        output,
        *args,
        what="loss_fn",
        folder=folder,
        hint="gradtool calls loss_fn(output, *inputs, **keyword_inputs).",
        **kwargs,
    )


class UserLoss:
    """The user's loss_fn(output, *inputs), as a vector of its named scalar terms."""

    def __init__(self, loss_fn: Callable[..., Any], reference: Any) -> None:
        self.loss_fn = loss_fn
        self.term_keys = tuple(loss_terms(reference).keys())
        # With several terms the sum comes first, named TOTAL; each term is checked on its
        # own too (the tutorial: check with and without regularization separately).
        self.names = (TOTAL, *self.term_keys) if len(self.term_keys) > 1 else self.term_keys

    def __call__(self, output: Any, args: tuple, kwargs: dict) -> torch.Tensor:
        return self.stack(call_loss(self.loss_fn, output, args, kwargs))

    def stack(self, value: Any) -> torch.Tensor:
        """loss_fn's value as the terms vector (the sum first when there are several)."""
        terms = loss_terms(value)
        if tuple(terms) != self.term_keys:
            raise UserCodeError("loss_fn returned different terms between evaluations")
        stacked = torch.stack([t.reshape(()) for t in terms.values()])
        if len(self.term_keys) > 1:
            stacked = torch.cat([stacked.sum().reshape(1), stacked])
        return stacked


def loss_terms(value: Any) -> dict[str, torch.Tensor]:
    """A scalar tensor -> {"loss": t}; a dict of named scalar tensors is kept as is."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        return {"loss": value}
    if isinstance(value, Mapping) and value:
        bad = [
            k
            for k, v in value.items()
            if not (isinstance(v, torch.Tensor) and v.numel() == 1 and v.is_floating_point())
        ]
        if not bad:
            return {str(k): v for k, v in value.items()}
        raise UserCodeError(
            f"loss_fn returned a dict whose terms {bad} are not scalar floating tensors"
        )
    raise UserCodeError(
        f"loss_fn must return a scalar tensor or a dict of named scalar tensors; "
        f"got {_describe(value)}"
    )


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


# --- the problem the engine differentiates -----------------------------------------------

MISSING_NOTE = (
    "the gradient never reaches this tensor (autograd gives {got}) but the loss depends on "
    "it: look for .detach(), .data, torch.no_grad() or .item() on its way to the loss"
)


class CheckProblem(Protocol):
    """What the check engine needs of a problem: `Problem`, or `SecondOrderProblem`."""

    checkables: list[Checkable]
    args: tuple  # the inputs, in the check dtype
    kwargs: dict
    dtype: torch.dtype
    magnitude: float | None  # size of the loss's summands, known after the first terms()
    reference_output: Any  # the output of the first evaluation
    needs_grad: bool  # evaluations need autograd (and can't be batched)
    missing_note: str  # what to say when autograd gives no gradient ({got}: none/zero)

    @property
    def term_names(self) -> tuple[str, ...]: ...

    def terms(self, values: dict[str, torch.Tensor]) -> torch.Tensor: ...


@dataclasses.dataclass(frozen=True)
class Checkable:
    """One tensor whose gradient is checked: where it lives and its value in check dtype."""

    name: str
    kind: str  # "parameter" | "input"
    slot: tuple[str, Any]  # ("param", dotted name) | ("arg", index) | ("kwarg", key)
    value: torch.Tensor


def _argument_names(
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
    ) -> None:
        self.dtype = dtype
        self.seed = seed
        init_cuda(device)  # before the seeded state is captured: CUDA's must be in it
        self.rng = RngState.seeded(seed)
        self.kind = _kind_of(target)
        self.target = target
        self.user_loss = loss_fn
        self.args = tuple(_to_check_dtype(a, dtype, device) for a in args)
        self.kwargs = {k: _to_check_dtype(v, dtype, device) for k, v in kwargs.items()}
        self.checkables: list[Checkable] = []
        if self.kind == "module":
            self.module = _private_copy(target, dtype, device)
            for name, p in self.module.named_parameters():
                if p.requires_grad:
                    self.checkables.append(
                        Checkable(name, "parameter", ("param", name), p.detach())
                    )
            self.buffers = dict(self.module.named_buffers())
            fn_for_names, skip = self.module.forward, False
        elif self.kind == "function":
            if self.kwargs:  # Function.apply is positional: bind keywords to their places
                self.args, self.kwargs = _bind_positional(
                    target.forward, self.args, self.kwargs, _function_forward_takes_ctx(target)
                )
            fn_for_names, skip = target.forward, _function_forward_takes_ctx(target)
        else:
            fn_for_names, skip = target, False
        positional, keywords = _argument_names(fn_for_names, self.args, self.kwargs, skip)
        prefix = "input:" if self.kind == "module" else ""
        roots = [("arg", i, positional[i], a) for i, a in enumerate(self.args)]
        roots += [("kwarg", k, keywords[k], v) for k, v in self.kwargs.items()]
        self._root_names = {(where, key): name for where, key, name, _ in roots}
        for where, key, root_name, value in roots:
            for path, leaf in leaves_with_paths(value, root_name, writable=True):
                if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
                    slot = (where, key, path)
                    self.checkables.append(Checkable(prefix + path, "input", slot, leaf))
        self.loss: ProjectionLoss | UserLoss | None = None
        self.magnitude: float | None = None  # size of the loss's summands, set on first call
        self.reference_output: Any = None  # the output of the first evaluation

    @property
    def values(self) -> dict[str, torch.Tensor]:
        return {c.name: c.value for c in self.checkables}

    def forward(self, values: dict[str, torch.Tensor]) -> tuple[Any, tuple, dict]:
        """Run the target with `values` substituted; returns (output, args, kwargs) used."""
        args = list(self.args)
        kwargs = dict(self.kwargs)
        params: dict[str, torch.Tensor] = {}
        nested: dict[tuple[str, Any], dict[str, torch.Tensor]] = {}
        for c in self.checkables:
            if c.slot[0] == "param":
                params[c.slot[1]] = values[c.name]
            else:
                nested.setdefault(c.slot[:2], {})[c.slot[2]] = values[c.name]
        for (where, key), table in nested.items():
            root = args if where == "arg" else kwargs
            # a clone: a forward that writes into its input must not change θ (or a leaf)
            table = {path: v.clone() for path, v in table.items()}
            root[key] = replace_at(root[key], table, self._root_names[(where, key)])
        self.rng.restore()
        if self.kind == "module":
            # fresh buffer copies each time: a stateful buffer must not drift between calls
            for name, b in self.buffers.items():
                params[name] = b.clone()
            out = torch.func.functional_call(self.module, params, tuple(args), kwargs)
        elif self.kind == "function":
            out = self.target.apply(*args)
        else:
            out = self.target(*args, **kwargs)
        return out, tuple(args), kwargs

    def terms(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss terms (1-D) at `values`; the first call fixes the projection/terms."""
        out, args, kwargs = self.forward(values)
        if self.loss is None:
            self.reference_output = out
            if self.user_loss is not None:
                # one loss_fn call per evaluation, the first included: a loss that draws
                # randomness must see the same RNG state every time
                value = call_loss(self.user_loss, out, args, kwargs)
                self.loss = UserLoss(self.user_loss, value)
                terms = self.loss.stack(value)
            else:
                self.loss = ProjectionLoss(out, self.seed, self.dtype)
                terms = self.loss(out, args, kwargs)
        else:
            terms = self.loss(out, args, kwargs)
        if self.magnitude is None:
            summed = self.loss.magnitude(out) if isinstance(self.loss, ProjectionLoss) else 0.0
            self.magnitude = max(summed, float(terms.detach().abs().max()))
        return terms

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
        if out.is_floating_point():
            out = out.to(dtype)
        return out.clone()

    return map_tensors(convert, value)


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


def _private_copy(
    module: torch.nn.Module, dtype: torch.dtype, device: torch.device | None
) -> torch.nn.Module:
    try:
        copy = copy_of_model(module)
        if device is not None:
            copy = copy.to(device)
        copy = copy.to(dtype)
    except torch.cuda.OutOfMemoryError:
        raise no_room_on_gpu(dtype) from None
    for m in copy.modules():
        # Train-mode BatchNorm normalizes with batch statistics either way; not tracking
        # keeps the copy's running stats fixed so every evaluation sees the same model.
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training:
            m.track_running_stats = False
    return copy


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

    def terms(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        differentiable = any(v.requires_grad for v in values.values())
        leaves = {
            n: v if v.requires_grad else v.detach().requires_grad_(True) for n, v in values.items()
        }
        with torch.enable_grad():
            loss = self.first.terms(leaves)[0]
            if not loss.requires_grad:
                return torch.zeros(1, dtype=self.dtype, device=loss.device)
            grads = torch.autograd.grad(
                loss, list(leaves.values()), create_graph=differentiable, allow_unused=True
            )
            products = [(g * self.vectors[n]).sum() for n, g in zip(leaves, grads) if g is not None]
        if not products:
            return torch.zeros(1, dtype=self.dtype, device=loss.device)
        if self.magnitude is None:
            self.magnitude = float(sum(p.detach().abs() for p in products))
        return torch.stack(products).sum().reshape(1)
