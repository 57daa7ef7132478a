"""Gradient flow in a distributed job: the process group and the wrapper (DDP, FSDP2, FSDP1)
a model runs under, its names without the wrappers' prefixes, and the numbers of recorded
steps combined across ranks (Note [reducing a step across ranks] in step.py).

What each rank measures, and how it is combined:
- gradients are read when the backward is complete, after DDP's all-reduce or FSDP's
  reduce-scatter (the recorder's end-of-backward callback), not as the backward makes the
  local ones; an FSDP shard (a DTensor) is measured through its local part;
- squared norms add over the ranks that hold distinct pieces of a tensor (every rank for a
  shard, one rank for a replicated tensor), extremes take MIN/MAX, finite probes add;
- activations are each rank's own examples: per-unit masks with MAX, saturation as counts
  with their totals, and the gradient at a layer's output as 1/W of each rank's (DDP and
  FSDP optimise the mean of the ranks' losses).

Nothing here imports torch.distributed's optional parts unless the model uses them.
"""

from __future__ import annotations

import hashlib
import math
import sys
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .step import DeviceNumbers, Reduction

# A wrapper module and the attribute holding the module it wraps: that name segment is left
# out of the names gradtool shows (`module.0.weight` under DDP is `0.weight`). Looked up only
# in modules already imported (a model cannot be wrapped by a class nobody imported).
WRAPPERS: tuple[tuple[str, str, str], ...] = (
    ("torch.nn.parallel.distributed", "DistributedDataParallel", "module"),
    ("torch.nn.parallel.data_parallel", "DataParallel", "module"),
    (
        "torch.distributed.fsdp.fully_sharded_data_parallel",
        "FullyShardedDataParallel",
        "_fsdp_wrapped_module",
    ),
    (
        "torch.distributed.algorithms._checkpoint.checkpoint_wrapper",
        "ActivationWrapper",
        "_checkpoint_wrapped_module",
    ),
    ("torch._dynamo.eval_frame", "OptimizedModule", "_orig_mod"),
    ("lightning.fabric.wrappers", "_FabricModule", "_forward_module"),
)

_SUMMED = (Reduction.SUM, Reduction.MEAN, Reduction.NORM, Reduction.AVERAGED_SQ)


def _imported(module: str, name: str) -> type | None:
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    return cls if isinstance(cls, type) else None


def wrapped_attribute(module: nn.Module) -> str | None:
    """The attribute under which a wrapper module holds the module it wraps, else None."""
    for where, name, attr in WRAPPERS:
        cls = _imported(where, name)
        if cls is not None and isinstance(module, cls):
            return attr
    return None


def _fsdp2_module() -> type | None:
    return _imported("torch.distributed.fsdp", "FSDPModule")


def original_type(module: nn.Module) -> type:
    """The module's own class: `fully_shard` swaps it for a made-up `FSDP<Name>` subclass."""
    fsdp2 = _fsdp2_module()
    cls = type(module)
    if fsdp2 is not None and issubclass(cls, fsdp2):
        return next((b for b in cls.__mro__[1:] if not issubclass(b, fsdp2)), cls)
    return cls


def display_names(model: nn.Module) -> dict[int, str]:
    """Every module's name as named_modules() gives it (first name wins), with the wrappers'
    segments left out: the same names as the unwrapped model's."""
    names: dict[int, str] = {}
    stack: list[tuple[nn.Module, str]] = [(model, "")]
    while stack:  # depth first, children in order: named_modules()'s order
        module, name = stack.pop()
        if id(module) in names:
            continue
        names[id(module)] = name
        skip = wrapped_attribute(module)
        children = [
            (child, name if attr == skip else (f"{name}.{attr}" if name else attr))
            for attr, child in module._modules.items()
            if child is not None
        ]
        stack.extend(reversed(children))
    return names


