"""The table and JSON formats of a run of targets: one target reads exactly as before; several
get titles and a summary (table) or an envelope (JSON)."""

from __future__ import annotations

import io
import json

from ci_reports import check_report, finding, flow_report, real_runs, run, tensor
from rich.cells import cell_len

from gradcheck_tool import formats
from gradcheck_tool.formats import OutputFormat
from gradcheck_tool.formats.json import check_path, write_file
from gradcheck_tool.results import TargetRun


def text(runs, fmt, width=80) -> str:
    out = io.StringIO()
    formats.write_runs(runs, fmt, out, width=width)
    return out.getvalue()


def test_one_run_writes_exactly_the_reports_table_and_json():
    for r in real_runs():
        for fmt in (OutputFormat.TABLE, OutputFormat.JSON):
            alone = io.StringIO()
            formats.write(r.report, fmt, alone, width=80)
            assert text([r], fmt) == alone.getvalue()
    assert json.loads(text(real_runs()[:1], OutputFormat.JSON)) == real_runs()[0].report.to_dict()


def test_several_runs_are_an_envelope_in_json():
    failing = run(flow_report(finding("nan", "fc"), fail_on=("nan",)))
    runs = [*real_runs(), TargetRun("check", "gone.py", None, 2, error="file not found"), failing]
    data = json.loads(text(runs, OutputFormat.JSON))
    assert data["tool"] == "gradtool" and data["command"] == "check,flow"
    assert (data["passed"], data["exit_code"]) == (False, 2)
    assert [r["exit_code"] for r in data["runs"]] == [0, 1, 2, 1]
    assert data["runs"][2]["error"] == "file not found" and data["runs"][2]["report"] is None
    assert data["runs"][1]["report"]["results"][0]["source"]["line"] == 28
    assert data["runs"][3]["report"]["failed_kinds"] == ["nan"]


def test_a_run_that_stopped_before_its_report_is_an_envelope_too():
    data = json.loads(text([TargetRun("flow", "x.py", None, 124, interrupted="timeout")], "json"))
    assert data["exit_code"] == 124 and data["runs"][0]["interrupted"] == "timeout"


def test_json_files_are_written_and_checked(tmp_path):
    path = tmp_path / "out.json"
    runs = list(real_runs())
    formats.write_runs_file(runs, OutputFormat.JSON, str(path), "json")
    assert json.loads(path.read_text()) == json.loads(text(runs, OutputFormat.JSON))
    write_file(runs[0].report, str(path))  # the single-report writer still works
    assert json.loads(path.read_text()) == runs[0].report.to_dict()
    check_path(str(path))


def test_several_runs_get_titles_errors_and_a_summary_within_80_columns():
    runs = [
        *real_runs(),
        TargetRun("check", "models/missing.py:Net", None, 2, error="file not found: missing.py"),
        TargetRun("flow", "models/slow.py", None, 124, interrupted="timeout", seconds=5.01),
    ]
    out = text(runs, OutputFormat.TABLE)
    assert all(cell_len(line) <= 80 for line in out.splitlines())
    for r in runs:
        assert f"{r.command} {r.target}"[:60] in out.replace("\n", "")
    assert "error: file not found: missing.py" in out
    assert "timeout: stopped by --timeout before a report" in out
    summary = out[out.index("gradtool: summary") :]
    rows = [line for line in summary.splitlines() if "│" in line]
    assert [line.split("│")[3].strip() for line in rows if line.split("│")[3].strip()] == [
        "pass",
        "FAIL",
        "error",
        "timeout",
    ]
    assert "1 of 4 passed; exit code 124" in summary


def test_a_single_errored_run_shows_its_error():
    out = text([TargetRun("check", "a.py", None, 3, error="KeyError: 'x'")], "table")
    assert out.strip() == "internal error in gradtool: KeyError: 'x'"


def test_hand_made_check_run_renders():
    report = check_report(tensor("x", "fail", line=3), tensor("y"))
    out = text([run(report), run(report)], OutputFormat.TABLE)
    assert out.count("FAIL: 1 of 2 gradient(s) wrong: x") == 2
