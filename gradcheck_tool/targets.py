"""What a target really is: the module inside a wrapper, or a refusal to run the user's module.

gradtool checks a private copy of a module (`prepare.Problem`). A target that is not that
module, but reaches it, is resolved here before anything runs:

- wrappers whose forward only runs the module they hold (`torch.compile`, `DataParallel`,
  `DistributedDataParallel`; registry `WRAPPERS`) are checked through that module, and the
  report says so; so are a bound `model.forward` and a `functools.partial` around a module
  (its bound arguments become inputs);
- a function or callable object that reaches a module with state from outside its arguments
  (closure, global, default, attribute, or an input) is refused: running it would run, and
  change, the user's own module, and that module's parameters would not be checked;
- meta tensors (a shape, no values) and a `__getattr__` that raises something other than
  AttributeError are refused with what to do.

gradtool's own look-ups here never call the user's `__getattr__` (type checks and `vars()`),
except the deliberate probe `_probe_getattr`.
"""

from __future__ import annotations

import dis
import functools
import itertools
import sys
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from ._guest import describe_exception
from ._tree import leaves_with_paths
from .errors import InputError, UserCodeError


class ResolvedTarget(NamedTuple):
    """What gets checked, with what inputs, and what gradtool did to get there (for the
    report's warnings)."""

    target: Any
    args: tuple
    kwargs: dict
    notes: tuple[str, ...]


@dataclass(frozen=True)
class ModuleWrapper:
    """A module class whose forward runs the module it holds, compiled or spread over devices:
    the math is the held module's, so that module is what gets checked."""

    home: str  # the Python module defining the class: looked up in sys.modules, never imported
    class_name: str
    attribute: str  # the submodule holding the user's module
    note: str

    def held_by(self, obj: Any) -> nn.Module | None:
        """The module `obj` wraps, when `obj` is this wrapper (or a subclass that changes
        neither forward nor __call__); else None."""
        cls = getattr(sys.modules.get(self.home), self.class_name, None)
        if cls is None or not isinstance(obj, cls):
            return None  # never imported: the user can't have made one
        if type(obj).forward is not cls.forward or type(obj).__call__ is not cls.__call__:
            return None  # a subclass with its own forward does more than run the module
        inner = vars(obj).get("_modules", {}).get(self.attribute)
        return inner if isinstance(inner, nn.Module) else None


WRAPPERS = (
    ModuleWrapper(
        "torch._dynamo.eval_frame",
        "OptimizedModule",
        "_orig_mod",
        "checked the module inside torch.compile (._orig_mod), run eagerly: compiling changes "
        "how the forward runs, not what it computes",
    ),
    ModuleWrapper(
        "torch.nn.parallel.data_parallel",
        "DataParallel",
        "module",
        "checked the module inside DataParallel (.module), on the device it lives on",
    ),
    ModuleWrapper(
        "torch.nn.parallel.distributed",
        "DistributedDataParallel",
        "module",
        "checked the module inside DistributedDataParallel (.module), in this process alone",
    ),
)

OUTSIDE = (
    "uses the module {module} from outside its arguments ({where}): its parameters would not "
    "be checked, and running it would change your model"
)
PASS_THE_MODULE = "Pass the module itself (or a small nn.Module wrapping it) as the target."


def resolve_target(target: Any, args: tuple, kwargs: dict) -> ResolvedTarget:
    """The module inside wrappers, partials and bound forwards, with its inputs; a target that
    would run the user's own module is refused (InputError), as are meta tensors."""
    resolved = _resolve(target, tuple(args), dict(kwargs))
    _refuse_meta_inputs(resolved.args, resolved.kwargs)
    _refuse_modules_in_inputs(resolved.args, resolved.kwargs)
    if isinstance(resolved.target, nn.Module):
        _refuse_meta_module(resolved.target)
        _probe_getattr(resolved.target)
        _refuse_forwards_using_outside_modules(resolved.target)
        compiled = _compiled_in_place(resolved.target)
        if compiled:
            note = (
                f"checked {compiled} run eagerly, without what .compile() set on it: compiling "
                "changes how the forward runs, not what it computes"
            )
            resolved = resolved._replace(notes=(*resolved.notes, note))
    elif not _is_function_class(resolved.target):
        _probe_getattr(resolved.target)
        _refuse_outside_modules(resolved.target)
    return resolved


