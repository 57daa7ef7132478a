"""Monitor: gradient flow inside the user's own training loop, on their own model, which is
left with no hook from the monitor when the `with` block ends."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import torch
from torch import nn

from ..._version import __version__
from ...errors import InputError
from ...locations import locate_findings
from ...options import at_least
from ...results import FlowReport
from .distributed import (
    RankContext,
    Started,
    check_same_monitor,
    detect_ranks,
    model_type_name,
    reduce_across_ranks,
    start_reduction,
    unwrapped,
)
from .findings import detect_findings
from .findings.nan import skipped_steps
from .layer_rows import history, parameter_grad_max, resolve_step
from .model_map import ModelMap, comparable_keys, model_dtype_device
from .optim_watch import OptimizerWatch, apply_record
from .recorder import Recorder
from .samples import StepSample
from .step import PendingStep, read_back
from .thresholds import FlowThresholds


class _CallHook:
    """The Monitor's forward pre-hook on the model. A deep copy (or a pickle) of the model
    made inside the `with` block, as flow() makes, gets a hook that does nothing instead of a
    copy of the Monitor (its recorder holds autograd nodes, which cannot be copied)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[nn.Module, tuple, dict], None] | None) -> None:
        self.fn = fn

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.fn is not None:
            self.fn(module, args, kwargs)

    def __deepcopy__(self, memo: dict) -> _CallHook:
        return _CallHook(None)

    def __reduce__(self) -> tuple:
        return (_CallHook, (None,))


