"""Import the user's file without side effects and find what to check in it.

`file.py[:NAME]` resolves, without NAME, in this order: a function `build_model()`, a
module-level `model` instance, then the only nn.Module or autograd.Function subclass
defined in the file. `sys.path` and `sys.modules` are restored after the import.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import itertools
import os
import re
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ._guest import call_user, describe_exception, user_frame, user_scope
from ._paths import split_target
from .errors import CheckpointError, InputError, LoadError
from .targets import WRAPPERS, unwrap_module

_counter = itertools.count()
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class LoadedTarget:
    """What was found in the user's file, and how."""

    spec: str
    path: Path
    name: str
    obj: Any
    kind: str  # "module" | "function" | "callable"
    found_by: str
    example_inputs: Any = None
    loss_fn: Callable[..., Any] | None = None

    @property
    def label(self) -> str:
        return f"{self.path.name}:{self.name}"


def split_spec(spec: str) -> tuple[Path, str | None]:
    """`dir/file.py:NAME` -> (Path, NAME); NAME is None when absent."""
    head, tail = split_target(spec)
    if tail is not None:
        if not _IDENTIFIER.match(tail):
            raise LoadError(
                f"bad NAME {tail!r} in {spec}: NAME must be a top-level name in the file",
                hint="e.g. gradtool check model.py:Net",
            )
        return Path(head), tail
    return Path(spec), None  # (split_target: the spec itself when it names no NAME)


def scope_for(spec: str) -> contextlib.AbstractContextManager[None]:
    """user_scope for the folder of `file.py[:NAME]` (the CLI holds it for a whole run)."""
    return user_scope(split_spec(spec)[0].resolve().parent)


def import_user_file(path: Path) -> types.ModuleType:
    """Execute the user's file as a fresh module, its folder importable while it runs."""
    if not path.exists():
        raise LoadError(f"file not found: {path}")
    if path.is_dir() or path.suffix != ".py":
        raise LoadError(f"not a Python file: {path}", hint="TARGET is path/to/file.py[:NAME]")
    folder = path.resolve().parent
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"_gradtool_user_{stem}_{next(_counter)}"
    with user_scope(folder):
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise LoadError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except SyntaxError as exc:
            where = f"{os.path.relpath(exc.filename or str(path))}:{exc.lineno}"
            raise LoadError(f"syntax error in {where}: {exc.msg}") from None
        except ImportError as exc:
            raise LoadError(
                f"import error while loading {path}: {describe_exception(exc, folder)}"
                + _root_cause(exc)
            ) from None
        except SystemExit as exc:
            raise LoadError(
                f"{path} called sys.exit({exc.code!r}) while being imported"
                + (f" (at {user_frame(exc.__traceback__, folder)})" if exc.__traceback__ else ""),
                hint='Put script code under `if __name__ == "__main__":`.',
            ) from None
        except Exception as exc:  # the user's module-level code raised
            raise LoadError(
                f"error while loading {path}: {describe_exception(exc, folder)}"
            ) from None
        return module


def _defined_here(obj: Any, module: types.ModuleType) -> bool:
    return getattr(obj, "__module__", None) == module.__name__


def _is_module_class(obj: Any) -> bool:
    return inspect.isclass(obj) and issubclass(obj, nn.Module)


def _is_function_class(obj: Any) -> bool:
    return (
        inspect.isclass(obj)
        and issubclass(obj, torch.autograd.Function)
        and obj is not torch.autograd.Function
    )


