"""The optimizer steps around a watched model, seen through PyTorch's global optimizer hooks:
how far each step moved each layer, which parameters it left alone and why, and whether the
next backward added to the previous step's gradient (a loop without zero_grad()).

Note [observing optimizer steps]: the hooks are registered while a Monitor is active (or while
flow trains its copy) and removed in `close()`; an optimizer whose param groups hold none of
the model's parameters is ignored. Only the first step of each optimizer after a recorded
step is measured (`arm`): at its pre-hook the parameters it will update are copied (one copy,
into memory reused from one measured step to the next and freed on exit), at its post-hook
‖w_before − w_after‖ per parameter is taken on the device. The numbers stay on the device
until the report reads them back with the steps (`OptimizerRecord` is read by
`step.read_back`).

Gradients never zeroed, exactly and cheaply: at an optimizer post-step hook before a recorded
step, each parameter's `.grad` object and its `_version` are remembered (a weak reference:
the gradient is not kept alive). At the recorded backward's first gradient for that parameter
(the AccumulateGrad pre-hook the recorder already has), `.grad` still being that object at
that version means nothing set it to None or zeroed it in place, so the backward is about to
add to the previous step's gradient. `.data.zero_()` zeroes without a version bump, so such a
suspect's gradient norm is taken on the device, and only a nonzero one counts.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from .model_map import ModelMap
from .samples import ROOT, StepSample, UpdateStatus
from .step import OPTIMIZER_SEGMENTS, STALE_SQ, UPDATE_NORM, StepLayout, pack
from .tensor_stats import sq_norm


@dataclass
class OptimizerRecord:
    """The optimizer steps after one recorded step, and its backward's zeroing check."""

    step: int
    optimizers: int = 0  # optimizer steps observed (each optimizer's first after the step)
    # param index -> (its param group, that group's lr) in the optimizers that stepped
    in_optimizer: dict[int, tuple[int, float | None]] = field(default_factory=dict)
    grad_gone: set[int] = field(default_factory=set)  # in an optimizer, .grad None at its step
    measured: list[int] = field(default_factory=list)  # params of the UPDATE_NORM numbers
    update_norm: list[torch.Tensor] = field(default_factory=list)
    zeroing_checked: int = 0
    suspects: list[int] = field(default_factory=list)  # params of the STALE_SQ numbers
    stale_sq: list[torch.Tensor] = field(default_factory=list)
    # step.read_back fills these (after `seal()`)
    layout: StepLayout = StepLayout((), ())
    parts: list[torch.Tensor] = field(default_factory=list)
    host: list[float] | None = None

    def seal(self) -> None:
        """Pack the device numbers for read_back (once; nothing is added afterwards)."""
        if self.host is None and not self.parts:
            self.layout, self.parts = pack(
                {UPDATE_NORM.name: self.update_norm, STALE_SQ.name: self.stale_sq},
                OPTIMIZER_SEGMENTS,
            )
            self.update_norm, self.stale_sq = [], []
            if not self.parts:
                self.host = []


def optimizer_kind(opt: torch.optim.Optimizer) -> str:
    return type(opt).__name__.lower()  # "sgd", "adam", "adamw", ...


def _lr(group: dict) -> float | None:
    lr = group.get("lr")
    if isinstance(lr, torch.Tensor):  # a tensor lr: read only where that needs no sync
        return float(lr) if lr.device.type == "cpu" and lr.numel() == 1 else None
    return float(lr) if isinstance(lr, (int, float)) else None


