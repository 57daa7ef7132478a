"""GitHub Actions workflow commands, read back by a parser written from GitHub's rules (the
runner's: `::name k=v,k=v::message`, %25 %0D %0A in the message, also %3A %2C in values)."""

from __future__ import annotations

import io
import re

from ci_reports import check_report, finding, flow_report, real_runs, run, tensor

from gradcheck_tool import formats
from gradcheck_tool.formats.github import command, escape_data, escape_property
from gradcheck_tool.results import TargetRun

COMMAND = re.compile(r"^::(?P<level>[a-z]+)(?: (?P<props>[^:]*))?::(?P<message>.*)$")


def unescape(text: str, prop: bool = False) -> str:
    pairs = [("%0D", "\r"), ("%0A", "\n")] + ([("%3A", ":"), ("%2C", ",")] if prop else [])
    for code, char in pairs:
        text = text.replace(code, char)
    return text.replace("%25", "%")


def parse(text: str, groups: list | None = None) -> list[dict]:
    """The annotations: every line outside a `::group::`…`::endgroup::` (the log text the
    runner folds) is one command; property values and messages unescaped. Each group's
    title and body go to `groups` when given."""
    found = []
    body: list[str] | None = None
    for line in text.splitlines():
        if body is not None:
            if line == "::endgroup::":
                body = None
            else:
                assert not line.startswith("::"), f"a command inside a group: {line!r}"
                body.append(line)
            continue
        if line.startswith("::group::"):
            body = []
            if groups is not None:
                groups.append((unescape(line[len("::group::") :]), body))
            continue
        match = COMMAND.match(line)
        assert match, f"not a workflow command: {line!r}"
        props = {}
        for pair in (match["props"] or "").split(","):
            if pair:
                key, value = pair.split("=", 1)
                props[key] = unescape(value, prop=True)
        found.append({"level": match["level"], **props, "message": unescape(match["message"])})
    assert body is None, "a group left open"
    return found


def annotations(runs) -> list[dict]:
    out = io.StringIO()
    formats.write_runs(runs, formats.OutputFormat.GITHUB, out)
    return parse(out.getvalue())


def test_escaping_follows_githubs_rules():
    assert escape_data("100% \r\n done") == "100%25 %0D%0A done"
    assert escape_property("a:b,c%") == "a%3Ab%2Cc%25"
    line = command("error", "two\nlines: 5%", file="dir,x/a:b.py", line=3, title="t: x, y")
    assert "\n" not in line
    assert parse(line) == [
        {
            "level": "error",
            "file": "dir,x/a:b.py",
            "line": "3",
            "title": "t: x, y",
            "message": "two\nlines: 5%",
        }
    ]
    assert command("warning", "m") == "::warning::m"  # no location: no properties


def test_exactly_one_error_at_the_line_of_the_wrong_backward():
    found = annotations(real_runs())
    assert len(found) == 1
    (error,) = found
    assert error["level"] == "error"
    assert error["file"].endswith("located.py") and error["line"] == "28"
    assert error["title"] == "gradtool check: wrong gradient for x"
    assert "relative error 2.00e-01 (bug)" in error["message"]
    assert "worst [" in error["message"] and "hint: constant factor" in error["message"]


def test_each_target_s_table_is_folded_in_its_own_group():
    groups: list = []
    out = io.StringIO()
    formats.write_runs(real_runs(), formats.OutputFormat.GITHUB, out)
    parse(out.getvalue(), groups)
    assert [title for title, _ in groups] == [f"gradtool check {r.target}" for r in real_runs()]
    for _, body in groups:  # the table's verdict line, as `--format table` prints it
        assert any(line.startswith(("PASS:", "FAIL:")) for line in body), body


def test_inconclusive_is_a_warning_and_no_location_means_no_file():
    report = check_report(tensor("x", "fail", line=12), tensor("y", "inconclusive"), tensor("z"))
    found = annotations([run(report)])
    assert [(a["level"], a.get("line")) for a in found] == [("error", "12"), ("warning", None)]
    assert "file" not in found[1]
    assert found[1]["title"] == "gradtool check: inconclusive gradient for y"


def test_flow_findings_fail_only_by_fail_on():
    cause = finding("diverging", "(loss)", line=None, consequences=[finding("nan", "fc2")])
    report = flow_report(cause, finding("dead_relu", "act"), fail_on=("nan",))
    found = annotations([run(report)])
    assert [(a["level"], a["title"]) for a in found] == [
        ("warning", "gradtool flow: diverging in (loss)"),
        ("error", "gradtool flow: nan in fc2"),  # a consequence, failing by --fail-on
        ("warning", "gradtool flow: dead_relu in act"),
    ]
    assert "a consequence of diverging" in found[1]["message"]
    assert found[1]["line"] == "7"


def test_a_target_that_stopped_is_an_error_on_its_file():
    runs = [
        TargetRun("check", "ops/attn.py:Fused", None, 2, error="file not found: ops/attn.py\nhint"),
        TargetRun("flow", "net.py", flow_report(), 124, interrupted="timeout"),
    ]
    found = annotations(runs)
    assert [(a["level"], a["file"]) for a in found] == [
        ("error", "ops/attn.py"),
        ("error", "net.py"),
    ]
    assert found[0]["message"] == "ops/attn.py:Fused: file not found: ops/attn.py\nhint"
    assert "stopped by --timeout" in found[1]["message"]


def test_a_passing_run_says_nothing():
    assert annotations([real_runs()[0]]) == []


def test_a_run_failing_only_by_inconclusive_tensors_still_has_an_error():
    report = check_report(tensor("y", "inconclusive"), tensor("z"))
    found = annotations([run(report)])
    assert [a["level"] for a in found] == ["warning", "error"]
    assert "not verified: 1 of 2 gradient(s) inconclusive (y)" in found[1]["message"]
    assert found[1]["file"] == "ops.py"  # the target's file


def test_annotation_files_are_relative_to_the_workspace_github_reads_them_from(
    tmp_path, monkeypatch
):
    """The runner reads a relative `file=` from GITHUB_WORKSPACE (the repository root), not
    from the step's working directory: a run in a subfolder must still point at the file."""
    source = tmp_path / "repo" / "examples" / "ci" / "ops" / "attn.py"
    source.parent.mkdir(parents=True)
    source.write_text("")
    import dataclasses

    from gradcheck_tool.results import SourceLocation

    report = check_report(tensor("k", "fail", line=3))
    where = SourceLocation(str(source), 3, "F.backward")
    located = dataclasses.replace(report.results[0], source=where)
    report = dataclasses.replace(report, results=(located,))
    monkeypatch.chdir(source.parent.parent)  # the step's working-directory: examples/ci
    assert annotations([run(report)])[0]["file"] == "ops/attn.py"  # no workspace: the cwd
    monkeypatch.setenv("GITHUB_WORKSPACE", str(tmp_path / "repo"))
    assert annotations([run(report)])[0]["file"] == "examples/ci/ops/attn.py"


def test_a_finding_without_a_line_goes_on_the_target_s_file():
    report = flow_report(finding("vanishing", "0", line=None), fail_on=("vanishing",))
    (error,) = annotations([run(report)])
    assert error["level"] == "error" and error["file"] == "net.py" and "line" not in error
