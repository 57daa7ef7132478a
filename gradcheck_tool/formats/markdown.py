"""A markdown summary of a run, for `$GITHUB_STEP_SUMMARY` (or a pull-request comment): a
heading, a table of the targets with a verdict mark, then for each target that did not pass
its failing tensors (name, relative error, rating, hint, source line), its flow findings
(kind, layer, message) or the error that stopped it. `append_step_summary` appends it to a
file, as GitHub Actions expects of the summary file."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

from ..results import CheckReport, FlowReport, TargetRun, worst_exit_code
from ._runs import (
    every_finding,
    flagged,
    number,
    problem_message,
    run_of,
    tensor_line,
    verdict,
)

MARKS = {"pass": "✅", "FAIL": "❌", "error": "❌", "internal error": "❌"}  # else ⚠️


def cell(text: str) -> str:
    """Text safe inside a table cell (code spans included): pipes escaped, lines joined."""
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def code(text: str) -> str:
    """Inline code that survives backticks in the text."""
    fence = "``" if "`" in text else "`"
    pad = " " if "`" in text else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def mark(run: TargetRun) -> str:
    return MARKS.get(verdict(run), "⚠️")


def summary(runs: Sequence[TargetRun]) -> str:
    passed = sum(r.passed for r in runs)
    lines = [
        "## gradtool",
        "",
        f"{passed} of {len(runs)} target(s) passed; exit code {worst_exit_code(runs)}.",
        "",
        "| | target | command | result | exit | seconds |",
        "|---|---|---|---|---:|---:|",
    ]
    for run in runs:
        lines.append(
            f"| {mark(run)} | {cell(code(run.target))} | {run.command} | {verdict(run)} "
            f"| {run.exit_code} | {run.seconds:.1f} |"
        )
    for run in runs:
        if not run.passed:
            lines += ["", *_details(run)]
    return "\n".join(lines) + "\n"


def _details(run: TargetRun) -> list[str]:
    lines = [f"### {mark(run)} {run.command} {code(run.target)}"]
    problem = problem_message(run)
    if problem:
        lines += ["", f"**{verdict(run)}**: {cell(problem)}"]
    if isinstance(run.report, CheckReport):
        lines += _check_rows(run.report)
    elif isinstance(run.report, FlowReport):
        lines += _flow_rows(run.report)
    return lines


def _check_rows(report: CheckReport) -> list[str]:
    rows = flagged(report)
    if not rows:
        return []
    lines = [
        "",
        "| tensor | result | rel. error | rating | hint | source |",
        "|---|---|---:|---|---|---|",
    ]
    for r in rows:
        src = f"{r.source.display_file}:{r.source.line} ({r.source.what})" if r.source else ""
        hint = r.hint or (tensor_line(r) if r.status != "fail" else "")
        lines.append(
            f"| {cell(code(r.name))} | {r.status} | {number(r.rel_error)} | {r.rating} "
            f"| {cell(hint)} | {cell(code(src)) if src else ''} |"
        )
    return lines


def _flow_rows(report: FlowReport) -> list[str]:
    failing = set(report.failed_kinds)
    found = list(every_finding(report))
    if not found:
        return []
    lines = ["", "| | kind | layer | message |", "|---|---|---|---|"]
    for finding, cause in found:
        fatal = "❌" if finding.kind in failing else ""
        message = finding.message + (
            f" (a consequence of {cause.kind} at {cause.layer})" if cause else ""
        )
        layer = cell(code(finding.layer)) if finding.layer else ""
        lines.append(f"| {fatal} | {finding.kind} | {layer} | {cell(message)} |")
    return lines


def write_runs(
    runs: Sequence[TargetRun], out: TextIO, width: int | None = None, *, configured: bool = False
) -> None:
    out.write(summary(runs))
    out.flush()


def write(report: CheckReport | FlowReport, out: TextIO, width: int | None = None) -> None:
    write_runs([run_of(report)], out, width)


def append_step_summary(runs: Sequence[TargetRun], path: str) -> None:
    """Append the summary to `path` (`$GITHUB_STEP_SUMMARY`), after a blank line."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("\n" + summary(runs))