class OptimizerWatch:
    """The global optimizer step hooks for one model (Note [observing optimizer steps])."""

    def __init__(
        self,
        mm: ModelMap,
        *,
        check_zeroing: bool = False,
        next_recorded_step: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.params = mm.params
        self.index = {id(p): i for i, p in enumerate(mm.params)}
        self.check_zeroing = check_zeroing
        # the number of the next step when it will be recorded (its backward checked), else None
        self.next_recorded_step = next_recorded_step
        self.records: dict[int, OptimizerRecord] = {}
        self.errors: list[str] = []
        self.kind: str | None = None  # the optimizer holding most of the model, once seen
        self.lr: float | None = None
        self._handles: list[Any] = []
        self._armed: OptimizerRecord | None = None
        self._seen: set[int] = set()  # optimizers measured since the last arm()
        self._open: dict[int, tuple[OptimizerRecord, list[int], list[torch.Tensor]]] = {}
        # per optimizer: (weak ref, group sizes, [(param index, group index)])
        self._groups: dict[int, tuple[Any, tuple[int, ...], list[tuple[int, int]]]] = {}
        # zeroing check: param -> (weak ref to its .grad, version), for the step `_zero_for`
        self._last_grads: dict[int, tuple[Any, int]] = {}
        self._zero_for: int | None = None
        self._buffers: dict[tuple[int, ...], list[torch.Tensor]] = {}  # the copies' memory

    # hooks on / off
    def attach(self) -> None:
        self._handles.append(register_optimizer_step_pre_hook(self._pre_step))
        self._handles.append(register_optimizer_step_post_hook(self._post_step))

    def close(self) -> None:
        while self._handles:
            self._handles.pop().remove()
        self._open.clear()
        self._last_grads.clear()
        self._buffers.clear()
        self._armed = None

    def arm(self, step: int) -> None:
        """Step `step` is being recorded: the optimizer steps after it are measured into its
        record (and its backward checked against the step before it)."""
        self._armed = self.records[step] = OptimizerRecord(step)
        self._seen.clear()
        self._open.clear()  # a step that raised between its hooks
        if self._zero_for != step:
            self._last_grads.clear()

    def unread(self, include_armed: bool) -> list[OptimizerRecord]:
        """Records not read back yet, sealed for read_back. The armed one (its optimizer step
        may still come) only with `include_armed`, when the watch is done."""
        out = []
        for rec in self.records.values():
            if rec.host is None and (include_armed or rec is not self._armed):
                rec.seal()
                if rec.host is None:
                    out.append(rec)
        return out

    def _internal(self, exc: Exception) -> None:  # pragma: no cover - defensive
        if len(self.errors) < 5:
            self.errors.append(f"gradtool internal error in an optimizer hook: {exc!r}")

    def _watched_in(self, opt: torch.optim.Optimizer) -> list[tuple[int, int]]:
        """(param index, group index) of the model's parameters in `opt`'s param groups."""
        groups = opt.param_groups
        sizes = tuple(len(g["params"]) for g in groups)
        cached = self._groups.get(id(opt))
        if cached is not None and cached[0]() is opt and cached[1] == sizes:
            return cached[2]
        index = self.index
        pairs = [
            (i, k)
            for k, g in enumerate(groups)
            for p in g["params"]
            if (i := index.get(id(p))) is not None
        ]
        self._groups[id(opt)] = (weakref.ref(opt), sizes, pairs)
        return pairs

    # the hooks; an internal error must never break the user's step
    def _pre_step(self, opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        rec = self._armed
        if rec is None or id(opt) in self._seen:
            return
        try:
            pairs = self._watched_in(opt)
            if not pairs:
                return  # another model's optimizer
            self._seen.add(id(opt))
            rec.optimizers += 1
            groups = opt.param_groups
            lrs = [_lr(g) for g in groups]
            if len(pairs) * 2 >= len(self.params) or self.kind is None:
                # the largest lr of the groups holding the model's parameters
                held = [lrs[k] for k in {k for _, k in pairs} if lrs[k] is not None]
                self.kind, self.lr = optimizer_kind(opt), max(held, default=None)
            moving = []
            for i, k in pairs:
                rec.in_optimizer.setdefault(i, (k, lrs[k]))
                p = self.params[i]
                if p.grad is None:
                    rec.grad_gone.add(i)
                elif lrs[k] != 0 and p.is_floating_point() and not p.is_sparse:
                    moving.append(i)
            if moving:
                # one copy of what the step will update (foreach: one call for every tensor)
                now = [self.params[i].detach() for i in moving]
                before = self._copy_buffer(tuple(moving), now)
                torch._foreach_copy_(before, now)
                self._open[id(opt)] = (rec, moving, before)
        except Exception as exc:  # pragma: no cover - defensive
            self._internal(exc)

    def _copy_buffer(self, moving: tuple[int, ...], like: list[torch.Tensor]) -> list[torch.Tensor]:
        """The copy's memory, kept while the watch is open and reused at every measured step
        (allocating it each time cost CPU steps as much as filling it; on a GPU the caching
        allocator would keep it reserved anyway)."""
        buf = self._buffers.get(moving)
        if buf is None or any(
            b.shape != t.shape or b.dtype != t.dtype or b.device != t.device
            for b, t in zip(buf, like)
        ):
            buf = self._buffers[moving] = [torch.empty_like(t) for t in like]
        return buf

    def _post_step(self, opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        try:
            opened = self._open.pop(id(opt), None)
            if opened is not None:
                rec, moving, before = opened
                # before − after, in place in the copy; Σ of its squares per parameter
                torch._foreach_sub_(before, [self.params[i].detach() for i in moving])
                rec.measured.extend(moving)
                rec.update_norm.extend(torch._foreach_norm(before))
            if self.check_zeroing:
                nxt = self.next_recorded_step()
                if nxt is not None:
                    self._remember_grads(opt, nxt)
        except Exception as exc:  # pragma: no cover - defensive
            self._internal(exc)

    def _remember_grads(self, opt: torch.optim.Optimizer, nxt: int) -> None:
        pairs = self._watched_in(opt)
        if not pairs:
            return
        if self._zero_for != nxt:
            self._last_grads.clear()
        self._zero_for = nxt
        params, last = self.params, self._last_grads
        for i, _ in pairs:
            g = params[i].grad
            if g is not None:
                last[i] = (weakref.ref(g), g._version)

    def on_param_grad(self, i: int) -> None:
        """The recorded backward's gradient for parameter i is about to be accumulated."""
        rec = self._armed
        if rec is None or self._zero_for != rec.step:
            return
        seen = self._last_grads.pop(i, None)
        if seen is None:
            return
        rec.zeroing_checked += 1
        g = self.params[i].grad
        if g is not None and seen[0]() is g and g._version == seen[1]:
            rec.suspects.append(i)  # never set to None nor zeroed in place: confirm its norm
            rec.stale_sq.append(sq_norm(g.detach()))


def apply_record(sample: StepSample, rec: OptimizerRecord | None, mm: ModelMap) -> StepSample:
    """A step's sample with what its optimizer record measured (read back): update ratios in
    its rows and `updates`, what happened to each parameter, the zeroing check."""
    if rec is None or rec.host is None:
        return sample
    values = rec.layout.unpack(rec.host) if rec.layout.segments else {}
    stale = values.get(STALE_SQ.name, [])
    names = mm.param_names
    sample.zeroing_checked = rec.zeroing_checked
    sample.stale_grads = [names[i] for i, sq in zip(rec.suspects, stale) if sq > 0]
    if rec.optimizers == 0:
        return sample
    moved = {i: n * n for i, n in zip(rec.measured, values.get(UPDATE_NORM.name, []))}  # ‖Δw‖²
    without_grad = {p for _, params, _ in sample.no_grad for p in params}
    rows = {row.key: (n, row) for n, row in enumerate(sample.rows) if row.kind == "layer"}
    layer_key = [layer.name or ROOT for layer in mm.layers]
    layer_update: dict[str, float] = {}
    for i, p in enumerate(mm.params):
        key = layer_key[mm.param_layer[i]]
        row = rows.get(key, (0, None))[1]
        if not p.requires_grad or names[i] in without_grad or row is None or not row.grad_norm:
            continue  # frozen, or no (nonzero) gradient at this step: nothing to say
        group = None
        if i not in rec.in_optimizer:
            status = UpdateStatus.NOT_IN_OPTIMIZER
        else:
            group, lr = rec.in_optimizer[i]
            if lr == 0:
                status = UpdateStatus.LR_ZERO
            elif i in rec.grad_gone:
                status = UpdateStatus.GRAD_GONE
            elif i not in moved:
                continue  # not measured (sparse, integer): nothing known
            elif moved[i] > 0 or math.isnan(moved[i]):
                status = UpdateStatus.UPDATED
            else:
                status = UpdateStatus.UNCHANGED
        sample.param_updates[names[i]] = (status, group)
    for i, sq in moved.items():  # every measured parameter moves its layer, gradient or not
        key = layer_key[mm.param_layer[i]]
        layer_update[key] = layer_update.get(key, 0.0) + sq
    for key, sq in layer_update.items():
        n, row = rows.get(key, (0, None))
        if row is not None and row.weight_norm:
            ratio = math.sqrt(sq) / row.weight_norm
            sample.updates[key] = ratio
            sample.rows[n] = dataclasses.replace(row, update_ratio=ratio)
    return sample
