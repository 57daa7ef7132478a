"""`stopping.bounded`: the timeout, SIGTERM and Ctrl-C raise `Stop` with their reason; the
handlers and timers in place before are put back; outside the main thread the timeout is kept
between evaluations; the watchdog ends a run that does not stop (in a fresh process).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import REPO

from gradcheck_tool.errors import OptionError
from gradcheck_tool.stopping import (
    EXIT_CODES,
    Interrupted,
    Stop,
    bounded,
    raise_if_stopped,
    reason_of,
    shielded,
    stop_requested,
)

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)


def handlers() -> dict[int, object]:
    return {s: signal.getsignal(s) for s in HANDLED}


def spin_forever() -> None:
    n = 0
    while True:
        n += 1


def sleep_forever() -> None:
    while True:
        time.sleep(0.05)


def test_stop_is_a_keyboard_interrupt_with_a_reason():
    assert isinstance(Stop("timeout"), KeyboardInterrupt)
    assert reason_of(Stop("timeout")) == "timeout"
    assert reason_of(Stop("terminated")) == "terminated"
    assert reason_of(KeyboardInterrupt()) == "interrupt"  # a plain Ctrl-C
    assert reason_of(ValueError("no")) is None

    class Report:
        interrupted = "timeout"

    assert reason_of(Interrupted(Report())) == "timeout"
    assert EXIT_CODES == {"timeout": 124, "interrupt": 130, "terminated": 143}


@pytest.mark.parametrize("stuck", [spin_forever, sleep_forever], ids=["busy loop", "sleep"])
def test_the_timeout_stops_a_loop_and_says_why(stuck):
    before = handlers()
    started = time.monotonic()
    with pytest.raises(Stop) as stop, bounded(0.3) as run:
        stuck()
    took = time.monotonic() - started
    assert stop.value.reason == "timeout" and run.reason == "timeout"
    assert 0.25 < took < 2.0, took
    assert handlers() == before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_sigterm_stops_the_run_as_terminated():
    killer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM))
    before = handlers()
    with pytest.raises(Stop) as stop, bounded(None) as run:
        killer.start()
        sleep_forever()
    assert stop.value.reason == "terminated" and run.reason == "terminated"
    assert handlers() == before


def test_ctrl_c_under_bounded_is_recorded_as_interrupt():
    with pytest.raises(KeyboardInterrupt) as stop, bounded(None) as run:
        signal.raise_signal(signal.SIGINT)
        sleep_forever()
    assert reason_of(stop.value) == "interrupt" and run.reason == "interrupt"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_run_that_ends_in_time_changes_nothing():
    before = handlers()
    with bounded(5.0) as run:
        assert signal.getsignal(signal.SIGALRM) is not before[signal.SIGALRM]
        assert 0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 5.0
    assert run.reason is None and stop_requested() is None
    assert handlers() == before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_without_a_timeout_no_timer_is_touched():
    before = handlers()
    with bounded(None):
        assert signal.getsignal(signal.SIGALRM) is before[signal.SIGALRM]
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert handlers() == before


def test_handlers_and_an_outer_timer_are_put_back_after_an_exception():
    fired = []

    def theirs(signum, frame):
        fired.append(signum)

    previous_alarm = signal.signal(signal.SIGALRM, theirs)
    previous_term = signal.signal(signal.SIGTERM, theirs)
    try:
        signal.setitimer(signal.ITIMER_REAL, 3.0)
        with pytest.raises(ValueError), bounded(1.0):
            time.sleep(0.2)
            raise ValueError("the user's code raised")
        assert signal.getsignal(signal.SIGALRM) is theirs
        assert signal.getsignal(signal.SIGTERM) is theirs
        left = signal.getitimer(signal.ITIMER_REAL)[0]
        assert 2.0 < left < 2.85, left  # their timer, less the time the run took
        assert not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_alarm)
        signal.signal(signal.SIGTERM, previous_term)


def test_an_outer_timer_that_came_due_during_the_run_fires_at_its_end():
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with bounded(5.0):
            time.sleep(0.3)
        time.sleep(0.05)
        assert fired == [signal.SIGALRM]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_swallowed_stop_still_stops_the_next_evaluation():
    """An engine calls raise_if_stopped() before each evaluation: code that caught the Stop
    cannot start more work, and `run.reason` says why the run ended."""
    with bounded(0.2) as run:
        try:
            sleep_forever()
        except BaseException:  # noqa: B036 - the user's code swallows it
            pass
        assert stop_requested() == "timeout"
        with pytest.raises(Stop) as stop:
            raise_if_stopped()
    assert stop.value.reason == "timeout" and run.reason == "timeout"
    raise_if_stopped()  # the run is over: nothing is raised any more


def test_a_stop_inside_shielded_clean_up_waits_for_its_end():
    with bounded(None) as run:
        with shielded():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler ran: it did not raise in here
            cleaned = True
        assert cleaned and run.reason == "terminated"
        with pytest.raises(Stop):
            raise_if_stopped()


def test_outside_the_main_thread_the_timeout_is_kept_between_evaluations():
    seen: dict[str, object] = {}

    def worker() -> None:
        seen["handlers"] = handlers()
        try:
            with bounded(0.2) as run:
                seen["inside"] = handlers()
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    raise_if_stopped()  # an engine between two evaluations
                    time.sleep(0.01)
        except Stop as stop:
            seen["reason"] = stop.reason
            seen["run"] = run.reason

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(10)
    assert seen["reason"] == "timeout" and seen["run"] == "timeout"
    assert seen["inside"] == seen["handlers"]  # no handler can be installed there


def test_the_timeout_must_be_positive():
    with pytest.raises(OptionError, match="timeout must be a positive number of seconds"):
        with bounded(0):
            pass


# --- the watchdog, in a fresh process (it ends the process) -----------------------------------

SWALLOWS = """
import os, signal, sys, time
from gradcheck_tool.stopping import bounded
with bounded({timeout}, grace={grace}):
    first = True
    while True:  # a forward that catches every exception and keeps going
        try:
            if first:
                first = False
                {start}
            time.sleep(0.05)
        except BaseException:
            pass