def unwrapped(model: nn.Module) -> nn.Module:
    """The user's module inside any wrappers around it."""
    while True:
        attr = wrapped_attribute(model)
        inner = getattr(model, attr, None) if attr else None
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def model_type_name(model: nn.Module) -> str:
    """The name a report gives a model: its own class's, inside any wrapper."""
    return original_type(unwrapped(model)).__name__


def whole_shapes(model: nn.Module, params: Sequence[torch.Tensor]) -> dict[int, torch.Size]:
    """The parameters (by position in `params`) whose whole shape is not their own: an
    FSDP1 rank holds a flat 1-D piece, whose parameter's shape its FlatParameter records
    (`_shapes`, and the flat parameter's own unsharded size without use_orig_params). A
    DTensor's shape is the whole one already (FSDP2)."""
    shapes: dict[int, torch.Size] = {}
    if _imported("torch.distributed.fsdp._flat_param", "FlatParameter") is None:
        return {}  # (no FSDP1 in this process)
    for m in model.modules():
        flat = getattr(m, "_flat_param", None)
        if flat is None or not hasattr(flat, "_shapes"):
            continue
        for q, shape in zip(getattr(flat, "_params", None) or (), flat._shapes):
            shapes[id(q)] = shape
        shapes[id(flat)] = getattr(flat, "_unpadded_unsharded_size", flat.shape)
    return {i: shapes[id(p)] for i, p in enumerate(params) if id(p) in shapes}


def is_dtensor(t: Any) -> bool:
    return type(t).__name__ == "DTensor" and hasattr(t, "to_local")


# --- the job --------------------------------------------------------------------------


