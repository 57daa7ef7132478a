"""JUnit XML (`--junit PATH`), for the test reporters of Jenkins, GitLab and GitHub.

`<testsuites>` holds one `<testsuite>` per target (name = the target), each with one
`<testcase>` per checked tensor (check) or per finding kind of the registry (flow):

- a failing tensor: `<failure type="wrong gradient">`, the message its relative error and
  rating, the text its hint, source line and worst entries; an inconclusive one: `<failure
  type="inconclusive">`; one a nondeterministic forward kept from a verdict: `<error type=
  "not judged">`;
- a finding kind fails when `--fail-on` names it (`failed_kinds`), its findings in the
  failure; findings of other kinds pass, their text in the testcase's `<system-out>`;
- a target that stopped: one more testcase `(run)` with `<error>` (`type="interrupted"` for a
  timeout, Ctrl-C or SIGTERM, naming which).

Testcases carry `file`/`line` where the verdict points (locations.py). Tensors are evaluated
together, so a testcase's `time` is the target's time shared evenly."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import TextIO

from ..results import CheckReport, FlowReport, SourceLocation, TargetRun, TensorResult
from ._runs import (
    annotation_path,
    every_finding,
    finding_line,
    number,
    problem_message,
    run_of,
    target_file,
    tensor_line,
    verdict,
    where,
)

RUN_CASE = "(run)"  # the testcase of a target that stopped
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")  # not allowed in XML 1.0


def clean(text: str) -> str:
    return _NOT_XML.sub("", text)


def classname(target: str) -> str:
    """`ops/attention.py:Fused` -> `ops.attention.Fused` (the package.class reporters show)."""
    file = target_file(target)
    if file is None:
        return target
    parts = [p for p in re.split(r"[\\/]", file[: -len(".py")]) if p not in ("", ".", "..")]
    name = target[len(file) + 1 :]
    return ".".join([*parts, *([name] if name else [])])


def _case(suite: ET.Element, cls: str, name: str, seconds: float) -> ET.Element:
    return ET.SubElement(suite, "testcase", classname=cls, name=clean(name), time=f"{seconds:.3f}")


def _located(case: ET.Element, source: SourceLocation | None) -> None:
    if source is not None:
        case.set("file", annotation_path(source.file))
        case.set("line", str(source.line))


def _outcome(case: ET.Element, tag: str, kind: str, message: str, text: str = "") -> None:
    element = ET.SubElement(case, tag, message=clean(message), type=kind)
    if text:
        element.text = clean(text)


def tensor_details(result: TensorResult, tolerance: float) -> str:
    lines = [
        f"{result.name}: relative error {number(result.rel_error)} ({result.rating}), "
        f"tolerance {tolerance:g}, {result.checked}/{result.numel} entries checked"
    ]
    if result.hint:
        lines.append(f"hint: {result.hint}")
    if result.note:
        lines.append(f"note: {result.note}")
    if result.source is not None:
        lines.append(f"source: {where(result.source)}")
    if result.worst:
        lines.append("worst entries (index: analytic, numeric, abs. error):")
        lines += [
            f"  {list(w.index)}: {w.analytic:.6g}, {w.numeric:.6g}, {w.abs_error:.3g}"
            for w in result.worst
        ]
    if result.sweep_verdict:
        lines.append(f"step-size sweep: {result.sweep_verdict}")
    return "\n".join(lines)


def _check_cases(suite: ET.Element, cls: str, report: CheckReport, share: float) -> None:
    for r in report.results:
        case = _case(suite, cls, r.name, share)
        _located(case, r.source)
        if r.status == "fail":
            message = (
                f"wrong gradient: relative error {number(r.rel_error)} ({r.rating}), "
                f"tolerance {report.tolerance:g}" + (f"; hint: {r.hint}" if r.hint else "")
            )
            _outcome(
                case, "failure", "wrong gradient", message, tensor_details(r, report.tolerance)
            )
        elif r.status == "inconclusive":
            _outcome(case, "failure", "inconclusive", tensor_line(r, worst=0), tensor_details(r, 0))
        elif r.status == "not judged":
            _outcome(case, "error", "not judged", tensor_line(r, worst=0))
    notes = [f"warning: {w}" for w in report.warnings]
    notes += [f"not checked: {u.name} ({u.kind}): {u.reason}" for u in report.unchecked]
    if notes:
        ET.SubElement(suite, "system-out").text = clean("\n".join(notes))


def _finding_kinds(report: FlowReport) -> tuple[str, ...]:
    from ..engines.flow.findings import finding_kinds  # the registry: no torch

    return tuple(dict.fromkeys((*finding_kinds(), *report.kinds_seen)))


def _flow_cases(suite: ET.Element, cls: str, report: FlowReport, share: float) -> None:
    failing = set(report.failed_kinds)
    found = list(every_finding(report))
    for kind in _finding_kinds(report):
        case = _case(suite, cls, kind, share)
        of_kind = [(f, cause) for f, cause in found if f.kind == kind]
        if of_kind:
            _located(case, of_kind[0][0].source)
        text = "\n".join(
            finding_line(f, cause) + (f" [{where(f.source)}]" if f.source else "")
            for f, cause in of_kind
        )
        if kind in failing:
            first = finding_line(*of_kind[0], fix=False)
            message = f"{len(of_kind)} {kind} finding(s), failing by --fail-on: {first}"
            _outcome(case, "failure", kind, message, text)
        elif of_kind:
            ET.SubElement(case, "system-out").text = clean(text)


def _run_case(suite: ET.Element, cls: str, run: TargetRun) -> None:
    """The testcase of a target that stopped: its error, or its interruption."""
    problem = problem_message(run) or verdict(run)
    case = _case(suite, cls, RUN_CASE, 0.0)
    if run.interrupted or run.exit_code in (124, 130, 143):
        _outcome(case, "error", "interrupted", f"{verdict(run)}: {problem}")
    else:
        kind = "internal error" if run.exit_code == 3 else "error"
        _outcome(case, "error", kind, problem.splitlines()[0] if problem else kind, problem)


def testsuite(run: TargetRun) -> ET.Element:
    suite = ET.Element("testsuite", name=clean(run.target))
    properties = ET.SubElement(suite, "properties")
    for name, value in (
        ("command", run.command),
        ("exit_code", str(run.exit_code)),
        ("config", run.config),
    ):
        if value is not None:
            ET.SubElement(properties, "property", name=name, value=clean(value))
    cls = classname(run.target)
    report = run.report
    seconds = run.seconds or (report.seconds if report is not None else 0.0)
    if isinstance(report, CheckReport):
        _check_cases(suite, cls, report, seconds / max(len(report.results), 1))
    elif isinstance(report, FlowReport):
        _flow_cases(suite, cls, report, seconds / max(len(_finding_kinds(report)), 1))
    # the run's own case: what stopped it; a nondeterministic check's tensors already carry
    # their "not judged" errors (the one problem is not counted twice)
    nondeterministic = isinstance(report, CheckReport) and report.nondeterministic
    if report is None or run.interrupted or (run.error and not nondeterministic):
        _run_case(suite, cls, run)
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(c.find("failure") is not None for c in cases)))
    suite.set("errors", str(sum(c.find("error") is not None for c in cases)))
    suite.set("skipped", "0")
    suite.set("time", f"{seconds:.3f}")
    # the schema wants system-out after the testcases
    for out in suite.findall("system-out"):
        suite.remove(out)
        suite.append(out)
    return suite


def document(runs: Sequence[TargetRun]) -> ET.Element:
    root = ET.Element("testsuites", name="gradtool")
    suites = [testsuite(run) for run in runs]
    for attr in ("tests", "failures", "errors", "skipped"):
        root.set(attr, str(sum(int(s.get(attr, "0")) for s in suites)))
    root.set("time", f"{sum(float(s.get('time', '0')) for s in suites):.3f}")
    root.extend(suites)
    return root


def write_runs(
    runs: Sequence[TargetRun], out: TextIO, width: int | None = None, *, configured: bool = False
) -> None:
    root = document(runs)
    ET.indent(root)
    out.write('<?xml version="1.0" encoding="UTF-8"?>\n')
    out.write(ET.tostring(root, encoding="unicode"))
    out.write("\n")
    out.flush()


def write(report: CheckReport | FlowReport, out: TextIO, width: int | None = None) -> None:
    write_runs([run_of(report)], out, width)