def unwrap_module(module: nn.Module) -> tuple[nn.Module, tuple[str, ...]]:
    """The module inside torch.compile/DataParallel/DistributedDataParallel wrappers (however
    nested), and a note for each wrapper taken off."""
    notes: list[str] = []
    while True:
        for wrapper in WRAPPERS:
            inner = wrapper.held_by(module)
            if inner is not None:
                module = inner
                notes.append(wrapper.note)
                break
        else:
            return module, tuple(notes)


def _resolve(target: Any, args: tuple, kwargs: dict) -> ResolvedTarget:
    if isinstance(target, nn.Module):
        inner, notes = unwrap_module(target)
        return ResolvedTarget(inner, args, kwargs, notes)
    if isinstance(target, functools.partial):
        # partial(f, *a, **k)(*args, **kw) is f(*a, *args, **{**k, **kw})
        inner = _resolve(target.func, (*target.args, *args), {**target.keywords, **kwargs})
        if not isinstance(inner.target, nn.Module):  # a function of tensors, bound arguments
            func = inner.target  # kept as they are: the function itself, if it was compiled
            if func is not target.func:
                target = functools.partial(func, *target.args, **target.keywords)
            return ResolvedTarget(target, args, kwargs, inner.notes)
        bound = [f"{len(target.args)} positional"] if target.args else []
        bound += list(target.keywords)
        note = f"checked the module {type(inner.target).__name__} inside functools.partial" + (
            f"; the arguments it binds ({', '.join(bound)}) are passed as inputs" if bound else ""
        )
        return inner._replace(notes=(*inner.notes, note))
    if isinstance(target, types.MethodType):
        owner = target.__self__
        if isinstance(owner, nn.Module):
            cls = type(owner)
            if target.__func__ in (_class_attribute(cls, "forward"), cls.__call__):
                return _resolve(owner, args, kwargs)  # model.forward is the model
                return _resolve(owner, args, kwargs)
            raise InputError(
                f"the method {type(owner).__name__}.{target.__name__} "
                + OUTSIDE.format(module=type(owner).__name__, where="its self"),
                hint=f"gradtool checks a module through its forward: pass a small nn.Module "
                f"whose forward calls {target.__name__}() of the module it holds.",
            )
    if isinstance(target, types.FunctionType):
        original = vars(target).get("_torchdynamo_orig_callable")
        if callable(original):  # torch.compile(fn): check fn itself
            inner = _resolve(original, args, kwargs)
            what = "module" if isinstance(inner.target, nn.Module) else "function"
            note = (
                f"checked the {what} inside torch.compile, run eagerly: compiling changes "
                "how it runs, not what it computes"
            )
            return inner._replace(notes=(note, *inner.notes))
    return ResolvedTarget(target, args, kwargs, ())


def _class_attribute(cls: type, name: str) -> Any:
    """The class attribute `name` as defined (no descriptor run, no __getattr__)."""
    return next((vars(c)[name] for c in cls.__mro__ if name in vars(c)), None)


def _is_function_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, torch.autograd.Function)


# --- modules reached from outside the arguments ------------------------------------------------


def _has_state(module: nn.Module) -> bool:
    """Parameters or buffers: what running it could change, and what a check should cover. A
    module without either (nn.ReLU()) is a function and may be used from anywhere."""
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _refuse_outside_modules(target: Any) -> None:
    """A function (closure, globals, defaults) or callable object (attributes) that reaches a
    module with state: refused, see the module docstring."""
    if isinstance(target, (types.FunctionType, functools.partial)):
        what, hint = "the function", PASS_THE_MODULE
    elif isinstance(target, types.MethodType):
        owner = type(target.__self__).__name__
        what, hint = f"the method {owner}.{target.__name__}", PASS_THE_MODULE
    else:
        name = type(target).__name__
        what = f"the callable object {name}"
        hint = (
            f"Pass the module itself, or a small nn.Module that holds it and whose forward does "
            f"what {name}.__call__ does, as the target."
        )
    seen: set[int] = set()
    found = next(_modules_reached(target, "", depth=0, seen=seen), None)
    call = vars(type(target)).get("__call__")  # a callable object's code, with its globals
    if found is None and isinstance(call, types.FunctionType):
        found = next(_reached_from_function(call, "", 0, seen), None)
    if found is not None:
        where, module = found
        raise InputError(
            f"{what} " + OUTSIDE.format(module=type(module).__name__, where=where), hint=hint
        )


