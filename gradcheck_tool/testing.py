"""Assertions for the user's own unit tests: a gradient check or a flow diagnosis that passes
silently and fails with gradtool's report as the AssertionError's message.

    from gradcheck_tool.testing import assert_gradients_match

    def test_fused_attention():
        assert_gradients_match(FusedAttention, (q, k, v), second_order=True)

Works under any test runner (the message is plain text, 80 columns wide unless `width` says
otherwise); torch is imported when an assertion first runs, not when this module is.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .results import CheckReport, FlowReport

WIDTH = 80  # the message's width: a CI log, or a terminal, without wrapping


class ReportAssertionError(AssertionError):
    """An assertion on gradients that failed; `report` is the CheckReport or FlowReport."""

    def __init__(self, message: str, report: CheckReport | FlowReport) -> None:
        super().__init__(message)
        self.report = report


def assert_gradients_match(
    target: Any, inputs: Any = None, *, width: int = WIDTH, **options: Any
) -> CheckReport:
    """Check `target`'s gradients as `gradcheck_tool.check(target, inputs, **options)` does
    (a tensor, a tuple/list of positional inputs, or a dict of keyword ones; `kwargs=` adds
    keywords to positional inputs) and return the report when every tensor passed.

    Raises AssertionError (a `ReportAssertionError`, whose `report` is the CheckReport)
    whose message is the report table as plain text when a tensor
    failed, could not be verified (inconclusive), or the forward was nondeterministic.
    The user's mistakes in the call itself (a bad option, unusable inputs) raise
    `GradtoolError`, as `check` does; Ctrl-C raises KeyboardInterrupt.
    """
    __tracebackhide__ = True  # pytest: the failure points at the user's test, not here
    from .api import check
    from .stopping import Interrupted

    try:
        report = check(target, inputs, **options)
    except Interrupted:
        raise KeyboardInterrupt from None  # the test run stops, as it would without gradtool
    if not report.passed:
        raise ReportAssertionError(
            _check_summary(report) + "\n" + report_text(report, width), report
        )
    return report


def assert_flow_healthy(
    model: Any,
    inputs: Any,
    *,
    fail_on: str | Iterable[str] | None = None,
    width: int = WIDTH,
    **options: Any,
) -> FlowReport:
    """Run `gradcheck_tool.flow(model, inputs, **options)` and return the report when it has
    no finding of a `fail_on` kind (names as `--fail-on` takes them: "nan", "exploding", ...
    or "all"; default: the kinds that stop training from working at all, those of severity
    error: the non-finite values, exploding gradients, divergence, gradients never zeroed).

    Raises AssertionError (a `ReportAssertionError` carrying the FlowReport) whose message
    is the flow table as plain text when one is found.
    """
    __tracebackhide__ = True
    from .engines.flow import flow
    from .engines.flow.findings import parse_fail_on
    from .stopping import Interrupted

    kinds = parse_fail_on(_kinds_text(fail_on)) if fail_on is not None else _fatal_kinds()
    try:
        report = flow(model, inputs, **options)
    except Interrupted:
        raise KeyboardInterrupt from None  # the test run stops, as it would without gradtool
    # the registry's order, as the CLI's --fail-on keeps it
    report = dataclasses.replace(report, fail_on=tuple(k for k in _all_kinds() if k in kinds))
    if not report.passed:
        failed = ", ".join(report.failed_kinds) or report.interrupted or "?"
        raise ReportAssertionError(
            f"gradtool flow: {report.target} has findings it must not have: {failed}\n"
            + report_text(report, width),
            report,
        )
    return report


def report_text(report: CheckReport | FlowReport, width: int = WIDTH) -> str:
    """The report's table as plain text (no colour codes), `width` columns wide."""
    from .formats import OutputFormat, write

    out = io.StringIO()  # not a terminal: the console writes plain text
    write(report, OutputFormat.TABLE, out, width=width)
    # rich pads each line to the width: trailing blanks only lengthen a log
    return "\n".join(line.rstrip() for line in out.getvalue().rstrip("\n").splitlines())


def _check_summary(report: CheckReport) -> str:
    """One line naming what did not pass, for runners that show only the first line."""
    if report.nondeterministic:
        return f"gradtool check: {report.target} has a nondeterministic forward: not judged"
    parts = [f"{r.name} (relative error {r.rel_error:.2e})" for r in report.failures]
    parts += [f"{r.name} (inconclusive)" for r in report.inconclusive]
    what = ", ".join(parts) if parts else "the check was cut short"
    return f"gradtool check: gradients of {report.target} do not match: {what}"


def _kinds_text(fail_on: str | Iterable[str]) -> str:
    return fail_on if isinstance(fail_on, str) else ",".join(fail_on)


def _all_kinds() -> tuple[str, ...]:
    from .engines.flow.findings import finding_kinds

    return finding_kinds()


def _fatal_kinds() -> set[str]:
    from .engines.flow.findings import RULES, Severity

    return {rule.kind for rule in RULES if rule.severity == Severity.ERROR}
