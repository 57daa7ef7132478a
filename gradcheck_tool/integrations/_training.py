"""What the trainer callbacks share: one Monitor for one training run, its report refreshed at
the trainer's logging steps, and at the end the findings printed and the JSON written on the
main process only. Note [a callback never breaks training]: an error of gradtool's own inside
a trainer's hook is a warning, after which the Monitor is taken off the model and training
goes on without it; only the user's `fail_on` ends a run, after the report is written."""

from __future__ import annotations

import dataclasses
import sys
import warnings
from collections.abc import Sequence
from typing import Any, Callable, TextIO

from ..options import at_least
from ..results import FlowReport

# Note [how often a callback reports]: a report costs time in proportion to the steps recorded
# so far (it reads every step's rows: the history, the findings over all steps), so reporting
# at every logging step of a long run would cost time growing with the square of its length.
# A callback reports at a logging step only when the steps recorded since its last report are
# at least 1/REPORT_GROWTH of those recorded before it: every logging step early on, then
# less often, which keeps the cost per recorded step bounded (about REPORT_GROWTH rows read
# per row recorded). Late in a long run the scalars thus reach the logger in batches, each at
# its own step.
REPORT_GROWTH = 8


class GradFlowFailed(Exception):
    """Training saw a finding of a kind the callback's `fail_on` names. Raised by the
    trainer's fit()/train() once training has ended and the report has been written."""

    def __init__(self, report: FlowReport) -> None:
        kinds = ", ".join(report.failed_kinds)
        super().__init__(f"gradtool: training showed {kinds} (fail_on); see the report above")
        self.report = report


def parse_fail_on(fail_on: str | Sequence[str] | None) -> tuple[str, ...]:
    """`"nan,diverging"`, a list of kinds, or "all" -> the kinds, in the findings' order."""
    from ..engines.flow.findings import finding_kinds
    from ..engines.flow.findings import parse_fail_on as parse

    if fail_on is None:
        return ()
    text = fail_on if isinstance(fail_on, str) else ",".join(fail_on)
    fatal = parse(text)
    return tuple(k for k in finding_kinds() if k in fatal)


