"""FlowSession, what both callbacks drive: how often it reports, and its option checks.
No trainer library needed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gradcheck_tool.errors import OptionError
from gradcheck_tool.integrations._training import REPORT_GROWTH, FlowSession, parse_fail_on


def _session() -> FlowSession:
    return FlowSession(
        every=1, fail_on=None, json=None, tensorboard=None, print_report=False, monitor_options={}
    )


def test_reports_get_rarer_so_their_cost_per_recorded_step_stays_bounded():
    s = _session()
    s.monitor = SimpleNamespace(steps_recorded=0)
    s._active = True
    s.refresh = lambda: setattr(s, "_reported_at", s.monitor.steps_recorded)  # no Monitor
    reports, rows_read = [], 0
    for recorded in range(1, 20001):  # one logging step per recorded step
        s.monitor.steps_recorded = recorded
        if s.refresh_due():
            s.refresh()
            reports.append(recorded)
            rows_read += recorded  # a report reads every recorded step
    assert reports[:10] == list(range(1, 11))  # early on: every logging step
    gaps = [b - a for a, b in zip(reports, reports[1:])]
    assert all(g >= a // REPORT_GROWTH for a, g in zip(reports, gaps))
    assert rows_read <= (REPORT_GROWTH + 2) * 20000  # not ~20000²/2
    assert len(reports) < 100


def test_fail_on_is_named_in_the_findings_order_and_checked():
    assert parse_fail_on("diverging, nan") == ("diverging", "nan")
    assert parse_fail_on(["nan"]) == ("nan",)
    assert "dead_relu" in parse_fail_on("all")
    assert parse_fail_on(None) == ()
    with pytest.raises(OptionError, match="unknown finding kind"):
        parse_fail_on("nan,exploded")


def test_a_bad_tensorboard_value_is_refused_at_construction():
    with pytest.raises(OptionError, match="tensorboard must be a folder or a SummaryWriter"):
        FlowSession(
            every=1, fail_on=None, json=None, tensorboard=3, print_report=False, monitor_options={}
        )