class Monitor:
    """Watch gradient flow while your own loop trains `model`.

        with gradcheck_tool.Monitor(model, every=10) as mon:
            for x, y in loader:
                opt.zero_grad()
                loss_fn(model(x), y).backward()
                opt.step()
        print(mon.report()["findings"])

    A step is one call of `model` with grad enabled (calls under torch.no_grad(), e.g.
    validation, are not counted). On every `every`-th step the monitor attaches its hooks for
    that forward and backward only; on the other steps a single forward pre-hook on the model
    counts the call and returns. Measurements stay on the device and are read back at
    `report()` (at most one transfer per recorded step). Each parameter's gradient is measured
    as the backward produces it (this backward's gradient, before it is added to `.grad`; in
    a distributed job `.grad` itself, see below), the weights as the model is called. The
    optimizer step after a recorded step is seen through torch's global optimizer hooks
    (nothing to pass; optimizers without the model's parameters are ignored): how far it
    moved each layer, which parameters it left alone, and whether the next backward adds to
    its gradient (optim_watch.py). On exit the model has no hook left from the monitor, and
    no optimizer hook either.

    In a distributed job (a DistributedDataParallel or FSDP model, every rank entering its
    Monitor), each recorded step is combined across ranks when the next one begins (Note
    [reducing a step across ranks] in step.py): the report is the job's, with the whole of
    FSDP's sharded tensors and dead units over the global batch. Rank 0 gets it; the other
    ranks get None, or the same report with `all_ranks=True`. The report covers the steps
    finished so far: a step is finished when the model is called again or the `with` block
    ends (a report never runs a collective, so rank 0 alone may ask for one). The gradient
    measured there is `.grad` when the backward is complete (after DDP's all-reduce, FSDP's
    reduce-scatter): the gradient the optimizer will use, which includes whatever `.grad`
    held before that backward (the earlier micro-batches when gradients are accumulated;
    the earlier steps when the loop does not zero them). Calls under DDP's `no_sync()` are
    counted, not recorded (their gradients are each rank's own); the synchronised call
    after them is recorded, with the gradient of all its micro-batches.

    Every rank must enter a Monitor on the same model with the same options at the same
    point of its loop: entering checks this in one collective and raises InputError on every
    rank when `every` or the parameters differ. A Monitor entered on some ranks only cannot
    be detected (no rank can tell a rank that never enters from a slow one): its check meets
    the other ranks' own collectives (DDP's), and gloo aborts the job on the mismatch, or it
    hangs until the process group's timeout. `wrapper`: the DDP or FSDP module around
    `model`, when your loop calls the wrapper but you monitor the module inside it (as the
    trainer callbacks do); the steps are combined through it.

    `tensorboard`: a folder (a SummaryWriter made there, closed on exit) or your own
    SummaryWriter (left open): each recorded step's per-layer gradient norms, update ratios,
    dead and saturated fractions, and the number of findings, as scalars (integrations/
    tensorboard.py, Note [scalars of a recorded step]).
    """

    def __init__(
        self,
        model: nn.Module,
        every: int = 1,
        *,
        functional: bool = True,
        check_finite: bool = True,
        thresholds: FlowThresholds | None = None,
        name: str | None = None,
        flush_every: int = 64,
        tensorboard: Any = None,
        all_ranks: bool = False,
        wrapper: nn.Module | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"Monitor needs an nn.Module; got {type(model).__name__}")
        self.model = model
        self.every = at_least("every", every, 1)
        self.thresholds = thresholds or FlowThresholds()
        self.name = name or model_type_name(model)
        self.flush_every = flush_every
        self._functional = functional
        self._check_finite = check_finite
        self._mm: ModelMap | None = None
        self._recorder: Recorder | None = None
        self._watch: OptimizerWatch | None = None
        self._root_handles: list[Any] = []
        self._steps: list[PendingStep] = []  # every recorded step, read back or not
        self._samples: list[StepSample] = []  # the first len() of them, resolved
        self._unapplied: list[int] = []  # samples whose optimizer record is not read back yet
        self._steps_seen = 0
        self._recording: int | None = None  # the step whose forward/backward is being recorded
        self._in_forward = False
        self._active = False
        self._started = 0.0
        self._errors: list[str] = []
        self._scalars = None  # where each recorded step's scalars go (integrations/)
        if tensorboard is not None:
            from ...integrations.tensorboard import StepScalars

            self._scalars = StepScalars.to(tensorboard)
        self.all_ranks = all_ranks  # distributed: every rank gets the report, not only rank 0
        self.wrapper = wrapper  # the DDP/FSDP module around `model`, when the loop calls that
        self._ranks: RankContext | None = None
        self._uncombined = 0  # recorded steps left out: the ranks' layouts differed
        # a recorded step whose layout check is in flight (Note [deferring the layout check])
        self._in_flight: tuple[PendingStep, Started] | None = None

    # context manager
    def __enter__(self) -> Monitor:
        if self._active:
            raise InputError("this Monitor is already active")
        self._mm = ModelMap(self.model)
        self._ranks, note = detect_ranks(self.model, self._mm.params, self.wrapper)
        if note is not None:
            self._errors.append(note)
        if self._ranks is not None:
            self._check_same_on_every_rank()
        self._recorder = Recorder(
            self._mm,
            functional=self._functional,
            check_finite=self._check_finite,
            hook_param_grads=True,
            ranks=self._ranks,
        )
        self._recorder.saturation_margin = self.thresholds.saturation_margin
        self._recorder.on_root_return = self._on_model_return
        self._watch = OptimizerWatch(
            self._mm,
            check_zeroing=True,
            next_recorded_step=self._next_recorded_step,
            keep_copies=self.every == 1,
            every_parameter=self._ranks is not None,
        )
        self._root_handles.append(
            self.model.register_forward_pre_hook(_CallHook(self._on_model_call), with_kwargs=True)
        )
        self._watch.attach()
        self._active = True
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._in_forward:  # left from inside the model's forward
                self._on_model_return(None)
            if exc[0] is not None and self._ranks is not None:
                self._recording = None  # no collective after an exception: ranks may be gone
                self._in_flight = None
            else:
                self._finish_step(final=True)
        finally:
            self._active = False
            while self._root_handles:
                self._root_handles.pop().remove()
            if self._watch is not None:
                self._watch.close()
                self._errors.extend(e for e in self._watch.errors if e not in self._errors)
            if self._recorder is not None:
                self._errors.extend(e for e in self._recorder.errors if e not in self._errors)
                self._recorder.close()
            if self._scalars is not None:  # the steps not written yet; a folder's writer closed
                self._scalars.finish(len(self._steps), self.flow_report, exc[0] is not None)

    def _check_same_on_every_rank(self) -> None:
        """A distributed job's ranks entered Monitors that would combine different steps:
        an error on every rank now, instead of a collective mismatch that kills the job."""
        options = {
            "every": self.every,
            "functional": self._functional,
            "check_finite": self._check_finite,
        }
        differ = check_same_monitor(self._ranks, options, self._mm.param_names)
        if differ is not None:
            self._ranks = None
            raise InputError(
                f"the Monitors of this job's ranks differ: {differ}. Every rank must enter a "
                "Monitor on the same model with the same options (each recorded step is "
                "combined across the ranks)"
            )

    @property
    def steps_seen(self) -> int:
        return self._steps_seen

    @property
    def steps_recorded(self) -> int:
        return len(self._steps)

    def _next_recorded_step(self) -> int | None:
        """The number of the next step when it will be recorded (between steps)."""
        return self._steps_seen + 1 if self._steps_seen % self.every == 0 else None

    # hooks on the user's model
    def _on_model_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._in_forward or not torch.is_grad_enabled():
            return  # a nested call of the model, or an inference/validation call
        self._finish_step()
        self._steps_seen += 1
        if (self._steps_seen - 1) % self.every:
            return
        if self._ranks is not None and not self._ranks.gradients_synchronised():
            return  # under DDP's no_sync(): each rank's own gradients, not averaged: not recorded
        rec = self._recorder
        self._recording = self._steps_seen
        self._in_forward = True
        self._watch.arm(self._recording)
        rec.begin()
        # this call of the model has begun: the recorder's global hooks see the modules
        # inside it, and the model itself is entered by hand (with its keyword arguments)
        rec.attach()
        rec.enter_root(args, kwargs)

    def _on_model_return(self, output: Any) -> None:
        rec = self._recorder
        rec.exit_mode()
        rec.detach_modules()
        rec.end_forward()
        self._in_forward = False
        if output is None:  # the forward raised: nothing to record for this step
            rec.detach_tensors()
            rec.begin()
            self._recording = None

    def _finish_step(self, final: bool = False) -> None:
        if self._ranks is not None:
            # the previous recorded step's layout check has had a step's time to finish
            # (Note [deferring the layout check])
            self._finish_started(final)
        if self._recording is None:
            if final and self._ranks is not None:  # the last optimizer records
                reduce_across_ranks(self._watch.unread(True), self._ranks, wait=True)
            return
        step, self._recording = self._recording, None
        pending = self._recorder.collect(step, None)
        if self._ranks is not None:
            # combined across ranks with the optimizer records complete by now, in the same
            # collectives; a step whose layouts differ across ranks is left out
            items = [pending, *self._watch.unread(final)]
            started = start_reduction(items, self._ranks)
            if started is not None:
                self._in_flight = (pending, started)
            if final:
                self._finish_started(final)
            return
        self._append_step(pending)

    def _finish_started(self, final: bool) -> None:
        """Note [deferring the layout check]: a recorded step's layout check (an all_reduce
        of its sizes and fingerprint, Note [reducing a step across ranks]) is started when
        the step is packed, and waited for at the next recorded step (or when the Monitor
        is left), where every rank is at the same point again: its SUM and MAX start then,
        so that no rank waits for the others at the step itself. Until then the step is not
        among the Monitor's steps (a report on rank 0 alone must not start a collective)."""
        if self._in_flight is None:
            return
        (pending, started), self._in_flight = self._in_flight, None
        if not started.finish(wait=final):
            self._uncombined += 1
            return
        self._append_step(pending)

    def _append_step(self, pending: PendingStep) -> None:
        self._steps.append(pending)
        unread = len(self._steps) - len(self._samples)
        if unread >= self.flush_every:  # bound the device memory held by unread steps
            records = self._watch.unread(False)
            if self._ranks is not None:
                records = [r for r in records if r.reduced]
            read_back([*self._steps[len(self._samples) :], *records])

    # results
    def flow_report(self) -> FlowReport | None:
        """What was measured so far, as a FlowReport (history: every recorded step). In a
        distributed job: on rank 0 (every rank with `all_ranks`), else None."""
        if self._mm is None:
            raise InputError("the Monitor has not been entered: use `with Monitor(model) as mon:`")
        ranks = self._ranks
        if ranks is not None and ranks.rank != 0 and not self.all_ranks:
            return None
        if (
            ranks is None
            and self._recording is not None
            and not self._in_forward
            and self._recorder.state.grads_seen
        ):
            self._finish_step()  # the last step's backward has run: include it
        first = len(self._samples)
        new = self._steps[first:]
        records = self._watch.unread(not self._active)
        if ranks is not None:  # only what has been combined across ranks
            records = [r for r in records if r.reduced]
        # one transfer for every step (and optimizer step) not read back yet
        read_back([*new, *records])
        self._samples.extend(resolve_step(p, self._mm) for p in new)
        # each sample gets its optimizer record once that is read back: the current step's
        # stays open while its optimizer steps may still come, and is applied at a later
        # report (a report() inside the loop must not lose it)
        records, waiting = self._watch.records, []
        for k in [*self._unapplied, *range(first, len(self._samples))]:
            p = self._steps[k]
            rec = records.get(p.step)
            if rec is not None and rec.host is None:
                waiting.append(k)
            else:
                n = len(self._mm.params)
                apply_record(self._samples[k], rec, self._mm, parameter_grad_max(p, n))
                records.pop(p.step, None)  # applied: a long run keeps no record per step
        self._unapplied = waiting
        samples = self._samples
        th = self.thresholds
        dtype, device = model_dtype_device(self.model)
        warnings = list(self._errors)
        if self._recorder is not None:
            warnings.extend(e for e in self._recorder.errors if e not in warnings)
        skipped = skipped_steps(samples)
        if skipped:
            steps = ", ".join(str(s.step) for s in skipped[:5]) + (
                ", …" if len(skipped) > 5 else ""
            )
            warnings.append(
                f"{len(skipped)} recorded step(s) had non-finite gradients that no optimizer "
                f"applied (steps {steps}), as a GradScaler skips an overflowing step; training "
                "went on with finite values, so this is no finding"
            )
        if self._uncombined:
            warnings.append(
                f"{self._uncombined} recorded step(s) left out: the ranks' forwards took "
                "different paths (other layers or activations ran), so their numbers could "
                "not be combined"
            )
        if not samples and not self._uncombined:
            warnings.append(
                "no step recorded yet: call the model (with grad enabled) inside the `with` block"
            )
        report = FlowReport(
            target=self.name,
            version=__version__,
            layers=tuple(samples[-1].rows) if samples else (),
            findings=(
                locate_findings(
                    detect_findings(
                        samples,
                        th,
                        None,
                        comparable_keys(self._mm),
                        optimizer=self._watch.kind,
                        lr=self._watch.lr,
                    ),
                    unwrapped(self.model),  # the layers' names are the inner module's
                )
                if samples
                else ()
            ),
            found_by="Monitor" if ranks is None else f"Monitor, {ranks.describe()}",
            source="monitor",
            dtype=dtype,
            device=str(device),
            mode="train" if self.model.training else "eval",
            loss="user",
            steps=len(samples),
            steps_requested=len(samples),
            every=self.every,
            steps_seen=self._steps_seen,
            history=history(samples),
            warnings=tuple(warnings),
            seconds=time.perf_counter() - self._started,
        )
        if self._scalars is not None:
            self._scalars.on_report(samples, self._unapplied, report)
        return report

    def print_report(self, file: TextIO | None = None, width: int | None = None) -> None:
        """Print what was measured so far as `gradtool flow` prints it: the per-layer table,
        the findings with their evidence and fixes (to stdout unless `file`)."""
        from ...formats import OutputFormat, write

        report = self.flow_report()
        if report is not None:  # (a distributed job's other ranks print nothing)
            write(report, OutputFormat.TABLE, file or sys.stdout, width=width)

    def report(self) -> dict[str, Any] | None:
        """The same dict as `gradtool flow --json`, plus the per-step history (None on a
        distributed job's other ranks, unless `all_ranks`)."""
        report = self.flow_report()
        return report.to_dict() if report is not None else None
