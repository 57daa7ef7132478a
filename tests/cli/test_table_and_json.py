"""`python -m gradcheck_tool check` as a user runs it: the table, colours, the JSON report (to
stdout or to a file), exit 0 and 1, the same report from two processes.
"""

from __future__ import annotations

import io
import json
import sys

import torch
from conftest import (
    BAD,
    BUGS,
    CLI_FILES,
    CORRECT,
    SAMPLES,
    assert_no_traceback,
    assert_user_error,
    flat,
    invoke_cli,
    run_cli,
)

TOP_FIELDS = {"tool", "version", "command", "target", "found_by", "passed", "tolerance", "eps"}


RESULT_FIELDS = {"name", "kind", "shape", "numel", "checked", "rel_error", "rating", "passed"}


def test_passing_sample_exits_0_with_a_plain_text_table():
    result = run_cli("check", SAMPLES / "exercise_net.py")
    assert result.code == 0, result.output
    for word in ("w1", "b1", "w2", "b2", "input:x", "excellent", "PASS"):
        assert word in result.stdout
    assert "ExerciseNet" in result.stdout  # says how the target was found
    assert "\x1b[" not in result.output  # not a TTY: no colour codes
    assert_no_traceback(result)


def test_no_color_gives_plain_text_even_on_a_terminal(monkeypatch):
    from gradcheck_tool.formats.console import make_console

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("TERM", "xterm-256color")
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    coloured = Terminal()
    monkeypatch.setattr(sys, "stdout", coloured)
    make_console().print("[red]FAIL[/red]")
    assert "\x1b[" in coloured.getvalue()  # a terminal gets colour ...

    monkeypatch.setenv("NO_COLOR", "1")
    plain = Terminal()
    monkeypatch.setattr(sys, "stdout", plain)
    make_console().print("[red]FAIL[/red]")
    assert plain.getvalue().strip() == "FAIL"  # ... unless NO_COLOR is set


def test_plain_function_sample_with_name():
    result = run_cli("check", f"{SAMPLES / 'gate.py'}:gate")
    assert result.code == 0, result.output
    assert "given" in result.stdout


def test_failing_gradient_exits_1_and_shows_the_worst_entries():
    result = run_cli("check", SAMPLES / "custom_activation_buggy.py")
    assert result.code == 1, result.output
    assert "FAIL" in result.stdout and "bug" in result.stdout
    assert "worst entries of x" in result.stdout
    assert "analytic" in result.stdout and "numeric" in result.stdout
    assert_no_traceback(result)


def test_table_names_each_loss_term():
    result = run_cli("check", CORRECT / "named_loss_terms_buggy.py")
    assert result.code == 1, result.output
    assert "out.bias [mse]" in result.stdout  # a passing row of the table
    assert "worst entries of input:x [penalty]" in result.stdout


def test_json_to_stdout_is_only_json_with_the_documented_fields():
    spec = f"{BUGS / 'weight_transposed.py'}:Buggy"
    result = run_cli("check", spec, "--json", "-", "--tolerance", "1e-6", "--eps", "1e-6")
    assert result.code == 1, result.output
    data = json.loads(result.stdout)  # nothing else on stdout
    assert TOP_FIELDS <= data.keys()
    assert (data["tool"], data["command"], data["passed"]) == ("gradtool", "check", False)
    assert data["tolerance"] == 1e-6 and data["eps"] == 1e-6
    assert data["version"] and data["target"].endswith("weight_transposed.py:Buggy")
    assert "given" in data["found_by"]
    assert [r["name"] for r in data["results"]] == ["x", "weight", "bias"]
    for r in data["results"]:
        assert RESULT_FIELDS <= r.keys()
        assert r["kind"] in ("parameter", "input")
        assert r["numel"] == r["checked"] == torch.Size(r["shape"]).numel()
    by_name = {r["name"]: r for r in data["results"]}
    assert [n for n, r in by_name.items() if not r["passed"]] == ["weight"]
    weight = by_name["weight"]
    assert weight["rating"] == "bug" and weight["rel_error"] > 1e-3
    assert weight["worst"]
    for entry in weight["worst"]:
        assert {"index", "analytic", "numeric"} <= entry.keys()
        assert len(entry["index"]) == 2
    assert by_name["x"]["worst"] == [] and by_name["x"]["rating"] == "excellent"


def test_json_to_a_file(tmp_path):
    out = tmp_path / "report.json"
    result = run_cli("check", SAMPLES / "exercise_net.py", "--json", out)
    assert result.code == 0, result.output
    data = json.loads(out.read_text())
    assert data["passed"] is True and TOP_FIELDS <= data.keys()
    assert {r["name"] for r in data["results"]} == {"w1", "b1", "w2", "b2", "input:x"}
    assert "PASS" in result.stdout  # the table still goes to the terminal


def test_nan_in_the_output_is_a_gradient_failure_not_a_usage_error():
    result = run_cli("check", BAD / "nan_output.py")
    assert result.code == 1, result.output
    assert "NaN" in result.output and "output" in flat(result.output)
    assert_no_traceback(result)


def test_two_fresh_processes_give_the_same_report():
    spec = CORRECT / "dropout_mlp.py"
    first, second = run_cli("check", spec, "--json", "-"), run_cli("check", spec, "--json", "-")
    assert first.code == second.code == 0
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    a.pop("seconds", None), b.pop("seconds", None)
    assert a == b


# --- --json - keeps the user's prints off stdout ---------------------------------------------


def test_json_to_stdout_holds_only_json_when_user_code_prints():
    result = invoke_cli("check", CLI_FILES / "prints.py", "--json", "-")
    assert result.code == 0, result.output
    data = json.loads(result.stdout)  # stdout is the JSON and nothing else
    assert data["passed"] is True
    assert "hello from import" not in result.stdout and "forward called" not in result.stdout
    assert "hello from import" in result.stderr and "forward called" in result.stderr


# --- --json into a missing folder: exit 2, before any work -----------------------------------


def test_json_into_a_missing_folder_makes_it_as_pytest_junitxml_does(tmp_path):
    missing = tmp_path / "reports" / "ci"
    result = invoke_cli(
        "check", CLI_FILES / "plain.py", "--input-shape", "2,3", "--json", missing / "r.json"
    )
    assert result.code == 0, result.output
    assert json.loads((missing / "r.json").read_text())["passed"] is True


def test_json_under_a_file_is_exit_2_before_the_check(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = invoke_cli("check", CLI_FILES / "prints.py", "--json", blocker / "r.json")
    assert_user_error(result, str(blocker))
    assert "hello from import" not in result.output  # the user's file was never imported
