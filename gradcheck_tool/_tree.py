"""Tensors inside nested inputs and outputs, walked one way everywhere.

A leaf's path reads as Python would index it: `batch['x'][0]`, `out.logits`. Two walks:

- *writable* (the inputs, which are substituted and converted): tuples, lists and dicts —
  their subclasses and namedtuples included — are taken apart and rebuilt with their type;
  anything else is a leaf.
- *read-only* (what a model returns): also any other Mapping (a Hugging Face ModelOutput, a
  tokenizer's BatchEncoding), dataclasses (every field), and objects offering `to_tuple()`.

(Not `torch.utils._pytree`: it treats list, tuple and Mapping subclasses and dataclasses as
leaves, and flattening one level at a time through it cost ten times as much on the
per-evaluation path.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

_Children = tuple[list[tuple[str, Any]], Callable[[list[Any]], Any]]


def _children(value: Any, writable: bool) -> _Children | None:
    """(the children of a container with their path suffixes, a function that rebuilds the
    container from new children), or None for a leaf."""
    if isinstance(value, torch.Tensor):
        return None
    if isinstance(value, (tuple, list)):
        items = [(f"[{i}]", v) for i, v in enumerate(value)]
        return items, lambda new: _rebuilt_sequence(value, new)
    if isinstance(value, dict) or (not writable and isinstance(value, Mapping)):
        keys = list(value.keys())
        return [(f"[{k!r}]", value[k]) for k in keys], lambda new: _rebuilt_mapping(
            value, keys, new
        )
    if writable:
        return None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = [f.name for f in dataclasses.fields(value)]
        return [(f".{n}", getattr(value, n)) for n in names], _read_only
    if callable(getattr(value, "to_tuple", None)):  # ModelOutput-like
        return [(f"[{i}]", v) for i, v in enumerate(value.to_tuple())], _read_only
    return None


def _read_only(new: list[Any]) -> Any:
    raise TypeError("a read-only walk has no rebuild")


def _rebuilt_sequence(value: tuple | list, items: list[Any]) -> Any:
    if hasattr(value, "_fields"):  # namedtuple
        return type(value)(*items)
    try:
        return type(value)(items)
    except Exception:  # a subclass whose constructor wants something else
        return tuple(items) if isinstance(value, tuple) else list(items)


def _rebuilt_mapping(mapping: Mapping, keys: list, values: list) -> Any:
    try:
        return type(mapping)(zip(keys, values))
    except Exception:  # e.g. a defaultdict, whose first argument is its default factory
        return dict(zip(keys, values))


def leaves_with_paths(
    value: Any, path: str = "", *, writable: bool = False
) -> Iterator[tuple[str, Any]]:
    """(path, leaf) for every leaf, in a fixed order (dicts in insertion order)."""
    kids = _children(value, writable)
    if kids is None:
        yield path, value
        return
    for key, child in kids[0]:
        yield from leaves_with_paths(child, path + key, writable=writable)


def replace_at(value: Any, table: dict[str, Any], path: str = "") -> Any:
    """A copy of the structure (walked as writable) with the leaves at `table`'s paths
    replaced; branches without a replaced leaf are the original objects."""
    if path in table:
        return table[path]
    kids = _children(value, writable=True)
    if kids is None:
        return value
    items, rebuild = kids
    new = [replace_at(child, table, path + key) for key, child in items]
    if all(a is b for a, b in zip(new, (child for _, child in items))):
        return value
    return rebuild(new)


def map_tensors(fn: Callable[[torch.Tensor], Any], value: Any) -> Any:
    """The structure (walked as writable) with fn(t) in place of every tensor t."""
    table = {
        p: fn(t) for p, t in leaves_with_paths(value, writable=True) if isinstance(t, torch.Tensor)
    }
    return replace_at(value, table) if table else value


def floating_leaves(value: Any, root: str = "output") -> Iterator[tuple[str, torch.Tensor]]:
    """Every floating (or complex) tensor of what a model returned, with its path."""
    for path, leaf in leaves_with_paths(value, root):
        if isinstance(leaf, torch.Tensor) and (leaf.is_floating_point() or leaf.is_complex()):
            yield path, leaf


def first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor in the structure (walked as writable), or None."""
    return next(
        (t for _, t in leaves_with_paths(value, writable=True) if isinstance(t, torch.Tensor)),
        None,
    )
