"""Bounded, interruptible runs: `--timeout`, SIGTERM and Ctrl-C end a run the same way.

Every engine already keeps a partial report when it catches `KeyboardInterrupt` (Ctrl-C).
`bounded(timeout)` turns the other two ways a run is cut short into that same exception:
`Stop`, a `KeyboardInterrupt` subclass whose `reason` says which ("interrupt" for Ctrl-C,
"terminated" for SIGTERM, "timeout" for the time limit). So no engine needs a second path,
and `reason_of(exc)` names the reason of any of them. No torch here.

    with bounded(timeout) as run:       # the CLI, around the targets of one run
        for target in targets:
            if run.reason:               # stopped: later targets do not start
                break
            ...                          # an engine raises Interrupted(partial report)
    sys.exit(EXIT_CODES[run.reason])

Note [stopping a run]: a signal handler can only raise in the main thread, between two
Python bytecodes. Three things keep a run bounded anyway:
- once stopped, engines call `raise_if_stopped()` before and after each evaluation (check)
  and step (flow): a forward that swallowed the first `Stop` starts no more work, and what
  it returned after swallowing it never reaches a verdict;
- a watchdog thread: if the run has not ended `grace` seconds after it was stopped (a
  forward stuck in C code, or one that catches `BaseException` and keeps looping), it
  prints one line to stderr and ends the process with the reason's exit code (`os._exit`:
  no report can be written then);
- in a thread other than the main one no handler can be installed: the timeout is then
  kept between evaluations and steps only (a `threading.Timer` marks the run stopped, and
  `raise_if_stopped` raises), SIGTERM and Ctrl-C are left to the process, and there is no
  watchdog (it would end someone else's process).
A C call that holds the GIL and never returns cannot be ended from inside the process (the
watchdog thread needs the GIL too); the CI job's own time limit still applies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from .options import positive
from .results import EXIT_STOPPED

INTERRUPT, TERMINATED, TIMEOUT = "interrupt", "terminated", "timeout"
EXIT_CODES = EXIT_STOPPED  # reason -> exit code (results.py: a report's exit code uses it too)
# what stopped a run, in the words a report uses ("partial report, 3 result(s) before ...")
STOPPED_BY = {INTERRUPT: "Ctrl-C", TERMINATED: "SIGTERM", TIMEOUT: "the timeout"}
GRACE = 10.0  # seconds the run has to end after it was stopped, before the watchdog ends it


class Stop(KeyboardInterrupt):
    """The run was stopped (`reason`: "timeout" | "terminated" | "interrupt"). A
    KeyboardInterrupt, so every path that keeps a partial report on Ctrl-C keeps one here."""

    def __init__(self, reason: str = INTERRUPT) -> None:
        super().__init__(reason)
        self.reason = reason


class Interrupted(Exception):
    """Raised through an engine's public entry (`check`, `flow`) when the run was stopped;
    carries the partial report, whose `interrupted` is the reason."""

    def __init__(self, report: Any) -> None:
        super().__init__(f"interrupted ({report.interrupted})")
        self.report = report

    @property
    def reason(self) -> str:
        return self.report.interrupted or INTERRUPT


def reason_of(exc: BaseException) -> str | None:
    """Why `exc` ended a run: "timeout", "terminated", "interrupt" (a plain Ctrl-C), or None
    when it is not an interruption."""
    if isinstance(exc, (Stop, Interrupted)):
        return exc.reason
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPT
    return None


class RunState:
    """One bounded run: why it was stopped (`reason`, None while it runs), and when."""

    def __init__(self, timeout: float | None, grace: float, watchdog: bool) -> None:
        self.timeout = timeout
        self.grace = grace
        self.reason: str | None = None
        self.stopped_at: float | None = None  # time.monotonic() of the stop
        self.started = time.monotonic()
        self._ended = threading.Event()
        self._wake = threading.Event()  # the watchdog's: the run was stopped, or ended
        self._shielded = 0  # shielded() blocks open: a signal then only marks the stop
        if watchdog:
            # started here, not from the signal handler: a handler that starts a thread can
            # deadlock on threading's own lock if the signal came while the main thread held it
            threading.Thread(target=self._watch, name="gradtool-watchdog", daemon=True).start()

    def stop(self, reason: str) -> None:
        """Mark the run stopped (the first reason stays); the watchdog's grace starts."""
        if self.reason is not None:
            return
        self.reason, self.stopped_at = reason, time.monotonic()
        self._wake.set()

    def _watch(self) -> None:
        self._wake.wait()
        if self._ended.wait(self.grace):
            return
        reason = self.reason or TIMEOUT
        code = EXIT_CODES[reason]
        what = f"the {self.timeout:g} s timeout" if reason == TIMEOUT else STOPPED_BY[reason]
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        with contextlib.suppress(Exception):
            sys.stderr.write(
                f"gradtool: stopped by {what}, the run did not end within {self.grace:g} s "
                "(the code running does not return: a call stuck in C code, or an `except "
                f"BaseException` that keeps going); exiting with {code}, no report\n"
            )
            sys.stderr.flush()
        os._exit(code)

    def _end(self) -> None:
        self._ended.set()
        self._wake.set()


