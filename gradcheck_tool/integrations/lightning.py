"""`GradFlowCallback` for Lightning 2.x: gradtool's Monitor on the LightningModule while
`Trainer.fit` trains it.

    from gradcheck_tool.integrations.lightning import GradFlowCallback

    trainer = L.Trainer(callbacks=[GradFlowCallback(every=10, json="gradflow.json")])

Every `every`-th training batch is recorded (Note [a step begins at the first call]:
`training_step` need not call the LightningModule itself). At the trainer's logging steps
(`log_every_n_steps`; less often late in a long run, Note [how often a callback reports])
the recorded steps are logged through the trainer's loggers as `gradtool/...` scalars. When
training ends the hooks are removed and, on global rank 0, the findings are printed and the
JSON written. Needs `lightning` (or `pytorch_lightning`): pip install 'gradtool[lightning]'.

Under strategy="ddp" (or FSDP) the LightningModule is still the module watched, and every
rank's steps are combined through the strategy's wrapper around it (`trainer.strategy.model`):
rank 0's report is the job's, as a Monitor on the wrapped model gives (the gradients after
DDP's all-reduce, dead units over the global batch); the other ranks report nothing.
"""

from __future__ import annotations

from typing import Any

try:  # the unified package; the standalone one where only it is installed
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover - depends on what is installed
    from pytorch_lightning.callbacks import Callback

from ._training import GradFlowFailed, SessionCallback

__all__ = ["GradFlowCallback", "GradFlowFailed"]


class _LoggerSink:
    """A recorded step's scalars into each of the trainer's loggers, on the step axis of
    Lightning's own metrics (optimizer steps from 0)."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    def write_step(self, step: int, scalars: dict[str, float]) -> None:
        per_step = max(int(getattr(self.trainer, "accumulate_grad_batches", 1) or 1), 1)
        at = self._first + (step - 1) // per_step
        for logger in self.trainer.loggers:
            logger.log_metrics(scalars, step=at)

    def flush(self) -> None:
        for logger in self.trainer.loggers:
            logger.save()

    def close(self) -> None:
        self.flush()

    _first = 0  # the trainer's step when the Monitor started (a resumed fit)


class GradFlowCallback(SessionCallback, Callback):
    """Gradient flow of the LightningModule while it trains (see the module's docstring).

    every: record every N-th training batch (1: all of them).
    fail_on: finding kinds ("nan,diverging", a list, or "all") that fail the run: training
        stops at the first report that shows one, and `fit()` raises GradFlowFailed
        once the report is written.
    json: write the report (`gradtool flow --json`'s, plus the history) there at the end.
    tensorboard: also write the scalars to this folder or SummaryWriter (a TensorBoardLogger
        gets them anyway, as every logger does).
    log: log the scalars through the trainer's loggers.
    print_report: print the table and findings at the end (global rank 0).
    thresholds, functional, check_finite, name: as for Monitor.

    After fit, `callback.report` is the FlowReport (None if gradtool failed; it warns then,
    and training went on without it).
    """

    def __init__(self, every: int = 10, **options: Any) -> None:
        super().__init__(every, **options)
        self._batches = 0

    # training begins and ends
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        from ._batch_monitor import BatchMonitor

        self._batches = 0
        sinks = []
        if self._log and trainer.loggers:
            sink = _LoggerSink(trainer)
            sink._first = int(trainer.global_step)
            sinks.append(sink)
        # the LightningModule is monitored (training_step need not call it: its modules'
        # calls begin the steps), and a distributed job's steps are combined through the
        # strategy's wrapper around it (DDP: DistributedDataParallel)
        wrapper = getattr(trainer.strategy, "model", None)
        self._session.start(BatchMonitor, pl_module, sinks, wrapper=wrapper)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        s = self._session
        report = s.finish(main_process=bool(trainer.is_global_zero))
        if report is not None and report.failed_kinds:
            raise GradFlowFailed(report)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if isinstance(exception, GradFlowFailed):
            return
        # hooks off; an interrupted run (Ctrl-C) still gets its report
        if isinstance(exception, KeyboardInterrupt):
            self._session.finish(bool(trainer.is_global_zero), interrupted="interrupt")
        else:
            self._session.stop(exception)

    # each training batch
    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        s = self._session
        if s.active:
            s.guard("starting a batch", s.monitor.begin_batch)

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        s = self._session
        if s.active:
            s.guard("ending a forward", s.monitor.end_forward)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        s = self._session
        if not s.active:
            return
        s.guard("ending a batch", s.monitor.end_forward)
        self._batches += 1
        every_n = max(int(getattr(trainer, "log_every_n_steps", 50) or 50), 1)
        if self._batches % every_n == 0 and s.refresh_due():
            s.refresh()
            if s.failed:
                trainer.should_stop = True  # fail_on: the rest of training is wasted
