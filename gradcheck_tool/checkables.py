"""Which tensors a check differentiates, and which it leaves out and why.

Every tensor that can carry a gradient is either checked or named in the report with the
reason it was not: parameters; buffers that require grad; layers kept in plain Python lists,
tuples or dicts (registered on gradtool's private copy so that they are checked); tensor
attributes that require grad but are neither parameters nor buffers (named: they can't be
substituted); floating and complex inputs however nested — only those marked
`requires_grad=True` when some are (gradcheck's rule) — minus what `skip`/`wrt` leave out.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._tree import leaves_with_paths
from .errors import InputError, OptionError
from .results import Unchecked


@dataclasses.dataclass(frozen=True)
class Checkable:
    """One tensor whose gradient is checked: where it lives and its value in check dtype.

    A complex tensor is checked through its real view (shape (..., 2): real and imaginary
    parts), as gradcheck checks both directions (Wirtinger); `substituted` turns a value of
    that view back into the complex tensor the model takes."""

    name: str
    kind: str  # "parameter" | "buffer" | "input"
    slot: tuple  # ("param", name) | ("buffer", name) | ("arg" | "kwarg", key, path)
    value: torch.Tensor
    complex: bool = False

    @classmethod
    def of(cls, name: str, kind: str, slot: tuple, tensor: torch.Tensor) -> Checkable:
        if tensor.is_complex():
            return cls(name, kind, slot, torch.view_as_real(tensor.detach()), complex=True)
        return cls(name, kind, slot, tensor.detach())

    def substituted(self, value: torch.Tensor) -> torch.Tensor:
        return torch.view_as_complex(value) if self.complex else value


def differentiable(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())


# --- the model's tensors ---------------------------------------------------------------------


def register_loose_layers(module: nn.Module) -> list[str]:
    """Register, on gradtool's private copy, the layers its modules keep in plain Python
    lists, tuples and dicts (not nn.ModuleList/ModuleDict): their parameters are then
    checked like any other (the forward still reaches them through the list). Returns their
    names, e.g. `blocks[0]`."""
    registered = {id(m) for m in module.modules()}
    names = []
    for owner_name, owner in list(module.named_modules()):
        for attr, value in list(vars(owner).items()):
            for key, item in _container_items(attr, value):
                if isinstance(item, nn.Module) and id(item) not in registered:
                    local = f"{attr}[{key!r}]"
                    owner.add_module(local, item)
                    registered.update(id(m) for m in item.modules())
                    names.append(f"{owner_name}.{local}" if owner_name else local)
    return names


# nn.Module's own bookkeeping (_parameters, _modules, hooks, ...): not the user's containers
_MODULE_INTERNALS = frozenset(vars(nn.Module()))


def _container_items(attr: str, value: Any) -> list[tuple[Any, Any]]:
    if attr in _MODULE_INTERNALS:
        return []
    if isinstance(value, (list, tuple)):
        return list(enumerate(value))
    if isinstance(value, dict):
        return list(value.items())
    return []


def module_checkables(module: nn.Module) -> tuple[list[Checkable], list[Unchecked]]:
    """Parameters that require grad and buffers that require grad, in registration order;
    and the tensor attributes that require grad but can't be substituted."""
    checkables = [
        Checkable.of(name, "parameter", ("param", name), p)
        for name, p in module.named_parameters()
        if p.requires_grad
    ]
    checkables += [
        Checkable.of(name, "buffer", ("buffer", name), b)
        for name, b in module.named_buffers()
        if b.requires_grad and differentiable(b)
    ]
    known = {id(t) for t in (*module.parameters(), *module.buffers())}
    unchecked = []
    for owner_name, owner in module.named_modules():
        for attr, value in vars(owner).items():
            tensors = [(attr, value)] + [
                (f"{attr}[{key!r}]", item) for key, item in _container_items(attr, value)
            ]
            for local, t in tensors:
                if differentiable(t) and t.requires_grad and id(t) not in known:
                    name = f"{owner_name}.{local}" if owner_name else local
                    unchecked.append(
                        Unchecked(
                            name,
                            "parameter",
                            "a tensor attribute that requires grad but is neither an "
                            "nn.Parameter nor a buffer: gradtool can't substitute it (wrap it "
                            "in nn.Parameter, or register_buffer it)",
                        )
                    )
    return checkables, unchecked