_local = threading.local()  # the bounded runs open in this thread, innermost last


def _runs() -> list[RunState]:
    runs = getattr(_local, "runs", None)
    if runs is None:
        runs = _local.runs = []
    return runs


def current() -> RunState | None:
    """The innermost bounded run of this thread (None outside `bounded`)."""
    runs = _runs()
    return runs[-1] if runs else None


def stop_requested() -> str | None:
    """The reason a bounded run of this thread was stopped, or None."""
    return next((r.reason for r in reversed(_runs()) if r.reason is not None), None)


def raise_if_stopped() -> None:
    """Raise `Stop` when this thread's run was stopped: called by the engines before each
    evaluation or step, so that code which swallowed the first `Stop` starts no more work."""
    reason = stop_requested()
    if reason is not None:
        raise Stop(reason)


def caught(exc: BaseException) -> str:
    """An engine caught `exc` (a KeyboardInterrupt) and keeps a partial report: the reason
    for the report. The run is marked stopped with it too (a Ctrl-C raised by the user's
    own code, or under a SIGINT handler of theirs, never passed through our handler)."""
    reason = reason_of(exc) or INTERRUPT
    run = current()
    if run is not None:
        run.stop(reason)
        return run.reason or reason
    return reason


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Work that must not be cut in half (hooks removed, state restored, a report written):
    a stop that arrives meanwhile only marks the run stopped (`reason`), and the next
    `raise_if_stopped()` raises it; the watchdog still runs."""
    run = current()
    if run is None:
        yield
        return
    run._shielded += 1
    try:
        yield
    finally:
        run._shielded -= 1


_SIGNAL_REASONS = {signal.SIGINT: INTERRUPT, signal.SIGTERM: TERMINATED}
if hasattr(signal, "SIGALRM"):
    _SIGNAL_REASONS[signal.SIGALRM] = TIMEOUT


@contextlib.contextmanager
def bounded(timeout: float | None = None, *, grace: float = GRACE) -> Iterator[RunState]:
    """A run that ends at `timeout` seconds (None: no limit), on SIGTERM or on Ctrl-C, by
    raising `Stop` in the main thread; yields its `RunState`, whose `reason` says why it was
    stopped even when an engine caught the `Stop` and returned a partial report. Handlers and
    timers in place before are restored on exit (a timer that came due meanwhile then fires
    at once); Note [stopping a run] for what happens outside the main thread."""
    if timeout is not None:
        timeout = positive("timeout", timeout, "a positive number of seconds")
    main = threading.current_thread() is threading.main_thread()
    can_alarm = hasattr(signal, "setitimer")
    run = RunState(timeout, grace, watchdog=main)
    runs = _runs()
    runs.append(run)
    closing = False
    late: list[int] = []  # SIGINT/SIGTERM that came while the handlers were being put back

    def on_signal(signum: int, frame: Any) -> None:
        reason = _SIGNAL_REASONS[signum]
        if closing:  # the run is over: the handlers put back will see it
            if signum != getattr(signal, "SIGALRM", None):
                late.append(signum)
            return
        run.stop(reason)
        if not run._shielded:
            raise Stop(run.reason or reason)

    on_signal.gradtool = True  # type: ignore[attr-defined]  # an inner run takes over from it

    previous: dict[int, Any] = {}
    old_timer: tuple[float, float] | None = None
    timer: threading.Timer | None = None
    try:
        if main:
            ctrl_c = signal.getsignal(signal.SIGINT)
            # Python's own Ctrl-C handler, or an outer run's; a handler of the user's stays
            if ctrl_c is signal.default_int_handler or getattr(ctrl_c, "gradtool", False):
                previous[signal.SIGINT] = signal.signal(signal.SIGINT, on_signal)
            previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, on_signal)
            if timeout is not None and can_alarm:
                previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, on_signal)
                old_timer = signal.setitimer(signal.ITIMER_REAL, timeout)
        if timeout is not None and (not main or not can_alarm):
            timer = threading.Timer(timeout, run.stop, (TIMEOUT,))
            timer.daemon = True
            timer.start()
        yield run
    finally:
        closing = True
        run._end()
        if timer is not None:
            timer.cancel()
        if old_timer is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in previous.items():
            # None: a handler not installed from Python, which cannot be put back
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if old_timer is not None and old_timer[0] > 0:
            left = old_timer[0] - (time.monotonic() - run.started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-6), old_timer[1])
        runs.remove(run)
        for signum in late:  # delivered again, to the handler that is back in place
            signal.raise_signal(signum)