print("not reached")
"""


def run_python(code: str) -> tuple[int, str, str, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started


def test_the_watchdog_ends_a_run_that_swallows_the_timeout_with_124():
    code, out, err, took = run_python(SWALLOWS.format(timeout=0.5, grace=1.0, start="pass"))
    assert code == 124, (out, err)
    assert "not reached" not in out
    assert "stopped by the 0.5 s timeout" in err and "exiting with 124" in err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback
    assert took < 0.5 + 1.0 + 5.0, took  # timeout + grace, and the interpreter's start


def test_the_watchdog_ends_a_run_that_swallows_sigterm_with_143():
    start = "os.kill(os.getpid(), signal.SIGTERM)"
    code, out, err, _ = run_python(SWALLOWS.format(timeout=None, grace=0.5, start=start))
    assert code == 143, (out, err)
    assert "stopped by SIGTERM" in err and "exiting with 143" in err


def test_an_inner_run_takes_over_and_gives_back_the_outer_ones_handlers():
    with bounded(None) as outer:
        theirs = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        with pytest.raises(Stop), bounded(0.2) as inner:
            sleep_forever()
        assert inner.reason == "timeout" and outer.reason is None
        assert {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} == theirs
        with pytest.raises(Stop) as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            sleep_forever()
        assert stop.value.reason == "terminated" and outer.reason == "terminated"


def test_no_watchdog_thread_outlives_its_run():
    for timeout in (None, 5.0):
        with bounded(timeout):
            pass
    with pytest.raises(Stop), bounded(0.1):
        sleep_forever()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if not any(t.name == "gradtool-watchdog" for t in threading.enumerate()):
            break
        time.sleep(0.01)
    assert not any(t.name == "gradtool-watchdog" for t in threading.enumerate())