# --- the inputs -------------------------------------------------------------------------------


def input_checkables(
    roots: Sequence[tuple[str, Any, str, Any, Any]], prefix: str
) -> tuple[list[Checkable], list[Unchecked]]:
    """The checkable leaves of the inputs. `roots`: (where, key, name, value in check dtype,
    the value as the user gave it). When the user marked some floating inputs
    `requires_grad=True`, only those are checked (gradcheck's rule)."""
    found: list[tuple[Checkable, bool]] = []
    unchecked = []
    for where, key, root_name, value, given in roots:
        marked = {
            path: leaf.requires_grad
            for path, leaf in leaves_with_paths(given, root_name, writable=True)
            if isinstance(leaf, torch.Tensor)
        }
        for path, leaf in leaves_with_paths(value, root_name, writable=True):
            if not differentiable(leaf):
                continue
            name = prefix + path
            if leaf.device.type == "meta":
                raise InputError(
                    f"the input {name} is on the meta device: it has no values to perturb",
                    hint="Pass real tensors (e.g. torch.randn(...)) as example inputs.",
                )
            if leaf.layout != torch.strided:
                why = f"a {leaf.layout} tensor: only dense inputs are perturbed"
                unchecked.append(Unchecked(name, "input", why))
                continue
            found.append((Checkable.of(name, "input", (where, key, path), leaf), marked[path]))
    if any(flag for _, flag in found):
        for c, flag in found:
            if not flag:
                unchecked.append(
                    Unchecked(
                        c.name,
                        "input",
                        "requires_grad=False while other inputs require grad: only those "
                        "are checked (torch.autograd.gradcheck's rule)",
                    )
                )
        found = [(c, flag) for c, flag in found if flag]
    return [c for c, _ in found], unchecked


# --- what is left out -------------------------------------------------------------------------


def without_empty(checkables: list[Checkable]) -> tuple[list[Checkable], list[Unchecked]]:
    kept = [c for c in checkables if c.value.numel()]
    return kept, [
        Unchecked(c.name, c.kind, "empty (0 elements): nothing to check")
        for c in checkables
        if not c.value.numel()
    ]


def selected(
    checkables: list[Checkable], skip: Sequence[str], wrt: Sequence[str]
) -> tuple[list[Checkable], list[Unchecked]]:
    """The checkables `wrt` names (all when empty) minus those `skip` names. A name matches
    a tensor's reported name, with or without the `input:` of a model's inputs, and may be a
    shell-style pattern (`encoder.*`). A name that matches nothing is an error."""
    for option, patterns in (("wrt", wrt), ("skip", skip)):
        for pattern in patterns:
            if not any(_matches(c, pattern) for c in checkables):
                names = ", ".join(c.name for c in checkables[:30])
                raise OptionError(
                    option,
                    f"names no checked tensor: {pattern!r}",
                    hint=f"The tensors are: {names}{' …' if len(checkables) > 30 else ''}",
                )
    kept, unchecked = [], []
    for c in checkables:
        if wrt and not any(_matches(c, p) for p in wrt):
            unchecked.append(Unchecked(c.name, c.kind, "not named by wrt (--wrt)"))
        elif any(_matches(c, p) for p in skip):
            unchecked.append(Unchecked(c.name, c.kind, "left out by skip"))
        else:
            kept.append(c)
    return kept, unchecked


def _matches(c: Checkable, pattern: str) -> bool:
    bare = c.name.removeprefix("input:")
    return fnmatch.fnmatchcase(c.name, pattern) or fnmatch.fnmatchcase(bare, pattern)