class SessionCallback:
    """What the trainer callbacks (Lightning's, Hugging Face's) share: their options, the
    FlowSession they drive, the report and the Monitor. A callback class derives from this
    and its trainer's callback class, in that order.

    every: record every N-th step (1: all of them).
    fail_on: finding kinds ("nan,diverging", a list, or "all") that fail the run: training
        stops at the first report that shows one, and the trainer's fit()/train() raises
        GradFlowFailed once the report is written.
    json: write the report (`gradtool flow --json`'s, plus the history) there at the end.
    tensorboard: write each recorded step's scalars to this folder or SummaryWriter.
    log: log the scalars through the trainer.
    print_report: print the table and findings at the end (main process).
    thresholds, functional, check_finite, name: as for Monitor.
    """

    def __init__(
        self,
        every: int = 10,
        *,
        fail_on: str | Sequence[str] | None = None,
        json: str | None = None,
        tensorboard: Any = None,
        log: bool = True,
        print_report: bool = True,
        thresholds: Any = None,
        functional: bool = True,
        check_finite: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self._session = FlowSession(
            every=every,
            fail_on=fail_on,
            json=json,
            tensorboard=tensorboard,
            print_report=print_report,
            monitor_options={
                "thresholds": thresholds,
                "functional": functional,
                "check_finite": check_finite,
                "name": name,
            },
        )
        self._log = log

    @property
    def report(self) -> Any:
        """The last FlowReport (after training: the final one; None if gradtool failed: it
        warned then, and training went on without it)."""
        return self._session.report

    @property
    def monitor(self) -> Any:
        return self._session.monitor


class FlowSession:
    """One Monitor over one training run, as a trainer callback drives it."""

    def __init__(
        self,
        *,
        every: int,
        fail_on: str | Sequence[str] | None,
        json: str | None,
        tensorboard: Any,
        print_report: bool,
        monitor_options: dict[str, Any],
    ) -> None:
        from ..formats.json import check_path

        self.every = at_least("every", every, 1)
        self.fail_on = parse_fail_on(fail_on)
        if json is not None:
            check_path(json)
        if tensorboard is not None:
            from .tensorboard import sink_for

            sink_for(tensorboard)  # a bad value is the user's error now, not a warning later
        self.json = json
        self.tensorboard = tensorboard
        self.print_report = print_report
        self.monitor_options = monitor_options
        self.monitor: Any = None
        self.report: FlowReport | None = None  # the last report made
        self.disabled = False
        self._active = False
        self._reported_at = 0  # steps recorded at the last report

    # the Monitor on / off
    def start(self, monitor_cls: type, model: Any, sinks: list[Any], wrapper: Any = None) -> None:
        """Attach a Monitor to `model`; its scalars go to `sinks` and `tensorboard`.
        `wrapper`: the trainer's DDP (or other) module around `model`, through which a
        distributed job's steps are combined."""
        if self._active:
            return
        self.disabled = False  # a new run gets a new try, whatever the last one did
        targets = [*sinks, *([self.tensorboard] if self.tensorboard is not None else [])]

        def attach() -> None:
            self.report = None
            self._reported_at = 0
            self.monitor = monitor_cls(
                model,
                every=self.every,
                tensorboard=targets or None,
                wrapper=wrapper,
                # every rank of a distributed job gets the job's report, so that every rank
                # decides fail_on alike and stops at the same step (rank 0 alone would stop
                # while the others wait for it in DDP's next all-reduce)
                all_ranks=True,
                **self.monitor_options,
            )
            self.monitor.__enter__()
            self._active = True

        self.guard("attaching to the model", attach)

    def stop(self, exc: BaseException | None = None) -> None:
        """Take every hook off the model (the Monitor's exit writes the last scalars)."""
        if not self._active:
            return
        self._active = False
        mon = self.monitor
        self.guard(
            "removing its hooks",
            lambda: mon.__exit__(type(exc) if exc else None, exc, None),
        )

    @property
    def active(self) -> bool:
        return self._active and not self.disabled

    # reports
    def refresh_due(self) -> bool:
        """Whether a logging step should make a report (Note [how often a callback reports]).
        The same answer on every rank: it reads only the count of recorded steps."""
        if not self.active:
            return False
        recorded = self.monitor.steps_recorded
        return recorded - self._reported_at >= max(1, self._reported_at // REPORT_GROWTH)

    def refresh(self) -> FlowReport | None:
        """The report so far (every complete step's scalars written on the way)."""
        if not self.active:
            return None
        self._reported_at = self.monitor.steps_recorded
        made = self.guard("making its report", self.monitor.flow_report)
        if made is not None:
            self.report = dataclasses.replace(made, fail_on=self.fail_on)
        return self.report

    @property
    def failed(self) -> bool:
        return self.report is not None and bool(self.report.failed_kinds)

    def finish(
        self, main_process: bool, interrupted: str | None = None, out: TextIO | None = None
    ) -> FlowReport | None:
        """Training ended: hooks off, the final report; on the main process the table (and
        findings) printed and the JSON written. Returns the report (None when gradtool failed
        before it had one)."""
        if self.monitor is None or self.disabled:
            self.stop()
            return None
        self.stop()
        made = self.guard("making its report", self.monitor.flow_report)
        if made is None:
            return None
        report = dataclasses.replace(made, fail_on=self.fail_on, interrupted=interrupted)
        self.report = report
        if main_process:
            self.guard("writing its report", lambda: self._write(report, out))
        return report

    def _write(self, report: FlowReport, out: TextIO | None) -> None:
        from ..formats import OutputFormat, write
        from ..formats.json import write_file

        if self.print_report:
            write(report, OutputFormat.TABLE, out or sys.stdout)
        if self.json is not None:
            write_file(report, self.json)

    def guard(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run fn; an error of gradtool's own turns the Monitor off (with a warning) instead
        of ending training (Note [a callback never breaks training])."""
        try:
            return fn()
        except Exception as exc:
            if self.disabled:
                return None
            self.disabled = True
            warnings.warn(
                f"gradtool: GradFlowCallback failed while {what} and is off for the rest of "
                f"training ({type(exc).__name__}: {exc})",
                RuntimeWarning,
                stacklevel=2,
            )
            if self._active:
                self._active = False
                try:
                    self.monitor.__exit__(None, None, None)
                except Exception:  # noqa: BLE001 - already reported; hooks removed in finally
                    pass
            return None
