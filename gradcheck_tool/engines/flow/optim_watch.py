"""The optimizer steps around a watched model, seen through PyTorch's global optimizer hooks:
how far each step moved each layer, which parameters it left alone and why, and whether the
next backward added to the previous step's gradient (a loop without zero_grad()).

Note [observing optimizer steps]: the hooks are registered while a Monitor is active (or while
flow trains its copy) and removed in `close()`; an optimizer whose param groups hold none of
the model's parameters is ignored. Only the first step of each optimizer after a recorded
step is measured (`arm`): at its pre-hook the parameters it will update are copied (one copy,
into memory reused from one measured step to the next and freed on exit, or after each
measured step when only every n-th step is recorded), at its post-hook ‖w_before − w_after‖
and max |w_after| per parameter are taken on the device. The numbers stay on the device
until the report reads them back with the steps (`OptimizerRecord` is read by
`step.read_back`).

A step with a closure (`opt.step(closure)`, LBFGS) runs the forward and backward inside the
step: its .grad is judged at the post-hook, and the model's call inside it arms a record
without clearing the step in progress, which is measured into that record (the copy is taken
at the pre-hook when the next call of the model will be recorded).

Gradients never zeroed, exactly and cheaply: at an optimizer post-step hook before a recorded
step, each parameter's `.grad` object and its `_version` are remembered (a weak reference:
the gradient is not kept alive), and a pre-hook is put on each one's AccumulateGrad node
until the next optimizer step. At the first backward after the optimizer step (whichever
call of the model it follows: siamese views, a GAN's generator called twice), `.grad` still
being that object at that version means nothing set it to None or zeroed it in place, so the
backward is about to add to the previous step's gradient. `.data.zero_()` zeroes without a
version bump, so such a suspect's gradient norm is taken on the device, and only a nonzero
one counts.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch.nn.parameter import is_lazy
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from .model_map import ModelMap
from .samples import ROOT, StepSample, UpdateStatus
from .step import (
    OPTIMIZER_SEGMENTS,
    STALE_SQ,
    UPDATE_NORM,
    WEIGHT_EXTREMES,
    StepLayout,
    pack,
)
from .tensor_stats import extremes, grad_accumulator, local, sq_norm


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
    # per measured param: min w, max w after the step (torch.aminmax: a foreach inf-norm is
    # an order of magnitude slower on CPU)
    weight_extremes: list[torch.Tensor] = field(default_factory=list)
    zeroing_checked: int = 0
    suspects: list[int] = field(default_factory=list)  # params of the STALE_SQ numbers
    stale_sq: list[torch.Tensor] = field(default_factory=list)
    # step.read_back fills these (after `seal()`)
    layout: StepLayout = StepLayout((), ())
    parts: list[torch.Tensor] = field(default_factory=list)
    host: list[float] | None = None
    reduced: bool = False  # combined across ranks (distributed.reduce_across_ranks)
    combining: Any = None  # that combination while in flight: wait() before reading

    def parameter_indices(self, segment: str) -> list[int]:
        """Which parameter each number of a `per_parameter` segment is about."""
        return self.suspects if segment == STALE_SQ.name else self.measured

    def structure(self) -> tuple:
        """What the numbers are about, for comparing layouts across ranks."""
        return (self.step, self.layout.lengths, tuple(self.measured), tuple(self.suspects))

    def seal(self) -> None:
        """Pack the device numbers for read_back (once; nothing is added afterwards)."""
        if self.host is None and not self.parts:
            self.layout, self.parts = pack(
                {
                    UPDATE_NORM.name: self.update_norm,
                    WEIGHT_EXTREMES.name: self.weight_extremes,
                    STALE_SQ.name: self.stale_sq,
                },
                OPTIMIZER_SEGMENTS,
            )
            self.update_norm, self.weight_extremes, self.stale_sq = [], [], []
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
        keep_copies: bool = True,
        every_parameter: bool = False,
    ) -> None:
        self.params = mm.params
        self.index = {id(p): i for i, p in enumerate(mm.params)}
        self.check_zeroing = check_zeroing
        # the number of the next step when it will be recorded (its backward checked), else None
        self.next_recorded_step = next_recorded_step
        # keep the copies' memory from one measured step to the next (else freed after each)
        self.keep_copies = keep_copies
        # distributed (the records are combined across ranks, so their layout must not
        # depend on this rank's .grad): measure every trainable parameter the step holds
        self.every_parameter = every_parameter
        self.records: dict[int, OptimizerRecord] = {}
        self.errors: list[str] = []
        self.kind: str | None = None  # the optimizer holding most of the model, once seen
        self.lr: float | None = None
        self._handles: list[Any] = []
        self._armed: OptimizerRecord | None = None
        self._seen: set[int] = set()  # optimizers measured since the last arm()
        # per optimizer measured: (its record, or None for a closure step, which belongs to
        # the record armed when it ends; params copied; the copies)
        self._open: dict[int, tuple[OptimizerRecord | None, list[int], list[torch.Tensor]]] = {}
        # optimizers inside their step() now, and whether a step() of them calls a closure
        self._stepping: dict[int, bool] = {}
        self._armed_in_step = False  # a closure called the model inside the step
        # per optimizer: (weak ref, group sizes, [(param index, group index)])
        self._groups: dict[int, tuple[Any, tuple[int, ...], list[tuple[int, int]]]] = {}
        # zeroing check: param -> (weak ref to its .grad, version) at the last optimizer step,
        # judged at the first backward after it (into a record armed at step `_zero_for` or
        # later), through hooks on the parameters' AccumulateGrad nodes while it is pending
        self._last_grads: dict[int, tuple[Any, int]] = {}
        self._zero_for: int | None = None
        self._zero_handles: list[Any] = []
        self._nodes: dict[int, tuple[Any, Callable[[tuple], None]]] = {}
        self._buffers: dict[tuple[int, ...], list[torch.Tensor]] = {}  # the copies' memory

    # hooks on / off
    def attach(self) -> None:
        self._handles.append(register_optimizer_step_pre_hook(self._pre_step))
        self._handles.append(register_optimizer_step_post_hook(self._post_step))

    def close(self) -> None:
        while self._handles:
            self._handles.pop().remove()
        self._unhook_grads()
        self._nodes.clear()
        self._open.clear()
        self._stepping.clear()
        self._last_grads.clear()
        self._buffers.clear()
        self._armed = None

    def arm(self, step: int) -> None:
        """Step `step` is being recorded: the optimizer steps after it are measured into its
        record. Called from inside an optimizer step (its closure calls the model), the step
        in progress is measured into this record when it ends."""
        self._armed = self.records[step] = OptimizerRecord(step)
        self._seen.clear()
        if self._stepping:
            self._armed_in_step = True
        else:
            self._open.clear()  # a step that raised between its hooks

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
        # args: (the optimizer, its step()'s positional arguments...)
        closure = (len(args) > 1 and args[1] is not None) or kwargs.get("closure") is not None
        self._stepping[id(opt)] = closure
        if len(self._stepping) == 1:
            self._armed_in_step = False
        rec = self._armed
        if closure:
            # the closure runs the forward and backward inside the step: .grad is judged when
            # the step ends, into the record its call of the model arms (measured only when
            # that call will be recorded)
            if self.next_recorded_step() is None:
                return
        elif rec is None or id(opt) in self._seen:
            return
        try:
            pairs = self._watched_in(opt)
            if not pairs:
                return  # another model's optimizer
            groups = opt.param_groups
            lrs = [_lr(g) for g in groups]
            moving = []
            for i, k in pairs:
                p = self.params[i]
                if closure or p.grad is not None or (self.every_parameter and p.requires_grad):
                    if lrs[k] != 0 and p.is_floating_point() and not p.is_sparse:
                        moving.append(i)
            if not closure:
                self._seen.add(id(opt))
                self._note_groups(rec, opt, pairs, lrs)
            if moving:
                # one copy of what the step will update (foreach: one call for every tensor)
                now = [local(self.params[i].detach()) for i in moving]
                before = self._copy_buffer(tuple(moving), now)
                torch._foreach_copy_(before, now)
                self._open[id(opt)] = (None if closure else rec, moving, before)
            elif closure:
                self._open[id(opt)] = (None, [], [])
        except Exception as exc:  # pragma: no cover - defensive
            self._internal(exc)

    def _note_groups(
        self,
        rec: OptimizerRecord,
        opt: torch.optim.Optimizer,
        pairs: list[tuple[int, int]],
        lrs: list[float | None],
    ) -> None:
        """The optimizer's param groups and whether each parameter had a .grad, as it steps."""
        rec.optimizers += 1
        if len(pairs) * 2 >= len(self.params) or self.kind is None:
            # the largest lr of the groups holding the model's parameters
            held = [lrs[k] for k in {k for _, k in pairs} if lrs[k] is not None]
            self.kind, self.lr = optimizer_kind(opt), max(held, default=None)
        for i, k in pairs:
            rec.in_optimizer.setdefault(i, (k, lrs[k]))
            p = self.params[i]
            if p.grad is None and not (self.every_parameter and local(p).numel() == 0):
                rec.grad_gone.add(i)  # (an FSDP1 rank holding none of p has no .grad)

    def _copy_buffer(self, moving: tuple[int, ...], like: list[torch.Tensor]) -> list[torch.Tensor]:
        """The copy's memory, kept while the watch is open and reused at every measured step
        (allocating it each time cost CPU steps as much as filling it; on a GPU the caching
        allocator would keep it reserved anyway). With `keep_copies` off (the Monitor
        recording every n-th step) it is freed after each measured step instead."""
        buf = self._buffers.get(moving)
        if buf is None or any(
            b.shape != t.shape or b.dtype != t.dtype or b.device != t.device
            for b, t in zip(buf, like)
        ):
            buf = [torch.empty_like(t) for t in like]
            if self.keep_copies:
                self._buffers[moving] = buf
        return buf

    def _post_step(self, opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        try:
            self._stepping.pop(id(opt), None)
            opened = self._open.pop(id(opt), None)
            if opened is not None:
                rec, moving, before = opened
                if rec is None:  # a closure step: the record its call of the model armed
                    rec = self._armed if self._armed_in_step else None
                    if rec is not None and id(opt) not in self._seen:
                        self._seen.add(id(opt))
                        pairs = self._watched_in(opt)
                        self._note_groups(rec, opt, pairs, [_lr(g) for g in opt.param_groups])
                    else:
                        rec = None
                if rec is not None and moving:
                    after = [local(self.params[i].detach()) for i in moving]
                    for w in after:  # (an empty parameter has none: 0, 0)
                        rec.weight_extremes.extend(
                            extremes(w) if w.numel() else (w.new_zeros(()),) * 2
                        )
                    # before − after, in place in the copy; its norm per parameter
                    torch._foreach_sub_(before, after)
                    rec.measured.extend(moving)
                    rec.update_norm.extend(torch._foreach_norm(before))
            if not self._stepping:
                self._armed_in_step = False
            if self.check_zeroing and self._watched_in(opt):  # (not another model's)
                nxt = self.next_recorded_step()
                if nxt is None:  # the next backward is not checked: no hook on it
                    self._last_grads.clear()
                    self._unhook_grads()
                else:
                    self._remember_grads(opt, nxt)
        except Exception as exc:  # pragma: no cover - defensive
            self._internal(exc)

    def _remember_grads(self, opt: torch.optim.Optimizer, nxt: int) -> None:
        pairs = self._watched_in(opt)
        if not pairs:
            return
        if self._zero_for != nxt:
            self._last_grads.clear()
            self._unhook_grads()
        self._zero_for = nxt
        params, last = self.params, self._last_grads
        for i, _ in pairs:
            g = params[i].grad
            if g is not None and i not in last:
                last[i] = (weakref.ref(g), g._version)
                self._hook_grad(i)

    def _hook_grad(self, i: int) -> None:
        """A pre-hook on parameter i's AccumulateGrad node until the next optimizer step
        (the node is kept alive meanwhile, so that the next forward uses it)."""
        if is_lazy(self.params[i]):
            return
        entry = self._nodes.get(i)
        if entry is None:
            entry = self._nodes[i] = (
                grad_accumulator(self.params[i]),
                partial(self._on_param_grad, i),
            )
        if entry[0] is not None:
            self._zero_handles.append(entry[0].register_prehook(entry[1]))

    def _unhook_grads(self) -> None:
        while self._zero_handles:
            self._zero_handles.pop().remove()

    def _on_param_grad(self, i: int, grads: tuple) -> None:
        """The first backward after the optimizer step is about to accumulate parameter i's
        gradient (whichever call of the model it follows)."""
        try:
            seen = self._last_grads.pop(i, None)
            if seen is None or not grads or grads[0] is None:
                return
            rec = self._armed
            if rec is None or self._zero_for is None or rec.step < self._zero_for:
                return  # no recorded call of the model since that optimizer step
            rec.zeroing_checked += 1
            g = self.params[i].grad
            if g is not None and seen[0]() is g and g._version == seen[1]:
                rec.suspects.append(i)  # never set to None nor zeroed in place: confirm its norm
                rec.stale_sq.append(sq_norm(g.detach()))
        except Exception as exc:  # pragma: no cover - defensive
            self._internal(exc)


def apply_record(
    sample: StepSample,
    rec: OptimizerRecord | None,
    mm: ModelMap,
    grad_max: list[float | None] | None = None,
) -> StepSample:
    """A step's sample with what its optimizer record measured (read back): update ratios in
    its rows and `updates`, what happened to each parameter, the zeroing check. `grad_max`:
    the step's max |g| per parameter (`layer_rows.parameter_grad_max`), which says whether a
    parameter left unchanged should have moved in its dtype."""
    if rec is None or rec.host is None:
        return sample
    values = rec.layout.unpack(rec.host) if rec.layout.segments else {}
    stale = values.get(STALE_SQ.name, [])
    names = mm.param_names
    sample.zeroing_checked = rec.zeroing_checked
    sample.stale_grads = [names[i] for i, sq in zip(rec.suspects, stale) if sq > 0]
    sample.stepped = rec.optimizers > 0
    if rec.optimizers == 0:
        return sample
    moved = {i: n * n for i, n in zip(rec.measured, values.get(UPDATE_NORM.name, []))}  # ‖Δw‖²
    ext = values.get(WEIGHT_EXTREMES.name, [])
    w_max = {
        i: max(-ext[2 * j], ext[2 * j + 1]) for j, i in enumerate(rec.measured[: len(ext) // 2])
    }
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
                g = grad_max[i] if grad_max is not None else None
                if lr is None or g is None or i not in w_max:
                    continue  # whether the step was representable is not known
                # an SGD step lr·g moves an entry w only when it is not below w's resolution
                # (eps·|w|): unchanged says something only when the step was large enough
                eps = torch.finfo(p.dtype).eps
                representable = abs(lr) * g >= eps * w_max[i]
                status = UpdateStatus.UNCHANGED if representable else UpdateStatus.BELOW_RESOLUTION
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
