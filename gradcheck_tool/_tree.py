"""Tensors inside nested inputs and outputs, walked one way everywhere.

Containers that `torch.utils._pytree` knows (tuple, list, dict, namedtuple, OrderedDict,
defaultdict, deque, and whatever a library registers, e.g. Hugging Face's ModelOutput) are
taken apart by pytree, one level at a time; the containers user code returns that pytree
does not know (other Mapping types, dataclasses, objects with `to_tuple()`) are taken apart
here. A leaf's path reads as Python would index it: `batch['x'][0]`, `out.logits`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any, Callable

import torch
import torch.utils._pytree as pytree

_Children = tuple[list[tuple[str, Any]], Callable[[list[Any]], Any]]


def _children(value: Any) -> _Children | None:
    """(the children of a container with their path suffixes, a function that rebuilds the
    container from new children), or None for a leaf."""
    if isinstance(value, torch.Tensor):
        return None
    if pytree._get_node_type(value) in pytree.SUPPORTED_NODES:
        try:
            # one level: every child is a leaf of this flatten
            flat, spec = pytree.tree_flatten_with_path(value, is_leaf=lambda x: x is not value)
        except ValueError:  # registered without key paths: walked as a Mapping below
            pass
        else:
            items = [(pytree.keystr(path), child) for path, child in flat]
            return items, lambda new: pytree.tree_unflatten(new, spec)
    if isinstance(value, Mapping):
        keys = list(value.keys())
        return [(f"[{k!r}]", value[k]) for k in keys], lambda new: _rebuilt(value, keys, new)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = [f.name for f in dataclasses.fields(value) if f.init]
        return [(f".{n}", getattr(value, n)) for n in names], lambda new: dataclasses.replace(
            value, **dict(zip(names, new))
        )
    if callable(getattr(value, "to_tuple", None)):  # ModelOutput-like, read-only
        return [(f"[{i}]", v) for i, v in enumerate(value.to_tuple())], lambda new: value
    return None


def _rebuilt(mapping: Mapping, keys: list, values: list) -> Any:
    try:
        return type(mapping)(zip(keys, values))
    except Exception:  # a Mapping type that can't be built from pairs: a plain dict will do
        return dict(zip(keys, values))


def leaves_with_paths(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, leaf) for every leaf, in a fixed order (dicts in insertion order)."""
    kids = _children(value)
    if kids is None:
        yield path, value
        return
    for key, child in kids[0]:
        yield from leaves_with_paths(child, path + key)


def replace_at(value: Any, table: dict[str, Any], path: str = "") -> Any:
    """A copy of the structure with the leaves at `table`'s paths replaced."""
    if path in table:
        return table[path]
    kids = _children(value)
    if kids is None:
        return value
    items, rebuild = kids
    if not any(p.startswith(path + key) for key, _ in items for p in table):
        return value
    return rebuild([replace_at(child, table, path + key) for key, child in items])


def map_tensors(fn: Callable[[torch.Tensor], Any], value: Any) -> Any:
    """The structure with fn(t) in place of every tensor t."""
    table = {p: fn(t) for p, t in leaves_with_paths(value) if isinstance(t, torch.Tensor)}
    return replace_at(value, table) if table else value


def floating_leaves(value: Any, root: str = "output") -> Iterator[tuple[str, torch.Tensor]]:
    """Every floating (or complex) tensor, with its path from `root`."""
    for path, leaf in leaves_with_paths(value, root):
        if isinstance(leaf, torch.Tensor) and (leaf.is_floating_point() or leaf.is_complex()):
            yield path, leaf


def first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor in the structure, or None."""
    return next((t for _, t in leaves_with_paths(value) if isinstance(t, torch.Tensor)), None)