@dataclass
class RankContext:
    """The process group a monitored model trains in, and how its steps are combined."""

    rank: int
    world_size: int
    backend: str
    wrapper: str  # "DDP" | "FSDP2" | "FSDP1"
    device: torch.device  # where the step's numbers are combined (gloo: CPU; NCCL: CUDA)
    group: Any = None  # the process group (None: the default one)
    header_group: Any = None  # a gloo group for the layout check (host numbers, no GPU sync)
    # per parameter of the model map: 1.0 where this rank's numbers count, as a device tensor
    owners: torch.Tensor | None = None
    ddp: nn.Module | None = None  # the DistributedDataParallel module, under DDP
    _index_cache: dict[tuple[int, ...], torch.Tensor] = field(default_factory=dict, repr=False)
    _signs: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def describe(self) -> str:
        return f"{self.wrapper} on {self.world_size} ranks ({self.backend})"

    def gradients_synchronised(self) -> bool:
        """False inside DDP's no_sync(): this backward's gradients stay each rank's own."""
        return self.ddp is None or getattr(self.ddp, "require_backward_grad_sync", True)

    def index(self, indices: Sequence[int]) -> torch.Tensor:
        """A device index tensor, made once per distinct list (no host→device copy a step)."""
        key = tuple(indices)
        t = self._index_cache.get(key)
        if t is None:
            if len(self._index_cache) > 256:
                self._index_cache.clear()
            t = self._index_cache[key] = torch.tensor(key, dtype=torch.long, device=self.device)
        return t

    def min_max_signs(self, n: int) -> torch.Tensor:
        """(-1, 1, -1, 1, ...): (min, max) pairs as numbers whose MAX is wanted."""
        t = self._signs.get(n)
        if t is None:
            t = self._signs[n] = torch.tensor(
                [-1.0, 1.0] * (n // 2), dtype=torch.float64, device=self.device
            )
        return t


def _wrapper_of(model: nn.Module, params: Sequence[torch.Tensor]) -> str | None:
    ddp = _imported("torch.nn.parallel.distributed", "DistributedDataParallel")
    outer: nn.Module | None = model
    while ddp is not None and outer is not None:  # DDP, maybe inside other wrappers
        if isinstance(outer, ddp):
            return "DDP"
        attr = wrapped_attribute(outer)
        outer = getattr(outer, attr, None) if attr else None
    fsdp1 = _imported(
        "torch.distributed.fsdp.fully_sharded_data_parallel", "FullyShardedDataParallel"
    )
    fsdp2 = _fsdp2_module()
    for m in model.modules():
        if fsdp2 is not None and isinstance(m, fsdp2):
            return "FSDP2"
        if fsdp1 is not None and isinstance(m, fsdp1):
            return "FSDP1"
    if any(is_dtensor(p) for p in params):
        return "FSDP2"
    return None


def _ddp_inside(model: nn.Module) -> nn.Module:
    """The DistributedDataParallel module among `model` and the wrappers inside it."""
    while type(model).__name__ != "DistributedDataParallel":
        attr = wrapped_attribute(model)
        inner = getattr(model, attr, None) if attr else None
        if not isinstance(inner, nn.Module):
            break
        model = inner
    return model


def detect_ranks(
    model: nn.Module, params: Sequence[torch.Tensor], outer: nn.Module | None = None
) -> tuple[RankContext | None, str | None]:
    """The job `model` trains in, when a process group of several ranks is initialised and
    the model is wrapped in DDP or FSDP; else None, with a note when a process group is
    initialised but the model is not wrapped (each rank then reports its own gradients).

    `outer`: a wrapper around `model` (the DistributedDataParallel module a trainer made),
    where the module inside it is the one monitored; ignored unless `model` is among its
    modules.

    Called on every rank at the same point (it may create a gloo group for an NCCL job)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None, None
    world = dist.get_world_size()
    if world < 2:
        return None, None
    if outer is not None and outer is not model and any(m is model for m in outer.modules()):
        model = outer  # (the same parameters: the wrapper's are the module's)
    wrapper = _wrapper_of(model, params)
    if wrapper is None:
        return None, (
            f"a process group of {world} ranks is initialised, but the model is not wrapped in "
            "DistributedDataParallel or FSDP: this report is this rank's own gradients "
            "(monitor the wrapped model to combine the ranks)"
        )
    # DDP over a group of its own (process_group=...): its ranks are the job
    group = getattr(_ddp_inside(model), "process_group", None) if wrapper == "DDP" else None
    if group is not None and dist.get_world_size(group) == world:
        group = None  # the default group: a gloo group beside it can be made for NCCL
    if group is not None:
        world = dist.get_world_size(group)
        if world < 2:
            return None, None
    backend = str(dist.get_backend(group))
    on_cuda = any(p.device.type == "cuda" for p in params)
    if on_cuda and "nccl" in backend:
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    ctx = RankContext(dist.get_rank(group), world, backend, wrapper, device, group)
    ctx.ddp = _ddp_inside(model) if wrapper == "DDP" else None
    if device.type != "cpu" and group is None:
        # (a gloo group is made by every rank of the world: not for a group of some ranks,
        # whose layout check then runs on the device)
        ctx.header_group = _gloo_group(dist)
    owners = [_owner(p, ctx, fsdp1) for p, fsdp1 in zip(params, _fsdp1_units(model, params))]
    ctx.owners = torch.tensor(owners, dtype=torch.float64, device=device)
    return ctx, None


# Note [gradtool's gloo group]: made once per default process group and kept in this table,
# keyed weakly by that group: when the job destroys its process group and initialises a new
# one, the entry goes with the old group (its id may be reused by the new one, which must not
# find the old entry). new_group registers the group in torch's own table, so the job's
# destroy_process_group() destroys it with the job's groups.
_GLOO_GROUPS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _gloo_group(dist: Any) -> Any:
    """A gloo group beside an NCCL default group, made once per default group (Note
    [gradtool's gloo group]): the layout check is a few host integers, which NCCL would make
    a GPU→host synchronisation."""
    default = dist.distributed_c10d._get_default_group()
    if default in _GLOO_GROUPS:
        group = _GLOO_GROUPS[default]
        if group is None or _registered(dist, group):
            return group
        # (destroyed on its own while the default group lives on: made again)
    try:
        group = dist.new_group(backend="gloo")
    except Exception:  # no gloo: the check runs on the device (one sync per step)
        group = None
    _GLOO_GROUPS[default] = group
    return group


def _registered(dist: Any, group: Any) -> bool:
    """Whether torch still knows `group` (destroy_process_group() forgets the groups it
    destroys)."""
    world = getattr(dist.distributed_c10d, "_world", None)
    pg_map = getattr(world, "pg_map", None)
    return pg_map is None or group in pg_map


def _fsdp1_units(model: nn.Module, params: Sequence[torch.Tensor]) -> list[Any]:
    """Per parameter, the innermost FSDP1 unit managing it (None: none)."""
    fsdp1 = _imported(
        "torch.distributed.fsdp.fully_sharded_data_parallel", "FullyShardedDataParallel"
    )
    if fsdp1 is None:
        return [None] * len(params)
    unit_of: dict[int, Any] = {}
    for m in model.modules():  # outer units first: an inner unit overwrites
        if isinstance(m, fsdp1):
            for p in m.parameters():
                unit_of[id(p)] = m
    return [unit_of.get(id(p)) for p in params]


def _owner(p: torch.Tensor, ctx: RankContext, fsdp1_unit: Any) -> float:
    """1.0 where this rank's squared norms of `p` (and its gradient, its update) count
    toward the whole tensor's: its shard when sharded, rank 0 when replicated."""
    if is_dtensor(p):
        coords = p.device_mesh.get_coordinate()
        if coords is None:
            return 0.0
        # a shard counts once: from the first replica along every replicated mesh dimension
        return float(all(c == 0 for c, pl in zip(coords, p.placements) if pl.is_replicate()))
    if fsdp1_unit is not None:
        strategy = str(getattr(fsdp1_unit, "sharding_strategy", ""))
        if strategy.endswith("NO_SHARD"):
            return float(ctx.rank == 0)
        inter = getattr(fsdp1_unit, "_inter_node_pg", None)
        if "HYBRID" in strategy and inter is not None:
            import torch.distributed as dist

            return float(dist.get_rank(inter) == 0)
        return 1.0  # this rank's piece of the flat parameter
    return float(ctx.rank == 0)


def check_same_monitor(
    ranks: RankContext, settings: dict[str, int], names: Sequence[str]
) -> str | None:
    """What differs between the ranks' Monitors, or None when nothing does. Every rank's
    Monitor must make the same collectives at the same points: with another `every`, or
    another model, one rank would combine a step where another does not, and the job dies
    (gloo: a collective mismatch and SIGABRT; NCCL: a hang). One all_reduce when the Monitor
    is entered (the MAX of each number and of its negative: the largest and the smallest),
    the same answer on every rank. `settings`: integers that must agree (the options that
    decide the steps); `names`: the model's parameter names, compared as a count and a
    fingerprint. Called on every rank at the same point."""
    import torch.distributed as dist

    text = "\n".join(names).encode()
    values = {
        **settings,
        "parameters": len(names),
        "names": int.from_bytes(hashlib.blake2b(text, digest_size=7).digest(), "big"),
    }
    head = torch.tensor([v for x in values.values() for v in (x, -x)], dtype=torch.int64)
    group = ranks.header_group
    if group is None:
        head, group = head.to(ranks.device), ranks.group
    dist.all_reduce(head, op=dist.ReduceOp.MAX, group=group)
    h = head.tolist()
    spread = {key: (-h[2 * i + 1], h[2 * i]) for i, key in enumerate(values)}
    differ = []
    for key, (lo, hi) in spread.items():
        if lo == hi or key == "names":
            continue
        if key == "parameters":
            differ.append(f"the model has {lo} parameter tensors on some ranks, {hi} on others")
        elif isinstance(settings[key], bool):
            differ.append(f"`{key}` is {bool(lo)} on some ranks, {bool(hi)} on others")
        else:
            differ.append(f"`{key}` is {lo} on some ranks, {hi} on others")
    if not differ and spread["names"][0] != spread["names"][1]:
        differ.append("the model's parameter names differ between ranks")
    return "; ".join(differ) or None


# --- the reduction -----------------------------------------------------------------------


def _fingerprint(items: Sequence[DeviceNumbers]) -> int:
    text = repr([(type(it).__name__, it.structure()) for it in items]).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=7).digest(), "big")


class _Combining:
    """The SUM and MAX of one reduction, in flight (async: on gloo the training goes on
    while they run); `wait()` puts the combined numbers in place, once, before they are
    read back (`step.read_back`)."""

    def __init__(
        self,
        works: list[Any],
        flat: torch.Tensor,
        plan: list[tuple[int, int, Reduction, int, int | None]],
        summed: torch.Tensor | None,
        largest: torch.Tensor | None,
        ranks: RankContext,
        items: list[DeviceNumbers],
    ) -> None:
        self.works, self.flat, self.plan = works, flat, plan
        self.summed, self.largest, self.ranks, self.items = summed, largest, ranks, items

    def wait(self) -> None:
        if self.works is None:
            return
        for work in self.works:
            work.wait()
        self.works = None
        summed, largest, flat = self.summed, self.largest, self.flat
        w = float(self.ranks.world_size)
        for start, n, red, at, nan_at in self.plan:
            if red in _SUMMED:
                r = summed[at : at + n]
                if red is Reduction.MEAN:
                    r = r / w
                elif red is Reduction.AVERAGED_SQ:
                    r = r / (w * w)
                elif red is Reduction.NORM:
                    r = r.sqrt()
            else:
                r = largest[at : at + n]
                if red is Reduction.MIN:
                    r = -r
                elif red is Reduction.MIN_MAX:
                    r = r * self.ranks.min_max_signs(n)
                if nan_at is not None:
                    r = torch.where(summed[nan_at : nan_at + n] > 0, math.nan, r)
            flat[start : start + n] = r
        for it in self.items:
            it.combining = None
        self.items, self.summed, self.largest = [], None, None


def reduce_across_ranks(
    items: Sequence[DeviceNumbers], ranks: RankContext, *, wait: bool = False
) -> bool:
    """`start_reduction` and its `finish` at once: False when the ranks' layouts differ."""
    started = start_reduction(items, ranks)
    return True if started is None else started.finish(wait=wait)


def start_reduction(items: Sequence[DeviceNumbers], ranks: RankContext) -> Started | None:
    """Start combining the ranks' numbers of `items` (steps, optimizer records) in place, in
    three collectives whatever their number: the layout check, one SUM, one MAX (Note
    [reducing a step across ranks]). Every rank must call it with the same items at the same
    point. Here the layout check starts (asynchronously); the returned `Started.finish`
    waits for it and starts the SUM and MAX, asynchronously unless `wait` (reading the items
    back waits for them), and every rank must call it at the same point too. None when no
    item is left to combine.

    `finish` gives False (nothing combined, nothing changed) when the ranks' layouts differ:
    their forwards took different paths, so their numbers are not about the same things."""
    import torch.distributed as dist

    todo = [it for it in items if not it.reduced and it.host is None and it.combining is None]
    if not todo:
        return None
    device, f64 = ranks.device, torch.float64
    pieces = [part.to(device=device, dtype=f64) for it in todo for part in it.parts]
    flat = torch.cat(pieces) if pieces else torch.zeros(0, dtype=f64, device=device)
    # (offset in flat, count, reduction, offset in its reduced vector, offset of NaN flags)
    plan: list[tuple[int, int, Reduction, int, int | None]] = []
    sums: list[torch.Tensor] = []
    maxes: list[torch.Tensor] = []
    n_sum = n_max = off = 0
    for it in todo:
        for seg, n in zip(it.layout.segments, it.layout.lengths):
            if not n:
                continue
            v, red = flat[off : off + n], seg.reduction
            if red is None:
                raise ValueError(f"the {seg.name!r} numbers cannot be combined across ranks")
            if red in _SUMMED:
                if red is Reduction.NORM:
                    v = v.square()
                if seg.per_parameter:
                    v = v * ranks.owners[ranks.index(it.parameter_indices(seg.name))]
                plan.append((off, n, red, n_sum, None))
                sums.append(v)
                n_sum += n
            else:
                if red is Reduction.MIN:
                    v = -v
                elif red is Reduction.MIN_MAX:
                    v = v * ranks.min_max_signs(n)
                nan_at = None
                if not seg.integer:  # a NaN travels as a flag through the SUM
                    sums.append(torch.isnan(v).to(f64))
                    nan_at, n_sum = n_sum, n_sum + n
                    v = torch.nan_to_num(v, nan=-math.inf, posinf=math.inf, neginf=-math.inf)
                plan.append((off, n, red, n_max, nan_at))
                maxes.append(v)
                n_max += n
            off += n
    fp = _fingerprint(todo)
    head = torch.tensor([n_sum, -n_sum, n_max, -n_max, fp, -fp], dtype=torch.int64)
    header_group = ranks.header_group
    if header_group is None:
        head = head.to(device)
    group = header_group if header_group is not None else ranks.group
    work = dist.all_reduce(head, op=dist.ReduceOp.MAX, group=group, async_op=True)
    started = Started(work, head, todo, flat, plan, sums, maxes, ranks)
    for it in todo:
        it.combining = started
    return started


class Started:
    """A reduction whose layout check is in flight (`start_reduction`); `finish` waits for
    it and starts the SUM and MAX, or leaves the items as they were when the layouts
    differ. Every rank finishes its reductions in the order it started them."""

    def __init__(
        self,
        work: Any,
        head: torch.Tensor,
        todo: list[DeviceNumbers],
        flat: torch.Tensor,
        plan: list[tuple[int, int, Reduction, int, int | None]],
        sums: list[torch.Tensor],
        maxes: list[torch.Tensor],
        ranks: RankContext,
    ) -> None:
        self.work, self.head, self.todo, self.flat, self.plan = work, head, todo, flat, plan
        self.sums, self.maxes, self.ranks = sums, maxes, ranks
        self.result: bool | None = None

    def wait(self) -> None:  # (read back before it was finished: finished now, in full)
        self.finish(wait=True)
        for it in self.todo:
            if it.combining is not None:
                it.combining.wait()

    def finish(self, *, wait: bool = False) -> bool:
        if self.result is not None:
            return self.result
        self.work.wait()
        h = self.head.tolist()
        if h[0] != -h[1] or h[2] != -h[3] or h[4] != -h[5]:
            for it in self.todo:
                it.combining = None
            self.result = False
            return False
        self.result = True
        _launch(self.todo, self.ranks, self.flat, self.plan, self.sums, self.maxes, wait)
        return True


def _launch(
    todo: list[DeviceNumbers],
    ranks: RankContext,
    flat: torch.Tensor,
    plan: list[tuple[int, int, Reduction, int, int | None]],
    sums: list[torch.Tensor],
    maxes: list[torch.Tensor],
    wait: bool,
) -> None:
    import torch.distributed as dist

    works = []
    summed = torch.cat(sums) if sums else None
    if summed is not None:
        works.append(
            dist.all_reduce(summed, op=dist.ReduceOp.SUM, group=ranks.group, async_op=True)
        )
    largest = torch.cat(maxes) if maxes else None
    if largest is not None:
        works.append(
            dist.all_reduce(largest, op=dist.ReduceOp.MAX, group=ranks.group, async_op=True)
        )
    combining = _Combining(works, flat, plan, summed, largest, ranks, todo)
    start = 0
    for it in todo:
        size = it.layout.size
        it.parts = [flat[start : start + size]] if size else []
        it.reduced, it.combining = True, combining
        start += size
    if wait:
        combining.wait()
