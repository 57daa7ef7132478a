"""`python -m gradcheck_tool check`: exit codes, messages, JSON, as a user runs it."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from conftest import BAD, BUGS, CORRECT, FIXTURES, REPO, SAMPLES, TARGETS, run_cli

TOP_FIELDS = {"tool", "version", "command", "target", "found_by", "passed", "tolerance", "eps"}
RESULT_FIELDS = {"name", "kind", "shape", "numel", "checked", "rel_error", "rating", "passed"}
RESULT_FIELDS |= {"note", "worst"}


def flat(text: str) -> str:
    """Whitespace-normalized: rich wraps long messages at the console width."""
    return " ".join(text.split())


def assert_no_traceback(result) -> None:
    assert "Traceback" not in result.output, result.output


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


# --- inputs from the command line ---------------------------------------------------------


def test_input_shape_supplies_missing_inputs():
    result = run_cli("check", BAD / "no_inputs.py", "--input-shape", "2,4")
    assert result.code == 0, result.output
    two = run_cli(
        "check",
        TARGETS / "two_inputs_no_example.py",
        "--input-shape",
        "2,4",
        "--input-shape",
        "2,3",
        "--input-dtype",
        "float64",
        "--json",
        "-",
    )
    assert two.code == 0, two.output
    inputs = [r["name"] for r in json.loads(two.stdout)["results"] if r["kind"] == "input"]
    assert inputs == ["input:a", "input:b"]


# --- exit 2: the user's file, inputs or checkpoint can't be used ----------------------------


def write_syntax_error(tmp_path):
    path = tmp_path / "syntax_error.py"
    path.write_text("import torch\n\n\ndef build_model(:\n    return None\n")
    return path


BAD_TARGETS = {
    "missing file": (lambda tmp: [tmp / "nowhere" / "model.py"], ["model.py", "not found"]),
    "syntax error": (lambda tmp: [write_syntax_error(tmp)], ["syntax_error.py:4"]),
    "import error": (
        lambda tmp: [BAD / "import_error.py"],
        ["import_error.py", "No module named 'gradtool_fixture_no_such_package'"],
    ),
    "no target": (lambda tmp: [BAD / "no_target.py"], ["no_target.py", "no_target.py:NAME"]),
    "ambiguous": (
        lambda tmp: [BAD / "ambiguous.py"],
        ["NetA", "NetB", "ambiguous.py:NetA", "ambiguous.py:NetB"],
    ),
    "unknown name": (
        lambda tmp: [f"{TARGETS / 'module_instance.py'}:Nope"],
        ["Nope", "module_instance.py"],
    ),
    "forward raises": (
        lambda tmp: [BAD / "forward_raises.py"],
        ["fixture forward is broken on purpose (code 4711)", "ValueError"],
    ),
    "output is a string": (lambda tmp: [BAD / "returns_string.py"], ["str"]),
    "no inputs": (lambda tmp: [BAD / "no_inputs.py"], ["example_inputs", "--input-shape"]),
    "bad input shape": (
        lambda tmp: [BAD / "no_inputs.py", "--input-shape", "two,4"],
        ["two,4"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TARGETS))
def test_unusable_target_exits_2_with_a_message_and_no_traceback(case, tmp_path):
    make_args, words = BAD_TARGETS[case]
    result = run_cli("check", *make_args(tmp_path))
    assert result.code == 2, result.output
    for word in words:
        assert word in flat(result.output), (word, result.output)
    assert_no_traceback(result)
    assert result.output.count("\n") < 25  # one screen, not a dump


def test_debug_shows_the_traceback():
    result = run_cli("check", BAD / "forward_raises.py", "--debug")
    assert "Traceback" in result.output
    assert "fixture forward is broken on purpose (code 4711)" in flat(result.output)


def test_error_with_json_stdout_keeps_stdout_clean():
    result = run_cli("check", BAD / "ambiguous.py", "--json", "-")
    assert result.code == 2
    assert result.stdout.strip() == ""
    assert "NetA" in result.stderr


# --- --weights ------------------------------------------------------------------------------


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_weights_good_mismatched_and_malicious(tmp_path):
    net = FIXTURES / "checkpoint_net.py"
    good = tmp_path / "good.pt"
    torch.save({"model": {k: torch.full(v, 0.1) for k, v in _shapes().items()}}, good)
    result = run_cli("check", net, "--weights", good)
    assert result.code == 0, result.output

    mismatched = tmp_path / "mismatched.pt"
    state = {k: torch.zeros(v) for k, v in _shapes().items()}
    del state["head.weight"]
    state["head.extra"] = torch.zeros(1)
    torch.save(state, mismatched)
    result = run_cli("check", net, "--weights", mismatched)
    assert result.code == 2
    assert "head.weight" in flat(result.output) and "head.extra" in flat(result.output)
    assert_no_traceback(result)

    marker = tmp_path / "pwned-marker"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"state_dict": _Payload(str(marker))}, fh, protocol=2)
    result = run_cli("check", net, "--weights", evil)
    assert result.code == 2
    assert not marker.exists()
    assert "evil.pt" in flat(result.output)
    assert_no_traceback(result)


def _shapes() -> dict[str, torch.Size]:
    shapes = {"layer.weight": (4, 3), "layer.bias": (4,), "head.weight": (2, 4), "head.bias": (2,)}
    return {k: torch.Size(v) for k, v in shapes.items()}


def test_zero_tolerance_is_not_an_internal_error():
    result = run_cli("check", SAMPLES / "exercise_net.py", "--tolerance", "0")
    assert result.code == 2, result.output  # rejected as a bad argument: no pass, no crash
    assert "--tolerance must be a positive number" in flat(result.output)
    assert "internal error" not in result.output


def test_table_names_each_loss_term():
    result = run_cli("check", CORRECT / "named_loss_terms_buggy.py")
    assert result.code == 1, result.output
    assert "out.bias [mse]" in result.stdout  # a passing row of the table
    assert "worst entries of input:x [penalty]" in result.stdout


STARTUP_PROBE = """
import runpy, sys
sys.argv = ['gradtool', *sys.argv[1:]]
try:
    runpy.run_module('gradcheck_tool', run_name='__main__')
except SystemExit as exc:
    code = exc.code
print('torch imported' if 'torch' in sys.modules else 'no torch', code)
"""


@pytest.mark.parametrize(
    "args", [["--version"], ["--help"], ["check", "--help"], ["flow", "--help"]]
)
def test_version_and_help_do_not_import_torch(args):
    proc = subprocess.run(
        [sys.executable, "-c", STARTUP_PROBE, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert proc.stdout.strip().splitlines()[-1] == "no torch 0", proc.stdout + proc.stderr
    assert "gradtool" in proc.stdout


def test_the_package_root_loads_its_api_lazily():
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, gradcheck_tool as g; print('torch' in sys.modules, g.__version__);"
            "from gradcheck_tool import check, flow, Monitor;"
            "import gradcheck_tool.engines.flow.monitor;"
            "print('torch' in sys.modules, callable(g.flow), g.flow is flow, g.check is check)",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    first, second = proc.stdout.strip().splitlines()
    assert first == "False 0.1.0"
    assert second == "True True True True", proc.stderr
