"""The engines under `bounded`: a forward that never returns, stopped by the timeout or
SIGTERM, leaves a partial check report with the reason; `flow --steps` cut short leaves the
steps measured so far; the user's state and torch's global hooks are as found afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from models import batch, hook_free
from torch import nn
from torch.optim import optimizer as optim_hooks

from gradcheck_tool import check, flow
from gradcheck_tool.engines.check import CheckOptions
from gradcheck_tool.engines.check.evaluate import Evaluator
from gradcheck_tool.formats.check_table import verdict_line
from gradcheck_tool.prepare import Problem
from gradcheck_tool.stopping import Interrupted, Stop, bounded, current

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PARAMETERS = ["fc.weight", "fc.bias"]  # checked before the forward sees a perturbed input


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"stopping_{name}", FIXTURES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stalls = _load("stalls")


def state() -> tuple:
    """What gradtool must leave as found: RNG, default dtype, grad mode, signal handlers, the
    interval timer, torch's global optimizer hooks."""
    return (
        torch.get_rng_state(),
        torch.get_default_dtype(),
        torch.is_grad_enabled(),
        {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)},
        signal.getitimer(signal.ITIMER_REAL),
        len(optim_hooks._global_optimizer_pre_hooks),
        len(optim_hooks._global_optimizer_post_hooks),
    )