def _refuse_forwards_using_outside_modules(model: nn.Module) -> None:
    """A forward that calls a module kept in a global of its file runs the user's module, not
    gradtool's copy (which holds only registered submodules)."""
    seen: set[int] = set()
    for cls in {type(m) for m in model.modules()}:
        forward = vars(cls).get("forward")
        if not isinstance(forward, types.FunctionType) or cls.__module__.startswith("torch."):
            continue
        found = next(_reached_from_function(forward, "", 0, seen), None)
        if found is not None:
            where, module = found
            raise InputError(
                f"{cls.__name__}.forward "
                + OUTSIDE.format(module=type(module).__name__, where=where),
                hint="Make it part of the model: assign it to an attribute in __init__ "
                "(self.shared = shared) and call it through self.",
            )


_MAX_DEPTH = 3  # how far to follow attributes, containers and helper functions
_MAX_ITEMS = 256  # items of one container looked at: modules sit in short lists, not datasets


def _modules_reached(
    value: Any, where: str, depth: int, seen: set[int]
) -> Iterator[tuple[str, nn.Module]]:
    """(where, module) for each module with state that `value` holds or a function uses from
    outside its arguments; read with vars() and code objects, never the user's __getattr__."""
    if depth > _MAX_DEPTH or id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, nn.Module):
        if _has_state(value):
            yield where, value
        return
    if value is None or isinstance(value, _NEVER_HOLD_MODULES):
        return
    if isinstance(value, Mapping):
        for key, item in itertools.islice(value.items(), _MAX_ITEMS):
            yield from _modules_reached(item, f"{where}[{key!r}]", depth + 1, seen)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for i, item in enumerate(itertools.islice(value, _MAX_ITEMS)):
            yield from _modules_reached(item, f"{where}[{i}]", depth + 1, seen)
    elif isinstance(value, functools.partial):
        yield from _modules_reached(value.func, where, depth, seen)
        for i, item in enumerate(value.args):
            yield from _modules_reached(
                item, f"{where} argument {i} bound by functools.partial".lstrip(), depth + 1, seen
            )
        for key, item in value.keywords.items():
            yield from _modules_reached(
                item, f"{where} `{key}` bound by functools.partial".lstrip(), depth + 1, seen
            )
    elif isinstance(value, types.MethodType):
        yield from _modules_reached(value.__self__, where or "its self", depth, seen)
        yield from _modules_reached(value.__func__, where, depth, seen)
    elif isinstance(value, types.FunctionType):
        yield from _reached_from_function(value, where, depth, seen)
    else:  # any other object: its attributes
        try:
            attributes = dict(vars(value))
        except Exception:  # no __dict__ (builtins, slots), or a __getattr__ that raises
            return
        for name, item in itertools.islice(attributes.items(), _MAX_ITEMS):
            yield from _modules_reached(item, f"{where}.{name}", depth + 1, seen)


_NEVER_HOLD_MODULES = (
    str,
    bytes,
    int,
    float,
    complex,
    type,
    types.ModuleType,
    types.BuiltinFunctionType,
    torch.Tensor,
    torch.dtype,
    torch.device,
)


def _reached_from_function(
    fn: types.FunctionType, where: str, depth: int, seen: set[int]
) -> Iterator[tuple[str, nn.Module]]:
    """Modules a function reaches: its closure, its defaults and the globals its code loads
    (helper functions of the same file followed, other files' not: they are libraries)."""
    label = f"{where}: " if where else ""
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
        try:
            contents = cell.cell_contents
        except ValueError:  # an empty cell (a name assigned later)
            continue
        yield from _modules_reached(
            contents, f"{label}the variable `{name}` it closes over", depth + 1, seen
        )
    defaults = dict(zip(_defaulted_names(fn), fn.__defaults__ or ()))
    defaults.update(fn.__kwdefaults__ or {})
    for name, value in defaults.items():
        yield from _modules_reached(value, f"{label}the default of `{name}`", depth + 1, seen)
    for name in _globals_loaded(fn.__code__):
        if name not in fn.__globals__:
            continue
        value = fn.__globals__[name]
        if isinstance(value, types.FunctionType) and value.__globals__ is not fn.__globals__:
            continue
        yield from _modules_reached(value, f"{label}the global `{name}`", depth + 1, seen)


