"""Reports for the format tests: hand-made (results.py needs no torch) and from real checks
of the fixture file `fixtures/located.py` (one right and one wrong autograd.Function)."""

from __future__ import annotations

import functools
import math
from pathlib import Path

from gradcheck_tool.results import (
    CheckReport,
    Finding,
    FlowReport,
    SourceLocation,
    TargetRun,
    TensorResult,
    WorstEntry,
)

HERE = Path(__file__).resolve().parent
LOCATED = HERE / "fixtures" / "located.py"
OPS = str(HERE / "ops.py")  # a made-up user file the hand-made locations point into


def tensor(name: str, status: str = "pass", *, line: int | None = None, **extra) -> TensorResult:
    fields = dict(
        name=name,
        kind="input",
        shape=(4, 5),
        numel=20,
        checked=20,
        rel_error=1e-10,
        rating="excellent",
        passed=True,
        source=SourceLocation(OPS, line, "Fn.backward") if line else None,
    )
    if status == "fail":
        fields.update(
            rel_error=0.113,
            rating="bug",
            passed=False,
            hint="sign flipped: analytic ≈ −numeric",
            worst=(WorstEntry((2, 0), 1.11555, 1.42311), WorstEntry((3, 1), -0.86, -1.09)),
        )
    elif status == "inconclusive":
        fields.update(rel_error=math.nan, rating="n/a", passed=False, inconclusive=True)
    fields.update(extra)
    return TensorResult(**fields)


def check_report(*results: TensorResult, target: str = "ops.py:Fn") -> CheckReport:
    return CheckReport(
        target=target,
        found_by="NAME",
        tolerance=1e-5,
        eps=1e-6,
        results=results,
        version="0.0.0",
        seconds=1.5,
    )


def finding(kind: str, layer: str, *, line: int | None = 7, consequences=()) -> Finding:
    return Finding(
        kind=kind,
        layer=layer,
        message=f"{kind} in {layer}",
        fix=f"fix the {kind}",
        consequences=tuple(consequences),
        source=SourceLocation(OPS, line, "Block.forward") if line else None,
    )


def flow_report(*findings: Finding, fail_on=(), interrupted=None) -> FlowReport:
    return FlowReport(
        target="net.py",
        version="0.0.0",
        layers=(),
        findings=findings,
        fail_on=tuple(fail_on),
        interrupted=interrupted,
    )


def run(report, code: int | None = None, **extra) -> TargetRun:
    command = "check" if isinstance(report, CheckReport) else "flow"
    if code is None:
        code = 0 if report.passed else 1
    return TargetRun(command, extra.pop("target", report.target), report, code, **extra)


@functools.cache
def real_runs() -> tuple[TargetRun, ...]:
    """`check` of the right and the wrong Function of located.py, as TargetRuns."""
    from gradcheck_tool import check
    from gradcheck_tool.loading import load_target

    runs = []
    for name in ("Square", "WrongSquare"):
        spec = f"{LOCATED}:{name}"
        loaded = load_target(spec)
        report = check(loaded.obj, loaded.example_inputs, name=name)
        runs.append(TargetRun("check", spec, report, 0 if report.passed else 1, seconds=0.1))
    return tuple(runs)
