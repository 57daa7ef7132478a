"""JUnit XML, read back by a real JUnit consumer (junitparser)."""

from __future__ import annotations

import io

from ci_reports import check_report, finding, flow_report, real_runs, run, tensor
from junitparser import Error, Failure, JUnitXml

from gradcheck_tool import formats
from gradcheck_tool.engines.flow.findings import FINDING_KINDS
from gradcheck_tool.results import TargetRun


def junit(runs) -> JUnitXml:
    out = io.StringIO()
    formats.write_runs(runs, formats.OutputFormat.JUNIT, out)
    return JUnitXml.fromstring(out.getvalue().encode())


def suites(xml: JUnitXml) -> list:
    return list(xml)


def outcomes(suite) -> dict[str, list]:
    return {case.name: case.result for case in suite}


def test_one_failure_exactly_on_the_wrong_tensor(tmp_path):
    path = tmp_path / "gradtool.xml"
    formats.write_runs_file(real_runs(), formats.OutputFormat.JUNIT, str(path), "junit")
    xml = JUnitXml.fromfile(str(path))
    assert (xml.tests, xml.failures, xml.errors) == (2, 1, 0)
    right, wrong = suites(xml)
    assert right.name.endswith("located.py:Square") and wrong.name.endswith(":WrongSquare")
    assert all(case.is_passed for case in right)
    (case,) = list(wrong)
    (failure,) = case.result
    assert isinstance(failure, Failure) and failure.type == "wrong gradient"
    assert "relative error 2.00e-01 (bug)" in failure.message
    assert "hint: constant factor" in failure.message
    assert "worst entries" in failure.text and "located.py:28" in failure.text
    assert case.name == "x" and case.classname.endswith("fixtures.located.WrongSquare")
    assert case._elem.get("line") == "28" and case._elem.get("file").endswith("located.py")


def test_counts_agree_with_junitparsers_own_count():
    report = check_report(tensor("a", "fail"), tensor("b", "inconclusive"), tensor("c"))
    runs = [run(report), TargetRun("check", "x.py:Y", None, 2, error="file not found")]
    xml = junit(runs)
    declared = [(s.tests, s.failures, s.errors) for s in xml]
    for s in xml:
        s.update_statistics()
    assert declared == [(s.tests, s.failures, s.errors) for s in xml] == [(3, 2, 0), (1, 0, 1)]
    first = outcomes(suites(xml)[0])
    assert first["b"][0].type == "inconclusive" and first["c"] == []
    (error,) = outcomes(suites(xml)[1])["(run)"]
    assert isinstance(error, Error) and error.message == "file not found"


def test_flow_one_testcase_per_kind_failing_by_fail_on():
    report = flow_report(
        finding("diverging", "(loss)", consequences=[finding("nan", "fc2")]),
        finding("dead_relu", "act"),
        fail_on=("nan", "exploding"),
    )
    (suite,) = junit([run(report)])
    cases = outcomes(suite)
    assert list(cases) == list(FINDING_KINDS)  # every kind of the registry, in its order
    failing = {name: r[0] for name, r in cases.items() if r}
    assert list(failing) == ["nan"]
    assert "1 nan finding(s)" in failing["nan"].message
    assert "a consequence of diverging" in failing["nan"].text
    other = {case.name: case.system_out for case in suite}
    assert "dead_relu in act" in other["dead_relu"] and other["exploding"] is None


def test_an_interrupted_run_names_the_reason():
    report = flow_report(finding("nan", "fc"), interrupted="timeout")
    (suite,) = junit([run(report, code=124, interrupted="timeout")])
    (error,) = outcomes(suite)["(run)"]
    assert error.type == "interrupted" and error.message.startswith("timeout")
