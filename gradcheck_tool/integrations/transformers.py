"""`GradFlowCallback` for the Hugging Face `Trainer`: gradtool's Monitor on the model while
`trainer.train()` trains it.

    from gradcheck_tool.integrations.transformers import GradFlowCallback

    trainer = Trainer(model, args, train_dataset=ds,
                      callbacks=[GradFlowCallback(every=10, json="gradflow.json")])

The Trainer calls the model once per micro-batch: every `every`-th call with grad enabled is
recorded (with gradient accumulation, a step is a micro-batch and its gradient that
micro-batch's share; under DDP see below). At the Trainer's logging steps (less often late
in a long run: Note [how often a callback reports]) the latest recorded step's
`gradtool/...` scalars join the Trainer's record of that log (`state.log_history`, saved
with its state) and the number of findings joins the log itself. When training ends the
hooks are removed (the Trainer has no callback for a train() that raises:
`callback.close()` removes them then, as the next train() does) and, on the main process,
the findings are printed and the JSON written.

Note [the Trainer's reporting callbacks come first]: the Trainer puts its reporting
integrations (TensorBoard, W&B, ...) before the callbacks it is given, so they have sent a
step's logs before this callback sees them; after it come the console's printers, where a
line per layer would drown the loss. So `logs` gets only the findings counts, and the
per-layer scalars go to `state.log_history`. For TensorBoard pass
`tensorboard=args.logging_dir` (the folder the Trainer's own TensorBoard writes to), which
writes every recorded step. Needs `transformers`: pip install 'gradtool[transformers]'.

Under DDP (a `torchrun`ed Trainer) the model is still the module watched, and every rank's
steps are combined through the Trainer's DistributedDataParallel around it (its
`model_wrapped`, found at on_train_begin): rank 0's report is the job's, as a Monitor on the
wrapped model gives; the other ranks report nothing. With gradient accumulation the Trainer
runs the micro-batches before the last under DDP's no_sync() (unless sync_each_batch): those
are counted, not recorded, and the last one's step measures `.grad` after the all-reduce,
the gradient of all the micro-batches (Monitor's docstring).
"""

from __future__ import annotations

import sys
from typing import Any

from transformers import TrainerCallback

from ._training import GradFlowFailed, SessionCallback
from .scalars import ERRORS_TAG, FINDINGS_TAG

COUNT_TAGS = (FINDINGS_TAG, ERRORS_TAG)

__all__ = ["GradFlowCallback", "GradFlowFailed"]


class _LatestScalars:
    """Keeps the scalars of the recorded steps written since the last log, newest winning."""

    def __init__(self) -> None:
        self.pending: dict[str, float] = {}

    def write_step(self, step: int, scalars: dict[str, float]) -> None:
        self.pending.update(scalars)

    def take(self) -> dict[str, float]:
        out, self.pending = self.pending, {}
        return out

    def close(self) -> None:
        pass


def _model_wrapped(model: Any) -> Any:
    """The Trainer's `model_wrapped` (its DistributedDataParallel) around `model`, or None.
    Callbacks are given the model, not the Trainer: on_train_begin is called from the
    Trainer's training loop, whose frame holds the Trainer as `self`."""
    from transformers import Trainer

    frame = sys._getframe(1)
    for _ in range(64):  # (the loop is a few frames up; a bound, not a search of the stack)
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        if isinstance(owner, Trainer) and owner.model is model:
            return getattr(owner, "model_wrapped", None)
        frame = frame.f_back
    return None


class GradFlowCallback(SessionCallback, TrainerCallback):
    """Gradient flow of the model while the Trainer trains it (see the module's docstring).

    every: record every N-th call of the model with grad enabled (1: all of them).
    fail_on: finding kinds ("nan,diverging", a list, or "all") that fail the run: training
        stops at the first report that shows one, and `train()` raises GradFlowFailed
        once the report is written.
    json: write the report (`gradtool flow --json`'s, plus the history) there at the end.
    tensorboard: write each recorded step's scalars to this folder or SummaryWriter.
    log: add the scalars to the Trainer's log history (the findings counts to its logs) at
        its logging steps.
    print_report: print the table and findings at the end (main process).
    thresholds, functional, check_finite, name: as for Monitor.

    After training, `callback.report` is the FlowReport (None if gradtool failed; it warns
    then, and training went on without it).
    """

    def __init__(self, every: int = 10, **options: Any) -> None:
        super().__init__(every, **options)
        self._latest = _LatestScalars()

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any):
        from ..engines.flow.monitor import Monitor

        if model is None:
            return
        # a train() that raised never reached on_train_end (the Trainer has no exception
        # callback): its hooks come off before new ones go on
        self._session.stop()
        self._latest = _LatestScalars()
        # a distributed job's steps are combined through the Trainer's DDP around `model`
        sinks = [self._latest] if self._log else []
        self._session.start(Monitor, model, sinks, wrapper=_model_wrapped(model))

    def close(self) -> None:
        """Take gradtool's hooks off the model now (after a train() that raised; a train()
        that ends takes them off itself)."""
        self._session.stop()

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any):
        s = self._session
        # DefaultFlowCallback, which runs before the callbacks the Trainer is given, has just
        # decided whether this step logs
        if s.active and control.should_log and s.refresh_due():
            s.refresh()
            if s.failed:
                control.should_training_stop = True  # fail_on: the rest of training is wasted
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any):
        scalars = self._latest.take()
        if not scalars:
            return control
        # Note [the Trainer's reporting callbacks come first]: the per-layer scalars go to
        # the Trainer's record of this log (a copy of `logs`, appended just before this call),
        # the findings counts to `logs` too
        history = getattr(state, "log_history", None)
        if history and history[-1].get("step") == state.global_step:
            history[-1].update(scalars)
        if logs is not None:
            logs.update({k: v for k, v in scalars.items() if k in COUNT_TAGS})
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any):
        report = self._session.finish(main_process=bool(state.is_world_process_zero))
        if report is not None and report.failed_kinds:
            raise GradFlowFailed(report)
        return control
