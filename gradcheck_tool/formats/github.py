"""GitHub Actions workflow commands: an annotation on the line of the user's code for each
verdict, shown in the pull request's diff and the run's summary.

- a failing tensor: `::error file=F,line=L,title=T::MESSAGE` at its source location (the
  Function's `backward`, or the module's `forward`; see locations.py), the message its
  relative error, rating, hint and worst entry; an inconclusive tensor: `::warning`;
- a flow finding of a `--fail-on` kind: `::error`; any other finding: `::warning`;
- a target that stopped (an error, a timeout, an interruption, a forward that can't be
  judged), or that failed with no annotation of its own: `::error` on the target's file.

Escaped as the runner parses them (actions/toolkit `escapeData`/`escapeProperty`): `%`, CR
and LF in the message; also `:` and `,` in property values. Every command is one line;
without a location, `file`/`line` are left out (the annotation goes on the run)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TextIO

from ..results import CheckReport, FlowReport, TargetRun
from ._runs import (
    annotation_path,
    every_finding,
    finding_line,
    problem_message,
    run_of,
    target_file,
    tensor_line,
    verdict,
)


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def command(
    level: str,
    message: str,
    *,
    file: str | None = None,
    line: int | None = None,
    title: str | None = None,
) -> str:
    """One workflow command: `::error file=a.py,line=3,title=T::message`."""
    props = [(k, v) for k, v in (("file", file), ("line", line), ("title", title)) if v is not None]
    head = f"::{level}"
    if props:
        head += " " + ",".join(f"{k}={escape_property(str(v))}" for k, v in props)
    return f"{head}::{escape_data(message)}"


def check_annotations(report: CheckReport) -> Iterator[str]:
    for r in report.results:
        if r.status not in ("fail", "inconclusive"):
            continue
        level, what = ("error", "wrong") if r.status == "fail" else ("warning", "inconclusive")
        src = r.source
        yield command(
            level,
            f"{report.target}: {r.name}: {tensor_line(r)}",
            file=annotation_path(src.file) if src else None,
            line=src.line if src else None,
            title=f"gradtool check: {what} gradient for {r.name}",
        )


def flow_annotations(report: FlowReport, target: str | None = None) -> Iterator[str]:
    """A finding with no line of its own (a layer of a stock container) goes on the
    target's file."""
    failing = set(report.failed_kinds)
    fallback = annotation_path(target_file(target)) if target else None
    for finding, cause in every_finding(report):
        fatal = finding.kind in failing
        if cause is not None and not fatal:  # shown with its cause; only a --fail-on kind
            continue
        src = finding.source
        layer = f" in {finding.layer}" if finding.layer else ""
        yield command(
            "error" if fatal else "warning",
            f"{report.target}: {finding_line(finding, cause)}",
            file=annotation_path(src.file) if src else fallback,
            line=src.line if src else None,
            title=f"gradtool flow: {finding.kind}{layer}",
        )


def annotations(run: TargetRun) -> Iterator[str]:
    """The workflow commands of one target."""
    errors = 0
    if isinstance(run.report, CheckReport):
        found = check_annotations(run.report)
    elif isinstance(run.report, FlowReport):
        found = flow_annotations(run.report, run.target)
    else:
        found = iter(())
    for line in found:
        errors += line.startswith("::error")
        yield line
    problem = problem_message(run)
    if problem is None and run.exit_code != 0 and not errors:  # the job fails: say where
        problem = _unannotated(run)
    if problem is not None:
        yield command(
            "error",
            f"{run.target}: {problem}",
            file=annotation_path(target_file(run.target)),
            title=f"gradtool {run.command}: {verdict(run)} {run.target}",
        )


def _unannotated(run: TargetRun) -> str:
    """Why a target failed when no `::error` of its own says so (inconclusive tensors)."""
    report = run.report
    if isinstance(report, CheckReport) and report.inconclusive:
        names = ", ".join(r.name for r in report.inconclusive)
        return (
            f"not verified: {len(report.inconclusive)} of {len(report.results)} gradient(s) "
            f"inconclusive ({names})"
        )
    return f"{verdict(run)} (exit code {run.exit_code})"


def write_runs(
    runs: Sequence[TargetRun], out: TextIO, width: int | None = None, *, configured: bool = False
) -> None:
    """Each target's table folded in a log group (the job's log stays readable and the
    numbers stay there), then the annotations."""
    import io

    from . import table

    for run in runs:
        text = io.StringIO()
        table.write_runs([run], text, width=width)
        out.write(f"::group::{escape_data(f'gradtool {run.command} {run.target}')}\n")
        out.write(text.getvalue().rstrip("\n") + "\n::endgroup::\n")
    for run in runs:
        for line in annotations(run):
            out.write(line + "\n")
    out.flush()


def write(report: CheckReport | FlowReport, out: TextIO, width: int | None = None) -> None:
    write_runs([run_of(report)], out, width)
