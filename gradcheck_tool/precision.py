"""Where the user's forward computes below the check's precision, and keeping it there.

A float64 check assumes f is computed in float64. Many models compute part of it in lower
precision on purpose — Hugging Face attention does `softmax(x, dtype=torch.float32)`, losses
do `logits.float()` — and then f carries float32 rounding (≈1e-7 relative), which swamps
float64 finite differences at h = 1e-6: every tensor upstream would look like a bug.

One forward under a TorchFunctionMode (`downcasts`) records each call that turns a floating
value into a less precise one, with the module whose forward made it. Such casts are
precision choices, not the math of the gradient, so the check then runs every evaluation
under `KeepPrecision`, which gives those calls the check's dtype instead; what that can't
reach (a lower precision reached another way) is judged at the precision it computes in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.overrides import TorchFunctionMode

from ._tree import leaves_with_paths

MAX_PLACES = 64  # places recorded; the report names the first few


@dataclass(frozen=True)
class Downcast:
    """One call that turned a floating value into a less precise one."""

    op: str  # e.g. "softmax(dtype=torch.float32)", "Tensor.float"
    module: str  # the module whose forward made the call ("" for the model / a function)
    to: torch.dtype

    def describe(self) -> str:
        where = f" in {self.module}" if self.module else ""
        return f"{self.op}{where} → {str(self.to).replace('torch.', '')}"


class _Downcasts(TorchFunctionMode):
    def __init__(self, current_module: Callable[[], str]) -> None:
        super().__init__()
        self.current_module = current_module
        self.found: list[Downcast] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if len(self.found) < MAX_PLACES:
            highest = _finest(_floating(args) + _floating(kwargs))
            if highest is not None:
                for t in _floating(out):
                    if torch.finfo(t.dtype).eps > torch.finfo(highest).eps:
                        name = _name_of(func, kwargs)
                        self.found.append(Downcast(name, self.current_module(), t.dtype))
                        break
        return out


# Tensor methods that cast to a fixed dtype
_CASTS = {
    torch.Tensor.float: torch.float32,
    torch.Tensor.half: torch.float16,
    torch.Tensor.bfloat16: torch.bfloat16,
}


class KeepPrecision(TorchFunctionMode):
    """While it is active, a call that would cast a floating value to a less precise
    floating dtype than `dtype` gets `dtype` instead (`x.float()`, `x.to(torch.float32)`,
    `softmax(x, dtype=torch.float32)`): the values stay as precise as the check."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in _CASTS and args and isinstance(args[0], torch.Tensor):
            source = args[0]
            if source.is_floating_point() and _coarser(_CASTS[func], source.dtype):
                return source.clone()  # a cast makes a new tensor: in-place use stays apart
            return func(*args, **kwargs)
        if not any(self._lowered(v) for v in (*args, *kwargs.values())):
            return func(*args, **kwargs)
        args = tuple(self.dtype if self._lowered(v) else v for v in args)
        kwargs = {k: self.dtype if self._lowered(v) else v for k, v in kwargs.items()}
        if func is torch.Tensor.to:
            kwargs.setdefault("copy", True)  # as the cast would have: not the same tensor
        return func(*args, **kwargs)

    def _lowered(self, value: Any) -> bool:
        return (
            isinstance(value, torch.dtype)
            and value.is_floating_point
            and _coarser(value, self.dtype)
        )


def _coarser(dtype: torch.dtype, than: torch.dtype) -> bool:
    return torch.finfo(dtype).eps > torch.finfo(than).eps


def downcasts(run: Callable[[], Any], module: torch.nn.Module | None) -> list[Downcast]:
    """The calls in one run of `run()` that lower the precision of a floating value, each
    with the module (of `module`) whose forward made it; in the order they happened."""
    names = {id(m): n for n, m in module.named_modules()} if module is not None else {}
    stack: list[str] = []
    with _module_stack(names, stack), torch.no_grad():
        mode = _Downcasts(lambda: stack[-1] if stack else "")
        with mode:
            run()
    return mode.found


@contextlib.contextmanager
def _module_stack(names: dict[int, str], stack: list[str]) -> Iterator[None]:
    """Global forward hooks that keep the names of the modules now running, innermost last."""

    def enter(module: torch.nn.Module, args: Any) -> None:
        if id(module) in names:
            stack.append(names[id(module)])

    def leave(module: torch.nn.Module, args: Any, output: Any) -> None:
        if id(module) in names and stack:
            stack.pop()

    handles = [register_module_forward_pre_hook(enter), register_module_forward_hook(leave)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _floating(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    return [
        t
        for _, t in leaves_with_paths(value, writable=True)
        if isinstance(t, torch.Tensor) and t.is_floating_point()
    ]


def _finest(tensors: list[torch.Tensor]) -> torch.dtype | None:
    dtypes = {t.dtype for t in tensors}
    return min(dtypes, key=lambda d: torch.finfo(d).eps) if dtypes else None


def _name_of(func: Any, kwargs: dict) -> str:
    name = getattr(func, "__name__", str(func))
    owner = getattr(func, "__qualname__", "")
    if owner.startswith("TensorBase.") or owner.startswith("Tensor."):
        name = f"Tensor.{name}"
    dtype = kwargs.get("dtype")
    return f"{name}(dtype={dtype})" if dtype is not None else name
