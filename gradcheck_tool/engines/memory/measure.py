"""One measured training step: what each module saves for the backward, and its times.

Every hook lives in a side table (`StepProbe.handles`) and is removed in `finally` by the
caller; the hooks are put on gradtool's own copy of the model, never on the user's.

Note [a storage counted once]
    Autograd saves tensors, but memory is held by their storages: a view of an activation
    saved by two ops (or by two modules) keeps one block alive. Saved tensors are keyed by
    their storage, through a C-level weak reference (`StorageWeakRef`): the storage's key
    (`cdata`) may be reused once a storage is freed, so a key whose weak reference has
    expired names a new storage. Parameters, buffers and the step's inputs are not
    activations: they are alive whether or not anything is saved.
"""

from __future__ import annotations

import gc
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

LOSS = "(loss)"  # the owner of what the loss saves: not a module


def storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def tensors_in(value: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(value) if isinstance(t, torch.Tensor)]


class StorageSet:
    """Storages seen, each once (Note [a storage counted once]): key -> (weak ref, bytes)."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[StorageWeakRef, int]] = {}
        self.ids: dict[int, int] = {}  # key -> the serial number of the storage it names now
        self.serial = 0

    def add(self, t: torch.Tensor) -> int:
        """The storage's serial number (stable for this storage's lifetime)."""
        storage = t.untyped_storage()
        key = storage._cdata
        known = self.seen.get(key)
        if known is None or known[0].expired():
            self.serial += 1
            self.seen[key] = (StorageWeakRef(storage), storage.nbytes())
            self.ids[key] = self.serial
        return self.ids[key]


@dataclass
class StepRecord:
    """What one step measured; storages are serial numbers of a StorageSet."""

    order: list[str] = field(default_factory=list)  # modules by first call
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    forward_ms: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    own_backward_ms: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    # innermost module -> the storages its own operations saved
    own_saved: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    sizes: dict[int, int] = field(default_factory=dict)  # storage -> bytes
    inputs_of: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    fixed: set[int] = field(default_factory=set)  # parameters', buffers' storages
    step_inputs: set[int] = field(default_factory=set)  # the model's inputs' storages
    # storages the model keeps on itself after the forward (`self.last_attn = a`): alive
    # whether or not the block is checkpointed
    kept_by_model: set[int] = field(default_factory=set)
    forward_total_ms: float = 0.0
    backward_total_ms: float = 0.0
    grad_bytes: dict[str, int] = field(default_factory=dict)  # parameter name -> .grad bytes
    # FlopCounterMode's counts (a separate step): each module's forward, inclusive; the step's
    # forward + backward
    forward_flops: dict[str, int] = field(default_factory=dict)
    step_flops: int = 0


class StepProbe:
    """Hooks for one step on `model` (gradtool's copy): module pre/post hooks keep the stack
    of running modules; a saved-tensors hook charges each saved storage to the innermost
    one; a TorchFunctionMode maps each new autograd node to it, and node hooks time the
    backward per module."""

    def __init__(self, model: nn.Module, sync: Callable[[], None]) -> None:
        self.model = model
        self.sync = sync
        self.names = {id(m): name for name, m in model.named_modules()}
        self.rec = StepRecord()
        self.storages = StorageSet()
        self.stack: list[str] = []
        self.started: list[float] = []
        self.phase = "idle"  # "forward" | "loss" | "backward": recomputation is not a call
        self.handles: list[Any] = []
        self.node_owner: dict[Any, str] = {}
        self.node_started: dict[Any, float] = {}

    # --- forward --------------------------------------------------------------------------
    def attach(self) -> None:
        for m in self.model.modules():
            self.handles.append(m.register_forward_pre_hook(self._pre, with_kwargs=True))
            self.handles.append(m.register_forward_hook(self._post, always_call=True))
        for t in [*self.model.parameters(), *self.model.buffers()]:
            self.rec.fixed.add(self.storages.add(t))

    def close(self) -> None:
        while self.handles:
            self.handles.pop().remove()

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.phase != "forward":
            return
        name = self.names[id(module)]
        if name not in self.rec.calls:
            self.rec.order.append(name)
        self.rec.calls[name] += 1
        self.rec.inputs_of[name].update(self._ids(tensors_in((args, kwargs))))
        self.stack.append(name)
        self.sync()
        self.started.append(time.perf_counter())

    def _post(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self.phase != "forward" or not self.stack or self.stack[-1] != self.names[id(module)]:
            return
        self.sync()
        name = self.stack.pop()
        self.rec.forward_ms[name] += (time.perf_counter() - self.started.pop()) * 1e3

    def _ids(self, tensors: list[torch.Tensor]) -> set[int]:
        out = set()
        for t in tensors:
            sid = self.storages.add(t)
            self.rec.sizes[sid] = t.untyped_storage().nbytes()
            out.add(sid)
        return out

    def owner(self) -> str:
        if self.phase == "loss":
            return LOSS
        return self.stack[-1] if self.stack else ""

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        if self.phase in ("forward", "loss"):
            (sid,) = self._ids([t])
            if sid not in self.rec.fixed and sid not in self.rec.step_inputs:
                self.rec.own_saved[self.owner()].add(sid)
        return t  # nothing changes: the tensor itself is what autograd keeps

    def saving(self) -> Any:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)

    def note_kept(self) -> None:
        """Tensors the modules hold as plain attributes after the forward (not parameters
        or buffers): checkpointing cannot free them."""
        skip = ("_parameters", "_buffers", "_modules")
        for m in self.model.modules():
            held = [v for k, v in vars(m).items() if k not in skip]
            self.rec.kept_by_model.update(self._ids(tensors_in(held)))

    def note_inputs(self, args: tuple, kwargs: dict) -> None:
        self.rec.step_inputs.update(self._ids(tensors_in((args, kwargs))))

    def nodes(self) -> TorchFunctionMode:
        return _NodeOwners(self)

    # --- backward -------------------------------------------------------------------------
    def time_backward(self, loss: torch.Tensor) -> None:
        """Hook every node reachable from the loss; a node no forward call mapped (made
        inside a composite op, AccumulateGrad) belongs to the first node that reaches it."""
        root = loss.grad_fn
        if root is None:
            return
        owner = self.node_owner
        owner.setdefault(root, LOSS)
        todo, seen = [root], {root}
        while todo:
            node = todo.pop()
            for nxt, _ in node.next_functions:
                if nxt is None or nxt in seen:
                    continue
                seen.add(nxt)
                owner.setdefault(nxt, owner[node])
                todo.append(nxt)
        for node in seen:
            self.handles.append(node.register_prehook(self._node_pre(node)))
            self.handles.append(node.register_hook(self._node_post(node)))

    def _node_pre(self, node: Any) -> Callable:
        def pre(grad_outputs: Any) -> None:
            self.sync()
            self.node_started[node] = time.perf_counter()

        return pre

    def _node_post(self, node: Any) -> Callable:
        def post(grad_inputs: Any, grad_outputs: Any) -> None:
            self.sync()
            began = self.node_started.pop(node, None)
            if began is not None:
                self.rec.own_backward_ms[self.node_owner[node]] += (
                    time.perf_counter() - began
                ) * 1e3

        return post


class _NodeOwners(TorchFunctionMode):
    """Each output's grad_fn belongs to the innermost module running when it was made."""

    def __init__(self, probe: StepProbe) -> None:
        super().__init__()
        self.probe = probe

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        if self.probe.phase in ("forward", "loss"):
            for t in tensors_in(out):
                node = t.grad_fn
                if node is not None and node not in self.probe.node_owner:
                    self.probe.node_owner[node] = self.probe.owner()
        return out


class HeldStorages(TorchDispatchMode):
    """The independent measurement: every storage an operation of the forward produced,
    through a weak reference; after the forward and the loss, those still alive are what
    the backward will need (Note [a storage counted once]). Nothing is held here."""

    def __init__(self, excluded: set[int], owner: Callable[[], str]) -> None:
        super().__init__()
        self.excluded = excluded  # storage keys of parameters, buffers, inputs
        self.owner = owner  # the innermost module running
        self.made: dict[int, list[tuple[StorageWeakRef, int, str]]] = defaultdict(list)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        for t in tensors_in(out):
            storage = t.untyped_storage()
            key = storage._cdata
            if key in self.excluded:
                continue
            refs = self.made[key]
            if not refs or refs[-1][0].expired():
                refs.append((StorageWeakRef(storage), storage.nbytes(), self.owner()))
        return out

    def alive(self) -> dict[str, int]:
        """Bytes still alive, by the module whose operation made them."""
        gc.collect()
        by_owner: dict[str, int] = defaultdict(int)
        for refs in self.made.values():
            for ref, n, owner in refs:
                if not ref.expired():
                    by_owner[owner] += n
        return dict(by_owner)


def fixed_keys(model: nn.Module, args: tuple, kwargs: dict) -> set[int]:
    tensors = [*model.parameters(), *model.buffers(), *tensors_in((args, kwargs))]
    return {storage_key(t) for t in tensors}