def same_state(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and a[1:] == b[1:]


def stopped_check(model: nn.Module, timeout: float | None, **options):
    """check() under bounded(timeout): the partial report, the run's reason, the seconds."""
    started = time.monotonic()
    with bounded(timeout) as run, pytest.raises(Interrupted) as stop:
        check(model, stalls.example_inputs(), **options)
    return stop.value.report, run.reason, time.monotonic() - started


@pytest.mark.parametrize("model", [stalls.Sleeps, stalls.Spins], ids=["sleeps", "busy loop"])
def test_the_timeout_stops_a_stalled_forward_with_a_partial_report(model):
    user_model = model()
    before = state()
    report, reason, took = stopped_check(user_model, 1.5)
    assert user_model.stalls == 0  # the check works on a copy
    assert reason == "timeout" and report.interrupted == "timeout" and not report.passed
    assert [r.name for r in report.results] == PARAMETERS
    assert all(r.passed for r in report.results)
    assert report.to_dict()["interrupted"] == "timeout"
    assert took < 1.5 + 2.0, took
    assert same_state(state(), before)


def test_a_forward_that_swallows_the_stop_starts_no_more_evaluations():
    """The first Stop is caught by the forward, which returns: the next evaluation raises."""
    report, reason, took = stopped_check(stalls.SwallowsOnce(), 1.5)
    assert reason == "timeout" and report.interrupted == "timeout"
    assert [r.name for r in report.results] == PARAMETERS
    assert took < 1.5 + 2.0, took


class GarbageAfterStop(nn.Module):
    """When `armed`, its forward is "interrupted" and catches it (the run is marked stopped
    as the signal handler would), then returns a wrong value."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3, 2)
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(self.fc(x))
        if self.armed:
            current().stop("timeout")  # the Stop it swallowed
            return y * 0 + 123.0
        return y


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "serial"])
def test_an_evaluation_the_stop_came_during_is_thrown_away(batched):
    """Its numbers may be anything the forward returned after catching the Stop: it must
    raise, not feed a verdict."""
    model = GarbageAfterStop()
    problem = Problem(
        model, (stalls.example_inputs(),), {}, loss_fn=None, dtype=torch.float64, seed=0
    )
    evaluator = Evaluator(problem, CheckOptions(batched=batched))
    with torch.no_grad():
        evaluator.f0 = problem.terms(problem.values)
    c = next(c for c in problem.checkables if c.name == "fc.bias")
    with bounded(None):
        evaluator.evaluate(c, torch.arange(2), 1e-6)  # not stopped: evaluates
        problem.module.armed = True  # (the copy the problem evaluates)
        with pytest.raises(Stop):
            evaluator.evaluate(c, torch.arange(2), 1e-6)


def test_a_stop_between_the_orders_keeps_the_first_order_results():
    def progress(name: str, done: int, total: int) -> None:
        if not name and done == total:  # the first order is finished: SIGTERM comes now
            current().stop("terminated")

    with bounded(None), pytest.raises(Interrupted) as stop:
        check(Net(), batch(4, 8), second_order=True, progress=progress)
    report = stop.value.report
    assert report.interrupted == "terminated"
    assert [r.name for r in report.results] == [
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
        "input:x",
    ]
    assert all(r.passed for r in report.results)


def test_sigterm_during_a_check_gives_a_partial_report_terminated():
    class TermOnStall(stalls.Sleeps):
        def stall(self) -> None:  # the runner cancels the job while this forward hangs
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
            super().stall()

    model = TermOnStall()
    before = state()
    report, reason, _ = stopped_check(model, None)
    assert reason == "terminated" and report.interrupted == "terminated"
    assert [r.name for r in report.results] == PARAMETERS
    assert same_state(state(), before)


def test_a_timeout_before_any_tensor_was_measured_still_gives_a_report():
    report, reason, took = stopped_check(stalls.SleepsAtOnce(), 0.5)
    assert reason == "timeout" and report.interrupted == "timeout"
    assert report.results == () and not report.passed
    assert report.target == "SleepsAtOnce"
    # where the forward was when it was stopped
    assert "before any tensor was measured, while running" in report.warnings[0]
    assert "stalls.py:" in report.warnings[0]
    assert verdict_line(report).plain == "INTERRUPTED: no tensor checked before the timeout"
    assert took < 0.5 + 2.0, took


def test_the_table_names_the_reason():
    report, _, _ = stopped_check(stalls.Sleeps(), 1.5)
    assert verdict_line(report).plain == (
        "INTERRUPTED: partial report, 2 result(s) before the timeout"
    )


# --- flow --------------------------------------------------------------------------------------


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def mse(output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return ((output - x.sum(1, keepdim=True)) ** 2).mean()


class TermAtForward(Net):
    """Sends SIGTERM to its own process at its `at`-th forward (as a CI runner cancelling
    the job would): the handler raises inside that forward."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().forward(x)


def test_flow_steps_cut_short_by_sigterm_give_the_steps_measured():
    model = TermAtForward(at=6)
    model.eval()
    before = state()
    with bounded(None) as run, pytest.raises(Interrupted) as stop:
        flow(model, batch(32, 8), loss_fn=mse, steps=100, lr=0.05)
    report = stop.value.report
    assert run.reason == "terminated" and report.interrupted == "terminated"
    assert report.steps == 5 and report.steps_requested == 100
    assert [h.step for h in report.history] == [1, 2, 3, 4, 5]
    assert len(report.layers) > 0
    assert not report.passed
    # five steps say nothing about reaching near zero in a hundred: not judged
    assert report.overfit is not None and report.overfit.reached is None
    assert "not judged: the run was interrupted after 5 of 100 steps" in report.overfit.message
    assert "not_learning" not in report.kinds
    assert not any("non-finite" in w for w in report.warnings)
    data = report.to_dict()
    assert data["interrupted"] == "terminated" and len(data["history"]) == 5
    # the copy was deep: the user's model never ran; nothing of gradtool is left behind
    assert model.calls == 0 and not model.training
    assert hook_free(model) and same_state(state(), before)


def test_flow_interrupted_inside_an_optimizer_step_reports_no_false_finding():
    """A stop between the optimizer's pre- and post-hook: that step's update was never
    measured, so it must not read as parameters the optimizer left unchanged."""
    steps = []

    def term_at_third(opt, args, kwargs):
        steps.append(1)
        if len(steps) == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    net = Net()
    before = state()
    handle = optim_hooks.register_optimizer_step_post_hook(term_at_third)
    try:
        with bounded(None), pytest.raises(Interrupted) as stop:
            flow(net, batch(32, 8), loss_fn=mse, steps=50, lr=0.05)
    finally:
        handle.remove()
    report = stop.value.report
    assert report.interrupted == "terminated" and report.steps == 3
    assert report.kinds == (), report.findings  # a healthy net: no finding, none invented
    # the last row's update ratio is the one measured after step 2
    assert all(r.update_ratio is not None for r in report.layers if r.kind == "layer")
    assert same_state(state(), before)


def test_flow_stopped_before_any_step_was_measured_has_no_report():
    model = stalls.SleepsAtOnce()
    before = state()
    with pytest.raises(Stop) as stop, bounded(0.5):
        flow(model, stalls.example_inputs(), steps=10)
    assert stop.value.reason == "timeout"
    assert same_state(state(), before)


def test_flow_plain_ctrl_c_outside_bounded_keeps_the_partial_report_too():
    class CtrlCAtForward(Net):
        calls = 0

        def forward(self, x):
            type(self).calls += 1
            if type(self).calls == 4:
                raise KeyboardInterrupt
            return super().forward(x)

    with pytest.raises(Interrupted) as stop:
        flow(CtrlCAtForward(), batch(32, 8), loss_fn=mse, steps=20)
    assert stop.value.report.interrupted == "interrupt" and stop.value.report.steps == 3