def _defaulted_names(fn: types.FunctionType) -> list[str]:
    code = fn.__code__
    positional = code.co_varnames[: code.co_argcount]
    return list(positional[len(positional) - len(fn.__defaults__ or ()) :])


def _globals_loaded(code: types.CodeType) -> list[str]:
    """Names a code object (and the code nested in it: lambdas, comprehensions) loads as
    globals, in order."""
    names: list[str] = []
    for ins in dis.get_instructions(code):
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and ins.argval not in names:
            names.append(ins.argval)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names += [n for n in _globals_loaded(const) if n not in names]
    return names


def _refuse_modules_in_inputs(args: tuple, kwargs: dict) -> None:
    """A module with state among the inputs would run as the user's own module."""
    for where, leaf in _input_leaves(args, kwargs):
        if isinstance(leaf, nn.Module) and _has_state(leaf):
            raise InputError(
                f"the inputs hold the module {type(leaf).__name__} ({where}): its parameters "
                "would not be checked, and running it would change your model",
                hint="Make the module the target, or a small nn.Module that holds it and calls "
                "your function in its forward.",
            )


# --- tensors without values, and __getattr__ that raises -------------------------------------


def _input_leaves(args: tuple, kwargs: dict) -> Iterator[tuple[str, Any]]:
    for i, arg in enumerate(args):
        yield from leaves_with_paths(arg, f"inputs[{i}]")
    for key, value in kwargs.items():
        yield from leaves_with_paths(value, str(key))


def _refuse_meta_inputs(args: tuple, kwargs: dict) -> None:
    for where, leaf in _input_leaves(args, kwargs):
        if isinstance(leaf, torch.Tensor) and leaf.is_meta:
            shape = ", ".join(str(s) for s in leaf.shape)
            raise InputError(
                f"the input {where} is on the meta device: it has a shape but no values to "
                "differentiate",
                hint=f"Pass a tensor with values, e.g. torch.randn({shape}).",
            )


def _refuse_meta_module(model: nn.Module) -> None:
    tensors = [
        (kind, name)
        for kind, named in (("parameter", model.named_parameters), ("buffer", model.named_buffers))
        for name, t in named()
        if t.is_meta
    ]
    if tensors:
        kind, name = tensors[0]
        more = f" (and {len(tensors) - 1} more tensors)" if len(tensors) > 1 else ""
        raise InputError(
            f"the {kind} {name} of {type(model).__name__}{more} is on the meta device: it has "
            "a shape but no values to differentiate",
            hint="Give the model values first: model.to_empty(device='cpu'), then "
            "model.load_state_dict(...) or initialize the parameters.",
        )


# What copy.deepcopy (gradtool checks a copy), inspect.signature and the report's label look
# up on the user's objects: Python expects AttributeError for the ones an object lacks.
_LOOKED_UP = ("__deepcopy__", "__signature__", "__name__")


def _probe_getattr(target: Any) -> None:
    """A `__getattr__` that raises something else than AttributeError for a missing name
    breaks copying and introspection deep inside torch and Python: say so, with its cause."""
    objects = list(target.modules()) if isinstance(target, nn.Module) else [target]
    for obj in objects:
        cls = type(obj)
        if getattr(cls, "__getattr__", None) in (None, nn.Module.__getattr__):
            continue
        for name in _LOOKED_UP:
            try:
                getattr(obj, name, None)
            except Exception as exc:
                raise UserCodeError(
                    f"{cls.__name__}.__getattr__({name!r}) raised "
                    f"{describe_exception(exc, None)}; for a name an object does not have, "
                    "Python expects AttributeError",
                    hint="Raise AttributeError from __getattr__ for names it does not know: "
                    "copy.deepcopy (gradtool checks a copy of your model), inspect.signature, "
                    "hasattr() and getattr(obj, name, default) rely on it.",
                ) from None


def _compiled_in_place(model: nn.Module) -> str:
    """The name of the first module that `model.compile()` compiled ('' for none): gradtool's
    copy leaves the compiled call out (Module.__getstate__ drops it)."""
    for name, m in model.named_modules():
        if vars(m).get("_compiled_call_impl") is not None:
            return type(m).__name__ if not name else f"{type(model).__name__}.{name}"
    return ""
