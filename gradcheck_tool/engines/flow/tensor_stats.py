"""The tensor arithmetic of the hooks: squared norms, extremes and finite probes as 0-d
device tensors (the host reads them back later, in one transfer)."""

from __future__ import annotations

from typing import Any

import torch

from ..._tree import floating_leaves


def local(t: torch.Tensor) -> torch.Tensor:
    """The part of `t` this process holds: a DTensor's local shard (FSDP2 parameters and
    gradients; their statistics are combined across ranks afterwards, distributed.py), any
    other tensor itself. (A DTensor op would redistribute, or fail on a sharded dimension.)"""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None and type(t).__name__ == "DTensor" else t


def sq_norm(t: torch.Tensor) -> torch.Tensor:
    """Σ t² as a 0-d tensor (the host takes the square root).

    A dot product of the flattened tensor with itself is one memory-bound pass, about twice
    as fast on CPU as vector_norm; half precision and odd layouts go through vector_norm with
    float32 accumulation. (A float32 sum of squares overflows only for entries beyond ~1e19,
    which no update survives either: that reads as an exploding, non-finite norm.)
    """
    if type(t) is not torch.Tensor:
        t = local(t)
    if t.dtype in (torch.float32, torch.float64) and t.is_contiguous() and t.numel():
        flat = t.view(-1)
        return torch.dot(flat, flat)
    low = t.dtype in (torch.float16, torch.bfloat16)
    return torch.linalg.vector_norm(t, dtype=torch.float32 if low else None).square()


def extremes(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of a tensor in one pass; NaN propagates. (The inf-norm, which would give
    max |t| directly, is an order of magnitude slower on CPU.)"""
    if type(t) is not torch.Tensor:
        t = local(t)
    if t.is_complex():
        t = t.abs()
    return torch.aminmax(t)


def grad_accumulator(p: torch.Tensor) -> Any:
    """The AccumulateGrad node of a leaf parameter (None if there is none)."""
    try:
        return torch.autograd.graph.get_gradient_edge(p).node
    except (AttributeError, RuntimeError):  # older torch: the classic detour through a view
        fn = p.view_as(p).grad_fn
        return fn.next_functions[0][0] if fn is not None else None


def finite_probe(t: torch.Tensor) -> torch.Tensor:
    """A scalar that is finite iff every entry of `t` is: their sum, one fast pass.

    (A float32 sum of finite values overflows only beyond ~1e33 per entry, where the next op
    overflows anyway; half precision is summed in float32.)
    """
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.sum(dtype=torch.float32)
    return t.sum()


def floating(value: Any) -> list[torch.Tensor]:
    """The floating tensors in a module's inputs or output (fast path for plain tensors)."""
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() or value.is_complex() else []
    if isinstance(value, tuple) and all(isinstance(v, torch.Tensor) for v in value):
        return [v for v in value if v.is_floating_point() or v.is_complex()]
    return [t for _, t in floating_leaves(value)]


def dense(g: torch.Tensor) -> torch.Tensor:
    return g.coalesce().values() if g.is_sparse else g
