"""`gradtool memory`: what one forward and backward keeps, per module, and which blocks to
checkpoint (verified with `--apply-checkpoint`).

The orchestrator reads as its list of steps, all on gradtool's copy of the model, in train
mode, at the model's own dtype, each from the same seeded RNG state:

1. a warm-up step (lazy modules initialise, caches fill);
2. STEPS_TIMED plain steps: their median time, and on CUDA the peak
   (`torch.cuda.max_memory_allocated`);
3. STEPS_PROBED probed steps (measure.StepProbe): saved bytes per module, forward and
   backward times (each the median of the steps': figures to read, not to rank by);
4. a FLOP step (torch's FlopCounterMode): each module's forward FLOPs and the step's,
   which rank the candidates (deterministic);
5. a held step (measure.HeldStorages): the independent measurement of what the forward
   leaves alive for the backward;
6. the checkpointing candidates (candidates.py), and with `apply_checkpoint` the advice
   applied to a fresh copy, measured again and checked (apply.py).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..._guest import RngState, call_user, describe_exception, init_cuda, preserved_state
from ..._tree import first_tensor
from ..._version import __version__
from ...errors import GradtoolError, InputError, OptionError, UserCodeError
from ...options import at_least
from ...prepare import home_device, parse_device, training_copy
from ...results import MemoryReport, ModuleMemory
from ..flow.train import StepLoss
from .measure import LOSS, HeldStorages, StepProbe, StepRecord, fixed_keys

PEAK_CUDA = "torch.cuda.max_memory_allocated"
PEAK_CPU = "saved-tensor accounting"
STEPS_PROBED = 3  # per-module times: the median over this many probed steps
STEPS_TIMED = 5  # the step's time: the median over this many plain steps


class Session:
    """gradtool's copy of the model with its inputs, loss and device; `step()` runs one
    seeded forward and backward."""

    def __init__(
        self,
        model: nn.Module,
        args: tuple,
        kwargs: dict,
        *,
        loss_fn: Callable | None,
        device: torch.device | None,
        seed: int,
        folder: Path | None = None,
    ) -> None:
        self.seed = seed
        self.device = device
        self.folder = folder
        # gradtool's own inputs: a forward that writes into its input must not change the
        # user's tensors
        self.model, self.args, self.kwargs = training_copy(
            model, args, kwargs, device, move_model=True, own_inputs=True
        )
        self.loss = StepLoss(loss_fn, seed, folder)
        self.on_cuda = device is not None and device.type == "cuda"

    def sync(self) -> None:
        if self.on_cuda:
            torch.cuda.synchronize(self.device)

    def forward(self) -> Any:
        RngState.seeded(self.seed).restore()  # the same dropout masks in every step
        return call_user(self.model, *self.args, what="the model", **self.kwargs)

    def loss_of(self, out: Any) -> torch.Tensor:
        return self.loss(out, self.args, self.kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        """The step's backward: user code too (a custom Function's backward, an in-place
        operation on a saved tensor), so what it raises is the user's error."""
        from torch.utils.checkpoint import CheckpointError as RecomputeDiffers

        if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
            raise UserCodeError(
                "the loss does not require grad: no backward to measure (the model's output "
                "has no grad_fn)",
                hint="Does the forward detach its output, or run under torch.no_grad()?",
            )
        try:
            loss.backward()
        except (GradtoolError, RecomputeDiffers, torch.cuda.OutOfMemoryError):
            raise
        except Exception as exc:
            raise UserCodeError(
                f"the backward raised {describe_exception(exc, self.folder)}",
                hint="An in-place operation on a tensor saved for the backward, or a custom "
                "autograd Function's backward: `gradtool check TARGET` shows which.",
            ) from exc

    def clear_grads(self) -> None:
        for p in self.model.parameters():
            p.grad = None

    def step(self) -> float:
        """One plain forward and backward; its milliseconds."""
        self.clear_grads()
        self.sync()
        began = time.perf_counter()
        self.backward(self.loss_of(self.forward()))
        self.sync()
        return (time.perf_counter() - began) * 1e3

    def probed_step(self, *, backward_times: bool = True) -> StepRecord:
        """The step with every probe on; `backward_times=False` leaves out the function mode
        that maps autograd nodes to modules: a checkpointed block recomputes its forward
        outside any mode, and must take the code path its forward took."""
        probe = StepProbe(self.model, self.sync)
        self.clear_grads()
        try:
            probe.attach()
            probe.note_inputs(self.args, self.kwargs)
            nodes = probe.nodes() if backward_times else contextlib.nullcontext()
            with probe.saving(), nodes:
                probe.phase = "forward"
                self.sync()
                began = time.perf_counter()
                out = self.forward()
                self.sync()
                probe.rec.forward_total_ms = (time.perf_counter() - began) * 1e3
                probe.note_kept()
                probe.phase = "loss"
                loss = self.loss_of(out)
                del out
                probe.phase = "backward"
            probe.time_backward(loss)
            began = time.perf_counter()
            self.backward(loss)
            self.sync()
            probe.rec.backward_total_ms = (time.perf_counter() - began) * 1e3
        finally:
            probe.phase = "idle"
            probe.close()
        probe.rec.grad_bytes = {
            name: _bytes(p.grad) for name, p in self.model.named_parameters() if p.grad is not None
        }
        return probe.rec

    def held_step(self) -> tuple[StepRecord, dict[str, int], int | None]:
        """The independent measurement: the step's record (calls, forward times), the bytes
        the forward's operations made that are alive until the backward by the module that
        made them, and on CUDA memory_allocated after the forward and loss minus before.
        No saved-tensors hook: with one, some operations take another path (the attention
        kernels), which a checkpointed block's recomputation would not take."""
        self.clear_grads()
        probe = StepProbe(self.model, self.sync)
        mode = HeldStorages(fixed_keys(self.model, self.args, self.kwargs), probe.owner)
        try:
            probe.attach()
            self.sync()
            before = torch.cuda.memory_allocated(self.device) if self.on_cuda else None
            probe.phase = "forward"
            with mode:
                out = self.forward()
            probe.phase = "backward"
            loss = self.loss_of(out)
            del out
            held = mode.alive()
            self.sync()
            grew = torch.cuda.memory_allocated(self.device) - before if self.on_cuda else None
            self.backward(loss)
        finally:
            probe.phase = "idle"
            probe.close()
        self.clear_grads()
        return probe.rec, held, grew

    def peak_step(self, steps: int = STEPS_TIMED) -> tuple[float, int | None]:
        """Plain steps' median milliseconds, and on CUDA their peak allocation."""
        if self.on_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        ms = statistics.median(self.step() for _ in range(steps))
        peak = torch.cuda.max_memory_allocated(self.device) if self.on_cuda else None
        return ms, peak

    def flop_step(self) -> tuple[dict[str, int], int]:
        """The FLOPs torch's FlopCounterMode counts: each module's forward (inclusive, summed
        over its calls) and the whole step's forward + backward. Deterministic, unlike times:
        the checkpointing advice is ranked by them."""
        from torch.utils.flop_counter import FlopCounterMode

        names = {id(m): n for n, m in self.model.named_modules()}
        flops: dict[str, int] = defaultdict(int)
        started: list[int] = []
        counter = FlopCounterMode(display=False)

        def pre(module: nn.Module, args: tuple) -> None:
            started.append(counter.get_total_flops())

        def post(module: nn.Module, args: tuple, out: Any) -> None:
            if started:
                flops[names[id(module)]] += counter.get_total_flops() - started.pop()

        handles = []
        self.clear_grads()
        try:
            for m in self.model.modules():
                handles.append(m.register_forward_pre_hook(pre))
                handles.append(m.register_forward_hook(post))
            with counter:
                out = self.forward()
                for h in handles:
                    h.remove()
                handles.clear()
                self.backward(self.loss_of(out))
        finally:
            for h in handles:
                h.remove()
        self.clear_grads()
        return dict(flops), int(counter.get_total_flops())


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def run_memory(
    model: Any,
    args: tuple,
    kwargs: dict,
    *,
    loss_fn: Callable | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    apply_checkpoint: bool = False,
    checkpoint: Sequence[str] = (),
    top: int = 3,
    target: str = "model",
    found_by: str = "",
    folder: Path | None = None,
) -> MemoryReport:
    """Measure one training step of `model(*args, **kwargs)` per module (see the module
    docstring). The user's model, RNG state, grad mode and default dtype are left as found."""
    from .apply import apply_and_verify, resolve_blocks
    from .candidates import choose, rank_candidates

    started = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise InputError(
            f"gradtool memory measures an nn.Module; got {type(model).__name__}",
            hint="Point TARGET at a module (or a build_model() that returns one).",
        )
    top = at_least("top", top, 1)
    if checkpoint and not apply_checkpoint:
        raise OptionError(
            "checkpoint",
            "names the blocks apply_checkpoint wraps, and apply_checkpoint is off",
            hint="Add --apply-checkpoint, or leave --checkpoint out.",
        )
    where = parse_device(device, ("cpu", "cuda")) if device is not None else home_device(model)
    init_cuda(where)
    warnings: list[str] = []
    with preserved_state():
        torch.set_grad_enabled(True)
        s = Session(model, args, kwargs, loss_fn=loss_fn, device=where, seed=seed, folder=folder)
        if checkpoint:
            resolve_blocks(s.model, checkpoint)  # a bad name fails before the measuring
        s.step()  # warm-up: lazy modules, caches
        step_ms, peak = s.peak_step()
        # per-module times: the median of STEPS_PROBED probed steps (figures to read; the
        # advice is ranked by FLOPs, which do not vary from run to run)
        rec = median_times([s.probed_step() for _ in range(STEPS_PROBED)])
        rec.forward_flops, rec.step_flops = s.flop_step()
        _, held_by, held_cuda = s.held_step()
        held = sum(held_by.values())
        modules = module_rows(s.model, rec, held_by)
        ranked = rank_candidates(s.model, rec, modules)
        chosen = choose(ranked, top)
        result = None
        if apply_checkpoint:
            place = {m.name: i for i, m in enumerate(modules)}
            ordered = sorted(chosen, key=lambda c: place[c.modules[0]])
            blocks = list(checkpoint) or [c.name for c in ordered]
            if not blocks:
                warnings.append(
                    "no block to checkpoint: checkpointing no submodule called once would "
                    "free anything (name blocks with --checkpoint)"
                )
            else:
                result = apply_and_verify(
                    model,
                    args,
                    kwargs,
                    blocks=blocks,
                    wrapped=resolve_blocks(s.model, blocks),
                    loss_fn=loss_fn,
                    device=where,
                    seed=seed,
                    before=(rec, held, peak, step_ms),
                    module_rows=module_rows,
                    folder=folder,
                    target=target,
                )
                warnings.extend(result[1])
                result = result[0]
    param_total = sum(_bytes(p) for p in s.model.parameters())
    grad_total = sum(rec.grad_bytes.values())
    saved_total = _sum(rec, set().union(*rec.own_saved.values()) if rec.own_saved else set())
    first = first_tensor((args, kwargs))
    dtype = next((str(p.dtype) for p in s.model.parameters()), "")
    return MemoryReport(
        target=target,
        version=__version__,
        modules=tuple(modules),
        saved_bytes_total=saved_total,
        param_bytes_total=param_total,
        grad_bytes_total=grad_total,
        held_bytes=held,
        peak_bytes=peak if peak is not None else param_total + grad_total + saved_total,
        peak_source=PEAK_CUDA if peak is not None else PEAK_CPU,
        checkpoint_candidates=tuple(chosen),
        checkpoint=result,
        found_by=found_by,
        device=str(where or "cpu"),
        dtype=dtype.replace("torch.", ""),
        batch_size=int(first.shape[0]) if first is not None and first.dim() >= 1 else None,
        input_bytes=_sum(rec, rec.step_inputs),
        loss_saved_bytes=_sum(rec, rec.own_saved.get(LOSS, set())),
        held_cuda_bytes=held_cuda,
        step_ms=rec.forward_total_ms + rec.backward_total_ms,
        warnings=tuple(warnings),
        seconds=time.perf_counter() - started,
    )


