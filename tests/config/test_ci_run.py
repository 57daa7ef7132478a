"""A configured run as CI sees it: the envelope and the summary whatever the number of
targets, targets a stop never reached listed as not run, a TARGET that cannot run still
annotated and in the JSON file, report writing that never turns a verdict into exit 3, and
the command line able to turn a configured switch off."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

from conftest import BUGS, REPO, SAMPLES, flat, invoke_cli

STALLS = REPO / "tests" / "stopping" / "fixtures" / "stalls.py"


def project(root: Path, toml: str) -> None:
    (root / "ops").mkdir(parents=True, exist_ok=True)
    shutil.copy(BUGS / "sign_flipped.py", root / "ops" / "sign.py")
    shutil.copy(SAMPLES / "exercise_net.py", root / "ops" / "net.py")
    shutil.copy(STALLS, root / "ops" / "stalls.py")
    (root / "pyproject.toml").write_text(textwrap.dedent(toml))


def test_one_configured_target_still_gets_the_envelope_and_the_summary(tmp_path, monkeypatch):
    project(tmp_path, '[[tool.gradtool.check]]\ntarget = "ops/net.py"\n')
    monkeypatch.chdir(tmp_path)
    result = invoke_cli("check", "--json", "r.json")
    assert result.code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["exit_code"] == 0 and len(report["runs"]) == 1  # the envelope
    assert "gradtool: summary" in result.stdout and "check ops/net.py" in result.stdout
    # a TARGET keeps its bare report
    invoke_cli("check", "ops/net.py", "--json", "one.json")
    assert json.loads((tmp_path / "one.json").read_text())["command"] == "check"


def test_a_timeout_lists_the_targets_it_never_reached(tmp_path, monkeypatch):
    project(
        tmp_path,
        """
        [tool.gradtool]
        timeout = 3

        [[tool.gradtool.check]]
        target = "ops/net.py"

        [[tool.gradtool.check]]
        target = "ops/stalls.py:Sleeps"

        [[tool.gradtool.check]]
        target = "ops/sign.py:Buggy"
        """,
    )
    monkeypatch.chdir(tmp_path)
    result = invoke_cli("check", "--json", "r.json", "--junit", "r.xml")
    assert result.code == 124, result.output
    runs = json.loads((tmp_path / "r.json").read_text())["runs"]
    assert [(r["exit_code"], r["interrupted"]) for r in runs] == [
        (0, None),
        (124, "timeout"),
        (124, "timeout"),
    ]
    assert runs[1]["report"]["interrupted"] == "timeout"  # the partial report of the one that hung
    assert runs[2]["report"] is None and runs[2]["error"].startswith("not run")
    assert "not run" in flat(result.stdout)  # in the table too
    from junitparser import JUnitXml

    suites = {s.name: s for s in JUnitXml.fromfile(str(tmp_path / "r.xml"))}
    assert len(suites) == 3 and suites["ops/sign.py:Buggy"].errors == 1


def test_a_target_that_cannot_run_is_annotated_and_in_the_json_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke_cli("check", "missing.py", "--format", "github", "--json", "r/m.json")
    assert result.code == 2
    assert "::error file=missing.py" in result.stdout
    report = json.loads((tmp_path / "r" / "m.json").read_text())
    assert report["exit_code"] == 2 and "file not found" in report["runs"][0]["error"]


def test_writing_the_summary_never_changes_the_verdict(tmp_path, monkeypatch):
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "no" / "such" / "summary.md"))
    result = invoke_cli("check", SAMPLES / "exercise_net.py")
    assert result.code == 0, result.output
    assert "could not append the summary" in flat(result.stderr)


def test_bad_run_options_are_exit_2(tmp_path):
    for args, words in (
        (["--format", "bogus"], "bogus"),
        (["--junit", "-"], "--junit needs a file path"),
        (["--timeout", "1e300"], "--timeout must be at most"),
        (["--timeout", "0"], "--timeout must be a positive number"),
    ):
        result = invoke_cli("check", SAMPLES / "exercise_net.py", *args)
        assert result.code == 2, (args, result.output)
        assert words in flat(result.output), (args, result.output)


def test_the_command_line_turns_a_configured_switch_off(tmp_path, monkeypatch):
    project(
        tmp_path,
        '[[tool.gradtool.check]]\ntarget = "ops/sign.py:Correct"\nsecond_order = true\n',
    )
    monkeypatch.chdir(tmp_path)

    def names(*args):
        result = invoke_cli("check", "--format", "json", *args)
        assert result.code == 0, result.output
        return [r["name"] for r in json.loads(result.stdout)["runs"][0]["report"]["results"]]

    assert names() == ["x", "x (2nd order)"]
    assert names("--no-second-order") == ["x"]


def test_an_error_of_a_configured_target_names_its_entry(tmp_path, monkeypatch):
    project(
        tmp_path,
        """
        [[tool.gradtool.check]]
        target = "ops/net.py"

        [[tool.gradtool.check]]
        target = "ops/nope.py"
        """,
    )
    monkeypatch.chdir(tmp_path)
    result = invoke_cli("check", "--format", "json")
    assert result.code == 2
    error = json.loads(result.stdout)["runs"][1]["error"]
    assert "file not found" in error and "[[tool.gradtool.check]] 2" in error


def test_the_help_names_the_config_table():
    """rich reads `[tool.gradtool]` in a help text as markup and drops it unless escaped."""
    for command in ("check", "flow"):
        text = flat(invoke_cli(command, "--help").stdout)
        assert text.count("[tool.gradtool]") == 2, text  # TARGET's help and --config's
        assert "\\[" not in text
