"""What the CI formats (github, markdown, junit, the table's summary) say alike about a run
of targets: one word per verdict, the file a target names, a tensor's or a finding's verdict
in one line. Plain functions of `results.py`: no rich, no torch."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from .._paths import shown_path, split_target
from ..results import (
    EXIT_STOPPED,
    CheckReport,
    Finding,
    FlowReport,
    SourceLocation,
    TargetRun,
    TensorResult,
    WorstEntry,
)

# a stop's reason -> the word for it; by the stop's exit code too
INTERRUPTIONS = {"timeout": "timeout", "interrupt": "interrupted", "terminated": "terminated"}
STOPPED = {EXIT_STOPPED[reason]: word for reason, word in INTERRUPTIONS.items()}


def verdict(run: TargetRun) -> str:
    """One word for how a target ended: pass, FAIL, error, internal error, not judged,
    timeout, interrupted, terminated."""
    if run.interrupted or run.exit_code in STOPPED:
        return INTERRUPTIONS.get(run.interrupted or "", STOPPED.get(run.exit_code, "interrupted"))
    if run.exit_code == 0:
        return "pass"
    if run.exit_code == 1:
        return "FAIL"
    if run.exit_code == 3:
        return "internal error"
    if isinstance(run.report, CheckReport) and run.report.nondeterministic:
        return "not judged"
    return "error"


def stopped_message(run: TargetRun) -> str:
    """Why a target that did not finish stopped, in a sentence."""
    word = verdict(run)
    if word == "timeout":
        text = "stopped by --timeout"
    elif word == "terminated":
        text = "stopped by SIGTERM"
    else:
        text = "interrupted (Ctrl-C)"
    if run.report is None:
        return text + " before a report"
    return text + ": the report is partial"


def problem_message(run: TargetRun) -> str | None:
    """What stopped a target or kept it from a verdict (None when it has a verdict)."""
    if run.error:
        return run.error
    if run.interrupted or run.exit_code in STOPPED:
        return stopped_message(run)
    if isinstance(run.report, CheckReport) and run.report.nondeterministic:
        return "the forward is nondeterministic: no gradient could be judged"
    if run.report is None and run.exit_code != 0:
        return f"ended with exit code {run.exit_code} and no report"
    return None


def annotation_path(path: str | None) -> str | None:
    """A file as CI annotations and test reporters need it: relative to the repository root
    when GitHub Actions says where that is (`GITHUB_WORKSPACE`: the runner reads a relative
    `file=` from the workspace, not from the step's working directory), else relative to the
    working directory when under it, else absolute."""
    import os

    if path is None:
        return None
    workspace = os.environ.get("GITHUB_WORKSPACE")
    if workspace:
        shown = shown_path(path, workspace)
        if not os.path.isabs(shown):
            return shown
    return shown_path(path)


def target_file(target: str) -> str | None:
    """The file a TARGET names: `ops/attn.py:Fused` -> `ops/attn.py` (None if not a .py)."""
    file, _ = split_target(target)
    return file if file.endswith(".py") else None


def number(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.2e}"


def where(source: SourceLocation | None) -> str:
    """`ops/attn.py:42 (Fused.backward)`, or "" without a location."""
    if source is None:
        return ""
    return f"{source.display_file}:{source.line} ({source.what})"


def entry(w: WorstEntry) -> str:
    index = ", ".join(str(i) for i in w.index)
    return f"[{index}]: analytic {w.analytic:.6g}, numeric {w.numeric:.6g}"


def flagged(report: CheckReport) -> tuple[TensorResult, ...]:
    """The tensors a check did not verify: failed, inconclusive or not judged."""
    return tuple(r for r in report.results if r.status != "pass")


def tensor_line(result: TensorResult, worst: int = 1) -> str:
    """A tensor's verdict in one line: relative error, rating, hint, worst entries."""
    if result.status == "inconclusive":
        text = f"inconclusive: finite differences could not resolve the gradient of {result.name}"
        if math.isfinite(result.rel_error):
            text += f" (relative error {number(result.rel_error)} at the steps tried)"
    elif result.status == "not judged":
        text = f"not judged: {result.note or 'the forward is nondeterministic'}"
    else:
        text = f"relative error {number(result.rel_error)} ({result.rating})"
    if result.hint:
        text += f"; hint: {result.hint}"
    if result.worst[:worst]:
        text += "; worst " + "; ".join(entry(w) for w in result.worst[:worst])
    return text


def every_finding(report: FlowReport) -> Iterator[tuple[Finding, Finding | None]]:
    """Each finding with the finding it is a consequence of (None for a root cause)."""
    for f in report.findings:
        yield f, None
        for c in f.consequences:
            yield c, f


def finding_line(finding: Finding, cause: Finding | None = None, *, fix: bool = True) -> str:
    """A finding in one line: the layer, the message, the fix."""
    layer = f"{finding.layer}: " if finding.layer else ""
    text = f"{layer}{finding.message}"
    if cause is not None:
        text += f" (a consequence of {cause.kind} at {cause.layer})"
    if fix and finding.fix:
        text += f". Fix: {finding.fix}"
    return text


def commands(runs: Sequence[TargetRun]) -> str | None:
    """`check`, `flow`, or `check,flow` for a run of both."""
    names = list(dict.fromkeys(r.command for r in runs))
    return ",".join(names) if names else None


def run_of(report: CheckReport | FlowReport) -> TargetRun:
    """A report alone as a run of one target, its exit code as the CLI decides it."""
    command = "check" if isinstance(report, CheckReport) else "flow"
    code = report.exit_code
    return TargetRun(
        command, report.target, report, code, interrupted=report.interrupted, seconds=report.seconds
    )