def _required_params(fn: Callable[..., Any]) -> list[str]:
    """Parameters a call must fill; `*args` counts (a function of tensors, not a factory)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    return [
        p.name
        for p in sig.parameters.values()
        if (p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
        or p.kind == p.VAR_POSITIONAL
    ]


def _constructor_needs(cls: type) -> list[str]:
    """Arguments `cls()` lacks: parameters without a default. `*args`/`**kwargs` may stay
    empty (nn.Module's own __init__, inherited by a subclass without one, is all *args)."""
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return []
    return [
        p.name
        for p in sig.parameters.values()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def _classify(obj: Any, name: str, path: Path, how: str) -> tuple[Any, str, str]:
    """Turn whatever NAME denotes into (object, kind, found_by)."""
    folder = path.resolve().parent
    if isinstance(obj, nn.Module):
        return obj, "module", how
    if _is_function_class(obj):
        return obj, "function", how
    if _is_module_class(obj):
        needs = _constructor_needs(obj)
        if needs:
            raise LoadError(
                f"{path.name}:{name} is an nn.Module class whose constructor needs arguments "
                f"({', '.join(needs)})",
                hint="Define `build_model()` returning an instance, or a module-level `model`.",
            )
        return (
            call_user(obj, what=f"{name}()", folder=folder),
            "module",
            f"{how}, constructed {name}()",
        )
    if callable(obj):
        if not _required_params(obj):
            made = call_user(obj, what=f"{name}()", folder=folder)
            if isinstance(made, nn.Module):
                return made, "module", f"{how}, called {name}()"
            raise LoadError(
                f"{path.name}:{name}() takes no arguments but returned "
                f"{type(made).__name__}, not an nn.Module",
                hint="A zero-argument NAME must return an nn.Module; a function of tensors "
                "must take the tensors as arguments.",
            )
        return obj, "callable", how
    raise LoadError(
        f"{path.name}:{name} is a {type(obj).__name__}, not a model, autograd.Function or function",
    )


def find_target(
    module: types.ModuleType, path: Path, name: str | None
) -> tuple[Any, str, str, str]:
    """Resolve NAME (or discover the target) -> (object, kind, found_by, name)."""
    if name is not None:
        if not hasattr(module, name):
            names = [n for n in vars(module) if not n.startswith("_")]
            candidates = _candidates(module)
            hint = (
                f"Targets in this file: {', '.join(candidates)}"
                if candidates
                else f"Names in this file: {', '.join(names[:20])}"
            )
            raise LoadError(f"{path.name} has no name {name!r}", hint=hint)
        obj, kind, how = _classify(getattr(module, name), name, path, f"name {name!r} given")
        return obj, kind, how, name
    build = getattr(module, "build_model", None)
    if callable(build):
        obj, kind, how = _classify(build, "build_model", path, "build_model() in file")
        if kind != "module":
            raise LoadError(
                f"{path.name}: build_model must take no arguments and return an nn.Module"
            )
        return obj, kind, "build_model() in file", "build_model"
    model = getattr(module, "model", None)
    if isinstance(model, nn.Module):
        return model, "module", "module-level `model` instance", "model"
    candidates = _candidates(module)
    if len(candidates) == 1:
        cname = candidates[0]
        obj = getattr(module, cname)
        what = "autograd.Function" if _is_function_class(obj) else "nn.Module"
        obj, kind, how = _classify(
            obj, cname, path, f"the only {what} subclass defined in the file"
        )
        return obj, kind, how, cname
    if not candidates:
        raise LoadError(
            f"{path.name} has no target: no build_model(), no module-level `model`, and no "
            "nn.Module or autograd.Function subclass defined in it",
            hint=f"Name one as {path}:NAME",
        )
    raise LoadError(
        f"{path.name} has several candidate targets: {', '.join(candidates)}",
        hint="Pick one: " + ", ".join(f"{path}:{c}" for c in candidates),
    )


def _candidates(module: types.ModuleType) -> list[str]:
    return [
        n
        for n, obj in vars(module).items()
        if (_is_module_class(obj) or _is_function_class(obj)) and _defined_here(obj, module)
    ]


def load_target(spec: str, *, weights: str | None = None) -> LoadedTarget:
    """Import `path.py[:NAME]`, find the target, its example inputs, loss and weights."""
    path, name = split_spec(spec)
    with user_scope(path.resolve().parent if path.exists() else Path.cwd()):
        return _load(spec, path, name, weights)


def _load(spec: str, path: Path, name: str | None, weights: str | None) -> LoadedTarget:
    module = import_user_file(path)
    folder = path.resolve().parent
    obj, kind, found_by, resolved = find_target(module, path, name)

    raw_inputs = getattr(module, "example_inputs", None)
    if callable(raw_inputs):
        raw_inputs = call_user(raw_inputs, what="example_inputs()", folder=folder)
    loss_fn = getattr(module, "loss_fn", None)
    if loss_fn is not None and not callable(loss_fn):
        raise LoadError(f"{path.name}: loss_fn is a {type(loss_fn).__name__}, not a function")

    if weights is not None:
        if kind != "module":
            raise CheckpointError(f"--weights needs an nn.Module target; {resolved} is a {kind}")
        # into the module that gets checked: the one inside torch.compile or DataParallel
        load_weights(unwrap_module(obj)[0], weights)
    return LoadedTarget(spec, path, resolved, obj, kind, found_by, raw_inputs, loss_fn)


def _state_dict_in(loaded: Any) -> Mapping[str, Any] | None:
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model"):
            inner = loaded.get(key)
            if isinstance(inner, Mapping):
                bad = [str(k) for k, v in inner.items() if not isinstance(v, torch.Tensor)]
                if bad:
                    raise CheckpointError(
                        f"the state_dict under {key!r} holds non-tensor values for "
                        f"{', '.join(bad[:10])}"
                    )
                return inner
        if all(isinstance(k, str) for k in loaded) and all(
            isinstance(v, torch.Tensor) for v in loaded.values()
        ):
            return loaded
    return None


def _without_wrapper_prefixes(
    state: Mapping[str, Any], expected: Mapping[str, Any]
) -> Mapping[str, Any]:
    """A checkpoint saved from a wrapped model (`_orig_mod.` of torch.compile, `module.` of
    DataParallel) fits the module inside once the wrappers' prefixes are gone."""
    prefixes = {f"{w.attribute}." for w in WRAPPERS}
    while state and not any(k in expected for k in state):
        prefix = next((p for p in prefixes if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _root_cause(exc: BaseException) -> str:
    """The first error behind an import error, when the import error hides it: libraries that
    import lazily (transformers) raise 'Could not import module X' from the real failure (a
    broken torchvision, say)."""
    root, seen = exc, {id(exc)}
    while True:
        nxt = root.__cause__ or root.__context__
        if nxt is None or id(nxt) in seen:
            break
        root, seen = nxt, seen | {id(nxt)}
    if root is exc or str(root) in str(exc):
        return ""
    return f"\ncaused by {type(root).__name__}: {root}"


def load_weights(model: nn.Module, weights: str) -> None:
    """Load a state_dict safely into a model gradtool built from the user's file."""
    path = Path(weights)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses any pickle that would run code
        text = str(exc).strip().splitlines()
        first = text[0] if text else type(exc).__name__
        unsafe = "weights_only" in str(exc) or "Unsupported global" in str(exc)
        raise CheckpointError(
            f"{path} is not a safe PyTorch checkpoint"
            + (": it holds objects other than tensors, and was not unpickled" if unsafe else "")
            + f" ({first[:200]})",
            hint="Save weights with torch.save(model.state_dict(), path).",
        ) from None
    state = _state_dict_in(loaded)
    if state is None:
        raise CheckpointError(
            f"{path} holds a {type(loaded).__name__}, not a state_dict "
            "(nor a dict with one under 'state_dict' or 'model')"
        )
    expected = model.state_dict()
    state = _without_wrapper_prefixes(state, expected)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in state
        and isinstance(state[k], torch.Tensor)
        and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected))
    if misshaped:
        problems.append("mis-shaped: " + ", ".join(misshaped))
    if problems:
        raise CheckpointError(f"{path} does not match the model: " + "; ".join(problems))
    try:
        with torch.no_grad():
            model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} could not be loaded into the model: {exc}") from None


_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "float64": torch.float64,
    "double": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "long": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name.lower().removeprefix("torch.")]
    except KeyError:
        raise InputError(f"unknown dtype {name!r}; use one of {', '.join(_DTYPES)}") from None


def inputs_from_shapes(shapes: list[str], dtype: str = "float32", seed: int = 0) -> tuple:
    """`--input-shape 8,16` (one per positional input) -> seeded random tensors."""
    torch_dtype = parse_dtype(dtype)
    gen = torch.Generator().manual_seed(seed)
    tensors = []
    for text in shapes:
        try:
            shape = tuple(int(part) for part in re.split(r"[,x×]", text.strip()))
        except ValueError:
            raise InputError(
                f"bad --input-shape {text!r}: expected comma-separated sizes like 8,16"
            ) from None
        if not shape or any(s <= 0 for s in shape):
            raise InputError(f"bad --input-shape {text!r}: sizes must be positive integers")
        if torch_dtype.is_floating_point:
            tensors.append(torch.randn(shape, generator=gen).to(torch_dtype))
        elif torch_dtype == torch.bool:
            tensors.append(torch.randint(0, 2, shape, generator=gen).bool())
        else:
            tensors.append(torch.randint(0, 10, shape, generator=gen).to(torch_dtype))
    return tuple(tensors)
