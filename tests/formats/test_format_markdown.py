"""The markdown step summary: a heading, a table of the targets, details of each failure."""

from __future__ import annotations

import io

from ci_reports import check_report, finding, flow_report, real_runs, run, tensor

from gradcheck_tool import formats
from gradcheck_tool.formats.markdown import append_step_summary
from gradcheck_tool.results import TargetRun


def summary(runs) -> str:
    out = io.StringIO()
    formats.write_runs(runs, formats.OutputFormat.MARKDOWN, out)
    return out.getvalue()


def table_rows(text: str, header: str) -> list[list[str]]:
    """The cells of the markdown table under the line starting with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


def test_targets_table_and_the_failing_tensor_with_its_line():
    text = summary(real_runs())
    assert text.startswith("## gradtool\n")
    targets = table_rows(text, "| | target")
    assert [(r[0], r[3], r[4]) for r in targets] == [("✅", "pass", "0"), ("❌", "FAIL", "1")]
    assert text.count("### ") == 1  # details for the failing target only
    (row,) = table_rows(text, "| tensor")
    assert row[0] == "`x`" and row[2] == "2.00e-01" and row[3] == "bug"
    assert row[5].endswith("located.py:28 (WrongSquare.backward)`")


def test_flow_findings_errors_and_pipes():
    report = flow_report(finding("nan", "a|b"), finding("dead_relu", "act"), fail_on=("nan",))
    runs = [run(report), TargetRun("check", "x.py", None, 2, error="bad | input\nhint")]
    text = summary(runs)
    rows = table_rows(text, "| | kind")
    assert [(r[0], r[1]) for r in rows] == [("❌", "nan"), ("", "dead_relu")]
    assert "`a\\|b`" in text  # a pipe never splits a cell
    assert "**error**: bad \\| input<br>hint" in text


def test_inconclusive_rows_say_so():
    text = summary([run(check_report(tensor("y", "inconclusive")))])
    (row,) = table_rows(text, "| tensor")
    assert row[1] == "inconclusive" and "could not resolve" in row[4]


def test_append_step_summary_appends(tmp_path):
    path = tmp_path / "summary.md"
    path.write_text("# earlier step\n")
    append_step_summary(real_runs(), str(path))
    append_step_summary(real_runs()[:1], str(path))
    text = path.read_text()
    assert text.startswith("# earlier step\n") and text.count("## gradtool") == 2