def median_times(records: list[StepRecord]) -> StepRecord:
    """The first record, with each time the median of the records' (the bytes are the
    same in every step)."""
    first = records[0]
    for times in ("forward_ms", "own_backward_ms"):
        mine = getattr(first, times)
        for name in list(mine):
            mine[name] = statistics.median(getattr(r, times).get(name, 0.0) for r in records)
    for total in ("forward_total_ms", "backward_total_ms"):
        setattr(first, total, statistics.median(getattr(r, total) for r in records))
    return first


def _sum(rec: StepRecord, storages: set[int]) -> int:
    return sum(rec.sizes[s] for s in storages)


def inside(name: str, block: str) -> bool:
    """`name` is the module `block` or one of its submodules ("" is the model)."""
    return block == "" or name == block or name.startswith(block + ".")


def module_rows(
    model: nn.Module, rec: StepRecord, held: dict[str, int] | None = None
) -> list[ModuleMemory]:
    """Every module, in forward order (a container that is never called itself, such as a
    ModuleList, comes just before its first called submodule); bytes and times inclusive."""
    named = dict(model.named_modules())
    first = {name: i for i, name in enumerate(rec.order)}
    never = len(first)

    def subtree(name: str) -> list[str]:
        return [n for n in named if inside(n, name)]

    def order_key(name: str) -> tuple[int, int]:
        start = min((first[n] for n in subtree(name) if n in first), default=never)
        return (start, 0 if name == "" else name.count(".") + 1)

    rows = []
    for name in sorted(named, key=order_key):
        members = subtree(name)
        saved = set().union(*(rec.own_saved.get(n, set()) for n in members))
        params = {id(p): p for n in members for p in named[n].parameters(recurse=False)}
        grads = {pn: b for pn, b in rec.grad_bytes.items() if inside(pn.rpartition(".")[0], name)}
        forward = rec.forward_ms.get(name)
        if forward is None:  # never called itself: its called submodules' time
            forward = sum(
                rec.forward_ms.get(n, 0.0)
                for n in members
                if n != name and n in rec.calls and _parent_called(n, name, rec)
            )
        rows.append(
            ModuleMemory(
                name=name,
                type=type(named[name]).__name__,
                depth=0 if name == "" else name.count(".") + 1,
                calls=rec.calls.get(name, 0),
                saved_bytes=_sum(rec, saved),
                own_saved_bytes=_sum(rec, rec.own_saved.get(name, set())),
                param_bytes=sum(_bytes(p) for p in params.values()),
                grad_bytes=sum(grads.values()),
                forward_ms=forward,
                backward_ms=sum(rec.own_backward_ms.get(n, 0.0) for n in members),
                held_bytes=sum((held or {}).get(n, 0) for n in members),
            )
        )
    return rows


def _parent_called(name: str, container: str, rec: StepRecord) -> bool:
    """`name` is outermost among the called modules between it and `container`."""
    parts = name.split(".")
    prefix = container.split(".") if container else []
    for i in range(len(prefix) + 1, len(parts)):
        if ".".join(parts[:i]) in rec.calls:
            return False
    return True
